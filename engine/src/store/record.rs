//! The records a run leaves behind, typed: `run.json` ([`RunRecord`]) and each line of `details.jsonl`
//! ([`LineRecord`] with its [`NodeRecord`]s). Lines are written from borrowed results
//! ([`LineRecordRef`]), so recording a line serialises straight from the engine's values.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::error::ErrorInfo;
use crate::exec::{LineResult, NodeRunInfo, Status};
use crate::value::{Map, Value};

/// A run's state, as promptflow names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunStatus {
    Running,
    Completed,
    Failed,
    Canceled,
}

impl RunStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Running => "Running",
            RunStatus::Completed => "Completed",
            RunStatus::Failed => "Failed",
            RunStatus::Canceled => "Canceled",
        }
    }
}

/// The process that runs (or ran) a run, so that a run whose process died is not shown as running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// The process's start time in clock ticks since boot (`/proc/PID/stat`), which tells a reused pid
    /// apart from the owner.
    #[serde(default)]
    pub start_ticks: Option<u64>,
    #[serde(default)]
    pub host: Option<String>,
}

/// `run.json`: what `run show` prints, in promptflow's shape plus Sluice's counters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    pub name: String,
    #[serde(serialize_with = "crate::json::serialize_utc")]
    pub created_on: DateTime<Utc>,
    pub status: RunStatus,
    pub display_name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub properties: RunProperties,
    #[serde(default)]
    pub flow_name: String,
    #[serde(default)]
    pub data: Option<PathBuf>,
    #[serde(default)]
    pub output: PathBuf,
    #[serde(default)]
    pub metrics: serde_json::Map<String, Json>,
    /// Why the status is what it is, when that is not obvious (a dead owner, a timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Whether the run is archived (hidden from `run list` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived: Option<bool>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RunProperties {
    pub flow_path: PathBuf,
    pub output_path: PathBuf,
    /// The variant chosen per node (`{"node": "variant_1"}`).
    pub node_variant: IndexMap<String, String>,
    /// The run this one evaluates (`--run`).
    pub run: Option<String>,
    pub resume_from: Option<String>,
    /// The shard of the data this run took (`I/N`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// The runs whose lines this run took over (`run merge`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<String>,
    pub column_mapping: serde_json::Map<String, Json>,
    /// The `__init__` arguments of a flex flow's class entry, when given to the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<serde_json::Map<String, Json>>,
    pub system_metrics: SystemMetrics,
}

/// Counters of a run, filled in when it ends (only `total_lines` while it runs).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SystemMetrics {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    pub total_lines: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_lines: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_lines: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_run_lines: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carried_over_lines: Option<usize>,
    /// `node.status` → count, e.g. `{"answer.completed": 10}`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_status: BTreeMap<String, u64>,
    #[serde(flatten)]
    pub tokens: TokenCounts,
}

/// LLM token counts of a node, a line or a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenCounts {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u64>,
}

impl TokenCounts {
    /// Adds `other`'s counts; a count stays `None` only while neither side has it.
    pub fn add(&mut self, other: &TokenCounts) {
        for (mine, theirs) in [
            (&mut self.prompt_tokens, other.prompt_tokens),
            (&mut self.completion_tokens, other.completion_tokens),
            (&mut self.total_tokens, other.total_tokens),
            (&mut self.cached_tokens, other.cached_tokens),
        ] {
            if let Some(n) = theirs {
                *mine = Some(mine.unwrap_or(0) + n);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == TokenCounts::default()
    }
}

/// The state of a line in `details.jsonl`; `Running` in the start marks of `started.jsonl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LineStatus {
    Running,
    Completed,
    Failed,
    Canceled,
    Bypassed,
}

impl From<Status> for LineStatus {
    fn from(s: Status) -> Self {
        match s {
            Status::Completed => LineStatus::Completed,
            Status::Failed => LineStatus::Failed,
            Status::Bypassed => LineStatus::Bypassed,
            Status::Canceled => LineStatus::Canceled,
        }
    }
}

impl LineStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            LineStatus::Running => "Running",
            LineStatus::Completed => "Completed",
            LineStatus::Failed => "Failed",
            LineStatus::Canceled => "Canceled",
            LineStatus::Bypassed => "Bypassed",
        }
    }
}

