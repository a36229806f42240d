//! `sluice run ...`: batch runs, evaluation runs over other runs, variants, resume, and the run store.
//!
//! A run lives in `$SLUICE_HOME/runs/<name>/` with promptflow's files where tools read them
//! (`flow_outputs/output.jsonl`, `outputs.jsonl`, `inputs.jsonl`, `metrics.json`, `error.json`,
//! `logs.txt`, `snapshot/`) plus `run.json` (the record `run show` prints) and one append-only
//! `details.jsonl` with every line's node runs, written as lines finish. `runs.sqlite` indexes runs.

mod index;
mod report;
mod view;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indexmap::IndexMap;
use serde_json::{Value as Json, json};
use std::sync::Mutex;

use sluice_engine::{
    BatchLine, BatchOptions, DataScan, Flow, LineMapper, LineResult, Map, RowStream, Status, Value,
    by_line_number, line_number_of, run_batch, scan_data, stream_data,
};

use super::flow::{enter_flow, line_timeout, load, runtime};
use crate::cli::CreateArgs;
use crate::exit;

pub use view::{
    archive, compare, delete, list, restore, show, show_details, show_metrics, visualize,
};

/// `$SLUICE_HOME`, default `~/.sluice`.
pub(crate) fn sluice_home() -> PathBuf {
    sluice_nodes::llm::store::sluice_home()
}

pub(crate) fn runs_root() -> PathBuf {
    sluice_home().join("runs")
}

pub(crate) fn run_dir(name: &str) -> PathBuf {
    runs_root().join(name)
}

/// Everything a run needs, from flags and/or a run YAML (`-f run.yml`), after `--set`.
#[derive(Clone, Debug, Default)]
struct RunSpec {
    flow: Option<PathBuf>,
    data: Option<PathBuf>,
    run: Option<String>,
    variants: Vec<String>,
    column_mapping: IndexMap<String, Value>,
    name: Option<String>,
    display_name: Option<String>,
    description: Option<String>,
    tags: BTreeMap<String, String>,
    environment_variables: BTreeMap<String, String>,
    resume_from: Option<String>,
}

fn split_kv(item: &str, flag: &str) -> anyhow::Result<(String, String)> {
    match item.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => bail!("{flag} takes KEY=VALUE pairs; got {item:?}"),
    }
}

