//! The MLflow tracking protocol as Sluice speaks it: the JSON bodies of the REST endpoints it calls
//! (`/api/2.0/mlflow/...`), MLflow's error body, the limits a request must keep, and the rules for
//! keys, values and artifact URIs. Everything that is encoded for or decoded from an MLflow server
//! goes through the types here; [`super::client`] only moves them.

use serde::{Deserialize, Serialize};

/// The most metrics one `runs/log-batch` request may hold.
pub const MAX_METRICS_PER_BATCH: usize = 1000;
/// The most params one `runs/log-batch` request may hold (and, separately, the most tags).
pub const MAX_PARAMS_TAGS_PER_BATCH: usize = 100;
/// The most metrics, params and tags one `runs/log-batch` request may hold together.
pub const MAX_ENTITIES_PER_BATCH: usize = 1000;
/// The longest param value, in characters. MLflow 2.x and 3.x servers take 6,000, older ones and
/// some hosted stores 500; 500 is what every server takes.
pub const MAX_PARAM_VALUE: usize = 500;
/// The longest tag value every backend store takes, in characters.
pub const MAX_TAG_VALUE: usize = 5000;
/// The longest metric, param or tag key.
pub const MAX_KEY: usize = 250;

/// MLflow's run states (`RunStatus` in its protos).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    Running,
    Scheduled,
    Finished,
    Failed,
    Killed,
}

impl RunStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Running => "RUNNING",
            RunStatus::Scheduled => "SCHEDULED",
            RunStatus::Finished => "FINISHED",
            RunStatus::Failed => "FAILED",
            RunStatus::Killed => "KILLED",
        }
    }
}

/// The body of every MLflow error answer: `{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": ...}`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub error_code: String,
    #[serde(default)]
    pub message: String,
}

/// MLflow's error code for a name or id it does not know.
pub const RESOURCE_DOES_NOT_EXIST: &str = "RESOURCE_DOES_NOT_EXIST";
/// MLflow's error code for a name that is taken (an experiment created by someone else meanwhile).
pub const RESOURCE_ALREADY_EXISTS: &str = "RESOURCE_ALREADY_EXISTS";

/// A key and a value: a param, or a run or experiment tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

impl KeyValue {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        KeyValue {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// One value of a metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub key: String,
    /// A double; NaN and the infinities travel as the strings `"NaN"`, `"Infinity"` and
    /// `"-Infinity"`, as protobuf's JSON mapping writes them.
    #[serde(with = "double")]
    pub value: f64,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    #[serde(default)]
    pub step: i64,
}

/// Protobuf's JSON mapping of a double: a number, or a string for NaN and the infinities.
mod double {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_str(crate::json::non_finite_word(*v))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Double {
            Number(f64),
            Text(String),
        }
        match Double::deserialize(d)? {
            Double::Number(n) => Ok(n),
            Double::Text(t) => match t.as_str() {
                "NaN" => Ok(f64::NAN),
                "Infinity" => Ok(f64::INFINITY),
                "-Infinity" => Ok(f64::NEG_INFINITY),
                other => other
                    .parse()
                    .map_err(|_| serde::de::Error::custom(format!("not a double: {other:?}"))),
            },
        }
    }
}

/// An experiment, as `experiments/get-by-name` answers it.
#[derive(Clone, Debug, Deserialize)]
pub struct Experiment {
    pub experiment_id: String,
    pub name: String,
    #[serde(default)]
    pub artifact_location: Option<String>,
    #[serde(default)]
    pub lifecycle_stage: Option<String>,
}

/// `GET experiments/get-by-name` answer.
#[derive(Debug, Deserialize)]
pub struct GetExperimentResponse {
    pub experiment: Experiment,
}

/// `POST experiments/create`.
#[derive(Debug, Serialize)]
pub struct CreateExperiment<'a> {
    pub name: &'a str,
    #[serde(skip_serializing_if = "<[KeyValue]>::is_empty")]
    pub tags: &'a [KeyValue],
}

