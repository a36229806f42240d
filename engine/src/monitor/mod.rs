//! `sluice monitor`: current data (a flow's traffic log, a run, a data file) against a baseline, in
//! windows. Per field: drift of numbers (PSI, Kolmogorov–Smirnov), categories (PSI, Jensen–Shannon)
//! and texts (their lengths, and their embeddings through a kernel two-sample test); per window: the
//! operations (latency percentiles, error rate, tokens per line). Every number a `--fail-on` rule can
//! name is kept as a [`Measure`]. Quality (an evaluation flow over samples of both sides) is run by the
//! caller, which owns the node kinds, and added with [`MonitorReport::add_measure`].

pub mod quality;
pub mod rule;
pub mod source;
pub mod stats;

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use serde::Serialize;

pub use rule::{Check, Rule, RuleError};
pub use source::{LineOps, Observation, Source, SourceKind};
use stats::Rng;

use crate::Value;

/// What can stop a monitor.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("{spec}: {why}")]
    Source { spec: String, why: String },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("--window {text}: {why}")]
    Window { text: String, why: String },
    #[error("--field {field}: no line of the baseline has it (fields: {known})")]
    UnknownField { field: String, known: String },
    #[error("embedding the texts of `{field}` failed")]
    Embed {
        field: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// How the current data is cut into windows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WindowSpec {
    /// Every N lines.
    Lines(usize),
    /// Clock-aligned spans of time (by each line's start time).
    Time(chrono::TimeDelta),
}

impl std::str::FromStr for WindowSpec {
    type Err = MonitorError;

