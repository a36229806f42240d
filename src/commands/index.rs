//! `sluice index`: document indexes for `retrieval` nodes.

use serde_json::json;
use sluice_nodes::retrieval::index::{Chunking, Index, index_path, indexes_dir};

use super::flow::runtime;
use crate::cli::{IndexBuildArgs, IndexName, IndexQueryArgs};
use crate::exit;

fn open(name: &str, must_exist: bool) -> anyhow::Result<Result<Index, u8>> {
    let path = match index_path(name) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(Err(exit::INVALID));
        }
    };
    if must_exist && !path.is_file() {
        eprintln!(
            "error: no index named `{name}` in {} (see `sluice index list`)",
            indexes_dir().display()
        );
        return Ok(Err(exit::INVALID));
    }
    Ok(Index::open(&path).map_err(|e| {
        eprintln!("error: {e}");
        exit::FAILED
    }))
}

pub fn build(args: IndexBuildArgs) -> anyhow::Result<u8> {
    let mut index = match open(&args.out, false)? {
        Ok(i) => i,
        Err(code) => return Ok(code),
    };
    let rt = runtime()?;
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut progress = move |done: usize, total: usize| {
        if terminal {
            eprint!("\r\x1b[2Kembedding files: {done}/{total}");
            if done == total {
                eprintln!();
            }
        }
    };
    let chunking = Chunking {
        size: args.chunk_size.max(8),
        overlap: args.overlap.min(args.chunk_size.max(8) / 2),
    };
    match rt.block_on(index.build(&args.source, &args.model, chunking, &mut progress)) {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &json!({"index": args.out, "report": report, "info": index.info().ok()})
                )?
            );
            Ok(exit::OK)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(exit::FAILED)
        }
    }
}

pub fn query(args: IndexQueryArgs) -> anyhow::Result<u8> {
    let mut index = match open(&args.name, true)? {
        Ok(i) => i,
        Err(code) => return Ok(code),
    };
    let rt = runtime()?;
    match rt.block_on(index.query(&args.text, args.k.max(1), args.hybrid)) {
        Ok(hits) => {
            println!("{}", serde_json::to_string_pretty(&hits)?);
            Ok(exit::OK)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(exit::FAILED)
        }
    }
}

pub fn list() -> anyhow::Result<u8> {
    let mut names: Vec<String> = std::fs::read_dir(indexes_dir())
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(".sqlite"))
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    println!("{}", serde_json::to_string_pretty(&names)?);
    Ok(exit::OK)
}

pub fn info(args: IndexName) -> anyhow::Result<u8> {
    let index = match open(&args.name, true)? {
        Ok(i) => i,
        Err(code) => return Ok(code),
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&index.info().map_err(anyhow::Error::msg)?)?
    );
    Ok(exit::OK)
}

pub fn rm(args: IndexName) -> anyhow::Result<u8> {
    let path = match index_path(&args.name) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::INVALID);
        }
    };
    match std::fs::remove_file(&path) {
        Ok(()) => {
            eprintln!("removed index {}", args.name);
            Ok(exit::OK)
        }
        Err(_) => {
            eprintln!("error: no index named `{}`", args.name);
            Ok(exit::FAILED)
        }
    }
}