#[derive(Debug, Deserialize)]
pub struct CreateExperimentResponse {
    pub experiment_id: String,
}

/// A run's info.
#[derive(Clone, Debug, Deserialize)]
pub struct RunInfo {
    pub run_id: String,
    pub experiment_id: String,
    #[serde(default)]
    pub run_name: Option<String>,
    pub status: RunStatus,
    #[serde(default)]
    pub start_time: Option<i64>,
    #[serde(default)]
    pub end_time: Option<i64>,
    #[serde(default)]
    pub artifact_uri: Option<String>,
    #[serde(default)]
    pub lifecycle_stage: Option<String>,
}

/// A run's metrics (their latest values), params and tags.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RunData {
    #[serde(default)]
    pub metrics: Vec<Metric>,
    #[serde(default)]
    pub params: Vec<KeyValue>,
    #[serde(default)]
    pub tags: Vec<KeyValue>,
}

impl RunData {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|t| t.key == key)
            .map(|t| t.value.as_str())
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct Run {
    pub info: RunInfo,
    #[serde(default)]
    pub data: RunData,
}

/// `POST runs/create`.
#[derive(Debug, Serialize)]
pub struct CreateRun<'a> {
    pub experiment_id: &'a str,
    pub run_name: &'a str,
    /// Milliseconds since the epoch.
    pub start_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<&'a str>,
    pub tags: &'a [KeyValue],
}

/// `runs/create` and `runs/get` answer.
#[derive(Debug, Deserialize)]
pub struct RunResponse {
    pub run: Run,
}

/// `POST runs/update`.
#[derive(Debug, Serialize)]
pub struct UpdateRun<'a> {
    pub run_id: &'a str,
    pub status: RunStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<i64>,
    pub run_name: &'a str,
}

/// `POST runs/search`.
#[derive(Debug, Serialize)]
pub struct SearchRuns<'a> {
    pub experiment_ids: [&'a str; 1],
    pub filter: String,
    pub max_results: u32,
}

#[derive(Debug, Default, Deserialize)]
pub struct SearchRunsResponse {
    #[serde(default)]
    pub runs: Vec<Run>,
}

/// `POST runs/log-batch`: at most [`MAX_METRICS_PER_BATCH`] metrics, [`MAX_PARAMS_TAGS_PER_BATCH`]
/// params and as many tags, [`MAX_ENTITIES_PER_BATCH`] of them together. [`LogBatch::split`] makes
/// such requests of any number of each.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LogBatch {
    pub run_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<Metric>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<KeyValue>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<KeyValue>,
}

impl LogBatch {
    fn len(&self) -> usize {
        self.metrics.len() + self.params.len() + self.tags.len()
    }

    /// The fewest requests, each within the limits, that log all of `metrics`, `params` and `tags`
    /// in their order.
    pub fn split(
        run_id: &str,
        metrics: &[Metric],
        params: &[KeyValue],
        tags: &[KeyValue],
    ) -> Vec<LogBatch> {
        let (mut m, mut p, mut t) = (metrics, params, tags);
        let mut batches = Vec::new();
        while !(m.is_empty() && p.is_empty() && t.is_empty()) {
            let mut batch = LogBatch {
                run_id: run_id.to_owned(),
                ..LogBatch::default()
            };
            let room = |b: &LogBatch| MAX_ENTITIES_PER_BATCH - b.len();
            let take = p.len().min(MAX_PARAMS_TAGS_PER_BATCH).min(room(&batch));
            batch.params = p[..take].to_vec();
            p = &p[take..];
            let take = t.len().min(MAX_PARAMS_TAGS_PER_BATCH).min(room(&batch));
            batch.tags = t[..take].to_vec();
            t = &t[take..];
            let take = m.len().min(MAX_METRICS_PER_BATCH).min(room(&batch));
            batch.metrics = m[..take].to_vec();
            m = &m[take..];
            batches.push(batch);
        }
        batches
    }
}

