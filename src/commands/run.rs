//! `sluice run create | show | show-metrics`: batch runs and their records.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indexmap::IndexMap;
use serde_json::{Value as Json, json};
use sluice_engine::{
    BatchOptions, LineResult, Map, Status, Value, load_data, map_inputs, run_batch,
};

use super::flow::{enter_flow, line_timeout, load, runtime};
use crate::cli::{CreateArgs, NameArg};
use crate::exit;

/// `$SLUICE_HOME`, default `~/.sluice`.
fn sluice_home() -> PathBuf {
    match std::env::var_os("SLUICE_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into())).join(".sluice"),
    }
}

fn run_dir(name: &str) -> PathBuf {
    sluice_home().join("runs").join(name)
}

/// Every file written for a run: appended as lines finish, so a crash loses nothing that finished.
struct RunWriter {
    details: BufWriter<File>,
    since_sync: usize,
}

impl RunWriter {
    fn record(&mut self, line: &LineResult) -> std::io::Result<()> {
        let record = json!({
            "line_number": line.line_number,
            "status": line.status.as_str(),
            "inputs": Value::Map(line.inputs.clone()).to_json_lossy(),
            "output": Value::Map(line.output.clone()).to_json_lossy(),
            "error": line.error,
            "node_runs": line.node_runs,
            "start_time": line.start_time,
            "end_time": line.end_time,
            "aggregation_inputs": Value::Map(line.aggregation_inputs.clone()).to_json_lossy(),
        });
        serde_json::to_writer(&mut self.details, &record)?;
        self.details.write_all(b"\n")?;
        self.since_sync += 1;
        if self.since_sync >= 256 {
            self.sync()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.details.flush()?;
        self.details.get_ref().sync_data()?;
        self.since_sync = 0;
        Ok(())
    }
}

fn parse_mapping(items: &[String]) -> anyhow::Result<IndexMap<String, Value>> {
    let mut mapping = IndexMap::new();
    for item in items {
        let Some((k, v)) = item.split_once('=') else {
            bail!(
                "--column-mapping takes NAME=VALUE pairs, e.g. question='${{data.q}}'; got {item:?}"
            );
        };
        mapping.insert(k.trim().to_owned(), Value::from(v));
    }
    if !mapping.is_empty()
        && !mapping
            .values()
            .any(|v| v.as_str().is_some_and(|s| s.starts_with("${")))
    {
        bail!(
            "Column mapping must contain at least one mapping binding like NAME='${{data.column}}'"
        );
    }
    Ok(mapping)
}

fn write_jsonl(path: &Path, rows: impl Iterator<Item = Json>) -> std::io::Result<()> {
    let mut w = BufWriter::new(File::create(path)?);
    for row in rows {
        serde_json::to_writer(&mut w, &row)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    w.get_ref().sync_data()
}

pub fn create(args: CreateArgs) -> anyhow::Result<u8> {
    let mapping = parse_mapping(&args.column_mapping)?;
    let timeout = line_timeout(args.line_timeout)?.or(Some(Duration::from_secs(600)));
    let data_path = std::path::absolute(&args.data).unwrap_or(args.data.clone());
    let flow = match load(&args.flow.flow, args.variant.as_deref()) {
        Ok(f) => f,
        Err(code) => return Ok(code),
    };
    let rows = match load_data(&data_path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::INVALID);
        }
    };
    for (input, def) in &flow.def.inputs {
        if def.default.is_some()
            && !mapping.contains_key(input)
            && rows.iter().any(|r| r.contains_key(input))
        {
            tracing::warn!(
                "flow input `{input}` has a default, so the data column `{input}` is not used (promptflow's rule); \
                 map it with --column-mapping {input}='${{data.{input}}}'"
            );
        }
    }
    let mut sources = IndexMap::new();
    sources.insert("data".to_owned(), rows);
    let lines = match map_inputs(&flow, &mapping, &sources) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::INVALID);
        }
    };
    let variant = flow
        .def
        .selected_variants
        .values()
        .next()
        .cloned()
        .unwrap_or_else(|| "variant_0".into());
    let stamp = chrono::Utc::now().format("%Y%m%d_%H%M%S_%6f");
    let name = args.name.clone().unwrap_or_else(|| {
        format!(
            "{}_{variant}_{stamp}",
            flow.def
                .name
                .replace(|c: char| !c.is_alphanumeric() && c != '_', "_")
        )
    });
    let dir = run_dir(&name);
    if dir.exists() {
        eprintln!(
            "error: a run named `{name}` already exists at {}",
            dir.display()
        );
        return Ok(exit::INVALID);
    }
    std::fs::create_dir_all(dir.join("flow_outputs"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let flow_dir = flow.def.dir.clone();
    enter_flow(&flow)?;
    let total = lines.len();
    let mut writer = RunWriter {
        details: BufWriter::new(File::create(dir.join("details.jsonl"))?),
        since_sync: 0,
    };
    let mut results: Vec<LineResult> = Vec::with_capacity(total);
    let opts = BatchOptions {
        max_concurrency: args.max_concurrency.max(1),
        node_concurrency: 2,
        line_timeout: timeout,
        run_id: name.clone(),
    };
    let started = Instant::now();
    let created_on = chrono::Utc::now();
    let progress = Progress::new(total);
    let flow = Arc::new(flow);
    let rt = runtime()?;
    let mut write_error = None;
    let summary = rt.block_on(run_batch(flow.clone(), lines, vec![], &opts, |line| {
        if let Err(e) = writer.record(line) {
            write_error.get_or_insert(e);
        }
        if args.stream {
            println!("{}", json!({"line_number": line.line_number, "status": line.status.as_str(), "output": Value::Map(line.output.clone()).to_json_lossy(), "error": line.error}));
        }
        progress.tick(line.status != Status::Completed);
        results.push(line.clone());
    }));
    writer.sync()?;
    if let Some(e) = write_error {
        return Err(e).context("cannot write the run's details");
    }
    progress.finish();
    results.sort_by_key(|l| l.line_number);

    let with_line = |line: &LineResult, map: &Map| {
        let mut obj = serde_json::Map::new();
        obj.insert("line_number".into(), json!(line.line_number));
        if let Json::Object(o) = Value::Map(map.clone()).to_json_lossy() {
            obj.extend(o);
        }
        Json::Object(obj)
    };
    let ok = || results.iter().filter(|l| l.status == Status::Completed);
    write_jsonl(
        &dir.join("flow_outputs/output.jsonl"),
        ok().map(|l| with_line(l, &l.output)),
    )?;
    write_jsonl(
        &dir.join("outputs.jsonl"),
        ok().map(|l| with_line(l, &l.output)),
    )?;
    write_jsonl(
        &dir.join("inputs.jsonl"),
        results.iter().map(|l| with_line(l, &l.inputs)),
    )?;
    let metrics = summary
        .aggregation
        .as_ref()
        .map(|a| a.metrics.clone())
        .unwrap_or_default();
    std::fs::write(
        dir.join("metrics.json"),
        serde_json::to_vec_pretty(&Value::Map(metrics.clone()).to_json_lossy())?,
    )?;
    std::fs::write(dir.join("meta.json"), br#"{"batch_size": 1}"#)?;

    let mut node_status: IndexMap<String, usize> = IndexMap::new();
    let mut tokens: IndexMap<&str, f64> = IndexMap::new();
    for line in &results {
        for run in &line.node_runs {
            for key in [
                "prompt_tokens",
                "completion_tokens",
                "total_tokens",
                "cached_tokens",
            ] {
                let n = match run.system_metrics.get(key) {
                    Some(Value::Int(i)) => *i as f64,
                    Some(Value::Float(f)) => *f,
                    _ => continue,
                };
                *tokens.entry(key).or_default() += n;
            }
            *node_status
                .entry(format!(
                    "{}.{}",
                    run.node,
                    run.status.as_str().to_lowercase()
                ))
                .or_default() += 1;
        }
    }
    let mut errors: Vec<Json> = results
        .iter()
        .filter_map(|l| {
            l.error
                .as_ref()
                .map(|e| json!({"line_number": l.line_number, "error": e}))
        })
        .collect();
    if let Some(agg) = &summary.aggregation {
        for run in &agg.node_runs {
            *node_status
                .entry(format!(
                    "{}.{}",
                    run.node,
                    run.status.as_str().to_lowercase()
                ))
                .or_default() += 1;
        }
        if let Some((node, e)) = &agg.error {
            errors.push(json!({"aggregation_node_name": node, "error": e}));
        }
    }
    if !errors.is_empty() {
        let first = errors[0]["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let error = json!({
            "message": format!("Failed to run {}/{} lines. First error message is: {first}", summary.failed_lines, summary.total_lines),
            "code": "UserError",
            "innerError": {"code": "BulkRunException", "innerError": null},
            "additionalInfo": [{"type": "BulkRunErrors", "info": {"errors": errors}}],
        });
        std::fs::write(dir.join("error.json"), serde_json::to_vec_pretty(&error)?)?;
    }
    let record = json!({
        "name": name,
        "created_on": created_on,
        "status": "Completed",
        "display_name": name,
        "description": null,
        "tags": {},
        "properties": {
            "flow_path": flow_dir,
            "output_path": dir,
            "node_variant": flow.def.selected_variants,
            "column_mapping": Value::Map(mapping.into_iter().collect()).to_json_lossy(),
            "system_metrics": {"duration": started.elapsed().as_secs_f64(), "total_lines": summary.total_lines,
                               "completed_lines": summary.completed_lines, "failed_lines": summary.failed_lines,
                               "node_status": node_status,
                               "prompt_tokens": tokens.get("prompt_tokens").map(|v| *v as u64),
                               "completion_tokens": tokens.get("completion_tokens").map(|v| *v as u64),
                               "total_tokens": tokens.get("total_tokens").map(|v| *v as u64),
                               "cached_tokens": tokens.get("cached_tokens").map(|v| *v as u64)},
        },
        "flow_name": flow.def.name,
        "data": data_path,
        "output": dir.join("flow_outputs"),
        "metrics": Value::Map(metrics).to_json_lossy(),
    });
    std::fs::write(dir.join("run.json"), serde_json::to_vec_pretty(&record)?)?;
    if !args.stream {
        println!("{}", serde_json::to_string_pretty(&record)?);
    }
    Ok(exit::OK)
}

pub fn show(args: NameArg) -> anyhow::Result<u8> {
    print_file(&run_dir(&args.name).join("run.json"), &args.name)
}

pub fn show_metrics(args: NameArg) -> anyhow::Result<u8> {
    print_file(&run_dir(&args.name).join("metrics.json"), &args.name)
}

fn print_file(path: &Path, name: &str) -> anyhow::Result<u8> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            println!("{}", text.trim_end());
            Ok(exit::OK)
        }
        Err(_) => {
            eprintln!(
                "error: no run named `{name}` in {}",
                sluice_home().join("runs").display()
            );
            Ok(exit::INVALID)
        }
    }
}

