//! Batch runs into the run store: [`RunSpec`] says what to run, [`BatchRun::prepare`] checks it all
//! before a line runs (flow, data, mapping, name), [`BatchRun::execute`] runs the lines and records them.
//!
//! The data is streamed: one checking pass counts rows and collects columns, then rows are read as lines
//! are taken, and outputs are written in line order as soon as every earlier line has finished. Each
//! finished line is appended to `details.jsonl` before the next is reported, so a crash loses no finished
//! line. A resumed run (`resume_from`) copies the completed lines of the earlier run; the lines that were
//! running when its process died run first, one at a time, and a line that was running alone when a
//! process died is recorded as failed instead of run again, so a line that kills the process cannot stop
//! the run from finishing.
//!
//! A run can take one [`Shard`] of the data (`line_number % count == index`), so that several machines
//! share a dataset; [`RunSpec::merge`] then makes one run of the shards: their completed lines are
//! carried over (each once), any line no shard completed runs, and aggregation nodes and metrics are
//! computed once over all the lines.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use serde_json::{Value as Json, json};

use crate::batch::{
    BatchError, BatchLine, BatchOptions, DataScan, LineMapper, RowStream, by_line_number,
    line_number_of, scan_data, stream_data,
};
use crate::exec::{AggregationResult, LineResult, Status};
use crate::image::MessageFormat;
use crate::plan::Flow;
use crate::store::{
    DetailsWriter, LineRecord, LineRecordRef, LineStatus, Owner, RunName, RunProperties, RunRecord,
    RunStatus, RunStore, StartMark, StoreError, SystemMetrics, TokenCounts, stream_details,
    stream_marks,
};
use crate::value::{Map, Value};