    /// `500` (lines), or a span: `90s`, `15m`, `1h`, `1d`.
    fn from_str(text: &str) -> Result<WindowSpec, MonitorError> {
        let bad = |why: &str| MonitorError::Window {
            text: text.to_owned(),
            why: why.to_owned(),
        };
        let t = text.trim();
        if let Ok(n) = t.parse::<usize>() {
            return if n == 0 {
                Err(bad("a window holds at least one line"))
            } else {
                Ok(WindowSpec::Lines(n))
            };
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let n: i64 = number
            .parse()
            .map_err(|_| bad("write a number of lines (500) or a span (90s, 15m, 1h, 1d)"))?;
        let span = match unit {
            "s" => chrono::TimeDelta::try_seconds(n),
            "m" => chrono::TimeDelta::try_minutes(n),
            "h" => chrono::TimeDelta::try_hours(n),
            "d" => chrono::TimeDelta::try_days(n),
            _ => None,
        }
        .filter(|d| *d > chrono::TimeDelta::zero())
        .ok_or_else(|| bad("write a number of lines (500) or a span (90s, 15m, 1h, 1d)"))?;
        Ok(WindowSpec::Time(span))
    }
}

/// How a monitor compares.
#[derive(Clone, Debug)]
pub struct MonitorSpec {
    /// The fields compared (`inputs.x`, `outputs.y`); empty for every field both sides have.
    pub fields: Vec<String>,
    pub window: Option<WindowSpec>,
    /// Bins of numbers and text lengths (baseline quantiles).
    pub bins: usize,
    /// Texts embedded per side and window, per text field; 0 turns embedding drift off.
    pub embed_sample: usize,
    /// Permutations of the embedding test.
    pub permutations: usize,
    /// A field drifts when a PSI reaches this (and its KS or chi-square test is significant at `alpha`).
    pub psi_threshold: f64,
    /// The significance level of the tests that call drift (KS and chi-square beside a PSI, the
    /// embedding test).
    pub alpha: f64,
    /// Windows with fewer lines are measured but never called drifted.
    pub min_lines: usize,
    pub seed: u64,
}

impl Default for MonitorSpec {
    fn default() -> Self {
        MonitorSpec {
            fields: Vec::new(),
            window: None,
            bins: 10,
            embed_sample: 200,
            permutations: 200,
            psi_threshold: 0.2,
            alpha: 0.01,
            min_lines: 30,
            seed: 0x5EED,
        }
    }
}

/// Turns texts into vectors for the embedding drift test.
pub trait Embedder {
    /// The model's name, for the report.
    fn name(&self) -> String;
    fn embed(
        &self,
        texts: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error + Send + Sync>>;
}

/// How a field's values are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    Numeric,
    Category,
    Text,
}

/// Drift of a distribution of numbers (a numeric field, or a text field's lengths in characters).
#[derive(Clone, Debug, Serialize)]
pub struct NumericDrift {
    pub psi: f64,
    pub ks: f64,
    pub ks_p_value: f64,
    pub baseline_mean: Option<f64>,
    pub current_mean: Option<f64>,
    /// The inner bin edges (from the baseline's quantiles) and each side's share per bin.
    pub edges: Vec<f64>,
    pub baseline_shares: Vec<f64>,
    pub current_shares: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CategoryDrift {
    pub psi: f64,
    pub js: f64,
    /// Pearson's chi-square test of the two sides' counts.
    pub chi2_p_value: f64,
    /// The baseline's most frequent categories, then `(other)`.
    pub categories: Vec<String>,
    pub baseline_shares: Vec<f64>,
    pub current_shares: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EmbeddingDrift {
    pub mmd2: f64,
    pub p_value: f64,
    pub baseline_sample: usize,
    pub current_sample: usize,
}

/// One field in one window.
#[derive(Clone, Debug, Serialize)]
pub struct FieldDrift {
    pub kind: FieldKind,
    /// Share of lines without the field (or null): baseline, current.
    pub missing: (f64, f64),
    #[serde(skip_serializing_if = "Option::is_none")]
    pub numeric: Option<NumericDrift>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<CategoryDrift>,
    /// A text field's lengths in characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<NumericDrift>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding: Option<EmbeddingDrift>,
    pub drifted: bool,
    /// Why a measure is missing or not trusted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Operations of a set of lines.
#[derive(Clone, Debug, Serialize)]
pub struct Ops {
    pub lines: usize,
    pub error_rate: f64,
    /// Seconds.
    pub latency_p50: Option<f64>,
    pub latency_p95: Option<f64>,
    pub latency_p99: Option<f64>,
    pub tokens_per_line: Option<f64>,
}

/// One window of the current data.
#[derive(Clone, Debug, Serialize)]
pub struct WindowReport {
    /// `all`, or the window's start (time windows) or first line (line windows).
    pub label: String,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    pub lines: usize,
    pub fields: IndexMap<String, FieldDrift>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops: Option<Ops>,
    /// The fields that drifted here.
    pub drifted: Vec<String>,
}

/// One side of the comparison.
#[derive(Clone, Debug, Serialize)]
pub struct SideSummary {
    #[serde(flatten)]
    pub source: Source,
    pub lines: usize,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
}

/// Every number a rule can name: `name` (`drift.psi`, `ops.error_rate`, `quality.accuracy.delta`),
/// for a field or not, in a window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Measure {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub window: String,
    pub value: f64,
}

impl Measure {
    /// The name with the field in it (`drift.inputs.question.psi`), which a rule may use to name one
    /// field.
    pub fn qualified(&self) -> Option<String> {
        let field = self.field.as_ref()?;
        let (head, rest) = self.name.split_once('.')?;
        Some(format!("{head}.{field}.{rest}"))
    }
}

/// Whether drift was found, and where.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DriftSummary {
    pub detected: bool,
    /// Fields that drifted in some window.
    pub fields: Vec<String>,
    /// Windows (not counting `all`) where some field drifted.
    pub windows_with_drift: usize,
}

/// The result of a monitor.
#[derive(Clone, Debug, Serialize)]
pub struct MonitorReport {
    pub created_on: DateTime<Utc>,
    pub baseline: SideSummary,
    pub current: SideSummary,
    pub fields: IndexMap<String, FieldKind>,
    /// Fields not compared, and why.
    pub skipped: IndexMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_model: Option<String>,
    pub settings: serde_json::Value,
    pub drift: DriftSummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_ops: Option<Ops>,
    /// `all` first, then each window.
    pub windows: Vec<WindowReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<serde_json::Value>,
    pub checks: Vec<Check>,
    /// Whether a `--fail-on` rule held.
    pub failed: bool,
    #[serde(skip)]
    pub measures: Vec<Measure>,
}

impl MonitorReport {
    pub fn add_measure(&mut self, name: &str, field: Option<&str>, window: &str, value: f64) {
        if value.is_finite() {
            self.measures.push(Measure {
                name: name.to_owned(),
                field: field.map(str::to_owned),
                window: window.to_owned(),
                value,
            });
        }
    }