/// One record of `details.jsonl` (a finished line with its node runs) or of `started.jsonl` (the mark
/// of a started line: its number, `Running`, the start time).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LineRecord {
    pub line_number: usize,
    pub status: LineStatus,
    #[serde(default)]
    pub inputs: Map,
    #[serde(default)]
    pub output: Map,
    /// promptflow's error dict (`message`, `code`, `innerError`, ...).
    #[serde(default)]
    pub error: Option<Json>,
    #[serde(default)]
    pub node_runs: Vec<NodeRecord>,
    #[serde(default)]
    #[serde(serialize_with = "crate::json::serialize_utc_opt")]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(default)]
    #[serde(serialize_with = "crate::json::serialize_utc_opt")]
    pub end_time: Option<DateTime<Utc>>,
    #[serde(default)]
    pub aggregation_inputs: Map,
    /// A start mark made while the line ran alone (a resumed run retrying the lines that were running
    /// when its predecessor died).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub isolated: bool,
}

impl LineRecord {
    /// The line's latency in seconds.
    pub fn latency(&self) -> Option<f64> {
        let (a, b) = (self.start_time?, self.end_time?);
        (b - a).num_microseconds().map(|us| us as f64 / 1e6)
    }

    /// The error's message.
    pub fn error_message(&self) -> Option<&str> {
        self.error.as_ref()?.get("message")?.as_str()
    }

    /// The token counts of the line's node runs, summed.
    pub fn tokens(&self) -> TokenCounts {
        let mut sum = TokenCounts::default();
        for run in &self.node_runs {
            sum.add(&run.system_metrics.tokens);
        }
        sum
    }
}

/// One node's run in a line record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node: String,
    pub status: LineStatus,
    #[serde(default)]
    pub inputs: Map,
    #[serde(default)]
    pub output: Value,
    #[serde(default)]
    pub error: Option<Json>,
    #[serde(default)]
    #[serde(serialize_with = "crate::json::serialize_utc_opt")]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(default)]
    #[serde(serialize_with = "crate::json::serialize_utc_opt")]
    pub end_time: Option<DateTime<Utc>>,
    #[serde(default)]
    pub index: Option<usize>,
    #[serde(default)]
    pub system_metrics: NodeMetrics,
    /// What the node sent to a model or service (an `llm` node's prompt).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_calls: Vec<Json>,
}

/// A node run's `system_metrics`: how long the node ran (measured by the engine) and what the node
/// kind reported about its work (an `llm` node's tokens, latency and speed). The JSON keys are
/// promptflow's and Sluice's record format; a key that was not reported is left out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeMetrics {
    #[serde(flatten)]
    pub tokens: TokenCounts,
    /// From the model request to its first generated token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_first_token_ms: Option<u64>,
    /// From the model request to its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_duration_ms: Option<u64>,
    /// Generated tokens per second of `llm_duration_ms`, to one decimal.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "whole_as_integer"
    )]
    pub completion_tokens_per_s: Option<f64>,
    /// Seconds the node ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    /// Keys this version does not know, kept when a record is read back.
    #[serde(flatten)]
    pub other: BTreeMap<String, Json>,
}

impl NodeMetrics {
    /// Adds what a node reported again: counts and times add up; the speed is the latest one.
    pub fn add(&mut self, more: &NodeMetrics) {
        self.tokens.add(&more.tokens);
        for (mine, theirs) in [
            (
                &mut self.time_to_first_token_ms,
                more.time_to_first_token_ms,
            ),
            (&mut self.llm_duration_ms, more.llm_duration_ms),
        ] {
            if let Some(n) = theirs {
                *mine = Some(mine.unwrap_or(0) + n);
            }
        }
        if more.completion_tokens_per_s.is_some() {
            self.completion_tokens_per_s = more.completion_tokens_per_s;
        }
        if let Some(d) = more.duration {
            self.duration = Some(self.duration.unwrap_or(0.0) + d);
        }
        self.other
            .extend(more.other.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

/// A whole number as an integer (`12`, not `12.0`), as records have always written it.
fn whole_as_integer<S: serde::Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match v.map(|f| (f, as_whole(f))) {
        Some((_, Some(i))) => s.serialize_i64(i),
        Some((f, None)) => s.serialize_f64(f),
        None => s.serialize_none(),
    }
}

/// `f` as the integer a record writes it as, if it is a whole number it can hold exactly.
pub fn as_whole(f: f64) -> Option<i64> {
    (f.fract() == 0.0 && f.abs() < 9e15).then_some(f as i64)
}

/// A finished line, borrowed from its result, in the shape of [`LineRecord`].
#[derive(Debug, Serialize)]
pub struct LineRecordRef<'a> {
    #[serde(serialize_with = "crate::json::serialize_line_number")]
    pub line_number: usize,
    pub status: LineStatus,
    pub inputs: &'a Map,
    pub output: &'a Map,
    pub error: Option<&'a ErrorInfo>,
    pub node_runs: NodeRunsRef<'a>,
    #[serde(serialize_with = "crate::json::serialize_utc")]
    pub start_time: DateTime<Utc>,
    #[serde(serialize_with = "crate::json::serialize_utc")]
    pub end_time: DateTime<Utc>,
    pub aggregation_inputs: &'a Map,
}

/// A line's node runs as a record holds them: whole, or without their payloads (inputs, output and
/// API calls), which then read back empty.
#[derive(Debug, Clone, Copy)]
pub struct NodeRunsRef<'a> {
    pub runs: &'a [NodeRunInfo],
    pub payloads: bool,
}