/// What went wrong before or while a run was recorded.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The run was asked for wrongly (flags, run file): nothing ran.
    #[error("{0}")]
    Spec(String),
    #[error("{}: {source}", .path.display())]
    RunFile {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Data(#[from] BatchError),
    #[error("--run {name}: {source}")]
    BaseRun {
        name: String,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RunError {
    /// Whether nothing ran because the request was wrong (exit status 2), as opposed to a failure of
    /// the machine (disk, index).
    pub fn is_user_error(&self) -> bool {
        match self {
            RunError::Store(e) | RunError::BaseRun { source: e, .. } => e.is_user_error(),
            RunError::Spec(_) | RunError::RunFile { .. } | RunError::Data(_) => true,
        }
    }
}

/// Everything a run needs, from flags and/or promptflow's run YAML, after `--set`.
#[derive(Clone, Debug, Default)]
pub struct RunSpec {
    pub flow: Option<PathBuf>,
    pub data: Option<PathBuf>,
    /// The run whose outputs this one evaluates.
    pub run: Option<String>,
    /// Variant selections (`${node.variant_1}`), or `all`.
    pub variants: Vec<String>,
    pub column_mapping: IndexMap<String, Value>,
    /// The `__init__` arguments of a flex flow's class entry (`init:`, `--init`).
    pub init: Option<Map>,
    pub name: Option<String>,
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub environment_variables: BTreeMap<String, String>,
    pub resume_from: Option<String>,
    /// Run only this shard of the data's lines.
    pub shard: Option<Shard>,
    /// Runs whose completed lines this run takes over (the shards it merges).
    pub merge_from: Vec<String>,
}

/// The `index`-th of `count` deterministic shards of a dataset: the lines whose number leaves
/// `index` when divided by `count` (`0/4` takes lines 0, 4, 8, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Reads `I/N` (0 <= I < N).
    pub fn parse(text: &str) -> Result<Shard, RunError> {
        let bad = || {
            RunError::Spec(format!(
                "--shard {text}: write I/N with 0 <= I < N, for example 0/4 for the first of four shards"
            ))
        };
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    pub fn contains(&self, line_number: usize) -> bool {
        line_number % self.count == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl RunSpec {
    /// Reads promptflow's run YAML; paths are relative to the file.
    pub fn from_yaml(path: &Path) -> Result<RunSpec, RunError> {
        use yaml_rust2::Yaml;
        let file_error = |source: Box<dyn std::error::Error + Send + Sync>| RunError::RunFile {
            path: path.to_owned(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.into()))?;
        // The one YAML loader with limits (aliases, depth, size) that refuses duplicate keys.
        let doc =
            crate::yaml::load_document(&text, path).map_err(|e| file_error(e.snippet().into()))?;
        let Yaml::Hash(h) = doc else {
            return Err(file_error(
                "a run file is a mapping (flow:, data:, ...)".into(),
            ));
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let scalar = crate::yaml::scalar_text;
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
                "init" => {
                    spec.init =
                        match crate::yaml::Yaml::parse(&text)
                            .map(|y| y.get("init").map(crate::yaml::Yaml::to_value))
                        {
                            Ok(Some(Value::Map(m))) => Some(m),
                            Ok(Some(Value::Null) | None) => None,
                            _ => return Err(file_error(
                                "`init` is a mapping of the flex flow entry's __init__ arguments"
                                    .into(),
                            )),
                        }
                }
                "$schema" | "type" | "connections" | "resources" | "properties" => {}
                "resume_from" => tracing::warn!(
                    "{}: `resume_from` in a run file is ignored; use --resume-from",
                    path.display()
                ),
                other => tracing::warn!("{}: ignoring `{other}`", path.display()),
            }
        }
        Ok(spec)
    }

    /// Applies `--set key=value` (`tags.k=v`, `column_mapping.k=v`, `environment_variables.k=v`).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), RunError> {
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
                other => {
                    return Err(RunError::Spec(format!(
                        "--set: unknown key `{other}` (flow, data, run, variant, name, display_name, description, tags.K, column_mapping.K, environment_variables.K)"
                    )));
                }
            },
        }
        Ok(())
    }

    /// Checks what can be checked without the flow: a mapping binds at least one column, names are
    /// valid, a flow and some data are given.
    pub fn check(&self) -> Result<(), RunError> {
        if !self.column_mapping.is_empty()
            && !self
                .column_mapping
                .values()
                .any(|v| v.as_str().is_some_and(|s| s.starts_with("${")))
        {
            return Err(RunError::Spec(
                "Column mapping must contain at least one mapping binding like NAME='${data.column}'"
                    .into(),
            ));
        }
        for name in [&self.name, &self.resume_from]
            .into_iter()
            .flatten()
            .chain(&self.merge_from)
        {
            RunName::parse(name)?;
        }
        if let Some(run) = &self.run
            && !is_run_folder(run)
        {
            RunName::parse(run)?;
        }
        if self.flow.is_none() {
            return Err(RunError::Spec(
                "which flow? give --flow DIR (or `flow:` in the run file)".into(),
            ));
        }
        if self.data.is_none() && self.run.is_none() {
            return Err(RunError::Spec(
                "give --data FILE (or --run NAME to evaluate another run's lines)".into(),
            ));
        }
        Ok(())
    }

    /// Fills what a resumed run takes from the run it continues (flow, data, base run, mapping,
    /// variant), where this spec does not say otherwise.
    pub fn resume(&mut self, store: &RunStore) -> Result<(), RunError> {
        let Some(from) = &self.resume_from else {
            return Ok(());
        };
        let name = store.existing(from)?;
        let old = store.read_record(&name)?;
        if old.status == RunStatus::Running {
            return Err(RunError::Spec(format!(
                "run `{from}` is still running (pid {}); resume it once it has stopped",
                old.owner.as_ref().map_or(0, |o| o.pid)
            )));
        }
        if self.shard.is_none() {
            self.shard = old
                .properties
                .shard
                .as_deref()
                .map(Shard::parse)
                .transpose()?;
        }
        self.fill_from(&old)?;
        Ok(())
    }

    /// Takes what this spec does not say (flow, data, base run, mapping, init, variant) from an
    /// earlier run.
    fn fill_from(&mut self, old: &RunRecord) -> Result<(), RunError> {
        let props = &old.properties;
        self.flow.get_or_insert_with(|| props.flow_path.clone());
        if self.data.is_none() {
            self.data = old.data.clone();
        }
        if self.run.is_none() {
            self.run = props.run.clone();
        }
        if self.column_mapping.is_empty() {
            self.column_mapping = props
                .column_mapping
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.clone())))
                .collect();
        }
        if self.init.is_none() {
            if let Some(init) = &props.init
                && holds_mask(&Json::Object(init.clone()))
            {
                return Err(RunError::Spec(format!(
                    "run `{}` was made with secrets in its init, which runs do not store; give its init again with --init",
                    old.name
                )));
            }
            self.init = props
                .init
                .as_ref()
                .map(|m| match Value::from(Json::Object(m.clone())) {
                    Value::Map(m) => m,
                    _ => Map::new(),
                });
        }
        if self.variants.is_empty() {
            self.variants = props
                .node_variant
                .iter()
                .map(|(n, v)| format!("${{{n}.{v}}}"))
                .take(1)
                .collect();
        }
        Ok(())
    }

    /// Makes this spec the merge of `merge_from`: the runs must have run the same flow, data, base
    /// run, column mapping and variant; those fill what this spec does not say. The merged run takes
    /// no shard.
    pub fn merge(&mut self, store: &RunStore) -> Result<(), RunError> {
        if self.merge_from.is_empty() {
            return Ok(());
        }
        let mut first: Option<RunRecord> = None;
        for from in &self.merge_from {
            let name = store.existing(from)?;
            let old = store.read_record(&name)?;
            if old.status == RunStatus::Running {
                return Err(RunError::Spec(format!(
                    "run `{from}` is still running (pid {}); merge it once it has stopped",
                    old.owner.as_ref().map_or(0, |o| o.pid)
                )));
            }
            if let Some(f) = &first {
                let (a, b) = (&f.properties, &old.properties);
                let differs = [
                    ("flow", a.flow_path != b.flow_path),
                    ("data", f.data != old.data),
                    ("run", a.run != b.run),
                    ("column mapping", a.column_mapping != b.column_mapping),
                    ("variant", a.node_variant != b.node_variant),
                ]
                .into_iter()
                .find(|(_, d)| *d);
                if let Some((what, _)) = differs {
                    return Err(RunError::Spec(format!(
                        "runs `{}` and `{from}` differ in their {what}: only shards of one run can be merged",
                        f.name
                    )));
                }
            } else {
                first = Some(old);
            }
        }
        self.fill_from(&first.expect("at least one run"))?;
        self.shard = None;
        Ok(())
    }

    /// The variant selections to run one run each for: every variant of every node for `all`, the
    /// given ones, or just the defaults (`[None]`).
    pub fn variant_selections(&self, flow: &Flow) -> Result<Vec<Option<String>>, RunError> {
        if self.variants.iter().any(|v| v == "all") {
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
                return Err(RunError::Spec(
                    "--variant all: the flow has no node_variants".into(),
                ));
            }
            return Ok(all);
        }
        if self.variants.is_empty() {
            return Ok(vec![None]);
        }
        Ok(self.variants.iter().cloned().map(Some).collect())
    }

    /// The spec of one run of a variant fan-out: named `<name>_<node>_<variant>` when a name was given.
    pub fn for_variant(&self, variant: Option<&str>, fan_out: bool) -> RunSpec {
        let mut one = self.clone();
        one.variants = variant.map(str::to_owned).into_iter().collect();
        if fan_out && let (Some(base), Some(v)) = (&self.name, variant) {
            one.name = Some(format!(
                "{base}_{}",
                crate::VariantSelection::parse(v).map_or_else(
                    || "variant".to_owned(),
                    |s| format!("{}_{}", s.node, s.variant)
                )
            ));
        }
        one
    }
}