    /// Evaluates the rules over the measures; a rule naming nothing measured is an error.
    pub fn check(&mut self, rules: &[Rule]) -> Result<(), RuleError> {
        self.checks = rule::evaluate(rules, &self.measures)?;
        self.failed = self.checks.iter().any(|c| c.failed);
        Ok(())
    }
}

/// Compares `current` with `baseline`.
pub fn compare(
    spec: &MonitorSpec,
    baseline: (&Source, &[Observation]),
    current: (&Source, &[Observation]),
    embedder: Option<&dyn Embedder>,
) -> Result<MonitorReport, MonitorError> {
    let (base_src, base) = baseline;
    let (cur_src, cur) = current;
    let (fields, skipped) = pick_fields(spec, base, cur)?;
    let windows = cut_windows(spec.window, cur)?;
    let mut report = MonitorReport {
        created_on: Utc::now(),
        baseline: summary(base_src, base),
        current: summary(cur_src, cur),
        fields: fields.clone(),
        skipped,
        embedding_model: embedder
            .filter(|_| spec.embed_sample > 0 && fields.values().any(|k| *k == FieldKind::Text))
            .map(|e| e.name()),
        settings: serde_json::json!({
            "window": spec.window.map(|w| match w {
                WindowSpec::Lines(n) => format!("{n} lines"),
                WindowSpec::Time(d) => format!("{} s", d.num_seconds()),
            }),
            "bins": spec.bins,
            "embed_sample": spec.embed_sample,
            "permutations": spec.permutations,
            "psi_threshold": spec.psi_threshold,
            "alpha": spec.alpha,
            "min_lines": spec.min_lines,
            "seed": spec.seed,
        }),
        drift: DriftSummary::default(),
        baseline_ops: ops(base),
        windows: Vec::new(),
        quality: None,
        checks: Vec::new(),
        failed: false,
        measures: Vec::new(),
    };
    let mut rng = Rng::new(spec.seed);
    // The baseline's side of each text field's embedding test, embedded once.
    let mut base_vectors: IndexMap<&str, Vec<Vec<f32>>> = IndexMap::new();
    if let Some(embedder) = embedder.filter(|_| spec.embed_sample > 0) {
        for (name, kind) in &fields {
            if *kind == FieldKind::Text {
                let all: Vec<&Observation> = base.iter().collect();
                let texts = sample_texts(&all, name, spec.embed_sample, &mut rng);
                let vectors = embed(embedder, name, texts)?;
                base_vectors.insert(name, vectors);
            }
        }
    }
    for (label, start, end, lines) in windows {
        let mut w = WindowReport {
            label: label.clone(),
            start,
            end,
            lines: lines.len(),
            fields: IndexMap::new(),
            ops: ops_of(&lines),
            drifted: Vec::new(),
        };
        for (name, kind) in &fields {
            let b: Vec<Option<&Value>> = base.iter().map(|o| present(o.field(name))).collect();
            let c: Vec<Option<&Value>> = lines.iter().map(|o| present(o.field(name))).collect();
            let mut d = FieldDrift {
                kind: *kind,
                missing: (missing_share(&b), missing_share(&c)),
                numeric: None,
                category: None,
                length: None,
                embedding: None,
                drifted: false,
                note: None,
            };
            match kind {
                FieldKind::Numeric => {
                    d.numeric = numeric_drift(&numbers(&b), &numbers(&c), spec.bins);
                }
                FieldKind::Category => d.category = Some(category_drift(&b, &c)),
                FieldKind::Text => {
                    d.length = numeric_drift(&lengths(&b), &lengths(&c), spec.bins);
                    if let (Some(embedder), Some(bv)) = (embedder, base_vectors.get(name.as_str()))
                    {
                        let texts = sample_texts(&lines, name, spec.embed_sample, &mut rng);
                        let cv = embed(embedder, name, texts)?;
                        d.embedding =
                            stats::mmd_test(bv, &cv, spec.permutations, &mut rng).map(|t| {
                                EmbeddingDrift {
                                    mmd2: t.mmd2,
                                    p_value: t.p_value,
                                    baseline_sample: bv.len(),
                                    current_sample: cv.len(),
                                }
                            });
                    }
                }
            }
            // A PSI drifts when it is both large and significant (its KS or chi-square p-value below
            // alpha): on a few hundred lines a PSI alone wanders past the threshold by chance.
            let psi_drift = [&d.numeric, &d.length]
                .into_iter()
                .flatten()
                .map(|n| (n.psi, n.ks_p_value))
                .chain(d.category.as_ref().map(|c| (c.psi, c.chi2_p_value)))
                .any(|(psi, p)| psi >= spec.psi_threshold && p < spec.alpha);
            let embedding_drift = d.embedding.as_ref().is_some_and(|e| e.p_value < spec.alpha);
            if lines.len() < spec.min_lines {
                d.note = Some(format!(
                    "{} lines: too few to call drift (at least {})",
                    lines.len(),
                    spec.min_lines
                ));
            } else {
                d.drifted = psi_drift || embedding_drift;
            }
            record_field(&mut report, &label, name, &d);
            if d.drifted {
                w.drifted.push(name.clone());
            }
            w.fields.insert(name.clone(), d);
        }
        report.add_measure(
            "drift.detected",
            None,
            &label,
            f64::from(u8::from(!w.drifted.is_empty())),
        );
        if let Some(o) = &w.ops {
            record_ops(&mut report, &label, o);
        }
        report.windows.push(w);
    }
    let mut drifted: Vec<String> = Vec::new();
    for w in &report.windows {
        for f in &w.drifted {
            if !drifted.contains(f) {
                drifted.push(f.clone());
            }
        }
    }
    report.drift = DriftSummary {
        detected: !drifted.is_empty(),
        fields: drifted,
        windows_with_drift: report
            .windows
            .iter()
            .skip(1)
            .filter(|w| !w.drifted.is_empty())
            .count(),
    };
    Ok(report)
}

fn summary(source: &Source, lines: &[Observation]) -> SideSummary {
    SideSummary {
        source: source.clone(),
        lines: lines.len(),
        start: lines.iter().filter_map(|o| o.time).min(),
        end: lines.iter().filter_map(|o| o.time).max(),
    }
}

fn present(v: Option<&Value>) -> Option<&Value> {
    v.filter(|v| !matches!(v, Value::Null))
}

fn missing_share(values: &[Option<&Value>]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().filter(|v| v.is_none()).count() as f64 / values.len() as f64
}

fn numbers(values: &[Option<&Value>]) -> Vec<f64> {
    values
        .iter()
        .flatten()
        .filter_map(|v| match v {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) if f.is_finite() => Some(*f),
            _ => None,
        })
        .collect()
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_json_lossy().to_string(),
    }
}