impl RunSpec {
    /// Reads promptflow's run YAML (§5.10); paths are relative to the file.
    fn from_yaml(path: &Path) -> anyhow::Result<RunSpec> {
        use yaml_rust2::{Yaml, YamlLoader};
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let docs = YamlLoader::load_from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let Some(Yaml::Hash(h)) = docs.into_iter().next() else {
            bail!(
                "{}: a run file is a mapping (flow:, data:, ...)",
                path.display()
            );
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let scalar = |y: &Yaml| -> Option<String> {
            match y {
                Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
                Yaml::Integer(i) => Some(i.to_string()),
                Yaml::Boolean(b) => Some(b.to_string()),
                _ => None,
            }
        };
        let map = |y: &Yaml| -> BTreeMap<String, String> {
            match y {
                Yaml::Hash(m) => m
                    .iter()
                    .filter_map(|(k, v)| Some((scalar(k)?, scalar(v)?)))
                    .collect(),
                _ => BTreeMap::new(),
            }
        };
        let mut spec = RunSpec::default();
        for (k, v) in &h {
            let Some(key) = k.as_str() else { continue };
            match key {
                "flow" => spec.flow = scalar(v).map(|p| base.join(p)),
                "data" => spec.data = scalar(v).map(|p| base.join(p)),
                "run" => spec.run = scalar(v),
                "variant" => spec.variants = scalar(v).into_iter().collect(),
                "name" => spec.name = scalar(v),
                "display_name" => spec.display_name = scalar(v),
                "description" => spec.description = scalar(v),
                "tags" => spec.tags = map(v),
                "environment_variables" => spec.environment_variables = map(v),
                "column_mapping" => {
                    spec.column_mapping = map(v)
                        .into_iter()
                        .map(|(k, v)| (k, Value::from(v.as_str())))
                        .collect()
                }
                "$schema" | "type" | "connections" | "resources" | "properties" => {}
                other => tracing::warn!("{}: ignoring `{other}`", path.display()),
            }
        }
        Ok(spec)
    }

    /// Applies `--set key=value` (`tags.k=v`, `column_mapping.k=v`, `environment_variables.k=v`).
    fn set(&mut self, key: &str, value: &str) -> anyhow::Result<()> {
        match key.split_once('.') {
            Some(("tags", k)) => {
                self.tags.insert(k.to_owned(), value.to_owned());
            }
            Some(("column_mapping", k)) => {
                self.column_mapping.insert(k.to_owned(), Value::from(value));
            }
            Some(("environment_variables", k)) => {
                self.environment_variables
                    .insert(k.to_owned(), value.to_owned());
            }
            _ => match key {
                "flow" => self.flow = Some(value.into()),
                "data" => self.data = Some(value.into()),
                "run" => self.run = Some(value.into()),
                "variant" => self.variants = vec![value.to_owned()],
                "name" => self.name = Some(value.into()),
                "display_name" => self.display_name = Some(value.into()),
                "description" => self.description = Some(value.into()),
                other => bail!(
                    "--set: unknown key `{other}` (flow, data, run, variant, name, display_name, description, tags.K, column_mapping.K, environment_variables.K)"
                ),
            },
        }
        Ok(())
    }
}

fn spec_from_args(args: &CreateArgs) -> anyhow::Result<RunSpec> {
    let mut spec = match &args.file {
        Some(f) => RunSpec::from_yaml(f)?,
        None => RunSpec::default(),
    };
    if let Some(f) = &args.flow {
        spec.flow = Some(f.clone());
    }
    if let Some(d) = &args.data {
        spec.data = Some(d.clone());
    }
    if args.run.is_some() {
        spec.run = args.run.clone();
    }
    if !args.variant.is_empty() {
        spec.variants = args
            .variant
            .iter()
            .flat_map(|v| v.split(',').map(|s| s.trim().to_owned()))
            .filter(|s| !s.is_empty())
            .collect();
    }
    for item in &args.column_mapping {
        let (k, v) = split_kv(item, "--column-mapping")?;
        spec.column_mapping.insert(k, Value::from(v.as_str()));
    }
    for (field, value) in [
        (&mut spec.name, &args.name),
        (&mut spec.display_name, &args.display_name),
        (&mut spec.description, &args.description),
        (&mut spec.resume_from, &args.resume_from),
    ] {
        if value.is_some() {
            *field = value.clone();
        }
    }
    for item in &args.tags {
        let (k, v) = split_kv(item, "--tags")?;
        spec.tags.insert(k, v);
    }
    for item in &args.environment_variables {
        let (k, v) = split_kv(item, "--environment-variables")?;
        spec.environment_variables.insert(k, v);
    }
    for item in &args.set {
        let (k, v) = split_kv(item, "--set")?;
        spec.set(&k, &v)?;
    }
    if !spec.column_mapping.is_empty()
        && !spec
            .column_mapping
            .values()
            .any(|v| v.as_str().is_some_and(|s| s.starts_with("${")))
    {
        bail!(
            "Column mapping must contain at least one mapping binding like NAME='${{data.column}}'"
        );
    }
    Ok(spec)
}

/// One line's record in `details.jsonl`.
fn line_record(line: &LineResult) -> Json {
    json!({
        "line_number": line.line_number,
        "status": line.status.as_str(),
        "inputs": Value::Map(line.inputs.clone()).to_json_lossy(),
        "output": Value::Map(line.output.clone()).to_json_lossy(),
        "error": line.error,
        "node_runs": line.node_runs,
        "start_time": line.start_time,
        "end_time": line.end_time,
        "aggregation_inputs": Value::Map(line.aggregation_inputs.clone()).to_json_lossy(),
    })
}

/// Reads `details.jsonl`, last record per line number winning; a torn last line (a killed writer) and
/// any unreadable line are skipped.
pub(crate) fn read_details(dir: &Path) -> BTreeMap<usize, Json> {
    stream_details(dir)
        .filter_map(|r| r["line_number"].as_u64().map(|n| (n as usize, r)))
        .collect()
}

/// The records of `details.jsonl` one at a time, skipping a torn or unreadable line.
pub(crate) fn stream_details(dir: &Path) -> impl Iterator<Item = Json> {
    File::open(dir.join("details.jsonl"))
        .ok()
        .into_iter()
        .flat_map(|f| BufReader::new(f).lines())
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str::<Json>(&line).ok())
}

/// The run's files, appended as lines finish and synced every `SYNC_EVERY` lines, so a crash loses
/// nothing that finished before the last sync.
struct RunWriter {
    details: BufWriter<File>,
    log: BufWriter<File>,
    since_sync: usize,
}

const SYNC_EVERY: usize = 256;