/// How lines run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub max_concurrency: usize,
    /// Nodes of one line at once (promptflow uses 2 in batch runs).
    pub node_concurrency: usize,
    pub line_timeout: Option<Duration>,
    /// Stops the run (status `Failed`, resumable) after this long.
    pub batch_timeout: Option<Duration>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            max_concurrency: 16,
            node_concurrency: 2,
            line_timeout: Some(Duration::from_secs(600)),
            batch_timeout: None,
        }
    }
}

/// Watches a batch run as it goes (progress bars, streamed output). Every method has a no-op default.
pub trait BatchObserver {
    /// The run is created: `total` lines are expected, `carried` of them taken from the resumed run.
    fn started(&mut self, _record: &RunRecord, _total: usize, _carried: usize) {}
    /// A line finished (in completion order).
    fn line_finished(&mut self, _line: &LineResult) {}
    /// Every line is done or the run stopped; aggregation may still follow.
    fn lines_done(&mut self) {}
    /// The aggregation nodes ran, from `start` to `end`.
    fn aggregation_finished(
        &mut self,
        _result: &AggregationResult,
        _start: DateTime<Utc>,
        _end: DateTime<Utc>,
    ) {
    }
}

impl BatchObserver for () {}

/// Why a run stopped before its lines were done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Canceled,
    TimedOut,
    /// A record could not be written (a full disk).
    WriteFailed,
}

/// Where a run's data comes from: a file or folder (streamed), or rows in memory (the inputs of a
/// referenced run whose data file is gone).
enum DataRows {
    File(PathBuf),
    Memory(Vec<Map>),
}

impl DataRows {
    fn scan(&self) -> Result<DataScan, BatchError> {
        match self {
            DataRows::File(p) => scan_data(p),
            DataRows::Memory(rows) => Ok(DataScan {
                rows: rows.len(),
                columns: columns_of(rows.iter()),
                numbered: rows.iter().any(|r| r.contains_key("line_number")),
            }),
        }
    }

    fn stream(&self) -> Result<RowStream, BatchError> {
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

fn columns_of<'a>(rows: impl Iterator<Item = &'a Map>) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut cols = Vec::new();
    for r in rows {
        for k in r.keys() {
            if seen.insert(k.clone()) {
                cols.push(k.clone());
            }
        }
    }
    cols
}

/// Whether `--run` names a run folder (a path holding `run.json`, such as a segment of `flow serve`'s
/// traffic log) rather than a run of the store.
/// A run's `init` as `run.json` keeps it: a string under a secret-looking key (`api_key`, at any depth,
/// as in a model configuration) is masked, and registered so that logs mask it too.
fn stored_init(init: &Map) -> serde_json::Map<String, Json> {
    fn mask(key: &str, v: Json) -> Json {
        match v {
            Json::Object(m) => Json::Object(
                m.into_iter()
                    .map(|(k, v)| {
                        let v = mask(&k, v);
                        (k, v)
                    })
                    .collect(),
            ),
            Json::Array(a) => Json::Array(a.into_iter().map(|v| mask(key, v)).collect()),
            Json::String(s) if crate::redact::is_secret_key(key) => {
                crate::redact::register_secret(&s);
                Json::String(crate::redact::MASK.to_owned())
            }
            other => other,
        }
    }
    init.iter()
        .map(|(k, v)| (k.clone(), mask(k, v.to_json_lossy())))
        .collect()
}

/// Whether a stored value holds a masked secret.
fn holds_mask(v: &Json) -> bool {
    match v {
        Json::String(s) => s == crate::redact::MASK,
        Json::Array(a) => a.iter().any(holds_mask),
        Json::Object(m) => m.values().any(holds_mask),
        _ => false,
    }
}

fn is_run_folder(run: &str) -> bool {
    run.contains(std::path::MAIN_SEPARATOR) && Path::new(run).join(crate::store::RUN_JSON).is_file()
}

/// The folder of the run `--run` names, and its record when it can be read.
fn base_run(store: &RunStore, base: &str) -> Result<(PathBuf, Option<RunRecord>), RunError> {
    let error = |source: StoreError| RunError::BaseRun {
        name: base.to_owned(),
        source,
    };
    if is_run_folder(base) {
        let dir = PathBuf::from(base);
        let path = dir.join(crate::store::RUN_JSON);
        let text = std::fs::read(&path).map_err(|e| error(StoreError::io(&path, e)))?;
        let record = serde_json::from_slice::<RunRecord>(&text)
            .map_err(|source| error(StoreError::Record { path, source }))?;
        return Ok((dir, Some(record)));
    }
    let name = store.existing(base).map_err(error)?;
    Ok((store.dir(&name), store.read_record(&name).ok()))
}

/// Reads a finished run's outputs or inputs file as rows.
fn run_rows(dir: &Path, name: &str, file: &str) -> Result<Vec<Map>, RunError> {
    let path = dir.join(file);
    let base = |source: StoreError| RunError::BaseRun {
        name: name.to_owned(),
        source,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| base(StoreError::io(&path, e)))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match crate::json::from_str::<Value>(l) {
            Ok(Value::Map(m)) => Ok(m),
            Ok(_) => Err(base(StoreError::io(
                &path,
                std::io::Error::other("a line is not a JSON object"),
            ))),
            Err(e) => Err(base(StoreError::io(&path, std::io::Error::other(e)))),
        })
        .collect()
}

