//! `sluice model`: the local model store.

use std::path::Path;

use serde_json::json;
use sluice_nodes::llm::local::{LocalConfig, LocalModel};
use sluice_nodes::llm::store::{self, ModelIndex};

use super::flow::runtime;
use crate::ExitStatus;
use crate::cli::{AddArgs, EmbedArgs, ImportArgs, ModelName, PullArgs};

pub fn list(format: crate::cli::OutputFormat) -> anyhow::Result<ExitStatus> {
    let dir = store::models_dir();
    let index = ModelIndex::load(&dir)?;
    // The apis a model serves as `model: default`, e.g. ["chat", "completion"].
    let default_for = |name: &str| -> Vec<&str> {
        store::default_uses(name)
            .into_iter()
            .map(store::ModelUse::as_str)
            .collect()
    };
    let installed: Vec<_> = index
        .models
        .iter()
        .map(|(name, e)| {
            json!({"name": name, "path": e.path, "size": e.size, "sha256": e.sha256,
                   "source": e.source, "present": e.path.is_file(),
                   "default_for": default_for(name)})
        })
        .collect();
    let available: Vec<_> = store::catalog_models()
        .iter()
        .map(|m| {
            json!({"name": m.name, "size": m.size, "about": m.about,
                   "installed": index.models.contains_key(m.name),
                   "default_for": default_for(m.name)})
        })
        .collect();
    let defaults: serde_json::Map<String, serde_json::Value> = store::ModelUse::ALL
        .into_iter()
        .map(|u| (u.as_str().to_owned(), json!(store::default_model(u))))
        .collect();
    if format == crate::cli::OutputFormat::Table {
        let rows: Vec<_> = available
            .iter()
            .map(|m| {
                let path = installed
                    .iter()
                    .find(|i| i["name"] == m["name"])
                    .map_or(serde_json::Value::Null, |i| i["path"].clone());
                json!({"name": m["name"], "installed": m["installed"],
                       "default for": m["default_for"].as_array().map(|a| {
                           a.iter().filter_map(|u| u.as_str()).collect::<Vec<_>>().join(", ")
                       }),
                       "size": m["size"], "path": path, "about": m["about"]})
            })
            .chain(
                installed
                    .iter()
                    .filter(|i| !available.iter().any(|m| m["name"] == i["name"]))
                    .map(|i| {
                        json!({"name": i["name"], "installed": true, "size": i["size"],
                                    "path": i["path"], "about": i["source"]})
                    }),
            )
            .collect();
        super::print_listing(
            &rows,
            &["name", "installed", "default for", "size", "path", "about"],
            format,
        )?;
        eprintln!(
            "`model: default` is {} for api: chat, {} for api: completion, {} for embeddings; models are kept in {}",
            store::DEFAULT_CHAT_MODEL,
            store::DEFAULT_COMPLETION_MODEL,
            store::DEFAULT_EMBEDDING_MODEL,
            dir.display()
        );
        return Ok(ExitStatus::Ok);
    }
    println!(
        "{}",
        serde_json::to_string_pretty(
            &json!({"models_dir": dir, "defaults": defaults, "installed": installed, "available": available})
        )?
    );
    Ok(ExitStatus::Ok)
}

pub fn pull(args: PullArgs) -> anyhow::Result<ExitStatus> {
    // `default` is every model the defaults need (chat, completion, embeddings), each once.
    let models = if args.name == "default" {
        store::default_catalog_models()
    } else if let Some(m) = store::catalog(&args.name) {
        vec![m]
    } else {
        let names: Vec<_> = store::catalog_models().iter().map(|m| m.name).collect();
        eprintln!(
            "{} Sluice cannot fetch `{}`; it can fetch: default, {}. For other GGUF files use `sluice model add FILE --name NAME`.",
            crate::style::error_label(),
            args.name,
            names.join(", ")
        );
        return Ok(ExitStatus::Invalid);
    };
    let mut pulled = Vec::new();
    for model in &models {
        match store::pull(model, &args.python, &mut |m| eprintln!("{m}")) {
            Ok(entry) => pulled.push(
                json!({"name": model.name, "path": entry.path, "sha256": entry.sha256, "size": entry.size,
                       "default_for": store::default_uses(model.name).into_iter().map(store::ModelUse::as_str).collect::<Vec<_>>()}),
            ),
            Err(e) => {
                eprintln!(
                    "{} could not pull {}: {e}",
                    crate::style::error_label(),
                    model.name
                );
                return Ok(ExitStatus::Failed);
            }
        }
    }
    // One model: its record; `default`: a list of them.
    let out = if args.name == "default" {
        json!(pulled)
    } else {
        pulled.pop().unwrap_or_default()
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitStatus::Ok)
}

pub fn add(args: AddArgs) -> anyhow::Result<ExitStatus> {
    let name = args.name.clone().unwrap_or_else(|| {
        args.path
            .file_stem()
            .map_or_else(|| "model".to_owned(), |s| s.to_string_lossy().into_owned())
    });
    match store::add(&name, &args.path) {
        Ok(entry) => {
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &json!({"name": name, "path": entry.path, "sha256": entry.sha256, "size": entry.size})
                )?
            );
            Ok(ExitStatus::Ok)
        }
        Err(e) => {
            eprintln!(
                "{} cannot add {}: {e}",
                crate::style::error_label(),
                args.path.display()
            );
            Ok(ExitStatus::Invalid)
        }
    }
}

