//! Exporting a run of the run store to an MLflow tracking server, through MLflow's REST API.
//!
//! [`export_run`] finds or creates the experiment, finds the MLflow run an earlier export of the same
//! Sluice run made (by its `sluice.run_name` and `sluice.created_on` tags) or creates one, logs what
//! [`logged`] makes of the run record and its metrics in batches within MLflow's limits, uploads the
//! run's files, its flow snapshot and any extra artifacts through the server's artifacts proxy, and
//! then sets the MLflow run's end time and final status. Exporting again updates the same MLflow run:
//! tags and artifacts are replaced, params and metrics are logged with the same values, timestamps and
//! steps, which MLflow keeps once. [`protocol`] is the one codec of the wire format, [`client`] the
//! HTTP client.
//!
//! ```no_run
//! use sluice_engine::RunStore;
//! use sluice_engine::mlflow::{Auth, ExportOptions, MlflowClient, export_run};
//!
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let client = MlflowClient::new("http://127.0.0.1:5000", Auth::from_env())?;
//! let store = RunStore::new("/home/me/.sluice");
//! let exported = export_run(&client, &store, "my_run", &ExportOptions::default()).await?;
//! println!("{}", exported.url);
//! # Ok(()) }
//! ```

pub mod client;
pub mod protocol;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use client::{Auth, MlflowClient, MlflowError};
use protocol::{CreateRun, KeyValue, LogBatch, Metric, RunStatus as MlflowStatus, UpdateRun};

use crate::store::{RunRecord, RunStatus, StoreError};
use crate::value::{Map, Value};

/// The tag that names the Sluice run an MLflow run was exported from.
pub const RUN_NAME_TAG: &str = "sluice.run_name";
/// The tag that holds when the Sluice run was created, which tells a run from a later one that
/// reused its name.
pub const CREATED_ON_TAG: &str = "sluice.created_on";
/// The prefix of the run's counters (lines, duration, tokens) among the metrics; MLflow's UI shows
/// metrics named `system/...` in their own tab.
pub const SYSTEM_PREFIX: &str = "system/";
/// The experiment of a run whose flow has no name.
pub const DEFAULT_EXPERIMENT: &str = "sluice";

/// The files of a run folder that are uploaded, where they exist (`snapshot/` comes too).
pub const RUN_FILES: &[&str] = &[
    "outputs.jsonl",
    "inputs.jsonl",
    "details.jsonl",
    "metrics.json",
    "run.json",
    "error.json",
    "logs.txt",
];

/// What can go wrong exporting a run.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The run is not in the store (or its name is not a run name).
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("run `{name}` is still running; export it once it has ended")]
    StillRunning { name: String },
    #[error("cannot read {} of run `{name}`", .path.display())]
    Read {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the MLflow experiment `{experiment}` (id {experiment_id}) is deleted; restore it in MLflow or export to another --experiment"
    )]
    ExperimentDeleted {
        experiment: String,
        experiment_id: String,
    },
    #[error(
        "the MLflow run {run_id} keeps its artifacts at {artifact_uri}, which the server does not serve; run `mlflow server` with artifact serving (the default since MLflow 2; not --no-serve-artifacts)"
    )]
    ArtifactsNotServed {
        run_id: String,
        artifact_uri: String,
    },
    #[error("exporting run `{name}` to MLflow at {server}: {step}")]
    Mlflow {
        name: String,
        server: String,
        /// What the export was doing (`creating the experiment`, `uploading details.jsonl`, ...).
        step: String,
        #[source]
        source: MlflowError,
    },
}

impl ExportError {
    /// Whether the user named something wrong (a run that does not exist, one still running), as
    /// opposed to the server or the disk failing.
    pub fn is_user_error(&self) -> bool {
        match self {
            ExportError::Store(e) => e.is_user_error(),
            ExportError::StillRunning { .. } => true,
            _ => false,
        }
    }
}