/// A run checked and created in the store, ready to execute.
pub struct BatchRun {
    store: RunStore,
    flow: Arc<Flow>,
    spec: RunSpec,
    opts: RunOptions,
    name: RunName,
    dir: PathBuf,
    data: DataRows,
    run_sources: Vec<(String, IndexMap<usize, Map>)>,
    mapper: LineMapper,
    expected_lines: usize,
    record: RunRecord,
}

impl std::fmt::Debug for BatchRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchRun")
            .field("name", &self.name)
            .field("expected_lines", &self.expected_lines)
            .finish_non_exhaustive()
    }
}

impl BatchRun {
    /// Checks the data and mapping against the flow (every unresolvable reference at once), picks the
    /// name and creates the run folder with a `Running` record owned by this process.
    pub fn prepare(
        store: &RunStore,
        flow: Flow,
        spec: &RunSpec,
        opts: RunOptions,
    ) -> Result<BatchRun, RunError> {
        spec.check()?;
        let mut run_sources: Vec<(String, IndexMap<usize, Map>)> = Vec::new();
        let mut data = spec
            .data
            .clone()
            .map(|d| DataRows::File(std::path::absolute(&d).unwrap_or(d)));
        if let Some(base) = &spec.run {
            let (base_dir, base_record) = base_run(store, base)?;
            let outputs = run_rows(&base_dir, base, "outputs.jsonl")?;
            let inputs = run_rows(&base_dir, base, "inputs.jsonl")?;
            // Without data, the referenced run's data is the data (as in promptflow); its inputs
            // when that file is gone.
            if data.is_none() {
                data = Some(
                    base_record
                        .and_then(|r| r.data)
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
        let data = data.ok_or_else(|| RunError::Spec("give --data FILE".into()))?;
        // One pass over the data before anything runs: row count, columns, and any unreadable row.
        let scan = data.scan()?;
        let mut columns: IndexMap<String, Vec<String>> = IndexMap::new();
        columns.insert("data".to_owned(), scan.columns.clone());
        for (name, rows) in &run_sources {
            columns.insert(name.clone(), columns_of(rows.values()));
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
        let mapper = LineMapper::new(&flow, &spec.column_mapping, &columns)?;
        // Lines exist where every source has a row (and in the shard, if any).
        let expected_lines = if run_sources.is_empty() && spec.shard.is_none() {
            scan.rows
        } else {
            let has_all = |n: &usize| {
                spec.shard.is_none_or(|s| s.contains(*n))
                    && run_sources.iter().all(|(_, r)| r.contains_key(n))
            };
            if !scan.numbered {
                (0..scan.rows).filter(has_all).count()
            } else {
                data.stream()?
                    .enumerate()
                    .filter_map(|(i, r)| r.ok().map(|r| line_number_of(i, &r)))
                    .filter(has_all)
                    .count()
            }
        };

        let variant_id = flow
            .def
            .selected_variants
            .values()
            .next()
            .cloned()
            .unwrap_or_else(|| "variant_0".into());
        let name = match &spec.name {
            Some(n) => RunName::parse(n)?,
            None => RunName::parse(&format!(
                "{}_{variant_id}_{}",
                RunName::sanitize(&flow.def.name),
                Utc::now().format("%Y%m%d_%H%M%S_%6f")
            ))?,
        };
        let dir = store.create_dir(&name)?;
        if let Err(e) = crate::store::snapshot(&flow.def.dir, &dir.join("snapshot")) {
            tracing::warn!("could not snapshot the flow: {e}");
        }
        let flow_path = spec
            .flow
            .clone()
            .map(|p| std::path::absolute(&p).unwrap_or(p))
            .unwrap_or_else(|| flow.def.dir.clone());
        let record = RunRecord {
            name: name.to_string(),
            created_on: Utc::now(),
            status: RunStatus::Running,
            display_name: spec
                .display_name
                .clone()
                .unwrap_or_else(|| name.to_string()),
            description: spec.description.clone(),
            tags: spec.tags.clone(),
            properties: RunProperties {
                flow_path,
                output_path: dir.clone(),
                node_variant: flow.def.selected_variants.clone(),
                run: spec.run.clone(),
                resume_from: spec.resume_from.clone(),
                shard: spec.shard.map(|s| s.to_string()),
                merged_from: spec.merge_from.clone(),
                column_mapping: spec
                    .column_mapping
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json_lossy()))
                    .collect(),
                init: spec.init.as_ref().map(stored_init),
                system_metrics: SystemMetrics {
                    total_lines: expected_lines,
                    ..Default::default()
                },
            },
            flow_name: flow.def.name.clone(),
            data: data.path().map(Path::to_owned),
            output: dir.join("flow_outputs"),
            metrics: Default::default(),
            status_note: None,
            owner: Some(Owner::current()),
            archived: None,
        };
        if let Err(e) = store.write_record(&record) {
            // A run that could not be recorded (a full disk) leaves nothing that blocks its name.
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.into());
        }
        if let Ok(index) = store.open_index() {
            let _ = index.upsert(&record);
        }
        Ok(BatchRun {
            store: store.clone(),
            flow: Arc::new(flow),
            spec: spec.clone(),
            opts,
            name,
            dir,
            data,
            run_sources,
            mapper,
            expected_lines,
            record,
        })
    }

    pub fn name(&self) -> &RunName {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn flow(&self) -> &Arc<Flow> {
        &self.flow
    }

    /// Runs the lines and the aggregation nodes, recording everything; `stop` ends the run early
    /// (Ctrl-C) with status `Canceled`. The record returned is the one stored.
    pub async fn execute(
        self,
        observer: &mut dyn BatchObserver,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<RunRecord, RunError> {
        let started = Instant::now();
        let details = Arc::new(Mutex::new(DetailsWriter::create(
            &self.dir.join(crate::store::DETAILS),
        )?));
        let marks = Arc::new(Mutex::new(DetailsWriter::create(
            &self.dir.join(crate::store::STARTED),
        )?));
        let mut log = RunLog::create(&self.dir.join("logs.txt"))?;
        let mut ordered = OrderedOutputs::create(&self.dir)?;
        let run_dir = self.dir.clone();
        let format = self.flow.def.message_format;
        let mut tally = Tally::default();
        let has_aggregation = self.flow.has_aggregation();
        let mut kept: Vec<(usize, Map)> = Vec::new();

        // A resumed run first takes over the earlier run's completed lines; lines that were running
        // when its process died are retried alone, and a line that was running alone then is failed.
        let mut done: HashSet<usize> = HashSet::new();
        let mut suspects: BTreeSet<usize> = BTreeSet::new();
        let carry_from: Vec<&String> = self
            .spec
            .resume_from
            .iter()
            .chain(&self.spec.merge_from)
            .collect();
        let carry_from = carry_from
            .into_iter()
            .map(|f| RunName::parse(f))
            .collect::<Result<Vec<_>, _>>()?;
        let mut finished: HashSet<usize> = HashSet::new();
        for from in &carry_from {
            for record in stream_details(&self.store.dir(from)) {
                let n = record.line_number;
                finished.insert(n);
                if record.status != LineStatus::Completed || !done.insert(n) {
                    continue;
                }
                details_append(&details, &record)?;
                if has_aggregation {
                    kept.push((n, record.aggregation_inputs.clone()));
                }
                tally.add_record(&record);
                ordered.push(n, Pending::from_record(&record));
            }
        }
        // Lines that started and have no record: the process died while they ran.
        for from in &carry_from {
            for mark in stream_marks(&self.store.dir(from)) {
                let n = mark.line_number;
                if finished.contains(&n) || done.contains(&n) {
                    continue;
                }
                if mark.isolated {
                    let failed = poison_record(n, from);
                    log.line(&format!(
                        "line {n} failed: {}",
                        failed.error_message().unwrap_or_default()
                    ));
                    details_append(&details, &failed)?;
                    tally.add_record(&failed);
                    ordered.push(n, Pending::from_record(&failed));
                    done.insert(n);
                } else {
                    suspects.insert(n);
                }
            }
        }
        let carried = done.len();
        log.line(&format!(
            "run {}: flow {} variant {}, {} lines{}",
            self.name,
            self.record.properties.flow_path.display(),
            self.flow
                .def
                .selected_variants
                .values()
                .next()
                .map_or("variant_0", String::as_str),
            self.expected_lines,
            match (&self.spec.resume_from, self.spec.merge_from.is_empty()) {
                (Some(f), _) => format!(" ({carried} carried over from {f})"),
                (None, false) => format!(
                    " ({carried} carried over from {})",
                    self.spec.merge_from.join(", ")
                ),
                (None, true) => String::new(),
            }
        ));
        observer.started(&self.record, self.expected_lines, carried);

        let dispatch = Arc::new(Mutex::new(Dispatch::default()));
        let batch_opts = |max_concurrency: usize| BatchOptions {
            max_concurrency: max_concurrency.max(1),
            node_concurrency: self.opts.node_concurrency,
            line_timeout: self.opts.line_timeout,
            run_id: self.name.to_string(),
        };
        let mut write_error: Option<StoreError> = None;
        // A record that cannot be written (a full disk) stops the run: no more lines start, so no
        // work is done that could not be kept, and a resume takes over from what was written.
        let write_failed = tokio::sync::Notify::new();
        let deadline = async {
            match self.opts.batch_timeout {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let mut on_line = |line: &LineResult| {
            let n = line.line_number.unwrap_or(0);
            if let Err(e) = details_append(&details, &LineRecordRef::new(line)) {
                write_error.get_or_insert(e);
                write_failed.notify_one();
            }
            if let Some(e) = &line.error {
                log.line(&format!("line {n} failed: {}", e.message));
            }
            observer.line_finished(line);
            tally.add_line(line);
            if has_aggregation && line.status == Status::Completed {
                kept.push((n, line.aggregation_inputs.clone()));
            }
            ordered.push(n, Pending::from_line(line, &run_dir, format));
            let frontier = lock(&dispatch).finished(n);
            if let Err(e) = ordered.flush_before(frontier) {
                write_error.get_or_insert(e);
                write_failed.notify_one();
            }
        };
        let stopped = {
            let lines_phase = async {
                // The lines that were running when the earlier process died, one at a time.
                if !suspects.is_empty() {
                    let rows = self.lines(&done, Some(&suspects), &marks, &dispatch, true)?;
                    crate::batch::run_lines(self.flow.clone(), rows, &batch_opts(1), &mut on_line)
                        .await;
                }
                let mut skip = done.clone();
                skip.extend(suspects.iter().copied());
                let rows = self.lines(&skip, None, &marks, &dispatch, false)?;
                crate::batch::run_lines(
                    self.flow.clone(),
                    rows,
                    &batch_opts(self.opts.max_concurrency),
                    &mut on_line,
                )
                .await;
                Ok::<(), RunError>(())
            };
            tokio::select! {
                r = lines_phase => { r?; None }
                _ = stop => Some(Stop::Canceled),
                _ = deadline => Some(Stop::TimedOut),
                _ = write_failed.notified() => Some(Stop::WriteFailed),
            }
        };
        observer.lines_done();
        // Lines that started and were stopped get a record, so only a dead process leaves a line marked
        // as running.
        let unfinished: Vec<usize> = std::mem::take(&mut lock(&dispatch).in_flight)
            .into_iter()
            .collect();
        for n in unfinished {
            let record = LineRecord {
                line_number: n,
                status: LineStatus::Canceled,
                inputs: Default::default(),
                output: Default::default(),
                error: None,
                node_runs: Vec::new(),
                start_time: None,
                end_time: Some(Utc::now()),
                aggregation_inputs: Default::default(),
                isolated: false,
            };
            if let Err(e) = details_append(&details, &record) {
                write_error.get_or_insert(e);
            }
        }
        if let Err(e) = ordered
            .flush_before(usize::MAX)
            .and_then(|()| ordered.finish())
        {
            write_error.get_or_insert(e);
        }
        if let Some(e) = write_error {
            self.record_write_failure(&e);
            return Err(e.into());
        }

        let status = match stopped {
            None => RunStatus::Completed,
            Some(Stop::Canceled) => {
                log.line("canceled");
                RunStatus::Canceled
            }
            Some(Stop::TimedOut) => {
                log.line("batch timeout");
                RunStatus::Failed
            }
            // Returned above with the error that stopped it.
            Some(Stop::WriteFailed) => RunStatus::Failed,
        };
        let aggregation = if stopped.is_none() && has_aggregation {
            kept.sort_by_key(|(n, _)| *n);
            let refs: Vec<&Map> = kept.iter().map(|(_, m)| m).collect();
            let opts = crate::exec::LineOptions {
                node_concurrency: self.opts.node_concurrency,
                run_id: self.name.to_string(),
                ..Default::default()
            };
            let start = Utc::now();
            let result = self.flow.run_aggregation(&refs, &opts).await;
            observer.aggregation_finished(&result, start, Utc::now());
            Some(result)
        } else {
            None
        };
        let metrics = aggregation
            .as_ref()
            .map(|a| a.metrics.clone())
            .unwrap_or_default();
        let metrics_json = match Value::Map(metrics.clone()).to_json_lossy() {
            Json::Object(o) => o,
            _ => Default::default(),
        };
        crate::store::write_synced(
            &self.dir.join("metrics.json"),
            crate::json::to_string_pretty(&metrics)
                .unwrap_or_default()
                .as_bytes(),
        )?;
        crate::store::write_synced(&self.dir.join("meta.json"), br#"{"batch_size": 1}"#)?;
        if let Some(agg) = &aggregation {
            for run in &agg.node_runs {
                tally.node(&run.node, run.status.as_str());
            }
            if let Some((node, e)) = &agg.error {
                log.line(&format!("aggregation node {node} failed: {}", e.message));
                tally
                    .errors
                    .push(json!({"aggregation_node_name": node, "error": e}));
            }
        }
        let (completed, failed) = (tally.completed, tally.failed);
        let not_run = if status == RunStatus::Completed {
            0
        } else {
            self.expected_lines.saturating_sub(completed + failed)
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
            crate::store::write_synced(
                &self.dir.join("error.json"),
                &serde_json::to_vec_pretty(&error).unwrap_or_default(),
            )?;
        }
        let mut record = self.record.clone();
        record.status = status;
        record.owner = None;
        record.status_note = match stopped {
            Some(Stop::Canceled) => Some(format!(
                "canceled; resume it with --resume-from {}",
                self.name
            )),
            Some(Stop::TimedOut) => Some(format!(
                "stopped by the batch timeout; resume it with --resume-from {}",
                self.name
            )),
            Some(Stop::WriteFailed) => Some(format!(
                "a record could not be written; resume it with --resume-from {}",
                self.name
            )),
            None => None,
        };
        record.properties.system_metrics = SystemMetrics {
            duration: Some(started.elapsed().as_secs_f64()),
            total_lines: total,
            completed_lines: Some(completed),
            failed_lines: Some(failed),
            not_run_lines: Some(not_run),
            carried_over_lines: Some(carried),
            node_status: tally.node_status,
            tokens: tally.tokens,
        };
        record.metrics = metrics_json;
        lock(&details).sync()?;
        lock(&marks).sync()?;
        self.store.write_record(&record)?;
        if let Ok(index) = self.store.open_index()
            && let Err(e) = index.upsert(&record)
        {
            tracing::warn!("could not update the run index: {e}");
        }
        log.line(&format!(
            "{}: {completed} completed, {failed} failed, {not_run} not run in {:.2}s",
            status.as_str(),
            started.elapsed().as_secs_f64()
        ));
        log.flush();
        Ok(record)
    }

    /// Marks the run failed after a record could not be written, if the disk still takes that much;
    /// otherwise the run's dead owner already shows it as not running.
    fn record_write_failure(&self, error: &StoreError) {
        let mut record = self.record.clone();
        record.status = RunStatus::Failed;
        record.owner = None;
        record.status_note = Some(format!(
            "stopped: {error}; make room and resume it with --resume-from {}",
            self.name
        ));
        if let Err(e) = self.store.write_record(&record) {
            tracing::debug!("could not record the failure either: {e}");
        }
    }

    /// The lines to run, read from the data as the batch takes them: those not in `skip` (or only
    /// those in `only`). Each line is marked as started (`started.jsonl`) before it is handed out.
    fn lines(
        &self,
        skip: &HashSet<usize>,
        only: Option<&BTreeSet<usize>>,
        marks: &Arc<Mutex<DetailsWriter>>,
        dispatch: &Arc<Mutex<Dispatch>>,
        isolated: bool,
    ) -> Result<impl Iterator<Item = BatchLine> + use<'_>, RunError> {
        let mut rows = self.data.stream()?.enumerate();
        let skip = skip.clone();
        let only = only.cloned();
        let marks = marks.clone();
        let dispatch = dispatch.clone();
        {
            // Lines are taken in data order within a phase; the retried lines of a resumed run come
            // first and out of that order, so nothing is written in order until they are done.
            let mut d = lock(&dispatch);
            d.done = false;
            d.next = 0;
            d.hold = only.is_some();
        }
        Ok(std::iter::from_fn(move || {
            loop {
                let Some((i, row)) = rows.next() else {
                    if only.is_none() {
                        lock(&dispatch).done = true;
                    }
                    return None;
                };
                let Ok(row) = row else { continue };
                let n = line_number_of(i, &row);
                if skip.contains(&n)
                    || only.as_ref().is_some_and(|o| !o.contains(&n))
                    || self.spec.shard.is_some_and(|s| !s.contains(n))
                {
                    continue;
                }
                let mut sources: IndexMap<&str, &Map> = IndexMap::new();
                sources.insert("data", &row);
                let mut complete = true;
                for (name, keyed) in &self.run_sources {
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
                let inputs = self.mapper.inputs(&sources);
                let mark = StartMark {
                    line_number: n,
                    status: LineStatus::Running,
                    start_time: Utc::now(),
                    isolated,
                };
                // A failed mark only weakens crash recovery; the line's own record reports write errors.
                let _ = details_append(&marks, &mark);
                let mut d = lock(&dispatch);
                d.in_flight.insert(n);
                d.next = d.next.max(n + 1);
                return Some(BatchLine {
                    line_number: n,
                    inputs,
                });
            }
        }))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn details_append(
    details: &Mutex<DetailsWriter>,
    record: &impl serde::Serialize,
) -> Result<(), StoreError> {
    lock(details).append(record)
}

/// The record of a line that was running alone when a process died: failed, not run again.
fn poison_record(n: usize, from: &RunName) -> LineRecord {
    let message = format!(
        "line {n} was running alone when the process of run `{from}` died, after it had also been running when an earlier process died; it is recorded as failed so the run can finish (run it with `sluice flow test` to see what kills the process, or use --isolation process)"
    );
    LineRecord {
        line_number: n,
        status: LineStatus::Failed,
        inputs: Default::default(),
        output: Default::default(),
        error: Some(json!({
            "message": message,
            "messageFormat": message,
            "code": "SystemError",
            "innerError": {"code": "LineKilledProcess", "innerError": null},
        })),
        node_runs: Vec::new(),
        start_time: None,
        end_time: Some(Utc::now()),
        aggregation_inputs: Default::default(),
        isolated: false,
    }
}

/// `logs.txt`.
struct RunLog {
    file: BufWriter<File>,
}

impl RunLog {
    fn create(path: &Path) -> Result<Self, StoreError> {
        Ok(RunLog {
            file: BufWriter::new(File::create(path).map_err(|e| StoreError::io(path, e))?),
        })
    }

    fn line(&mut self, message: &str) {
        let _ = writeln!(
            self.file,
            "{} {}",
            Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            crate::redact::redact(message)
        );
        let _ = self.file.flush();
    }

    fn flush(&mut self) {
        let _ = self.file.flush();
    }
}

/// Which lines the batch has taken and not finished, and where reading has got to.
#[derive(Debug, Default)]
struct Dispatch {
    in_flight: BTreeSet<usize>,
    /// Every line not yet taken has a number at least this.
    next: usize,
    done: bool,
    /// Lines are being taken out of order: no line may be written yet.
    hold: bool,
}

impl Dispatch {
    /// Marks a line finished; returns the lowest line number that may still finish.
    fn finished(&mut self, n: usize) -> usize {
        self.in_flight.remove(&n);
        if self.hold {
            return 0;
        }
        let unread = if self.done { usize::MAX } else { self.next };
        self.in_flight
            .first()
            .copied()
            .unwrap_or(usize::MAX)
            .min(unread)
    }
}

/// A finished line waiting for the earlier ones, its output-file lines already serialised.
struct Pending {
    input: String,
    output: Option<String>,
    /// The line in `flow_outputs/output.jsonl`, when it differs from `output` (image paths are
    /// relative to the file's own folder).
    flow_output: Option<String>,
}

/// `{"line_number": n, ...map}` as one JSON line.
fn numbered_line<V: serde::Serialize>(n: usize, map: impl Iterator<Item = (String, V)>) -> String {
    struct Numbered<I>(usize, std::cell::Cell<Option<I>>);
    impl<V: serde::Serialize, I: Iterator<Item = (String, V)>> serde::Serialize for Numbered<I> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut m = s.serialize_map(None)?;
            m.serialize_entry("line_number", &self.0)?;
            for (k, v) in self.1.take().into_iter().flatten() {
                if k != "line_number" {
                    m.serialize_entry(&k, &v)?;
                }
            }
            m.end()
        }
    }
    crate::json::to_string(&Numbered(n, std::cell::Cell::new(Some(map)))).unwrap_or_default()
}

impl Pending {
    /// A finished line's rows; its images are written to `<run>/flow_outputs/` and referred to by
    /// path, as promptflow stores them: relative in `flow_outputs/output.jsonl`, absolute in the
    /// run folder's `outputs.jsonl` and `inputs.jsonl`.
    fn from_line(line: &LineResult, run_dir: &Path, format: MessageFormat) -> Pending {
        let n = line.line_number.unwrap_or(0);
        let images = run_dir.join("flow_outputs");
        let images = std::path::absolute(&images).unwrap_or(images);
        let absolute = format!("{}/", images.to_string_lossy().replace('\\', "/"));
        let persisted = |map: &Map, prefix: &str| -> Map {
            map.iter()
                .map(|(k, v)| {
                    let v = crate::image::persist(v, &images, prefix, format).unwrap_or_else(|e| {
                        tracing::warn!(
                            "cannot write the images of line {n} to {}: {e}",
                            images.display()
                        );
                        v.clone()
                    });
                    (k.clone(), v)
                })
                .collect()
        };
        let completed = line.status == Status::Completed;
        Pending {
            input: numbered_line(n, persisted(&line.inputs, &absolute).into_iter()),
            output: completed
                .then(|| numbered_line(n, persisted(&line.output, &absolute).into_iter())),
            flow_output: completed
                .then(|| numbered_line(n, persisted(&line.output, "").into_iter())),
        }
    }

    fn from_record(r: &LineRecord) -> Pending {
        let n = r.line_number;
        Pending {
            input: numbered_line(n, r.inputs.clone().into_iter()),
            output: (r.status == LineStatus::Completed)
                .then(|| numbered_line(n, r.output.clone().into_iter())),
            flow_output: None,
        }
    }
}

/// `outputs.jsonl`, `flow_outputs/output.jsonl` and `inputs.jsonl`, written in line order while the
/// run goes: a finished line waits only until every earlier line has finished.
struct OrderedOutputs {
    outputs: BufWriter<File>,
    flow_outputs: BufWriter<File>,
    inputs: BufWriter<File>,
    /// The three files' paths, in the order above, for errors.
    paths: [PathBuf; 3],
    pending: BTreeMap<usize, Pending>,
}

impl OrderedOutputs {
    fn create(dir: &Path) -> Result<Self, StoreError> {
        let open = |p: PathBuf| {
            File::create(&p)
                .map(BufWriter::new)
                .map_err(|e| StoreError::io(&p, e))
        };
        let paths = [
            dir.join("outputs.jsonl"),
            dir.join("flow_outputs/output.jsonl"),
            dir.join("inputs.jsonl"),
        ];
        Ok(OrderedOutputs {
            outputs: open(paths[0].clone())?,
            flow_outputs: open(paths[1].clone())?,
            inputs: open(paths[2].clone())?,
            paths,
            pending: BTreeMap::new(),
        })
    }

    fn push(&mut self, n: usize, pending: Pending) {
        self.pending.insert(n, pending);
    }

    /// Writes the pending lines numbered below `frontier`.
    fn flush_before(&mut self, frontier: usize) -> Result<(), StoreError> {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() >= frontier {
                break;
            }
            let p = entry.remove();
            writeln!(self.inputs, "{}", crate::redact::redact(&p.input))
                .map_err(|e| StoreError::io(&self.paths[2], e))?;
            if let Some(out) = p.output {
                let out = crate::redact::redact(&out);
                writeln!(self.outputs, "{out}").map_err(|e| StoreError::io(&self.paths[0], e))?;
                match &p.flow_output {
                    Some(o) => writeln!(self.flow_outputs, "{}", crate::redact::redact(o)),
                    None => writeln!(self.flow_outputs, "{out}"),
                }
                .map_err(|e| StoreError::io(&self.paths[1], e))?;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), StoreError> {
        let writers = [&mut self.outputs, &mut self.flow_outputs, &mut self.inputs];
        for (w, path) in writers.into_iter().zip(&self.paths) {
            w.flush()
                .and_then(|()| w.get_ref().sync_data())
                .map_err(|e| StoreError::io(path, e))?;
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
    tokens: TokenCounts,
    errors: Vec<Json>,
}

/// At most this many line errors are kept in error.json (the rest are in details.jsonl).
const MAX_ERRORS: usize = 1000;

impl Tally {
    fn count(&mut self, n: usize, ok: bool, error: impl FnOnce() -> Json) {
        if ok {
            self.completed += 1;
        } else {
            self.failed += 1;
            if self.errors.len() < MAX_ERRORS {
                self.errors
                    .push(json!({"line_number": n, "error": error()}));
            }
        }
    }

    fn node(&mut self, node: &str, status: &str) {
        *self
            .node_status
            .entry(format!("{node}.{}", status.to_lowercase()))
            .or_default() += 1;
    }

    fn add_line(&mut self, line: &LineResult) {
        let n = line.line_number.unwrap_or(0);
        self.count(n, line.status == Status::Completed, || {
            serde_json::to_value(&line.error).unwrap_or(Json::Null)
        });
        for run in &line.node_runs {
            self.node(&run.node, run.status.as_str());
            self.tokens.add(&run.system_metrics.tokens);
        }
    }

    fn add_record(&mut self, r: &LineRecord) {
        self.count(r.line_number, r.status == LineStatus::Completed, || {
            r.error.clone().unwrap_or(Json::Null)
        });
        for run in &r.node_runs {
            self.node(&run.node, run.status.as_str());
        }
        self.tokens.add(&r.tokens());
    }
}

#[cfg(test)]
mod init_tests {
    use super::*;

    #[test]
    fn secrets_in_an_init_are_masked_where_the_run_keeps_it() {
        let init = match Value::from(json!({
            "model_config": {"azure_endpoint": "https://x.example", "api_key": "sk-init-secret-123456"},
            "temperature": 0.2,
            "token": "tok-abcdef-123456",
        })) {
            Value::Map(m) => m,
            _ => unreachable!(),
        };
        let stored = Json::Object(stored_init(&init));
        assert_eq!(stored["model_config"]["api_key"], crate::redact::MASK);
        assert_eq!(
            stored["model_config"]["azure_endpoint"],
            "https://x.example"
        );
        assert_eq!(stored["token"], crate::redact::MASK);
        assert_eq!(stored["temperature"], 0.2);
        assert!(holds_mask(&stored));
        assert!(!stored.to_string().contains("sk-init-secret"));
        // And the secret is masked in whatever is logged from now on.
        assert_eq!(
            crate::redact::redact("key sk-init-secret-123456"),
            "key ***"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::Shard;

    #[test]
    fn shards_split_lines_by_remainder_and_refuse_nonsense() {
        let s = Shard::parse("1/4").unwrap();
        assert_eq!(s.to_string(), "1/4");
        let taken: Vec<usize> = (0..10).filter(|n| s.contains(*n)).collect();
        assert_eq!(taken, [1, 5, 9]);
        for bad in ["4/4", "1/0", "x/2", "3", "-1/4", ""] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }
}