pub fn rm(args: ModelName) -> anyhow::Result<ExitStatus> {
    match store::remove(&args.name)? {
        Some(e) => {
            eprintln!("removed {} ({})", args.name, e.path.display());
            Ok(ExitStatus::Ok)
        }
        None => {
            eprintln!(
                "{} no model named `{}`",
                crate::style::error_label(),
                args.name
            );
            Ok(ExitStatus::Failed)
        }
    }
}

/// Finds an installed model by name for `use_`, or says on stderr that it is not installed (`what`
/// names the kind of model: "model", "embedding model") and gives the exit status for that.
pub(crate) fn resolve_or_report(
    name: &str,
    use_: store::ModelUse,
    what: &str,
) -> Result<(String, std::path::PathBuf), ExitStatus> {
    store::resolve_model(name, Path::new("."), use_).map_err(|e| {
        eprintln!(
            "{} {what} `{}` is not installed: {}",
            crate::style::error_label(),
            e.name,
            e.help
        );
        ExitStatus::Invalid
    })
}

pub fn info(args: ModelName) -> anyhow::Result<ExitStatus> {
    let (name, path) = match resolve_or_report(&args.name, store::ModelUse::Chat, "model") {
        Ok(r) => r,
        Err(status) => return Ok(status),
    };
    let rt = runtime()?;
    let model = rt.block_on(LocalModel::get(&name, &path, LocalConfig::from_env()))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "name": name,
            "path": path,
            "chat_template": model.template_source(),
            "details": model.details(),
        }))?
    );
    Ok(ExitStatus::Ok)
}

pub fn import(args: ImportArgs) -> anyhow::Result<ExitStatus> {
    let dir = store::models_dir();
    std::fs::create_dir_all(&dir)?;
    let out = dir.join(format!("{}.gguf", args.name));
    match sluice_nodes::llm::gguf::import_bert(&args.dir, &args.name, &out) {
        Ok(info) => {
            let entry = store::add(&args.name, &out)?;
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &json!({"name": args.name, "path": entry.path, "sha256": entry.sha256,
                    "tensors": info.tensors, "vocab": info.vocab, "dims": info.embedding_length, "pooling": info.pooling,
                    "max_seq_length": info.max_seq_length})
                )?
            );
            Ok(ExitStatus::Ok)
        }
        Err(e) => {
            eprintln!(
                "{} cannot import {}: {e}",
                crate::style::error_label(),
                args.dir.display()
            );
            Ok(ExitStatus::Invalid)
        }
    }
}

/// The texts of a JSON Lines file: each line a JSON string or an object with a string `text`.
fn read_texts(path: &Path) -> Result<Vec<String>, String> {
    let content = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("standard input: {e}"))?
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?
    };
    let mut texts = Vec::new();
    for (i, line) in content.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("{}: not JSON ({e}); write one JSON string per line", at()))?;
        match value.get("text").unwrap_or(&value).as_str() {
            Some(t) => texts.push(t.to_owned()),
            None => {
                return Err(format!(
                    "{}: expected a JSON string or an object whose `text` is a string",
                    at()
                ));
            }
        }
    }
    Ok(texts)
}

pub fn embed(args: EmbedArgs) -> anyhow::Result<ExitStatus> {
    let (name, path) = match resolve_or_report(&args.model, store::ModelUse::Embedding, "model") {
        Ok(r) => r,
        Err(status) => return Ok(status),
    };
    let mut texts = args.texts;
    if let Some(file) = &args.file {
        match read_texts(file) {
            Ok(more) => texts.extend(more),
            Err(e) => {
                eprintln!("{} {e}", crate::style::error_label());
                return Ok(ExitStatus::Invalid);
            }
        }
    }
    let rt = runtime()?;
    let started = std::time::Instant::now();
    let vectors = rt.block_on(async {
        let model = sluice_nodes::llm::embed::LocalEmbedder::get(&name, &path).await?;
        let loaded = started.elapsed();
        let count = texts.len();
        let tokens: usize = if args.stats {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let max = model.max_tokens();
            model
                .token_counts(&refs)
                .into_iter()
                .map(|n| (n + 2).min(max))
                .sum()
        } else {
            0
        };
        let embedding = std::time::Instant::now();
        let vectors = model.embed(texts).await?;
        if args.stats {
            let secs = embedding.elapsed().as_secs_f64();
            let layout = model.layout();
            eprintln!(
                "{}",
                json!({
                    "model": name,
                    "load_seconds": loaded.as_secs_f64(),
                    "texts": count,
                    "tokens": tokens,
                    "embed_seconds": secs,
                    "texts_per_second": count as f64 / secs.max(1e-9),
                    "tokens_per_second": tokens as f64 / secs.max(1e-9),
                    "max_seq_length": layout.max_seq,
                    "batch_tokens": layout.batch_tokens,
                    "threads": layout.threads,
                    "encoder": layout.encoder,
                })
            );
        }
        Ok::<_, sluice_nodes::llm::types::LlmError>(vectors)
    });
    super::print_outcome(vectors, serde_json::to_string)
}
