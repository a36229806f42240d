//! `sluice trace show`: a run's lines as span trees — each line and its node runs on one time axis,
//! with status, duration, tokens and time to first token — read from the run's own records, with no
//! tracing service.

use std::fmt::Write;

use serde::Serialize;
use sluice_engine::store::{LineRecord, NodeRecord, TokenCounts};

use super::run::load_run;
use crate::ExitStatus;
use crate::cli::{OutputFormat, TraceShowArgs};
use crate::style::{self, Paint};

/// One node run on its line's time axis.
#[derive(Debug, Serialize)]
pub struct NodeSpan {
    pub node: String,
    pub status: &'static str,
    /// From the line's start, in milliseconds.
    pub start_ms: f64,
    pub duration_ms: f64,
    #[serde(flatten)]
    pub tokens: TokenCounts,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_to_first_token_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A line and its node runs.
#[derive(Debug, Serialize)]
pub struct LineSpan {
    pub line_number: usize,
    pub status: &'static str,
    pub duration_ms: f64,
    #[serde(flatten)]
    pub tokens: TokenCounts,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub nodes: Vec<NodeSpan>,
}

fn ms(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().map_or(0.0, |us| us as f64 / 1000.0)
}

fn node_span(n: &NodeRecord, line_start: Option<chrono::DateTime<chrono::Utc>>) -> NodeSpan {
    let start_ms = match (line_start, n.start_time) {
        (Some(l), Some(s)) => ms(s - l).max(0.0),
        _ => 0.0,
    };
    let duration_ms = match (n.start_time, n.end_time) {
        (Some(s), Some(e)) => ms(e - s),
        _ => n.system_metrics.duration.map_or(0.0, |d| d * 1000.0),
    };
    NodeSpan {
        node: n.node.clone(),
        status: n.status.as_str(),
        start_ms,
        duration_ms,
        tokens: n.system_metrics.tokens,
        time_to_first_token_ms: n.system_metrics.time_to_first_token_ms,
        error: n
            .error
            .as_ref()
            .and_then(|e| e.get("message"))
            .and_then(|m| m.as_str())
            .map(str::to_owned),
    }
}

/// The span tree of one line record: nodes in the order they started.
pub fn line_span(l: &LineRecord) -> LineSpan {
    let mut nodes: Vec<NodeSpan> = l
        .node_runs
        .iter()
        .map(|n| node_span(n, l.start_time))
        .collect();
    nodes.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));
    LineSpan {
        line_number: l.line_number,
        status: l.status.as_str(),
        duration_ms: l.latency().map_or(0.0, |s| s * 1000.0),
        tokens: l.tokens(),
        error: l.error_message().map(str::to_owned),
        nodes,
    }
}

/// Milliseconds as people read them: `840 ms`, `1.52 s`.
fn human(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

fn tokens_text(t: &TokenCounts) -> Option<String> {
    match (t.prompt_tokens, t.completion_tokens) {
        (None, None) => None,
        (p, c) => Some(format!(
            "{} in / {} out tokens",
            p.unwrap_or(0),
            c.unwrap_or(0)
        )),
    }
}

/// A bar of `width` cells for `[start, start + len)` of `total`.
fn bar(start: f64, len: f64, total: f64, width: usize) -> String {
    let total = total.max(1e-9);
    let from = ((start / total) * width as f64).floor() as usize;
    let to = (((start + len) / total) * width as f64).ceil() as usize;
    let (from, to) = (
        from.min(width - 1),
        to.clamp(from.min(width - 1) + 1, width),
    );
    (0..width)
        .map(|i| if i >= from && i < to { '█' } else { '·' })
        .collect()
}

/// The span tree as text: a line header, then one row per node with a bar on the line's time axis.
pub fn render(span: &LineSpan, color: bool) -> String {
    let mut out = String::new();
    let mut head = format!(
        "line {}  {}  {}",
        span.line_number,
        style::status(color, span.status),
        human(span.duration_ms)
    );
    if let Some(t) = tokens_text(&span.tokens) {
        let _ = write!(head, "  {t}");
    }
    out.push_str(&style::paint(color, Paint::Bold, &head));
    out.push('\n');
    if let Some(e) = &span.error {
        let _ = writeln!(out, "  error: {e}");
    }
    let width = span.nodes.iter().map(|n| n.node.len()).max().unwrap_or(4);
    let total = span
        .nodes
        .iter()
        .map(|n| n.start_ms + n.duration_ms)
        .fold(span.duration_ms, f64::max);
    for (i, n) in span.nodes.iter().enumerate() {
        let branch = if i + 1 == span.nodes.len() {
            "└─"
        } else {
            "├─"
        };
        let mut row = format!(
            "  {branch} {:<width$}  {}  +{:<9} {:<9} {}",
            n.node,
            bar(n.start_ms, n.duration_ms, total, 30),
            human(n.start_ms),
            human(n.duration_ms),
            style::status(color, n.status),
        );
        if let Some(t) = tokens_text(&n.tokens) {
            let _ = write!(row, "  {t}");
        }
        if let Some(t) = n.time_to_first_token_ms {
            let _ = write!(row, ", first token after {}", human(t as f64));
        }
        if let Some(e) = &n.error {
            let _ = write!(row, "  error: {e}");
        }
        out.push_str(row.trim_end());
        out.push('\n');
    }
    out
}

/// `sluice trace show RUN [--line N]`.
pub fn show(args: TraceShowArgs) -> anyhow::Result<ExitStatus> {
    let run = match load_run(&args.name) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{} {e}", style::error_label());
            return Ok(if e.is_user_error() {
                ExitStatus::Invalid
            } else {
                ExitStatus::Failed
            });
        }
    };
    let lines: Vec<&LineRecord> = match args.line {
        Some(n) => match run.lines.get(&n) {
            Some(l) => vec![l],
            None => {
                eprintln!(
                    "{} run `{}` has no line {n} (it has {} lines)",
                    style::error_label(),
                    run.name,
                    run.lines.len()
                );
                return Ok(ExitStatus::Invalid);
            }
        },
        None => run.lines.values().take(args.max_lines).collect(),
    };
    let spans: Vec<LineSpan> = lines.into_iter().map(line_span).collect();
    match args.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&spans)?),
        OutputFormat::Table => {
            let color = style::stdout();
            for s in &spans {
                print!("{}", render(s, color));
            }
            if args.line.is_none() && run.lines.len() > spans.len() {
                eprintln!(
                    "({} of {} lines; --line N for one, --max-lines for more)",
                    spans.len(),
                    run.lines.len()
                );
            }
        }
    }
    Ok(ExitStatus::Ok)
}

#[cfg(test)]
mod tests {
    use super::bar;

    #[test]
    fn bars_cover_their_share_of_the_axis_and_never_vanish() {
        assert_eq!(bar(0.0, 50.0, 100.0, 10), "█████·····");
        assert_eq!(bar(50.0, 50.0, 100.0, 10), "·····█████");
        assert_eq!(bar(99.9, 0.0, 100.0, 10), "·········█");
        assert_eq!(bar(0.0, 0.0, 0.0, 4), "█···");
    }
}