fn lengths(values: &[Option<&Value>]) -> Vec<f64> {
    values
        .iter()
        .flatten()
        .map(|v| text_of(v).chars().count() as f64)
        .collect()
}

fn numeric_drift(base: &[f64], cur: &[f64], bins: usize) -> Option<NumericDrift> {
    if base.is_empty() || cur.is_empty() {
        return None;
    }
    let (base, cur) = (stats::sorted(base.to_vec()), stats::sorted(cur.to_vec()));
    let edges = stats::quantile_edges(&base, bins.max(2));
    let (hb, hc) = (
        stats::histogram(&base, &edges),
        stats::histogram(&cur, &edges),
    );
    let (ks, ks_p_value) = stats::kolmogorov_smirnov(&base, &cur)?;
    Some(NumericDrift {
        psi: stats::psi(&hb, &hc),
        ks,
        ks_p_value,
        baseline_mean: stats::mean(&base),
        current_mean: stats::mean(&cur),
        edges,
        baseline_shares: stats::shares(&hb),
        current_shares: stats::shares(&hc),
    })
}

/// Categories kept by name; the rest are `(other)`.
const TOP_CATEGORIES: usize = 20;

fn category_drift(base: &[Option<&Value>], cur: &[Option<&Value>]) -> CategoryDrift {
    let mut counts: IndexMap<String, usize> = IndexMap::new();
    for v in base.iter().flatten() {
        *counts.entry(text_of(v)).or_default() += 1;
    }
    counts.sort_by(|ka, a, kb, b| b.cmp(a).then(ka.cmp(kb)));
    let mut categories: Vec<String> = counts.keys().take(TOP_CATEGORIES).cloned().collect();
    categories.push("(other)".to_owned());
    let tally = |values: &[Option<&Value>]| -> Vec<usize> {
        let mut t = vec![0; categories.len()];
        for v in values.iter().flatten() {
            let text = text_of(v);
            let i = categories[..categories.len() - 1]
                .iter()
                .position(|c| *c == text)
                .unwrap_or(categories.len() - 1);
            t[i] += 1;
        }
        t
    };
    let (hb, hc) = (tally(base), tally(cur));
    CategoryDrift {
        psi: stats::psi(&hb, &hc),
        js: stats::jensen_shannon(&hb, &hc),
        chi2_p_value: stats::chi_square(&hb, &hc).map_or(1.0, |(_, p)| p),
        baseline_shares: stats::shares(&hb),
        current_shares: stats::shares(&hc),
        categories,
    }
}

