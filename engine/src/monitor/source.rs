//! What `sluice monitor` reads: a run (by name or folder), the traffic log of a served flow (every
//! segment of `$SLUICE_HOME/serve/<flow>/runs/`), or a data file, as one list of observations.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::MonitorError;
use crate::store::{LineStatus, RunStore, stream_details};
use crate::{Map, Value};

/// What kind of thing a source is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A batch run: its lines' inputs, outputs, status, latency and tokens.
    Run,
    /// The traffic log of `sluice flow serve`: its segments' lines, in time order.
    Traffic,
    /// A data file or folder: each row's columns count as inputs; no outputs or operations.
    Data,
}

/// A source, resolved.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Source {
    /// As the user wrote it.
    pub spec: String,
    pub kind: SourceKind,
    pub path: PathBuf,
}

/// How a line went, where the source knows it.
#[derive(Clone, Debug, Default)]
pub struct LineOps {
    pub failed: bool,
    /// Seconds.
    pub latency: Option<f64>,
    pub tokens: Option<u64>,
}

/// One line (or data row) of a source.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    pub time: Option<DateTime<Utc>>,
    pub inputs: Map,
    pub outputs: Map,
    pub ops: Option<LineOps>,
}

impl Observation {
    /// A field by its monitor name: `inputs.NAME` or `outputs.NAME`.
    pub fn field(&self, name: &str) -> Option<&Value> {
        match name.split_once('.') {
            Some(("inputs", k)) => self.inputs.get(k),
            Some(("outputs", k)) => self.outputs.get(k),
            _ => None,
        }
    }

    /// Every field name the observation has, inputs first.
    pub fn field_names(&self) -> impl Iterator<Item = String> + '_ {
        self.inputs
            .keys()
            .map(|k| format!("inputs.{k}"))
            .chain(self.outputs.keys().map(|k| format!("outputs.{k}")))
    }
}

/// Finds what `spec` names: `serve:FLOW` (a flow's traffic log in `home`), a run folder, a traffic log
/// folder, a data file or folder, or the name of a run in `store`.
pub fn resolve(spec: &str, store: &RunStore) -> Result<Source, MonitorError> {
    let source = |kind, path: PathBuf| Source {
        spec: spec.to_owned(),
        kind,
        path,
    };
    if let Some(flow) = spec.strip_prefix("serve:") {
        let root = store.home().join("serve").join(flow);
        if !root.join("runs").is_dir() {
            return Err(MonitorError::Source {
                spec: spec.to_owned(),
                why: format!(
                    "no traffic log at {} (a flow served with `sluice flow serve` and its traffic log on)",
                    root.display()
                ),
            });
        }
        return Ok(source(SourceKind::Traffic, root));
    }
    let path = Path::new(spec);
    if path.exists() {
        if path.join(crate::store::RUN_JSON).is_file() {
            return Ok(source(SourceKind::Run, path.to_owned()));
        }
        if path.join("runs").is_dir() && path.join("runs.sqlite").exists() {
            return Ok(source(SourceKind::Traffic, path.to_owned()));
        }
        return Ok(source(SourceKind::Data, path.to_owned()));
    }
    match store.existing(spec) {
        Ok(name) => Ok(source(SourceKind::Run, store.dir(&name))),
        Err(_) => Err(MonitorError::Source {
            spec: spec.to_owned(),
            why: format!(
                "not a file, a folder, a run in {} or `serve:FLOW` (a served flow's traffic log)",
                store.home().display()
            ),
        }),
    }
}

/// Every observation of a source, in line order (runs) or time order (traffic).
pub fn read(source: &Source) -> Result<Vec<Observation>, MonitorError> {
    let observations = match source.kind {
        SourceKind::Run => read_run(&source.path),
        SourceKind::Traffic => {
            let runs = source.path.join("runs");
            let mut segments: Vec<PathBuf> = std::fs::read_dir(&runs)
                .map_err(|e| MonitorError::Read {
                    path: runs.clone(),
                    source: Box::new(e),
                })?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.join(crate::store::DETAILS).is_file())
                .collect();
            segments.sort();
            let mut all: Vec<Observation> = segments.iter().flat_map(|s| read_run(s)).collect();
            all.sort_by_key(|o| o.time);
            all
        }
        SourceKind::Data => crate::batch::stream_data(&source.path)
            .map_err(|e| MonitorError::Read {
                path: source.path.clone(),
                source: Box::new(e),
            })?
            .map(|row| {
                row.map(|mut inputs| {
                    inputs.shift_remove("line_number");
                    Observation {
                        inputs,
                        ..Observation::default()
                    }
                })
                .map_err(|e| MonitorError::Read {
                    path: source.path.clone(),
                    source: Box::new(e),
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    if observations.is_empty() {
        return Err(MonitorError::Source {
            spec: source.spec.clone(),
            why: format!("{} holds no lines", source.path.display()),
        });
    }
    Ok(observations)
}

/// A run's lines, the last record of each line number, read one record at a time (a line's node
/// records are dropped as soon as it is read).
fn read_run(dir: &Path) -> Vec<Observation> {
    let mut lines: BTreeMap<usize, Observation> = BTreeMap::new();
    for r in stream_details(dir) {
        if r.status == LineStatus::Running {
            continue;
        }
        let tokens = r.tokens().total_tokens;
        let latency = r.latency();
        lines.insert(
            r.line_number,
            Observation {
                time: r.start_time,
                ops: Some(LineOps {
                    failed: matches!(r.status, LineStatus::Failed | LineStatus::Canceled),
                    latency,
                    tokens,
                }),
                inputs: r.inputs,
                outputs: r.output,
            },
        );
    }
    lines.into_values().collect()
}