/// The empty map a record without payloads holds.
static NO_PAYLOAD: std::sync::LazyLock<Map> = std::sync::LazyLock::new(Map::new);

impl<'a> LineRecordRef<'a> {
    pub fn new(line: &'a LineResult) -> Self {
        LineRecordRef {
            line_number: line.line_number.unwrap_or(0),
            status: line.status.into(),
            inputs: &line.inputs,
            output: &line.output,
            error: line.error.as_ref(),
            node_runs: NodeRunsRef {
                runs: &line.node_runs,
                payloads: true,
            },
            start_time: line.start_time,
            end_time: line.end_time,
            aggregation_inputs: &line.aggregation_inputs,
        }
    }

    /// The record without its nodes' inputs, outputs and API calls (nor the node outputs kept for
    /// aggregation).
    pub fn without_node_payloads(mut self) -> Self {
        self.node_runs.payloads = false;
        self.aggregation_inputs = &NO_PAYLOAD;
        self
    }

    /// The record without the line's inputs and outputs, nor its nodes'.
    pub fn without_payloads(self) -> Self {
        LineRecordRef {
            inputs: &NO_PAYLOAD,
            output: &NO_PAYLOAD,
            ..self.without_node_payloads()
        }
    }
}

impl Serialize for NodeRunsRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.runs.len()))?;
        for run in self.runs {
            if self.payloads {
                seq.serialize_element(run)?;
            } else {
                seq.serialize_element(&WithoutPayloads(run))?;
            }
        }
        seq.end()
    }
}

/// A node run serialised as [`NodeRunInfo`] is, with empty inputs, a null output and no API calls.
struct WithoutPayloads<'a>(&'a NodeRunInfo);

impl Serialize for WithoutPayloads<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Time<'a>(&'a DateTime<Utc>);
        impl Serialize for Time<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                crate::json::serialize_utc(self.0, s)
            }
        }
        struct Index(Option<usize>);
        impl Serialize for Index {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                crate::json::serialize_line_index(&self.0, s)
            }
        }
        let run = self.0;
        let mut st = s.serialize_struct("NodeRunInfo", 9)?;
        st.serialize_field("node", &run.node)?;
        st.serialize_field("status", &run.status)?;
        st.serialize_field("inputs", &*NO_PAYLOAD)?;
        st.serialize_field("output", &crate::Value::Null)?;
        st.serialize_field("error", &run.error)?;
        st.serialize_field("start_time", &Time(&run.start_time))?;
        st.serialize_field("end_time", &Time(&run.end_time))?;
        st.serialize_field("index", &Index(run.index))?;
        st.serialize_field("system_metrics", &run.system_metrics)?;
        st.end()
    }
}