/// An artifact the caller adds to the run's files (the HTML report, which the CLI renders).
#[derive(Clone, Debug)]
pub struct Artifact {
    /// Its path among the MLflow run's artifacts (`report.html`).
    pub path: String,
    pub bytes: Vec<u8>,
}

/// Choices of an export.
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    /// The experiment (default: the flow's name, else [`DEFAULT_EXPERIMENT`]).
    pub experiment: Option<String>,
    /// The MLflow `user_id` and `mlflow.user` tag (default: none).
    pub user: Option<String>,
    /// Artifacts uploaded after the run's own files.
    pub artifacts: Vec<Artifact>,
}

/// What an export did.
#[derive(Clone, Debug, Serialize)]
pub struct Exported {
    /// The Sluice run.
    pub run: String,
    pub experiment_id: String,
    pub experiment_name: String,
    /// The MLflow run.
    pub run_id: String,
    /// The run in the MLflow UI.
    pub url: String,
    /// `created`, or `updated` when an earlier export of this run was found and brought up to date.
    pub action: &'static str,
    /// The MLflow run's status (`FINISHED`, `FAILED`, `KILLED`).
    pub status: &'static str,
    pub params: usize,
    pub metrics: usize,
    pub tags: usize,
    /// The artifact paths uploaded.
    pub artifacts: Vec<String>,
    /// What was changed to fit MLflow (cut values, metrics that are not numbers, ...).
    pub warnings: Vec<String>,
}

/// What an export logs of a run: params, metrics and tags, and notes on what had to change.
#[derive(Clone, Debug, Default)]
pub struct Logged {
    pub params: Vec<KeyValue>,
    pub metrics: Vec<Metric>,
    pub tags: Vec<KeyValue>,
    pub warnings: Vec<String>,
}