impl RunWriter {
    fn write_record(&mut self, record: &Json) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.details, record)?;
        self.details.write_all(b"\n")?;
        self.since_sync += 1;
        if self.since_sync >= SYNC_EVERY {
            self.sync()?;
        }
        Ok(())
    }

    fn log(&mut self, message: &str) {
        let _ = writeln!(
            self.log,
            "{} {message}",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ")
        );
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.details.flush()?;
        self.details.get_ref().sync_data()?;
        self.log.flush()?;
        self.since_sync = 0;
        Ok(())
    }
}

/// Copies the flow folder (its YAML, templates and code; not caches or run output) into `snapshot/`.
fn snapshot(flow_dir: &Path, to: &Path) -> std::io::Result<()> {
    fn copy(from: &Path, to: &Path, budget: &mut u64) -> std::io::Result<()> {
        std::fs::create_dir_all(to)?;
        for e in std::fs::read_dir(from)?.flatten() {
            let name = e.file_name();
            let n = name.to_string_lossy();
            if n.starts_with('.') || n == "__pycache__" || n == "node_modules" {
                continue;
            }
            let p = e.path();
            if p.is_dir() {
                copy(&p, &to.join(&name), budget)?;
            } else if let Ok(meta) = e.metadata() {
                // Data files and other large files stay out of the snapshot.
                if meta.len() > *budget || meta.len() > 1 << 20 {
                    continue;
                }
                *budget -= meta.len();
                std::fs::copy(&p, to.join(&name))?;
            }
        }
        Ok(())
    }
    let mut budget = 16 << 20;
    copy(flow_dir, to, &mut budget)
}

/// Reads a finished run's outputs or inputs as rows keyed by `line_number`.
fn run_rows(name: &str, file: &str) -> anyhow::Result<Vec<Map>> {
    let dir = run_dir(name);
    if !dir.join("run.json").exists() {
        bail!(
            "no run named `{name}` in {} (see `sluice run list`)",
            runs_root().display()
        );
    }
    let text = std::fs::read_to_string(dir.join(file))
        .with_context(|| format!("run `{name}` has no {file}"))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match Value::from(serde_json::from_str::<Json>(l)?) {
            Value::Map(m) => Ok(m),
            _ => bail!("{file} of run `{name}` has a line that is not an object"),
        })
        .collect()
}

/// How a batch ended.
enum Ending {
    Finished(Box<sluice_engine::BatchSummary>),
    Canceled,
    TimedOut,
}

pub fn create(args: CreateArgs) -> anyhow::Result<u8> {
    let mut spec = spec_from_args(&args)?;
    if let Some(from) = spec.resume_from.clone() {
        let Some(old) = index::read_record(&run_dir(&from)) else {
            eprintln!(
                "error: cannot resume from `{from}`: no such run in {}",
                runs_root().display()
            );
            return Ok(exit::INVALID);
        };
        let props = &old["properties"];
        spec.flow = spec
            .flow
            .or_else(|| props["flow_path"].as_str().map(PathBuf::from));
        spec.data = spec
            .data
            .or_else(|| old["data"].as_str().map(PathBuf::from));
        spec.run = spec
            .run
            .or_else(|| props["run"].as_str().map(str::to_owned));
        if spec.column_mapping.is_empty()
            && let Json::Object(m) = &props["column_mapping"]
        {
            spec.column_mapping = m
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.clone())))
                .collect();
        }
        if spec.variants.is_empty()
            && let Json::Object(m) = &props["node_variant"]
        {
            spec.variants = m
                .iter()
                .filter_map(|(n, v)| v.as_str().map(|v| format!("${{{n}.{v}}}")))
                .take(1)
                .collect();
        }
    }
    let Some(flow_path) = spec.flow.clone() else {
        eprintln!("error: which flow? give --flow DIR (or `flow:` in the run file)");
        return Ok(exit::INVALID);
    };
    if spec.data.is_none() && spec.run.is_none() {
        eprintln!("error: give --data FILE (or --run NAME to evaluate another run's lines)");
        return Ok(exit::INVALID);
    }
    let flow_path = std::path::absolute(&flow_path).unwrap_or(flow_path);
    spec.data = spec.data.map(|d| std::path::absolute(&d).unwrap_or(d));
    for (k, v) in &spec.environment_variables {
        // SAFETY: set before the async runtime or any other thread of ours starts.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var(k, v)
        };
    }

    // `--variant all` (or a list): one sibling run per variant, then a comparison.
    let variants: Vec<Option<String>> = if spec.variants.iter().any(|v| v == "all") {
        let flow = match load(&flow_path, None) {
            Ok(f) => f,
            Err(code) => return Ok(code),
        };
        let all: Vec<Option<String>> = flow
            .def
            .node_variants
            .iter()
            .flat_map(|(node, v)| {
                v.ids
                    .iter()
                    .map(move |id| Some(format!("${{{node}.{id}}}")))
            })
            .collect();
        if all.is_empty() {
            eprintln!("error: --variant all: the flow has no node_variants");
            return Ok(exit::INVALID);
        }
        all
    } else if spec.variants.is_empty() {
        vec![None]
    } else {
        spec.variants.iter().cloned().map(Some).collect()
    };
    if variants.len() > 1 && spec.resume_from.is_some() {
        eprintln!("error: --resume-from continues one run; give one --variant");
        return Ok(exit::INVALID);
    }
    let rt = runtime()?;
    let mut records = Vec::new();
    let mut worst = exit::OK;
    for variant in &variants {
        let mut one = spec.clone();
        if variants.len() > 1
            && let (Some(base), Some(v)) = (&spec.name, variant)
        {
            let sel = sluice_engine::VariantSelection::parse(v);
            one.name = Some(format!(
                "{base}_{}",
                sel.map_or_else(
                    || "variant".to_owned(),
                    |s| format!("{}_{}", s.node, s.variant)
                )
            ));
        }
        let (code, record) = run_one(&rt, &args, &one, &flow_path, variant.as_deref())?;
        worst = worst.max(code);
        if let Some(r) = record {
            records.push(r);
        }
        if code == exit::INVALID || code == EXIT_CANCELED {
            break;
        }
    }
    if variants.len() > 1 {
        let names: Vec<String> = records
            .iter()
            .filter_map(|r| r["name"].as_str().map(str::to_owned))
            .collect();
        eprintln!();
        view::print_comparison(&names, view::Format::Table)?;
    }
    Ok(worst)
}