/// Progress on stderr: a redrawn line on a terminal, a plain line every few seconds otherwise.
struct Progress {
    total: usize,
    start: Instant,
    done: std::cell::Cell<usize>,
    failed: std::cell::Cell<usize>,
    last: std::cell::Cell<Instant>,
    terminal: bool,
}

impl Progress {
    fn new(total: usize) -> Self {
        let now = Instant::now();
        Progress {
            total,
            start: now,
            done: 0.into(),
            failed: 0.into(),
            last: now.into(),
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn tick(&self, failed: bool) {
        self.done.set(self.done.get() + 1);
        if failed {
            self.failed.set(self.failed.get() + 1);
        }
        let every = if self.terminal {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(5)
        };
        if self.last.get().elapsed() >= every {
            self.last.set(Instant::now());
            self.print();
        }
    }

    fn print(&self) {
        let done = self.done.get();
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let rate = done as f64 / secs;
        let eta = if rate > 0.0 {
            (self.total - done) as f64 / rate
        } else {
            0.0
        };
        let text = format!(
            "{done}/{} lines ({} failed), {rate:.1} lines/s, ETA {eta:.0}s",
            self.total,
            self.failed.get()
        );
        if self.terminal {
            eprint!("\r\x1b[2K{text}")
        } else {
            eprintln!("{text}")
        }
    }

    fn finish(&self) {
        self.print();
        if self.terminal {
            eprintln!();
        }
    }
}