/// MLflow's status for a Sluice run that has ended: completed runs (some of whose lines may have
/// failed, as in promptflow) are `FINISHED`, failed ones (a batch timeout, a dead process, a record
/// that could not be written) `FAILED`, canceled ones `KILLED`.
pub fn mlflow_status(status: RunStatus) -> MlflowStatus {
    match status {
        RunStatus::Completed => MlflowStatus::Finished,
        RunStatus::Failed => MlflowStatus::Failed,
        RunStatus::Canceled => MlflowStatus::Killed,
        RunStatus::Running => MlflowStatus::Running,
    }
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// When a run ended: its start plus its duration, else when its records were last written.
pub fn end_time(record: &RunRecord, dir: &Path) -> DateTime<Utc> {
    if let Some(d) = record.properties.system_metrics.duration
        && d.is_finite()
        && d >= 0.0
    {
        return record.created_on + chrono::Duration::milliseconds((d * 1000.0).round() as i64);
    }
    std::fs::metadata(dir.join(crate::store::DETAILS))
        .and_then(|m| m.modified())
        .map(DateTime::<Utc>::from)
        .unwrap_or(record.created_on)
        .max(record.created_on)
}

/// The params, metrics and tags of a run: `record` with its `metrics` (read from `metrics.json`),
/// metrics stamped `timestamp` (milliseconds) at step 0.
pub fn logged(record: &RunRecord, metrics: &Map, timestamp: i64) -> Logged {
    let mut out = Logged::default();
    let props = &record.properties;

    let param = |out: &mut Logged, key: String, value: String| {
        let (value, cut) = protocol::fit(&value, protocol::MAX_PARAM_VALUE);
        if cut {
            out.warnings.push(format!(
                "param `{key}` was cut to MLflow's {} characters",
                protocol::MAX_PARAM_VALUE
            ));
        }
        out.params.push(KeyValue::new(protocol::key(&key), value));
    };
    param(
        &mut out,
        "flow_path".into(),
        props.flow_path.display().to_string(),
    );
    if !record.flow_name.is_empty() {
        param(&mut out, "flow_name".into(), record.flow_name.clone());
    }
    if let Some(data) = &record.data {
        param(&mut out, "data".into(), data.display().to_string());
    }
    if let Some(run) = &props.run {
        param(&mut out, "run".into(), run.clone());
    }
    for (node, variant) in &props.node_variant {
        param(&mut out, format!("variant.{node}"), variant.clone());
    }
    for (input, source) in &props.column_mapping {
        let text = match source {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        param(&mut out, format!("column_mapping.{input}"), text);
    }
    if let Some(from) = &props.resume_from {
        param(&mut out, "resume_from".into(), from.clone());
    }
    if let Some(shard) = &props.shard {
        param(&mut out, "shard".into(), shard.clone());
    }
    if !props.merged_from.is_empty() {
        param(&mut out, "merged_from".into(), props.merged_from.join(","));
    }

    let metric = |out: &mut Logged, key: String, value: f64| {
        out.metrics.push(Metric {
            key: protocol::key(&key),
            value,
            timestamp,
            step: 0,
        });
    };
    for (name, value) in metrics {
        let number = match value {
            Value::Int(i) => *i as f64,
            Value::Float(f) => *f,
            Value::Bool(b) => f64::from(u8::from(*b)),
            other => {
                out.warnings.push(format!(
                    "metric `{name}` is not a number ({}); not logged",
                    other.type_name()
                ));
                continue;
            }
        };
        metric(&mut out, name.clone(), number);
    }
    let sm = &props.system_metrics;
    let counts = [
        ("total_lines", Some(sm.total_lines as u64)),
        ("completed_lines", sm.completed_lines.map(|n| n as u64)),
        ("failed_lines", sm.failed_lines.map(|n| n as u64)),
        ("not_run_lines", sm.not_run_lines.map(|n| n as u64)),
        (
            "carried_over_lines",
            sm.carried_over_lines.map(|n| n as u64),
        ),
        ("prompt_tokens", sm.tokens.prompt_tokens),
        ("completion_tokens", sm.tokens.completion_tokens),
        ("total_tokens", sm.tokens.total_tokens),
        ("cached_tokens", sm.tokens.cached_tokens),
    ];
    for (name, n) in counts {
        if let Some(n) = n {
            metric(&mut out, format!("{SYSTEM_PREFIX}{name}"), n as f64);
        }
    }
    if let Some(d) = sm.duration {
        metric(&mut out, format!("{SYSTEM_PREFIX}duration_s"), d);
    }

    let tag = |out: &mut Logged, key: String, value: String| {
        let (value, cut) = protocol::fit(&value, protocol::MAX_TAG_VALUE);
        if cut {
            out.warnings.push(format!(
                "tag `{key}` was cut to {} characters",
                protocol::MAX_TAG_VALUE
            ));
        }
        out.tags.push(KeyValue::new(protocol::key(&key), value));
    };
    // The run's own tags first, so Sluice's own cannot be overwritten by one of them.
    for (k, v) in &record.tags {
        let key = if k.starts_with("mlflow.") || k.starts_with("sluice.") {
            out.warnings.push(format!(
                "the run's tag `{k}` is exported as `sluice.tags.{k}`: MLflow and Sluice keep that prefix for themselves"
            ));
            format!("sluice.tags.{k}")
        } else {
            k.clone()
        };
        tag(&mut out, key, v.clone());
    }
    tag(&mut out, "mlflow.runName".into(), record.name.clone());
    tag(
        &mut out,
        "mlflow.source.name".into(),
        props.flow_path.display().to_string(),
    );
    tag(&mut out, "mlflow.source.type".into(), "LOCAL".into());
    if let Some(d) = record.description.as_deref().filter(|d| !d.is_empty()) {
        // What the MLflow UI shows as the run's description.
        tag(&mut out, "mlflow.note.content".into(), d.to_owned());
    }
    tag(&mut out, RUN_NAME_TAG.into(), record.name.clone());
    tag(&mut out, CREATED_ON_TAG.into(), created_on_tag(record));
    tag(
        &mut out,
        "sluice.version".into(),
        env!("CARGO_PKG_VERSION").into(),
    );
    tag(
        &mut out,
        "sluice.status".into(),
        record.status.as_str().into(),
    );
    tag(
        &mut out,
        "sluice.display_name".into(),
        record.display_name.clone(),
    );
    if let Some(run) = &props.run {
        tag(&mut out, "sluice.evaluates".into(), run.clone());
    }
    if let Some(note) = &record.status_note {
        tag(&mut out, "sluice.status_note".into(), note.clone());
    }
    out
}

fn created_on_tag(record: &RunRecord) -> String {
    record
        .created_on
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The files of a run to upload, as (path among the artifacts, file): [`RUN_FILES`] that exist, then
/// every regular file of `snapshot/` (links are not followed).
pub fn run_artifacts(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut files: Vec<(String, PathBuf)> = RUN_FILES
        .iter()
        .map(|f| ((*f).to_owned(), dir.join(f)))
        .filter(|(_, p)| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .collect();
    fn walk(from: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>, depth: usize) {
        if depth > 32 {
            return;
        }
        let Ok(entries) = std::fs::read_dir(from) else {
            return;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(kind) = e.file_type() else { continue };
            let path = format!("{prefix}/{name}");
            if kind.is_dir() {
                walk(&e.path(), &path, out, depth + 1);
            } else if kind.is_file() {
                out.push((path, e.path()));
            }
        }
    }
    walk(&dir.join("snapshot"), "snapshot", &mut files, 0);
    files
}

/// Exports the run `name` of `store` to the MLflow server of `client` (see the module's docs).
pub async fn export_run(
    client: &MlflowClient,
    store: &crate::RunStore,
    name: &str,
    opts: &ExportOptions,
) -> Result<Exported, ExportError> {
    let run_name = store.existing(name)?;
    let record = store.read_record(&run_name)?;
    if record.status == RunStatus::Running {
        return Err(ExportError::StillRunning {
            name: record.name.clone(),
        });
    }
    let dir = store.dir(&run_name);
    let metrics_path = dir.join("metrics.json");
    let metrics: Map = match std::fs::read_to_string(&metrics_path) {
        Ok(text) => crate::json::from_str(&text).map_err(|e| ExportError::Read {
            name: record.name.clone(),
            path: metrics_path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
        Err(e) => {
            return Err(ExportError::Read {
                name: record.name.clone(),
                path: metrics_path,
                source: e,
            });
        }
    };
    let started = millis(record.created_on);
    let ended = millis(end_time(&record, &dir));
    let mut logged = logged(&record, &metrics, ended);
    let status = mlflow_status(record.status);

    let failed = |step: &str| {
        let name = record.name.clone();
        let server = client.base().to_string();
        let step = step.to_owned();
        move |source: MlflowError| ExportError::Mlflow {
            name,
            server,
            step,
            source,
        }
    };

    // The experiment.
    let experiment_name = opts
        .experiment
        .clone()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| {
            if record.flow_name.trim().is_empty() {
                DEFAULT_EXPERIMENT.to_owned()
            } else {
                record.flow_name.clone()
            }
        });
    let experiment_id = match client
        .experiment_by_name(&experiment_name)
        .await
        .map_err(failed("finding the experiment"))?
    {
        Some(e) if e.lifecycle_stage.as_deref() == Some("deleted") => {
            return Err(ExportError::ExperimentDeleted {
                experiment: e.name,
                experiment_id: e.experiment_id,
            });
        }
        Some(e) => e.experiment_id,
        None => match client.create_experiment(&experiment_name, &[]).await {
            Ok(id) => id,
            // Created by someone else since we looked.
            Err(e) if e.error_code() == Some(protocol::RESOURCE_ALREADY_EXISTS) => client
                .experiment_by_name(&experiment_name)
                .await
                .map_err(failed("finding the experiment"))?
                .map(|e| e.experiment_id)
                .ok_or_else(|| failed("creating the experiment")(e))?,
            Err(e) => return Err(failed("creating the experiment")(e)),
        },
    };

    // The MLflow run: the one an earlier export of this run made, or a new one.
    let created_on = created_on_tag(&record);
    let earlier = match protocol::filter_literal(&record.name) {
        Some(literal) => client
            .search_runs(&experiment_id, format!("tags.`{RUN_NAME_TAG}` = {literal}"))
            .await
            .map_err(failed("looking for an earlier export of the run"))?,
        None => Vec::new(),
    };
    let (same, other): (Vec<_>, Vec<_>) = earlier
        .into_iter()
        .partition(|r| r.data.tag(CREATED_ON_TAG) == Some(created_on.as_str()));
    if let Some(o) = other.first() {
        logged.warnings.push(format!(
            "MLflow run {} holds an earlier Sluice run that was also named `{}`; it is left as it is",
            o.info.run_id, record.name
        ));
    }
    let (run, action) = match same.into_iter().next() {
        Some(run) => (run, "updated"),
        None => {
            let tags = [
                KeyValue::new(RUN_NAME_TAG, record.name.clone()),
                KeyValue::new(CREATED_ON_TAG, created_on.clone()),
            ];
            let run = client
                .create_run(&CreateRun {
                    experiment_id: &experiment_id,
                    run_name: &record.name,
                    start_time: started,
                    user_id: opts.user.as_deref(),
                    tags: &tags,
                })
                .await
                .map_err(failed("creating the MLflow run"))?;
            (run, "created")
        }
    };
    let run_id = run.info.run_id.clone();
    let artifact_uri = run.info.artifact_uri.clone().unwrap_or_default();
    let Some(artifact_root) = protocol::proxied_artifact_root(&artifact_uri) else {
        return Err(ExportError::ArtifactsNotServed {
            run_id,
            artifact_uri,
        });
    };

    // Params, metrics and tags.
    if let Some(user) = &opts.user {
        logged.tags.push(KeyValue::new("mlflow.user", user.clone()));
    }
    for batch in LogBatch::split(&run_id, &logged.metrics, &logged.params, &logged.tags) {
        client
            .log_batch(&batch)
            .await
            .map_err(failed("logging params, metrics and tags"))?;
    }

    // Artifacts.
    let mut uploaded = Vec::new();
    for (path, file) in run_artifacts(&dir) {
        let bytes = std::fs::read(&file).map_err(|source| ExportError::Read {
            name: record.name.clone(),
            path: file.clone(),
            source,
        })?;
        client
            .upload_artifact(&artifact_root, &path, &bytes)
            .await
            .map_err(failed(&format!("uploading {path}")))?;
        uploaded.push(path);
    }
    for a in &opts.artifacts {
        client
            .upload_artifact(&artifact_root, &a.path, &a.bytes)
            .await
            .map_err(failed(&format!("uploading {}", a.path)))?;
        uploaded.push(a.path.clone());
    }

    // Last, the end: an export that stopped half-way leaves the MLflow run RUNNING, and exporting
    // again finishes it.
    client
        .update_run(&UpdateRun {
            run_id: &run_id,
            status,
            end_time: Some(ended),
            run_name: &record.name,
        })
        .await
        .map_err(failed("setting the run's status"))?;

    Ok(Exported {
        run: record.name.clone(),
        url: client.run_url(&experiment_id, &run_id),
        experiment_id,
        experiment_name,
        run_id,
        action,
        status: status.as_str(),
        params: logged.params.len(),
        metrics: logged.metrics.len(),
        tags: logged.tags.len(),
        artifacts: uploaded,
        warnings: logged.warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RunProperties, SystemMetrics, TokenCounts};

    fn record() -> RunRecord {
        let mut props = RunProperties {
            flow_path: "/flows/eval".into(),
            run: Some("base".into()),
            ..RunProperties::default()
        };
        props
            .node_variant
            .insert("answer".into(), "variant_1".into());
        props
            .column_mapping
            .insert("prediction".into(), "${run.outputs.x}".into());
        props
            .column_mapping
            .insert("long".into(), "y".repeat(700).into());
        props.system_metrics = SystemMetrics {
            duration: Some(2.5),
            total_lines: 10,
            completed_lines: Some(8),
            failed_lines: Some(2),
            tokens: TokenCounts {
                total_tokens: Some(120),
                ..TokenCounts::default()
            },
            ..SystemMetrics::default()
        };
        RunRecord {
            name: "eval_1".into(),
            created_on: "2026-12-01T08:00:00Z".parse().unwrap(),
            status: RunStatus::Completed,
            display_name: "nightly".into(),
            description: None,
            tags: [
                ("team".to_owned(), "search".to_owned()),
                ("mlflow.user".to_owned(), "x".to_owned()),
            ]
            .into(),
            properties: props,
            flow_name: "eval".into(),
            data: Some("/data/d.jsonl".into()),
            output: PathBuf::new(),
            metrics: Default::default(),
            status_note: None,
            owner: None,
            archived: None,
        }
    }

    #[test]
    fn a_record_becomes_params_metrics_and_tags() {
        let r = record();
        let mut metrics = Map::new();
        metrics.insert("accuracy".into(), Value::Float(0.75));
        metrics.insert("count".into(), Value::Int(8));
        metrics.insert("label".into(), Value::from("x"));
        let l = logged(&r, &metrics, 42);
        let param = |k: &str| {
            l.params
                .iter()
                .find(|p| p.key == k)
                .map(|p| p.value.clone())
        };
        assert_eq!(param("flow_path").as_deref(), Some("/flows/eval"));
        assert_eq!(param("run").as_deref(), Some("base"));
        assert_eq!(param("variant.answer").as_deref(), Some("variant_1"));
        assert_eq!(
            param("column_mapping.prediction").as_deref(),
            Some("${run.outputs.x}")
        );
        assert_eq!(param("column_mapping.long").unwrap().chars().count(), 500);
        let metric = |k: &str| l.metrics.iter().find(|m| m.key == k).map(|m| m.value);
        assert_eq!(metric("accuracy"), Some(0.75));
        assert_eq!(metric("count"), Some(8.0));
        assert_eq!(metric("label"), None);
        assert_eq!(metric("system/failed_lines"), Some(2.0));
        assert_eq!(metric("system/total_tokens"), Some(120.0));
        assert_eq!(metric("system/duration_s"), Some(2.5));
        assert_eq!(metric("system/prompt_tokens"), None);
        assert!(l.metrics.iter().all(|m| m.timestamp == 42 && m.step == 0));
        let tag = |k: &str| l.tags.iter().find(|t| t.key == k).map(|t| t.value.clone());
        assert_eq!(tag("mlflow.runName").as_deref(), Some("eval_1"));
        assert_eq!(tag("team").as_deref(), Some("search"));
        assert_eq!(tag("sluice.tags.mlflow.user").as_deref(), Some("x"));
        assert_eq!(tag("mlflow.user"), None);
        assert_eq!(
            tag(CREATED_ON_TAG).as_deref(),
            Some("2026-12-01T08:00:00.000000Z")
        );
        assert_eq!(l.warnings.len(), 3, "{:?}", l.warnings);
        assert_eq!(
            end_time(&r, Path::new("/nonexistent")),
            "2026-12-01T08:00:02.500Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn statuses_map_onto_mlflow_s() {
        assert_eq!(mlflow_status(RunStatus::Completed).as_str(), "FINISHED");
        assert_eq!(mlflow_status(RunStatus::Failed).as_str(), "FAILED");
        assert_eq!(mlflow_status(RunStatus::Canceled).as_str(), "KILLED");
    }
}