/// `GET artifacts/list` answer.
#[derive(Debug, Default, Deserialize)]
pub struct ListArtifactsResponse {
    #[serde(default)]
    pub root_uri: Option<String>,
    #[serde(default)]
    pub files: Vec<FileInfo>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct FileInfo {
    pub path: String,
    #[serde(default)]
    pub is_dir: bool,
    #[serde(default)]
    pub file_size: Option<u64>,
}

/// `GET metrics/get-history` answer.
#[derive(Debug, Default, Deserialize)]
pub struct MetricHistoryResponse {
    #[serde(default)]
    pub metrics: Vec<Metric>,
}

/// A metric, param or tag key MLflow takes: alphanumerics, `_`, `-`, `.`, ` `, `:` and `/` (every
/// other character becomes `_`), no `..` or `.` path steps nor a leading `/` (MLflow keeps some
/// keys as file names), at most [`MAX_KEY`] characters.
pub fn key(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ' | ':' | '/') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let steps: Vec<String> = mapped
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| match s {
            "." | ".." => s.replace('.', "_"),
            s => s.to_owned(),
        })
        .collect();
    let joined = steps.join("/");
    let joined = if joined.is_empty() {
        "_".to_owned()
    } else {
        joined
    };
    joined.chars().take(MAX_KEY).collect()
}

/// `value` cut to at most `max` characters, ending in `...` when it was cut; whether it was.
pub fn fit(value: &str, max: usize) -> (String, bool) {
    if value.chars().count() <= max {
        return (value.to_owned(), false);
    }
    let mut cut: String = value.chars().take(max.saturating_sub(3)).collect();
    cut.push_str("...");
    (cut, true)
}

/// A string literal of MLflow's search filter language, quoted with `'`. The language has no escape
/// for a quote, so a value holding `'` cannot be written; run names never hold one.
pub fn filter_literal(value: &str) -> Option<String> {
    (!value.contains('\'')).then(|| format!("'{value}'"))
}

/// The path under `/api/2.0/mlflow-artifacts/artifacts/` where the artifacts of a run whose
/// `artifact_uri` is `uri` live, when the server serves them (`mlflow-artifacts:/1/abc/artifacts`, or
/// with a host, `mlflow-artifacts://host:port/1/abc/artifacts`); `None` for any other store (`s3://`,
/// `file://`, a local path), which a client would have to reach itself.
pub fn proxied_artifact_root(uri: &str) -> Option<String> {
    let rest = uri.strip_prefix("mlflow-artifacts:")?;
    let path = match rest.strip_prefix("//") {
        // `//host:port/path`: the path after the authority.
        Some(authority_and_path) => &authority_and_path[authority_and_path.find('/')?..],
        None => rest,
    };
    Some(path.trim_matches('/').to_owned())
}