fn sample_texts(lines: &[&Observation], field: &str, k: usize, rng: &mut Rng) -> Vec<String> {
    let texts: Vec<String> = lines
        .iter()
        .filter_map(|o| present(o.field(field)))
        .map(text_of)
        .collect();
    rng.sample_indices(texts.len(), k)
        .into_iter()
        .map(|i| texts[i].clone())
        .collect()
}

fn embed(
    embedder: &dyn Embedder,
    field: &str,
    texts: Vec<String>,
) -> Result<Vec<Vec<f32>>, MonitorError> {
    if texts.is_empty() {
        return Ok(Vec::new());
    }
    embedder.embed(texts).map_err(|source| MonitorError::Embed {
        field: field.to_owned(),
        source,
    })
}

/// The fields compared and their kinds (from the baseline's values), and those left out with why.
#[allow(clippy::type_complexity)]
fn pick_fields(
    spec: &MonitorSpec,
    base: &[Observation],
    cur: &[Observation],
) -> Result<(IndexMap<String, FieldKind>, IndexMap<String, String>), MonitorError> {
    let mut base_names: Vec<String> = Vec::new();
    for o in base {
        for n in o.field_names() {
            if !base_names.contains(&n) {
                base_names.push(n);
            }
        }
    }
    let wanted: Vec<String> = if spec.fields.is_empty() {
        base_names.clone()
    } else {
        for f in &spec.fields {
            if !base_names.contains(f) {
                return Err(MonitorError::UnknownField {
                    field: f.clone(),
                    known: base_names.join(", "),
                });
            }
        }
        spec.fields.clone()
    };
    let mut kinds = IndexMap::new();
    let mut skipped = IndexMap::new();
    for name in wanted {
        if !cur.iter().any(|o| present(o.field(&name)).is_some()) {
            skipped.insert(name, "no line of the current data has it".to_owned());
            continue;
        }
        let values: Vec<&Value> = base
            .iter()
            .filter_map(|o| present(o.field(&name)))
            .collect();
        match kind_of(&values) {
            Some(k) => {
                kinds.insert(name, k);
            }
            None => {
                skipped.insert(name, "no value in the baseline".to_owned());
            }
        }
    }
    Ok((kinds, skipped))
}

/// Numbers are numeric; booleans, and strings with few distinct values, categories; other strings
/// (and lists and maps) texts.
fn kind_of(values: &[&Value]) -> Option<FieldKind> {
    if values.is_empty() {
        return None;
    }
    if values
        .iter()
        .all(|v| matches!(v, Value::Int(_) | Value::Float(_)))
    {
        return Some(FieldKind::Numeric);
    }
    if values.iter().all(|v| matches!(v, Value::Bool(_))) {
        return Some(FieldKind::Category);
    }
    if values.iter().all(|v| matches!(v, Value::String(_))) {
        let mut distinct = std::collections::HashSet::new();
        for v in values {
            distinct.insert(text_of(v));
            if distinct.len() > TOP_CATEGORIES {
                return Some(FieldKind::Text);
            }
        }
        if distinct.len() * 2 <= values.len() {
            return Some(FieldKind::Category);
        }
    }
    Some(FieldKind::Text)
}

type Window<'a> = (
    String,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Vec<&'a Observation>,
);

