//! `sluice index`: document indexes for `retrieval` nodes.

use serde_json::json;
use sluice_nodes::retrieval::document::Chunking;
use sluice_nodes::retrieval::filter::Filter;
use sluice_nodes::retrieval::index::{BuildOptions, Index, Phase, index_path, indexes_dir};

use super::flow::runtime;
use crate::ExitStatus;
use crate::cli::{IndexBuildArgs, IndexName, IndexQueryArgs};

fn open(name: &str, must_exist: bool) -> anyhow::Result<Result<Index, ExitStatus>> {
    let path = match index_path(name) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{} {e}", crate::style::error_label());
            return Ok(Err(ExitStatus::Invalid));
        }
    };
    if must_exist && !path.is_file() {
        eprintln!(
            "{} no index named `{name}` in {} (see `sluice index list`)",
            crate::style::error_label(),
            indexes_dir().display()
        );
        return Ok(Err(ExitStatus::Invalid));
    }
    Ok(Index::open(&path).map_err(|e| {
        eprintln!("{} {e}", crate::style::error_label());
        ExitStatus::Failed
    }))
}

pub fn build(args: IndexBuildArgs) -> anyhow::Result<ExitStatus> {
    let mut index = match open(&args.out, false)? {
        Ok(i) => i,
        Err(code) => return Ok(code),
    };
    let rt = runtime()?;
    let mut bar = Bar::new();
    let mut progress = move |phase: Phase, done: usize, total: usize| bar.show(phase, done, total);
    let size = args.chunk_size.max(8);
    let opts = BuildOptions {
        model: args.model.clone(),
        chunking: Chunking {
            size,
            overlap: args.overlap.min(size / 2),
        },
        store: args.store.clone(),
        ann_threshold: args.ann_threshold,
    };
    match rt.block_on(index.build(&args.source, &opts, &mut progress)) {
        Ok(report) => {
            for f in &report.files_failed {
                eprintln!("{} {}: {}", crate::style::error_label(), f.path, f.error);
            }
            let failed = report.files_failed.len();
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &json!({"index": args.out, "report": report, "info": index.info().ok()})
                )?
            );
            if failed > 0 {
                eprintln!(
                    "{failed} file(s) could not be read and are not in the index; the others are. Fix them and build again: only they will be embedded."
                );
                return Ok(ExitStatus::Failed);
            }
            Ok(ExitStatus::Ok)
        }
        Err(e) => {
            eprintln!("{} {e}", crate::style::error_label());
            Ok(ExitStatus::Failed)
        }
    }
}

/// The progress of a build on stderr: a bar on a terminal, a line every few seconds otherwise.
struct Bar {
    terminal: bool,
    start: std::time::Instant,
    last: Option<std::time::Instant>,
    phase: Option<Phase>,
}

impl Bar {
    fn new() -> Bar {
        Bar {
            terminal: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            start: std::time::Instant::now(),
            last: None,
            phase: None,
        }
    }

    fn show(&mut self, phase: Phase, done: usize, total: usize) {
        if self.phase != Some(phase) {
            self.phase = Some(phase);
            self.start = std::time::Instant::now();
            self.last = None;
        }
        let every = std::time::Duration::from_millis(if self.terminal { 100 } else { 5000 });
        let finished = done >= total;
        if !finished && self.last.is_some_and(|l| l.elapsed() < every) {
            return;
        }
        if phase == Phase::Embedding && total == 0 {
            return;
        }
        self.last = Some(std::time::Instant::now());
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let line = match phase {
            Phase::Reading => format!("reading files {done}/{total}"),
            Phase::Embedding => {
                let rate = done as f64 / secs;
                let eta = if rate > 0.0 {
                    (total - done.min(total)) as f64 / rate
                } else {
                    0.0
                };
                format!("embedding {done}/{total} chunks, {rate:.0} chunks/s, ETA {eta:.0}s")
            }
            Phase::Graph if finished => format!("HNSW graph built in {secs:.1}s"),
            Phase::Graph => "building the HNSW graph".to_owned(),
        };
        if self.terminal {
            super::draw_bar(done, total, &line);
            if finished {
                eprintln!();
            }
        } else if phase != Phase::Reading || finished {
            eprintln!("{line}");
        }
    }
}

pub fn query(args: IndexQueryArgs) -> anyhow::Result<ExitStatus> {
    let mut index = match open(&args.name, true)? {
        Ok(i) => i,
        Err(code) => return Ok(code),
    };
    let filter = match Filter::from_pairs(&args.filter) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{} --filter {e}", crate::style::error_label());
            return Ok(ExitStatus::Invalid);
        }
    };
    let rt = runtime()?;
    let hits = rt.block_on(index.query(&args.text, args.k.max(1), args.hybrid, &filter));
    super::print_outcome(hits, serde_json::to_string_pretty)
}

pub fn list(format: crate::cli::OutputFormat) -> anyhow::Result<ExitStatus> {
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
    match format {
        crate::cli::OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&names)?),
        crate::cli::OutputFormat::Table => {
            let rows: Vec<serde_json::Value> = names
                .iter()
                .map(|n| serde_json::json!({"name": n, "file": indexes_dir().join(format!("{n}.sqlite"))}))
                .collect();
            super::print_listing(&rows, &["name", "file"], format)?;
        }
    }
    Ok(ExitStatus::Ok)
}

pub fn info(args: IndexName) -> anyhow::Result<ExitStatus> {
    let index = match open(&args.name, true)? {
        Ok(i) => i,
        Err(code) => return Ok(code),
    };
    let mut info = index.info().map_err(anyhow::Error::msg)?;
    match runtime()?.block_on(index.store_count()) {
        Ok(Some(n)) => info["store_chunks"] = json!(n),
        Ok(None) => {}
        Err(e) => info["store_error"] = json!(e.to_string()),
    }
    println!("{}", serde_json::to_string_pretty(&info)?);
    Ok(ExitStatus::Ok)
}

pub fn rm(args: IndexName) -> anyhow::Result<ExitStatus> {
    let path = match index_path(&args.name) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{} {e}", crate::style::error_label());
            return Ok(ExitStatus::Invalid);
        }
    };
    if path.is_file() {
        match Index::open(&path) {
            Ok(index) => {
                if let Err(e) = runtime()?.block_on(index.drop_store()) {
                    eprintln!(
                        "{} {e}; the index is kept, remove it again once the server is back",
                        crate::style::error_label()
                    );
                    return Ok(ExitStatus::Failed);
                }
            }
            Err(e) => eprintln!("{} {e}", crate::style::warning_label()),
        }
        let _ = std::fs::remove_file(path.with_extension("hnsw"));
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {
            eprintln!("removed index {}", args.name);
            Ok(ExitStatus::Ok)
        }
        Err(_) => {
            eprintln!(
                "{} no index named `{}`",
                crate::style::error_label(),
                args.name
            );
            Ok(ExitStatus::Failed)
        }
    }
}