/// A relative artifact path with each segment percent-encoded for a URL path (`/` kept between
/// segments).
pub fn encode_path(path: &str) -> String {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|segment| {
            let mut out = String::new();
            for b in segment.bytes() {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                    out.push(b as char);
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            out
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(n: usize) -> Vec<Metric> {
        (0..n)
            .map(|i| Metric {
                key: format!("m{i}"),
                value: i as f64,
                timestamp: 0,
                step: 0,
            })
            .collect()
    }

    fn pairs(n: usize, prefix: &str) -> Vec<KeyValue> {
        (0..n)
            .map(|i| KeyValue::new(format!("{prefix}{i}"), "v"))
            .collect()
    }

    #[test]
    fn batches_keep_every_limit_and_lose_nothing() {
        for (m, p, t) in [
            (0, 0, 0),
            (1, 1, 1),
            (1000, 0, 0),
            (1001, 0, 0),
            (0, 250, 0),
            (0, 0, 101),
            (2500, 150, 120),
            (950, 100, 100),
        ] {
            let (ms, ps, ts) = (metrics(m), pairs(p, "p"), pairs(t, "t"));
            let batches = LogBatch::split("r", &ms, &ps, &ts);
            for b in &batches {
                assert!(b.metrics.len() <= MAX_METRICS_PER_BATCH);
                assert!(b.params.len() <= MAX_PARAMS_TAGS_PER_BATCH);
                assert!(b.tags.len() <= MAX_PARAMS_TAGS_PER_BATCH);
                assert!(b.len() <= MAX_ENTITIES_PER_BATCH);
                assert!(b.len() > 0);
                assert_eq!(b.run_id, "r");
            }
            let all_m: Vec<Metric> = batches.iter().flat_map(|b| b.metrics.clone()).collect();
            let all_p: Vec<KeyValue> = batches.iter().flat_map(|b| b.params.clone()).collect();
            let all_t: Vec<KeyValue> = batches.iter().flat_map(|b| b.tags.clone()).collect();
            assert_eq!((all_m, all_p, all_t), (ms, ps, ts), "{m} {p} {t}");
        }
        // 950 metrics and 100 each of params and tags: two requests, the first full.
        let b = LogBatch::split("r", &metrics(950), &pairs(100, "p"), &pairs(100, "t"));
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].len(), MAX_ENTITIES_PER_BATCH);
    }

    #[test]
    fn non_finite_metrics_travel_as_protobuf_writes_them() {
        let m = Metric {
            key: "x".into(),
            value: f64::NAN,
            timestamp: 5,
            step: 0,
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(text, r#"{"key":"x","value":"NaN","timestamp":5,"step":0}"#);
        let back: Metric = serde_json::from_str(&text).unwrap();
        assert!(back.value.is_nan());
        let inf: Metric =
            serde_json::from_str(r#"{"key":"x","value":"-Infinity","timestamp":5}"#).unwrap();
        assert_eq!(inf.value, f64::NEG_INFINITY);
        let plain: Metric =
            serde_json::from_str(r#"{"key":"x","value":0.25,"timestamp":5,"step":3}"#).unwrap();
        assert_eq!((plain.value, plain.step), (0.25, 3));
    }

    #[test]
    fn keys_are_made_acceptable() {
        assert_eq!(key("accuracy"), "accuracy");
        assert_eq!(key("f1 (macro)"), "f1 _macro_");
        assert_eq!(key("class/pos:precision"), "class/pos:precision");
        assert_eq!(key("../up"), "__/up");
        assert_eq!(key("/lead//x/"), "lead/x");
        assert_eq!(key(""), "_");
        assert_eq!(key(&"k".repeat(300)).len(), MAX_KEY);
    }

    #[test]
    fn values_are_cut_on_character_boundaries() {
        assert_eq!(fit("short", 500), ("short".to_owned(), false));
        let (cut, was) = fit(&"é".repeat(600), 500);
        assert!(was);
        assert_eq!(cut.chars().count(), 500);
        assert!(cut.ends_with("..."));
    }

    #[test]
    fn artifact_roots_served_by_the_server() {
        assert_eq!(
            proxied_artifact_root("mlflow-artifacts:/1/abc/artifacts").as_deref(),
            Some("1/abc/artifacts")
        );
        assert_eq!(
            proxied_artifact_root("mlflow-artifacts://h:5000/7/abc/artifacts").as_deref(),
            Some("7/abc/artifacts")
        );
        assert_eq!(proxied_artifact_root("s3://bucket/1/abc/artifacts"), None);
        assert_eq!(proxied_artifact_root("/tmp/mlruns/1/abc/artifacts"), None);
        assert_eq!(
            encode_path("snapshot/my dir/a+b.py"),
            "snapshot/my%20dir/a%2Bb.py"
        );
        assert_eq!(filter_literal("run_1").as_deref(), Some("'run_1'"));
        assert_eq!(filter_literal("it's"), None);
    }
}