/// `all`, then the windows `spec` cuts.
fn cut_windows(
    spec: Option<WindowSpec>,
    lines: &[Observation],
) -> Result<Vec<Window<'_>>, MonitorError> {
    let span = |ls: &[&Observation]| {
        (
            ls.iter().filter_map(|o| o.time).min(),
            ls.iter().filter_map(|o| o.time).max(),
        )
    };
    let all: Vec<&Observation> = lines.iter().collect();
    let (s, e) = span(&all);
    let mut out = vec![("all".to_owned(), s, e, all)];
    match spec {
        None => {}
        Some(WindowSpec::Lines(n)) => {
            for (i, chunk) in lines.chunks(n).enumerate() {
                let ls: Vec<&Observation> = chunk.iter().collect();
                let (s, e) = span(&ls);
                out.push((
                    format!("lines {}-{}", i * n, i * n + ls.len() - 1),
                    s,
                    e,
                    ls,
                ));
            }
        }
        Some(WindowSpec::Time(d)) => {
            if lines.iter().any(|o| o.time.is_none()) {
                return Err(MonitorError::Window {
                    text: format!("{}s", d.num_seconds()),
                    why: "time windows need lines with start times (a run or a traffic log); \
                          cut a data file by lines instead (--window 500)"
                        .into(),
                });
            }
            let step = d.num_milliseconds().max(1);
            let mut groups: std::collections::BTreeMap<i64, Vec<&Observation>> = Default::default();
            for o in lines {
                let t = o.time.expect("checked").timestamp_millis();
                groups.entry(t.div_euclid(step) * step).or_default().push(o);
            }
            for (start, ls) in groups {
                let start = DateTime::from_timestamp_millis(start);
                let end = start.map(|s| s + d);
                let label = start.map_or_else(String::new, |s| s.to_rfc3339());
                out.push((label, start, end, ls));
            }
        }
    }
    Ok(out)
}

fn ops(lines: &[Observation]) -> Option<Ops> {
    ops_of(&lines.iter().collect::<Vec<_>>())
}

fn ops_of(lines: &[&Observation]) -> Option<Ops> {
    let known: Vec<&LineOps> = lines.iter().filter_map(|o| o.ops.as_ref()).collect();
    if known.is_empty() {
        return None;
    }
    let latencies = stats::sorted(known.iter().filter_map(|o| o.latency).collect());
    let tokens: Vec<f64> = known
        .iter()
        .filter_map(|o| o.tokens.map(|t| t as f64))
        .collect();
    Some(Ops {
        lines: known.len(),
        error_rate: known.iter().filter(|o| o.failed).count() as f64 / known.len() as f64,
        latency_p50: stats::percentile(&latencies, 0.5),
        latency_p95: stats::percentile(&latencies, 0.95),
        latency_p99: stats::percentile(&latencies, 0.99),
        tokens_per_line: (!tokens.is_empty())
            .then(|| tokens.iter().sum::<f64>() / known.len() as f64),
    })
}

fn record_field(report: &mut MonitorReport, window: &str, field: &str, d: &FieldDrift) {
    let f = Some(field);
    report.add_measure("drift.missing_rate", f, window, d.missing.1);
    report.add_measure("drift.drifted", f, window, f64::from(u8::from(d.drifted)));
    if let Some(n) = &d.numeric {
        report.add_measure("drift.psi", f, window, n.psi);
        report.add_measure("drift.ks", f, window, n.ks);
        report.add_measure("drift.ks_p_value", f, window, n.ks_p_value);
    }
    if let Some(c) = &d.category {
        report.add_measure("drift.psi", f, window, c.psi);
        report.add_measure("drift.js", f, window, c.js);
        report.add_measure("drift.chi2_p_value", f, window, c.chi2_p_value);
    }
    if let Some(n) = &d.length {
        report.add_measure("drift.psi", f, window, n.psi);
        report.add_measure("drift.length.psi", f, window, n.psi);
        report.add_measure("drift.ks", f, window, n.ks);
        report.add_measure("drift.ks_p_value", f, window, n.ks_p_value);
    }
    if let Some(e) = &d.embedding {
        report.add_measure("drift.embedding.mmd2", f, window, e.mmd2);
        report.add_measure("drift.embedding.p_value", f, window, e.p_value);
    }
}