/// The mark written when a line starts.
#[derive(Debug, Serialize)]
pub struct StartMark {
    pub line_number: usize,
    pub status: LineStatus,
    #[serde(serialize_with = "crate::json::serialize_utc")]
    pub start_time: DateTime<Utc>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub isolated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_line_reads_back_typed() {
        let metrics = NodeMetrics {
            duration: Some(0.5),
            tokens: TokenCounts {
                prompt_tokens: Some(7),
                ..TokenCounts::default()
            },
            completion_tokens_per_s: Some(40.0),
            ..NodeMetrics::default()
        };
        let now = Utc::now();
        let line = LineResult {
            line_number: Some(3),
            status: Status::Completed,
            inputs: [("q".to_string(), crate::Value::from("hi"))]
                .into_iter()
                .collect(),
            output: [("a".to_string(), crate::Value::Int(1))]
                .into_iter()
                .collect(),
            error: None,
            node_runs: vec![NodeRunInfo {
                node: "n".into(),
                status: Status::Completed,
                inputs: Map::new(),
                output: crate::Value::Int(1),
                error: None,
                start_time: now,
                end_time: now,
                index: Some(3),
                system_metrics: metrics,
                api_calls: vec![serde_json::json!({"prompt": "hi"})],
            }],
            aggregation_inputs: Map::new(),
            start_time: now,
            end_time: now,
        };
        let text = serde_json::to_string(&LineRecordRef::new(&line)).unwrap();
        assert!(
            text.contains(
                r#""system_metrics":{"prompt_tokens":7,"completion_tokens_per_s":40,"duration":0.5}"#
            ),
            "{text}"
        );
        let back: LineRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back.line_number, 3);
        assert_eq!(back.status, LineStatus::Completed);
        assert_eq!(back.output["a"], Value::Int(1));
        assert_eq!(back.tokens().prompt_tokens, Some(7));
        assert_eq!(
            back.node_runs[0].system_metrics,
            line.node_runs[0].system_metrics
        );
        assert_eq!(back.node_runs[0].api_calls[0]["prompt"], "hi");
    }

    #[test]
    fn a_record_without_payloads_is_the_record_with_them_emptied() {
        let now = chrono::Utc::now();
        let run =
            |inputs: Map, output: crate::Value, api_calls: Vec<serde_json::Value>| NodeRunInfo {
                node: "n".into(),
                status: Status::Failed,
                inputs,
                output,
                error: Some(ErrorInfo::new(
                    crate::error::ErrorCode::UserError,
                    "Boom",
                    "it broke",
                )),
                start_time: now,
                end_time: now,
                index: Some(4),
                system_metrics: NodeMetrics {
                    duration: Some(0.25),
                    ..NodeMetrics::default()
                },
                api_calls,
            };
        let map = |k: &str, v: &str| -> Map {
            [(k.to_string(), crate::Value::from(v))]
                .into_iter()
                .collect()
        };
        let mut line = LineResult {
            line_number: Some(4),
            status: Status::Failed,
            inputs: map("q", "secret question"),
            output: map("a", "secret answer"),
            error: None,
            node_runs: vec![run(
                map("x", "secret input"),
                crate::Value::from("secret output"),
                vec![serde_json::json!({"prompt": "secret prompt"})],
            )],
            aggregation_inputs: map("${n.output}", "secret kept"),
            start_time: now,
            end_time: now,
        };
        let without_nodes =
            serde_json::to_string(&LineRecordRef::new(&line).without_node_payloads()).unwrap();
        let without_any =
            serde_json::to_string(&LineRecordRef::new(&line).without_payloads()).unwrap();
        assert!(without_nodes.contains("secret question"), "{without_nodes}");
        line.node_runs = vec![run(Map::new(), crate::Value::Null, Vec::new())];
        line.aggregation_inputs = Map::new();
        assert_eq!(
            without_nodes,
            serde_json::to_string(&LineRecordRef::new(&line)).unwrap()
        );
        line.inputs = Map::new();
        line.output = Map::new();
        assert_eq!(
            without_any,
            serde_json::to_string(&LineRecordRef::new(&line)).unwrap()
        );
        assert!(!without_any.contains("secret"), "{without_any}");
    }

    #[test]
    fn missing_keys_read_back_as_defaults() {
        let p: RunProperties = serde_json::from_str("{}").unwrap();
        assert_eq!(p.system_metrics, SystemMetrics::default());
        assert!(p.merged_from.is_empty() && p.shard.is_none() && p.run.is_none());
        let m: SystemMetrics =
            serde_json::from_str(r#"{"total_lines": 3, "prompt_tokens": 2}"#).unwrap();
        assert_eq!(
            (m.total_lines, m.tokens.prompt_tokens, m.completed_lines),
            (3, Some(2), None)
        );
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"total_lines":3,"prompt_tokens":2}"#
        );
    }
}