/// Exit status of a run stopped with Ctrl-C (128 + SIGINT, as shells report it).
const EXIT_CANCELED: u8 = 130;

fn run_one(
    rt: &tokio::runtime::Runtime,
    args: &CreateArgs,
    spec: &RunSpec,
    flow_path: &Path,
    variant: Option<&str>,
) -> anyhow::Result<(u8, Option<Json>)> {
    let timeout = line_timeout(args.line_timeout)?.or(Some(Duration::from_secs(600)));
    let flow = match load(flow_path, variant) {
        Ok(f) => f,
        Err(code) => return Ok((code, None)),
    };
    // The named sources a mapping can use: data (streamed from its file), and the referenced run's
    // outputs and inputs (read whole, keyed by line_number).
    let mut run_sources: Vec<(String, IndexMap<usize, Map>)> = Vec::new();
    let mut data = spec.data.clone().map(DataRows::File);
    if let Some(base) = &spec.run {
        let loaded =
            run_rows(base, "outputs.jsonl").and_then(|o| Ok((o, run_rows(base, "inputs.jsonl")?)));
        let (outputs, inputs) = match loaded {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: --run {base}: {e:#}");
                return Ok((exit::INVALID, None));
            }
        };
        // Without --data, the referenced run's data is the data (as in promptflow); its inputs when
        // that file is gone.
        if data.is_none() {
            data = Some(
                index::read_record(&run_dir(base))
                    .and_then(|r| r["data"].as_str().map(PathBuf::from))
                    .filter(|p| p.exists())
                    .map_or_else(|| DataRows::Memory(inputs.clone()), DataRows::File),
            );
        }
        let keyed = |rows: Vec<Map>| -> IndexMap<usize, Map> {
            by_line_number(&rows)
                .into_iter()
                .map(|(n, r)| (n, r.clone()))
                .collect()
        };
        run_sources.push(("run.outputs".to_owned(), keyed(outputs)));
        run_sources.push(("run.inputs".to_owned(), keyed(inputs)));
    }
    let data = data.expect("checked by create");
    // One pass over the data before anything runs: row count, columns, and any unreadable row.
    let scan = match data.scan() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok((exit::INVALID, None));
        }
    };
    let mut columns: IndexMap<String, Vec<String>> = IndexMap::new();
    columns.insert("data".to_owned(), scan.columns.clone());
    for (name, rows) in &run_sources {
        let mut cols: Vec<String> = Vec::new();
        for r in rows.values() {
            for k in r.keys() {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
        columns.insert(name.clone(), cols);
    }
    for (input, def) in &flow.def.inputs {
        if def.default.is_some()
            && !spec.column_mapping.contains_key(input)
            && scan.columns.contains(input)
        {
            tracing::warn!(
                "flow input `{input}` has a default, so the data column `{input}` is not used (promptflow's rule); \
                 map it with --column-mapping {input}='${{data.{input}}}'"
            );
        }
    }
    let mapper = match LineMapper::new(&flow, &spec.column_mapping, &columns) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok((exit::INVALID, None));
        }
    };
    // Lines exist where every source has a row.
    let expected_lines = if run_sources.is_empty() {
        scan.rows
    } else if !scan.numbered {
        (0..scan.rows)
            .filter(|n| run_sources.iter().all(|(_, r)| r.contains_key(n)))
            .count()
    } else {
        // Rows numbered by their own column: count with the same rule the lines use.
        data.stream()
            .map(|rows| {
                rows.enumerate()
                    .filter_map(|(i, r)| r.ok().map(|r| line_number_of(i, &r)))
                    .filter(|n| run_sources.iter().all(|(_, r)| r.contains_key(n)))
                    .count()
            })
            .unwrap_or(scan.rows)
    };
    let flow: Arc<Flow> = Arc::new(flow);

    let variant_id = flow
        .def
        .selected_variants
        .values()
        .next()
        .cloned()
        .unwrap_or_else(|| "variant_0".into());
    let stamp = chrono::Utc::now().format("%Y%m%d_%H%M%S_%6f");
    let name = spec.name.clone().unwrap_or_else(|| {
        format!(
            "{}_{variant_id}_{stamp}",
            flow.def
                .name
                .replace(|c: char| !c.is_alphanumeric() && c != '_', "_")
        )
    });
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        eprintln!("error: `{name}` is not a valid run name");
        return Ok((exit::INVALID, None));
    }
    let dir = run_dir(&name);
    if dir.exists() {
        eprintln!(
            "error: a run named `{name}` already exists at {}; pick another --name",
            dir.display()
        );
        return Ok((exit::INVALID, None));
    }
    std::fs::create_dir_all(dir.join("flow_outputs"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    if let Err(e) = snapshot(&flow.def.dir, &dir.join("snapshot")) {
        tracing::warn!("could not snapshot the flow: {e}");
    }
    let mut writer = RunWriter {
        details: BufWriter::new(File::create(dir.join("details.jsonl"))?),
        log: BufWriter::new(File::create(dir.join("logs.txt"))?),
        since_sync: 0,
    };
    let mut ordered = OrderedOutputs::create(&dir)?;
    let mut tally = Tally::default();

    // A resumed run first takes over the completed lines of the earlier one, streaming its details.
    let mut carried: std::collections::HashSet<usize> = std::collections::HashSet::new();
    let mut previous = Vec::new();
    if let Some(from) = &spec.resume_from {
        for record in stream_details(&run_dir(from)) {
            let Some(n) = record["line_number"].as_u64().map(|n| n as usize) else {
                continue;
            };
            if record["status"] != "Completed" || !carried.insert(n) {
                continue;
            }
            writer.write_record(&record)?;
            if flow.has_aggregation()
                && let Value::Map(m) = Value::from(record["aggregation_inputs"].clone())
            {
                previous.push((n, m));
            }
            let summary = summary_of(&record);
            tally.add(&summary);
            ordered.push(n, summary);
        }
    }
    writer.log(&format!(
        "run {name}: flow {} variant {variant_id}, {expected_lines} lines{}",
        flow_path.display(),
        spec.resume_from
            .as_ref()
            .map(|f| format!(" ({} carried over from {f})", carried.len()))
            .unwrap_or_default()
    ));
    let created_on = chrono::Utc::now();
    let base_record = |status: &str| {
        json!({
            "name": name,
            "created_on": created_on,
            "status": status,
            "display_name": spec.display_name.clone().unwrap_or_else(|| name.clone()),
            "description": spec.description,
            "tags": spec.tags,
            "properties": {
                "flow_path": flow_path,
                "output_path": dir,
                "node_variant": flow.def.selected_variants,
                "run": spec.run,
                "resume_from": spec.resume_from,
                "column_mapping": Value::Map(spec.column_mapping.clone().into_iter().collect()).to_json_lossy(),
                "system_metrics": {"total_lines": expected_lines},
            },
            "flow_name": flow.def.name,
            "data": data.path(),
            "output": dir.join("flow_outputs"),
            "metrics": {},
        })
    };
    let index = index::Index::open().ok();
    let running = base_record("Running");
    std::fs::write(dir.join("run.json"), serde_json::to_vec_pretty(&running)?)?;
    if let Some(ix) = &index {
        let _ = ix.upsert(&running);
    }

    // The lines, read from the data as the batch pulls them; dispatch is tracked so outputs can be
    // written in line order as soon as every earlier line has finished.
    let dispatch = Arc::new(Mutex::new(Dispatch::default()));
    let rows = match data.stream() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok((exit::INVALID, None));
        }
    };
    let lines = {
        let dispatch = dispatch.clone();
        let carried = carried.clone();
        let mut rows = rows.enumerate();
        std::iter::from_fn(move || {
            loop {
                let Some((i, row)) = rows.next() else {
                    dispatch.lock().unwrap_or_else(|e| e.into_inner()).done = true;
                    return None;
                };
                let Ok(row) = row else { continue };
                let n = line_number_of(i, &row);
                if carried.contains(&n) {
                    continue;
                }
                let mut sources: IndexMap<&str, &Map> = IndexMap::new();
                sources.insert("data", &row);
                let mut complete = true;
                for (name, keyed) in &run_sources {
                    match keyed.get(&n) {
                        Some(r) => {
                            sources.insert(name.as_str(), r);
                        }
                        None => complete = false,
                    }
                }
                if !complete {
                    continue;
                }
                let inputs = mapper.inputs(&sources);
                let mut d = dispatch.lock().unwrap_or_else(|e| e.into_inner());
                d.in_flight.insert(n);
                d.next = d.next.max(n + 1);
                return Some(BatchLine {
                    line_number: n,
                    inputs,
                });
            }
        })
    };

    let flow_dir = flow.def.dir.clone();
    enter_flow(&flow)?;
    let opts = BatchOptions {
        max_concurrency: args.max_concurrency.max(1),
        node_concurrency: 2,
        line_timeout: timeout,
        run_id: name.clone(),
    };
    let started = Instant::now();
    let progress = Progress::new(expected_lines, carried.len());
    let mut write_error = None;
    let batch_timeout = args.batch_timeout.map(Duration::from_secs_f64);
    let ending = rt.block_on(async {
        let batch = run_batch(flow.clone(), lines, previous, &opts, |line| {
            let record = line_record(line);
            if let Err(e) = writer.write_record(&record) {
                write_error.get_or_insert(e);
            }
            if let Some(e) = &line.error {
                writer.log(&format!(
                    "line {} failed: {}",
                    line.line_number.unwrap_or(0),
                    e.message
                ));
            }
            if args.stream {
                println!(
                    "{}",
                    json!({"line_number": line.line_number, "status": line.status.as_str(),
                           "output": record["output"], "error": line.error})
                );
            }
            progress.tick(line.status != Status::Completed);
            let n = line.line_number.unwrap_or(0);
            let summary = summary_of(&record);
            tally.add(&summary);
            ordered.push(n, summary);
            let frontier = dispatch
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .finished(n);
            if let Err(e) = ordered.flush_before(frontier) {
                write_error.get_or_insert(e);
            }
        });
        let deadline = async {
            match batch_timeout {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            s = batch => Ending::Finished(Box::new(s)),
            _ = tokio::signal::ctrl_c() => Ending::Canceled,
            _ = deadline => Ending::TimedOut,
        }
    });
    ordered.flush_before(usize::MAX)?;
    ordered.finish()?;
    writer.sync()?;
    if let Some(e) = write_error {
        return Err(e).context("cannot write the run's outputs");
    }
    progress.finish();
    let _ = std::env::set_current_dir(&flow_dir);

    let (status, summary) = match ending {
        Ending::Finished(s) => ("Completed", Some(*s)),
        Ending::Canceled => {
            eprintln!("run {name} canceled; resume it with --resume-from {name}");
            writer.log("canceled (Ctrl-C)");
            ("Canceled", None)
        }
        Ending::TimedOut => {
            eprintln!("run {name} hit --batch-timeout; resume it with --resume-from {name}");
            writer.log("batch timeout");
            ("Failed", None)
        }
    };
    let aggregation = summary.as_ref().and_then(|s| s.aggregation.as_ref());
    let metrics = aggregation.map(|a| a.metrics.clone()).unwrap_or_default();
    std::fs::write(
        dir.join("metrics.json"),
        serde_json::to_vec_pretty(&Value::Map(metrics.clone()).to_json_lossy())?,
    )?;
    std::fs::write(dir.join("meta.json"), br#"{"batch_size": 1}"#)?;
    if let Some(agg) = aggregation {
        for run in &agg.node_runs {
            *tally
                .node_status
                .entry(format!(
                    "{}.{}",
                    run.node,
                    run.status.as_str().to_lowercase()
                ))
                .or_default() += 1;
        }
        if let Some((node, e)) = &agg.error {
            writer.log(&format!("aggregation node {node} failed: {}", e.message));
            tally
                .errors
                .push(json!({"aggregation_node_name": node, "error": e}));
        }
    }
    let (completed, failed) = (tally.completed, tally.failed);
    let not_run = if status == "Completed" {
        0
    } else {
        expected_lines.saturating_sub(completed + failed)
    };
    let total = completed + failed + not_run;
    if !tally.errors.is_empty() || not_run > 0 {
        let first = tally
            .errors
            .first()
            .and_then(|e| e["error"]["message"].as_str())
            .unwrap_or("the run stopped before these lines ran")
            .to_owned();
        let error = json!({
            "message": format!("Failed to run {}/{total} lines. First error message is: {first}", failed + not_run),
            "code": "UserError",
            "innerError": {"code": "BulkRunException", "innerError": null},
            "additionalInfo": [{"type": "BulkRunErrors", "info": {"errors": tally.errors, "lines_not_run": not_run}}],
        });
        std::fs::write(dir.join("error.json"), serde_json::to_vec_pretty(&error)?)?;
    }
    let mut record = base_record(status);
    record["properties"]["system_metrics"] = json!({
        "duration": started.elapsed().as_secs_f64(),
        "total_lines": total,
        "completed_lines": completed,
        "failed_lines": failed,
        "not_run_lines": not_run,
        "carried_over_lines": carried.len(),
        "node_status": tally.node_status,
        "prompt_tokens": tally.tokens.get("prompt_tokens"),
        "completion_tokens": tally.tokens.get("completion_tokens"),
        "total_tokens": tally.tokens.get("total_tokens"),
        "cached_tokens": tally.tokens.get("cached_tokens"),
    });
    record["metrics"] = Value::Map(metrics).to_json_lossy();
    std::fs::write(dir.join("run.json"), serde_json::to_vec_pretty(&record)?)?;
    if let Some(ix) = &index
        && let Err(e) = ix.upsert(&record)
    {
        tracing::warn!("could not update the run index: {e}");
    }
    writer.log(&format!(
        "{status}: {completed} completed, {failed} failed, {not_run} not run in {:.2}s",
        started.elapsed().as_secs_f64()
    ));
    writer.sync()?;
    if !args.stream {
        println!("{}", serde_json::to_string_pretty(&record)?);
    }
    let code = match status {
        "Completed" => exit::OK,
        "Canceled" => EXIT_CANCELED,
        _ => exit::FAILED,
    };
    Ok((code, Some(record)))
}

/// Where a run's data comes from: a file or folder (streamed), or rows already in memory (the inputs of
/// a referenced run whose data file is gone).
enum DataRows {
    File(PathBuf),
    Memory(Vec<Map>),
}

impl DataRows {
    fn scan(&self) -> Result<DataScan, sluice_engine::BatchError> {
        match self {
            DataRows::File(p) => scan_data(p),
            DataRows::Memory(rows) => {
                let mut scan = DataScan {
                    rows: rows.len(),
                    columns: Vec::new(),
                    numbered: rows.iter().any(|r| r.contains_key("line_number")),
                };
                for r in rows {
                    for k in r.keys() {
                        if !scan.columns.contains(k) {
                            scan.columns.push(k.clone());
                        }
                    }
                }
                Ok(scan)
            }
        }
    }

    fn stream(&self) -> Result<RowStream, sluice_engine::BatchError> {
        match self {
            DataRows::File(p) => stream_data(p),
            DataRows::Memory(rows) => Ok(Box::new(rows.clone().into_iter().map(Ok))),
        }
    }

    fn path(&self) -> Option<&Path> {
        match self {
            DataRows::File(p) => Some(p),
            DataRows::Memory(_) => None,
        }
    }
}

/// Which lines the batch has taken and not finished, and where reading has got to.
#[derive(Debug, Default)]
struct Dispatch {
    in_flight: std::collections::BTreeSet<usize>,
    /// Every line not yet taken has a number at least this.
    next: usize,
    done: bool,
}

impl Dispatch {
    /// Marks a line finished; returns the lowest line number that may still finish.
    fn finished(&mut self, n: usize) -> usize {
        self.in_flight.remove(&n);
        let unread = if self.done { usize::MAX } else { self.next };
        self.in_flight
            .first()
            .copied()
            .unwrap_or(usize::MAX)
            .min(unread)
    }
}

/// `outputs.jsonl`, `flow_outputs/output.jsonl` and `inputs.jsonl`, written in line order while the
/// run goes: a finished line waits only until every earlier line has finished.
struct OrderedOutputs {
    outputs: BufWriter<File>,
    flow_outputs: BufWriter<File>,
    inputs: BufWriter<File>,
    pending: BTreeMap<usize, Json>,
}

impl OrderedOutputs {
    fn create(dir: &Path) -> std::io::Result<Self> {
        Ok(OrderedOutputs {
            outputs: BufWriter::new(File::create(dir.join("outputs.jsonl"))?),
            flow_outputs: BufWriter::new(File::create(dir.join("flow_outputs/output.jsonl"))?),
            inputs: BufWriter::new(File::create(dir.join("inputs.jsonl"))?),
            pending: BTreeMap::new(),
        })
    }

    fn push(&mut self, n: usize, summary: Json) {
        self.pending.insert(n, summary);
    }

    /// Writes the pending lines numbered below `frontier`.
    fn flush_before(&mut self, frontier: usize) -> std::io::Result<()> {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() >= frontier {
                break;
            }
            let s = entry.remove();
            let with_line = |key: &str| {
                let mut obj = serde_json::Map::new();
                obj.insert("line_number".into(), s["line_number"].clone());
                if let Json::Object(o) = &s[key] {
                    obj.extend(o.clone());
                }
                Json::Object(obj)
            };
            let input = with_line("inputs");
            serde_json::to_writer(&mut self.inputs, &input)?;
            self.inputs.write_all(b"\n")?;
            if s["status"] == "Completed" {
                let output = with_line("output");
                for w in [&mut self.outputs, &mut self.flow_outputs] {
                    serde_json::to_writer(&mut *w, &output)?;
                    w.write_all(b"\n")?;
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> std::io::Result<()> {
        for w in [&mut self.outputs, &mut self.flow_outputs, &mut self.inputs] {
            w.flush()?;
            w.get_ref().sync_data()?;
        }
        Ok(())
    }
}

/// Counts kept while lines finish, instead of the lines themselves.
#[derive(Debug, Default)]
struct Tally {
    completed: usize,
    failed: usize,
    node_status: BTreeMap<String, u64>,
    tokens: BTreeMap<&'static str, u64>,
    errors: Vec<Json>,
}

/// At most this many line errors are kept in error.json (the rest are in details.jsonl).
const MAX_ERRORS: usize = 1000;

impl Tally {
    fn add(&mut self, s: &Json) {
        if s["status"] == "Completed" {
            self.completed += 1;
        } else {
            self.failed += 1;
            if self.errors.len() < MAX_ERRORS {
                self.errors
                    .push(json!({"line_number": s["line_number"], "error": s["error"]}));
            }
        }
        if let Json::Object(m) = &s["node_status"] {
            for (k, v) in m {
                *self.node_status.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
            }
        }
        for key in [
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "cached_tokens",
        ] {
            if let Some(n) = s[key].as_u64() {
                *self.tokens.entry(key).or_default() += n;
            }
        }
    }
}

/// What the run keeps in memory per line: enough for the output files and the status summary.
fn summary_of(record: &Json) -> Json {
    let mut node_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut tokens: BTreeMap<&str, u64> = BTreeMap::new();
    for run in record["node_runs"].as_array().into_iter().flatten() {
        let status = run["status"].as_str().unwrap_or("Unknown").to_lowercase();
        *node_status
            .entry(format!("{}.{status}", run["node"].as_str().unwrap_or("?")))
            .or_default() += 1;
        for key in [
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "cached_tokens",
        ] {
            if let Some(n) = run["system_metrics"][key].as_f64() {
                *tokens.entry(key).or_default() += n as u64;
            }
        }
    }
    let mut s = json!({
        "line_number": record["line_number"],
        "status": record["status"],
        "inputs": record["inputs"],
        "output": record["output"],
        "error": record["error"],
        "node_status": node_status,
    });
    for (k, v) in tokens {
        s[k] = json!(v);
    }
    s
}

/// Progress on stderr: a redrawn bar on a terminal, a plain line every few seconds otherwise.
struct Progress {
    total: usize,
    start: Instant,
    done: std::cell::Cell<usize>,
    failed: std::cell::Cell<usize>,
    carried: usize,
    last: std::cell::Cell<Instant>,
    terminal: bool,
}

impl Progress {
    fn new(total: usize, carried: usize) -> Self {
        let now = Instant::now();
        Progress {
            total,
            start: now,
            done: carried.into(),
            failed: 0.into(),
            carried,
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
        let rate = done.saturating_sub(self.carried) as f64 / secs;
        let eta = if rate > 0.0 {
            self.total.saturating_sub(done) as f64 / rate
        } else {
            0.0
        };
        let stats = format!(
            "{done}/{} lines ({} failed), {rate:.1} lines/s, ETA {eta:.0}s",
            self.total,
            self.failed.get()
        );
        if self.terminal {
            super::draw_bar(done, self.total, &stats)
        } else {
            eprintln!("{stats}")
        }
    }

    fn finish(&self) {
        self.print();
        if self.terminal {
            eprintln!();
        }
    }
}