fn record_ops(report: &mut MonitorReport, window: &str, o: &Ops) {
    report.add_measure("ops.lines", None, window, o.lines as f64);
    report.add_measure("ops.error_rate", None, window, o.error_rate);
    for (name, v) in [
        ("ops.latency_p50", o.latency_p50),
        ("ops.latency_p95", o.latency_p95),
        ("ops.latency_p99", o.latency_p99),
        ("ops.tokens_per_line", o.tokens_per_line),
    ] {
        if let Some(v) = v {
            report.add_measure(name, None, window, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(question: &str, score: f64, label: &str) -> Observation {
        let mut o = Observation::default();
        o.inputs.insert("question".into(), Value::from(question));
        o.inputs.insert("score".into(), Value::Float(score));
        o.outputs.insert("label".into(), Value::from(label));
        o
    }

    fn source() -> Source {
        Source {
            spec: "test".into(),
            kind: SourceKind::Data,
            path: PathBuf::from("test"),
        }
    }

    fn side(n: usize, shift: f64, label_b: f64, seed: u64) -> Vec<Observation> {
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|i| {
                let u = (rng.next_u64() % 10_000) as f64 / 10_000.0;
                let label = if u < label_b { "b" } else { "a" };
                obs(
                    &format!("question number {i} {}", "x".repeat(i % 7)),
                    u + shift,
                    label,
                )
            })
            .collect()
    }

    #[test]
    fn kinds_follow_the_baseline_values() {
        let b = side(200, 0.0, 0.3, 1);
        let (kinds, skipped) = pick_fields(&MonitorSpec::default(), &b, &b).unwrap();
        assert_eq!(kinds["inputs.question"], FieldKind::Text);
        assert_eq!(kinds["inputs.score"], FieldKind::Numeric);
        assert_eq!(kinds["outputs.label"], FieldKind::Category);
        assert!(skipped.is_empty());
        let bad = MonitorSpec {
            fields: vec!["inputs.nope".into()],
            ..MonitorSpec::default()
        };
        let e = pick_fields(&bad, &b, &b).unwrap_err().to_string();
        assert!(
            e.contains("inputs.nope") && e.contains("inputs.score"),
            "{e}"
        );
    }

    #[test]
    fn a_shift_is_found_and_the_same_distribution_is_not() {
        let spec = MonitorSpec::default();
        let b = side(1000, 0.0, 0.3, 1);
        let same = side(1000, 0.0, 0.3, 2);
        let moved = side(1000, 0.5, 0.8, 3);
        let r = compare(&spec, (&source(), &b), (&source(), &same), None).unwrap();
        assert!(!r.drift.detected, "{:?}", r.drift);
        let r = compare(&spec, (&source(), &b), (&source(), &moved), None).unwrap();
        assert!(r.drift.detected);
        assert!(r.drift.fields.contains(&"inputs.score".to_owned()));
        assert!(r.drift.fields.contains(&"outputs.label".to_owned()));
        let all = &r.windows[0];
        assert!(all.fields["inputs.score"].numeric.as_ref().unwrap().ks > 0.4);
        assert!(all.fields["outputs.label"].category.as_ref().unwrap().js > 0.1);
    }

    #[test]
    fn windows_cut_by_lines_and_by_time() {
        let lines: Vec<Observation> = (0..10)
            .map(|i| Observation {
                time: DateTime::from_timestamp(3600 * 10 + i * 900, 0),
                ..obs("q", 1.0, "a")
            })
            .collect();
        let w = cut_windows(Some(WindowSpec::Lines(4)), &lines).unwrap();
        assert_eq!(
            w.iter().map(|w| w.3.len()).collect::<Vec<_>>(),
            vec![10, 4, 4, 2]
        );
        let hourly: WindowSpec = "1h".parse().unwrap();
        let w = cut_windows(Some(hourly), &lines).unwrap();
        assert_eq!(
            w.iter().map(|w| w.3.len()).collect::<Vec<_>>(),
            vec![10, 4, 4, 2]
        );
        assert_eq!(w[1].1, DateTime::from_timestamp(36_000, 0));
        assert!("0".parse::<WindowSpec>().is_err());
        assert!("5x".parse::<WindowSpec>().is_err());
        let untimed = vec![obs("q", 1.0, "a")];
        assert!(cut_windows(Some(hourly), &untimed).is_err());
    }

    #[test]
    fn small_windows_are_measured_but_not_called_drifted() {
        let spec = MonitorSpec {
            window: Some(WindowSpec::Lines(10)),
            ..MonitorSpec::default()
        };
        let b = side(500, 0.0, 0.3, 1);
        let moved = side(25, 5.0, 0.3, 3);
        let r = compare(&spec, (&source(), &b), (&source(), &moved), None).unwrap();
        let w = &r.windows[1];
        assert!(w.fields["inputs.score"].numeric.as_ref().unwrap().psi > 1.0);
        assert!(!w.fields["inputs.score"].drifted);
        assert!(w.fields["inputs.score"].note.is_some());
    }
}
