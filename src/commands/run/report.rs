//! `sluice run visualize`: one self-contained HTML file (inline CSS, JS and SVG; nothing fetched).
//!
//! It shows the runs (variants by name, which run an evaluation scored) with their metrics, a bar chart
//! per metric, and one table of every line: the inputs, then per run its outputs, status and
//! latency. An evaluation run is joined to the run it scored line by line, so the base run's outputs,
//! the ground truth (the evaluation's inputs mapped from the data) and the scores sit side by side. A
//! click on a line (or a link to `#line-N`, which works without JavaScript too) opens its details in a
//! drawer: each node's inputs, the prompt sent to the model, output, tokens, time and the traceback of a
//! failed node. Columns sort on a click; the search
//! box and the status filter narrow the lines. Every text is escaped.

use std::collections::BTreeSet;
use std::fmt::Write;

use serde_json::Value as Json;
use sluice_engine::store::{LineRecord, LineStatus, NodeRecord};
use sluice_engine::{Map, Value, json};

use super::view::{LoadedRun, cell as text};

pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON value as display text: strings bare, everything else as indented JSON.
fn show(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Array(_) | Json::Object(_) => serde_json::to_string_pretty(v).unwrap_or_default(),
        other => text(other),
    }
}

/// A value as display text: strings bare, everything else as JSON (lists and maps indented), with
/// NaN and infinities as the run files write them.
fn show_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::List(_) | Value::Map(_) => json::to_string_pretty(v).unwrap_or_default(),
        other => json::to_string(other).unwrap_or_default(),
    }
}

/// A record's values as an aligned key/value grid.
fn fields(m: &Map) -> String {
    if m.is_empty() {
        return String::new();
    }
    let mut out = String::from(r#"<div class="kv">"#);
    for (k, v) in m {
        let _ = write!(
            out,
            r#"<span class="k">{}</span><span class="v">{}</span>"#,
            esc(k),
            esc(&show_value(v))
        );
    }
    out.push_str("</div>");
    out
}

/// The plain text of an object's values, for sorting and searching.
fn sort_text(m: &Map) -> String {
    m.values().map(show_value).collect::<Vec<_>>().join(" ")
}

const STYLE: &str = r#"
.waterfall { display: grid; gap: 3px; margin: 2px 0 6px; }
.wf-row { display: grid; grid-template-columns: minmax(80px, max-content) 1fr 70px; gap: 8px; align-items: center; font-size: 12px; }
.wf-name { font-family: ui-monospace, monospace; }
.wf-axis { position: relative; height: 12px; background: var(--head); border-radius: 3px; }
.wf-bar { position: absolute; top: 0; bottom: 0; background: var(--accent); border-radius: 3px; overflow: hidden; min-width: 2px; }
.wf-bar.Failed { background: var(--bad); }
.wf-bar.Bypassed { background: var(--muted); }
.wf-wait { display: block; height: 100%; background: rgba(255,255,255,.45); }
.wf-ms { color: var(--muted); text-align: right; }
:root { --fg:#1d2330; --muted:#667085; --line:#e4e7ec; --ok:#127a3e; --bad:#b42318; --warn:#b54708; --accent:#3559e0; --head:#f2f4f7; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); margin: 0; background: #f7f8fa; }
header { background: #172036; color: #fff; padding: 18px 28px; }
header h1 { margin: 0; font-size: 20px; }
header p { margin: 4px 0 0; color: #c7cede; font-size: 12px; overflow-wrap: anywhere; }
main { padding: 20px 28px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px 18px; margin-bottom: 18px; }
h2 { font-size: 16px; margin: 0 0 12px; }
.scroll { overflow-x: auto; }
table { border-collapse: separate; border-spacing: 0; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--head); font-weight: 600; white-space: nowrap; }
td { white-space: pre-wrap; overflow-wrap: anywhere; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.Completed { color: var(--ok); font-weight: 600; }
.Failed, .Canceled, .Missing { color: var(--bad); font-weight: 600; }
.Bypassed, .Running { color: var(--warn); font-weight: 600; }
.muted { color: var(--muted); font-weight: 400; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; background: #e8edff; color: #2540b0; font-size: 12px; font-weight: 600; white-space: nowrap; }
.badge.eval { background: #e6f4ea; color: #11652f; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; margin-top: 14px; }
th.metric, td.metric { background: #f5f8ff; }
th.metric { background: #e8edff; }
.chart { border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; background: #fcfcfd; }
.chart h3 { font-size: 13px; margin: 0 0 6px; }
.controls { display: flex; flex-wrap: wrap; gap: 10px; align-items: center; margin-bottom: 10px; }
.controls input { flex: 1; min-width: 220px; max-width: 420px; padding: 6px 10px; border: 1px solid #c9ced8; border-radius: 6px; font: inherit; }
.controls select { padding: 5px 8px; border-radius: 6px; border: 1px solid #c9ced8; font: inherit; }
#count { color: var(--muted); }
.err { color: var(--bad); }
.lines-wrap { max-height: 78vh; overflow: auto; border: 1px solid var(--line); border-radius: 6px; }
#lines { width: max-content; min-width: 100%; }
#lines thead th { position: sticky; z-index: 2; }
#lines thead tr:first-child th { top: 0; }
#lines thead tr.sub th { top: var(--h1, 33px); }
#lines th.group { text-align: center; border-left: 2px solid #d0d5dd; white-space: normal; min-width: 20ch; }
#lines th.group .name { font-weight: 600; overflow-wrap: anywhere; }
#lines .first { border-left: 2px solid #d0d5dd; }
#lines td.out { min-width: 12ch; max-width: 36ch; }
#lines td.inputs { min-width: 14ch; max-width: 30ch; }
/* The line number and the inputs stay in view while many runs scroll sideways. */
#lines .ln { position: sticky; left: 0; z-index: 1; width: 4.2em; min-width: 4.2em; max-width: 4.2em; background: #fff; }
#lines .inputs { position: sticky; left: 4.2em; z-index: 1; background: #fff; box-shadow: inset -2px 0 0 #d0d5dd; }
#lines thead .ln, #lines thead .inputs { z-index: 3; background: var(--head); }
#lines th[data-col] { cursor: pointer; user-select: none; }
#lines th[data-col]:hover { background: #e4e7ec; }
#lines th[aria-sort="ascending"]::after { content: " \25B2"; font-size: 10px; }
#lines th[aria-sort="descending"]::after { content: " \25BC"; font-size: 10px; }
#lines tbody tr.line { cursor: pointer; }
#lines tbody tr.line:hover td { background: #f5f8ff; }
#lines tbody tr.line.open td { background: #e3e9ff; }
#lines td.ln a { color: var(--accent); text-decoration: none; font-weight: 600; }
.drawer { display: none; position: fixed; top: 0; right: 0; bottom: 0; width: min(1120px, 94vw); background: #f7f8fa; box-shadow: -10px 0 28px rgba(16, 24, 40, .22); border-left: 1px solid #d0d5dd; overflow: auto; z-index: 10; }
html:not(.js) .drawer:target, .drawer.open { display: block; }
.drawer-head { position: sticky; top: 0; z-index: 1; background: #172036; color: #fff; padding: 12px 18px; display: flex; gap: 14px; align-items: center; }
.drawer-head h2 { margin: 0; font-size: 16px; }
.drawer-head a { color: #c7cede; text-decoration: none; font-size: 13px; }
.drawer-head a:hover { color: #fff; }
.drawer-head .close { margin-left: auto; font-size: 22px; line-height: 1; }
.drawer-inputs { padding: 12px 18px 0; }
.drill { padding: 12px 18px 18px; display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
.card { flex: 1 1 420px; min-width: 320px; max-width: 100%; background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
.card h3 { margin: 0 0 8px; font-size: 14px; display: flex; flex-wrap: wrap; gap: 8px; align-items: baseline; }
.card h3 .name { overflow-wrap: anywhere; }
details.node { border-top: 1px solid var(--line); padding: 6px 0; }
details.node > summary { cursor: pointer; display: flex; flex-wrap: wrap; gap: 10px; align-items: baseline; }
details.node > summary b { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px; }
.part { margin: 6px 0 0 14px; }
.part > .label { font-size: 11px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); margin-bottom: 2px; }
pre, .msg .content { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; font: 12px/1.45 ui-monospace, SFMono-Regular, Menlo, monospace; background: #f6f7f9; border: 1px solid var(--line); border-radius: 5px; padding: 6px 8px; max-height: 320px; overflow: auto; }
pre.tb { background: #fff5f4; border-color: #f3c7c2; color: #7a1b12; }
.msg { margin-bottom: 4px; }
.msg .role { font-size: 11px; font-weight: 700; color: #2540b0; }
.kv { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 2px 10px; }
.kv .k { color: var(--muted); font-weight: 600; white-space: nowrap; }
.kv .v { white-space: pre-wrap; overflow-wrap: anywhere; }
.part .kv { font: 12px/1.45 ui-monospace, SFMono-Regular, Menlo, monospace; }
"#;

const SCRIPT: &str = r#"
(function () {
  document.documentElement.classList.add('js');
  var table = document.getElementById('lines');
  var body = table.tBodies[0];
  var q = document.getElementById('q'), st = document.getElementById('status');
  var count = document.getElementById('count');
  function lines() { return Array.prototype.slice.call(body.querySelectorAll('tr.line')); }
  function drawer(n) { return document.getElementById('line-' + n); }
  // The second header row sits under the first while scrolling.
  var first = table.tHead.rows[0];
  if (first) table.style.setProperty('--h1', first.getBoundingClientRect().height + 'px');
  function apply() {
    var needle = q.value.toLowerCase(), want = st.value, shown = 0, all = lines();
    all.forEach(function (r) {
      var d = drawer(r.getAttribute('data-line'));
      var hay = r.textContent + ' ' + (d ? d.textContent : '');
      var ok = (!needle || hay.toLowerCase().indexOf(needle) >= 0) &&
               (want === 'all' || r.getAttribute('data-status').split(' ').indexOf(want) >= 0);
      r.style.display = ok ? '' : 'none';
      if (ok) shown++;
    });
    count.textContent = shown + ' of ' + all.length + ' lines';
  }
  function key(r, col) {
    var c = r.cells[col];
    if (!c) return '';
    var v = c.hasAttribute('data-v') ? c.getAttribute('data-v') : c.textContent;
    if (v.trim() === '') return null;
    var n = parseFloat(v);
    return (!isNaN(n) && isFinite(v)) ? n : v.toLowerCase();
  }
  function sortBy(col, dir) {
    var rows = lines();
    rows.sort(function (a, b) {
      var x = key(a, col), y = key(b, col), c;
      // Empty cells (a run without the line) go last either way.
      if (x === null || y === null) {
        if (x !== y) return x === null ? 1 : -1;
        return +a.getAttribute('data-line') - +b.getAttribute('data-line');
      }
      if (typeof x === 'number' && typeof y === 'number') c = x - y;
      else c = String(x) < String(y) ? -1 : String(x) > String(y) ? 1 : 0;
      if (c === 0) c = +a.getAttribute('data-line') - +b.getAttribute('data-line');
      return dir === 'desc' ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.querySelectorAll('th[data-col]'), function (th) {
      th.removeAttribute('aria-sort');
      if (+th.getAttribute('data-col') === col) th.setAttribute('aria-sort', dir === 'desc' ? 'descending' : 'ascending');
    });
  }
  Array.prototype.forEach.call(table.querySelectorAll('th[data-col]'), function (th) {
    th.addEventListener('click', function () {
      sortBy(+th.getAttribute('data-col'), th.getAttribute('aria-sort') === 'ascending' ? 'desc' : 'asc');
    });
  });
  // A line's details open in a drawer: on a click on its row, or from a link to #line-N.
  var current = null;
  function close() {
    if (!current) return;
    current.classList.remove('open');
    var r = document.getElementById('row-' + current.id.slice(5));
    if (r) r.classList.remove('open');
    current = null;
    if (history.replaceState) history.replaceState(null, '', location.pathname + location.search);
  }
  function show(n) {
    var d = drawer(n);
    if (!d) return;
    close();
    d.classList.add('open');
    d.scrollTop = 0;
    current = d;
    var r = document.getElementById('row-' + n);
    if (r) r.classList.add('open');
    if (history.replaceState) history.replaceState(null, '', '#line-' + n);
  }
  document.addEventListener('click', function (e) {
    var a = e.target.closest('a');
    var href = a ? a.getAttribute('href') : null;
    var m = href && /^#line-(\d+)$/.exec(href);
    if (m) { e.preventDefault(); show(m[1]); return; }
    if (a && a.classList.contains('close')) { e.preventDefault(); close(); return; }
    var r = e.target.closest('tr.line');
    if (r && !(window.getSelection && String(window.getSelection()).length)) show(r.getAttribute('data-line'));
  });
  document.addEventListener('keydown', function (e) { if (e.key === 'Escape') close(); });
  // A link can open a line (report.html#line-3), filter (#q=paris&status=Failed) or sort (#sort=3&dir=desc).
  var hash = location.hash.slice(1);
  var m = /^line-(\d+)$/.exec(hash);
  if (m) {
    show(m[1]);
  } else {
    var params = new URLSearchParams(hash);
    if (params.get('q')) q.value = params.get('q');
    if (params.get('status')) st.value = params.get('status');
    if (params.get('sort')) sortBy(+params.get('sort'), params.get('dir') === 'desc' ? 'desc' : 'asc');
  }
  q.addEventListener('input', apply);
  st.addEventListener('change', apply);
  apply();
})();
"#;

const COLORS: &[&str] = &[
    "#3559e0", "#e07a35", "#2f9e6e", "#a33ac2", "#c2a33a", "#3ab4c2",
];

/// A horizontal bar chart of one metric across runs.
fn chart(metric: &str, values: &[(String, Option<f64>)]) -> String {
    let max = values
        .iter()
        .filter_map(|(_, v)| *v)
        .map(f64::abs)
        .fold(0.0, f64::max);
    let bar_h = 22;
    let label_w = 180.0;
    let plot_w = 260.0;
    let h = values.len() * (bar_h + 8) + 8;
    let mut svg = format!(
        r#"<div class="chart"><h3>{}</h3><svg width="{}" height="{h}" role="img" aria-label="{}">"#,
        esc(metric),
        label_w + plot_w + 70.0,
        esc(metric)
    );
    for (i, (run, v)) in values.iter().enumerate() {
        let y = 8 + i * (bar_h + 8);
        let width = match v {
            Some(v) if max > 0.0 => v.abs() / max * plot_w,
            _ => 0.0,
        };
        let name: String = if run.chars().count() > 26 {
            let tail: Vec<char> = run.chars().rev().take(25).collect();
            format!("…{}", tail.into_iter().rev().collect::<String>())
        } else {
            run.clone()
        };
        let _ = write!(
            svg,
            r##"<text x="0" y="{}" font-size="12" fill="#344054"><title>{}</title>{}</text><rect x="{label_w}" y="{y}" width="{width:.1}" height="{bar_h}" rx="3" fill="{}"/><text x="{:.1}" y="{}" font-size="12" fill="#1d2330">{}</text>"##,
            y + 15,
            esc(run),
            esc(&name),
            COLORS[i % COLORS.len()],
            label_w + width + 6.0,
            y + 15,
            v.map_or("n/a".to_owned(), |v| format!(
                "{}",
                (v * 10000.0).round() / 10000.0
            )),
        );
    }
    svg.push_str("</svg></div>");
    svg
}

/// A run's variants by name: `variant_1` for one node, `node: variant` each for several; empty for none.
pub(crate) fn variant_label(variants: &indexmap::IndexMap<String, String>) -> String {
    match variants.len() {
        0 => String::new(),
        1 => variants.values().next().cloned().unwrap_or_default(),
        _ => variants
            .iter()
            .map(|(n, v)| format!("{n}: {v}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// The variant badge of a run (the node it varies in the tooltip), or nothing.
fn variant_badge(r: &LoadedRun) -> String {
    let v = &r.record.properties.node_variant;
    if v.is_empty() {
        return String::new();
    }
    let nodes: Vec<&str> = v.keys().map(String::as_str).collect();
    format!(
        r#"<span class="badge" title="variant of node {}">{}</span>"#,
        esc(&nodes.join(", ")),
        esc(&variant_label(v))
    )
}

/// How a run appears in the lines table.
struct Group<'a> {
    run: &'a LoadedRun,
    /// For an evaluation run: the input names mapped from the data (`${data.x}`), its ground truth.
    truth: Option<Vec<String>>,
}

impl Group<'_> {
    fn is_eval(&self) -> bool {
        self.truth.is_some()
    }

    /// The sub-columns: (label, numeric).
    fn columns(&self) -> Vec<(&'static str, bool)> {
        match &self.truth {
            Some(t) if !t.is_empty() => vec![
                ("ground truth", false),
                ("scores", false),
                ("status", false),
            ],
            Some(_) => vec![("inputs", false), ("scores", false), ("status", false)],
            None => vec![("outputs", false), ("status", false), ("latency", true)],
        }
    }
}

/// The evaluated run's name, when `r` is an evaluation run that is part of the report.
fn base_of<'a>(r: &'a LoadedRun, runs: &[LoadedRun]) -> Option<&'a str> {
    r.record
        .properties
        .run
        .as_deref()
        .filter(|b| runs.iter().any(|o| o.name == *b))
}

fn groups(runs: &[LoadedRun]) -> Vec<Group<'_>> {
    runs.iter()
        .map(|r| {
            let truth = r.record.properties.run.as_ref().map(|_| {
                let mapping = &r.record.properties.column_mapping;
                if mapping.is_empty() {
                    Vec::new()
                } else {
                    mapping
                        .iter()
                        .filter(|(_, v)| v.as_str().is_some_and(|s| s.starts_with("${data.")))
                        .map(|(k, _)| k.clone())
                        .collect()
                }
            });
            Group { run: r, truth }
        })
        .collect()
}

fn latency_ms(l: &LineRecord) -> Option<f64> {
    l.latency().map(|s| (s * 1000.0).round())
}

/// The traceback a failed node or line carries (promptflow's `debugInfo.stackTrace`, or the tool
/// details in `additionalInfo`).
fn traceback(error: &Json) -> Option<String> {
    let tb = error["debugInfo"]["stackTrace"]
        .as_str()
        .or_else(|| error["additionalInfo"][0]["info"]["traceback"].as_str())?;
    (!tb.trim().is_empty()).then(|| tb.to_owned())
}

fn error_message(error: &Json) -> String {
    error["message"]
        .as_str()
        .map_or_else(|| show(error), str::to_owned)
}

/// A prompt as sent: chat messages one block per role, or the completion text.
fn prompt_html(prompt: &Json) -> String {
    match prompt {
        Json::Array(messages) => {
            let mut out = String::new();
            for m in messages {
                let role = m["role"].as_str().unwrap_or("?");
                let name = m["name"]
                    .as_str()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default();
                let _ = write!(
                    out,
                    r#"<div class="msg"><div class="role">{}{}</div><div class="content">{}</div></div>"#,
                    esc(role),
                    esc(&name),
                    esc(&show(&m["content"]))
                );
            }
            out
        }
        other => format!("<pre>{}</pre>", esc(&show(other))),
    }
}

fn part(label: &str, body: &str) -> String {
    format!(
        r#"<div class="part"><div class="label">{}</div>{body}</div>"#,
        esc(label)
    )
}

/// One node's run in the drill-down.
fn node_html(n: &NodeRecord) -> String {
    let m = &n.system_metrics;
    let mut facts = Vec::new();
    if let Some(d) = m.duration {
        facts.push(format!("{:.0} ms", d * 1000.0));
    }
    if let Some(t) = m.tokens.total_tokens {
        facts.push(format!(
            "{t} tokens ({} prompt, {} completion{})",
            m.tokens.prompt_tokens.unwrap_or(0),
            m.tokens.completion_tokens.unwrap_or(0),
            m.tokens
                .cached_tokens
                .map(|c| format!(", {c} cached"))
                .unwrap_or_default()
        ));
    }
    if let Some(t) = m.other.get("time_to_first_token_ms").and_then(Json::as_f64) {
        facts.push(format!("first token {t:.0} ms"));
    }
    let status = n.status.as_str();
    let mut out = format!(
        r#"<details class="node" open><summary><b>{}</b><span class="{status}">{status}</span><span class="muted">{}</span></summary>"#,
        esc(&n.node),
        esc(&facts.join(" · "))
    );
    if !n.inputs.is_empty() {
        out.push_str(&part("inputs", &fields(&n.inputs)));
    }
    for call in &n.api_calls {
        let label = format!(
            "prompt sent to {} ({})",
            call["backend"].as_str().unwrap_or("the model"),
            call["api"].as_str().unwrap_or("llm")
        );
        out.push_str(&part(&label, &prompt_html(&call["prompt"])));
    }
    if !n.output.is_null() {
        out.push_str(&part(
            "output",
            &format!("<pre>{}</pre>", esc(&show_value(&n.output))),
        ));
    }
    if let Some(e) = &n.error {
        out.push_str(&part(
            "error",
            &format!(r#"<div class="err">{}</div>"#, esc(&error_message(e))),
        ));
        if let Some(tb) = traceback(e) {
            out.push_str(&part(
                "traceback",
                &format!(r#"<pre class="tb">{}</pre>"#, esc(&tb)),
            ));
        }
    }
    out.push_str("</details>");
    out
}

/// The drill-down card of one run's line.
/// A line's node runs on one time axis: a bar per node from its start to its end, the part before the
/// first token shaded, with time and tokens in its tooltip.
fn waterfall(l: &LineRecord) -> String {
    let span = crate::commands::trace::line_span(l);
    let total = span
        .nodes
        .iter()
        .map(|n| n.start_ms + n.duration_ms)
        .fold(span.duration_ms, f64::max)
        .max(1e-6);
    let pct = |ms: f64| (ms / total * 100.0).clamp(0.0, 100.0);
    let mut out = String::from(r#"<div class="waterfall">"#);
    for n in &span.nodes {
        let mut tip = format!(
            "{}: starts at {:.0} ms, runs {:.1} ms",
            n.node, n.start_ms, n.duration_ms
        );
        if let Some(t) = n.tokens.total_tokens {
            let _ = write!(tip, ", {t} tokens");
        }
        let first = n.time_to_first_token_ms.map(|t| t as f64);
        if let Some(t) = first {
            let _ = write!(tip, ", first token after {t:.0} ms");
        }
        let wait = first.map_or(0.0, |t| {
            (t / n.duration_ms.max(1e-6) * 100.0).clamp(0.0, 100.0)
        });
        let _ = write!(
            out,
            r#"<div class="wf-row" title="{}"><span class="wf-name">{}</span><span class="wf-axis"><span class="wf-bar {}" style="left:{:.2}%;width:{:.2}%"><span class="wf-wait" style="width:{wait:.1}%"></span></span></span><span class="wf-ms">{:.0} ms</span></div>"#,
            esc(&tip),
            esc(&n.node),
            n.status,
            pct(n.start_ms),
            pct(n.duration_ms).max(0.5),
            n.duration_ms
        );
    }
    out.push_str("</div>");
    out
}

fn line_card(g: &Group, l: &LineRecord) -> String {
    let status = l.status.as_str();
    let tokens = l.tokens();
    let mut facts = vec![];
    if let Some(ms) = latency_ms(l) {
        facts.push(format!("{ms:.0} ms"));
    }
    if let Some(t) = tokens.total_tokens {
        facts.push(format!("{t} tokens"));
    }
    let mut out = format!(
        r#"<div class="card"><h3><span class="name">{}</span>{}{}<span class="{status}">{status}</span><span class="muted">{}</span></h3>"#,
        esc(&g.run.name),
        variant_badge(g.run),
        if g.is_eval() {
            r#"<span class="badge eval">evaluation</span>"#
        } else {
            ""
        },
        esc(&facts.join(" · "))
    );
    if let Some(e) = &l.error {
        out.push_str(&part(
            "line error",
            &format!(r#"<div class="err">{}</div>"#, esc(&error_message(e))),
        ));
    }
    if l.node_runs.is_empty() {
        out.push_str(&part("inputs", &fields(&l.inputs)));
        out.push_str(&part("outputs", &fields(&l.output)));
    } else {
        out.push_str(&part("timeline", &waterfall(l)));
    }
    for n in &l.node_runs {
        out.push_str(&node_html(n));
    }
    out.push_str("</div>");
    out
}

pub(crate) fn render(runs: &[LoadedRun], comparison: &Json) -> String {
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>Sluice report: {}</title><style>{STYLE}</style></head><body>"#,
        esc(&names.join(", "))
    );
    let _ = write!(
        html,
        "<header><h1>Sluice run report</h1><p>{} · generated {}</p></header><main>",
        esc(&names.join(" · ")),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );

    // Runs with their metrics, then a chart per metric.
    let metrics = comparison["metrics"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let any_eval = runs.iter().any(|r| r.record.properties.run.is_some());
    let _ = write!(
        html,
        r#"<section><h2>Runs and metrics</h2><div class="scroll"><table><thead><tr><th>run</th><th>status</th><th>flow</th><th>variant</th>{}<th class="num">lines</th><th class="num">failed</th><th class="num">duration</th><th class="num">tokens</th>"#,
        if any_eval { "<th>evaluates</th>" } else { "" }
    );
    for m in metrics.keys() {
        let _ = write!(html, r#"<th class="num metric">{}</th>"#, esc(m));
    }
    html.push_str("</tr></thead><tbody>");
    for r in runs {
        let sm = &r.record.properties.system_metrics;
        let status = r.record.status.as_str().to_owned();
        let evaluates = if any_eval {
            format!(
                "<td>{}</td>",
                esc(r.record.properties.run.as_deref().unwrap_or(""))
            )
        } else {
            String::new()
        };
        let _ = write!(
            html,
            r#"<tr><td>{}</td><td class="{}">{}</td><td>{}</td><td>{}</td>{evaluates}<td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td>"#,
            esc(&r.name),
            esc(&status),
            esc(&status),
            esc(&r.record.flow_name),
            variant_badge(r),
            sm.total_lines,
            sm.failed_lines.map(|n| n.to_string()).unwrap_or_default(),
            sm.duration.map(|d| format!("{d:.2} s")).unwrap_or_default(),
            sm.tokens
                .total_tokens
                .map(|n| n.to_string())
                .unwrap_or_default(),
        );
        for per in metrics.values() {
            let _ = write!(
                html,
                r#"<td class="num metric">{}</td>"#,
                esc(&text(&per[r.name.as_str()]))
            );
        }
        html.push_str("</tr>");
    }
    html.push_str("</tbody></table></div>");
    if metrics.is_empty() {
        html.push_str(r#"<p class="muted">These runs logged no metrics.</p>"#);
    } else {
        html.push_str(r#"<div class="charts">"#);
        for (m, per) in &metrics {
            // Only the runs that logged the metric (an evaluation's metric is not its base run's).
            let values: Vec<(String, Option<f64>)> = names
                .iter()
                .filter(|n| !per[**n].is_null())
                .map(|n| ((*n).to_owned(), per[*n].as_f64()))
                .collect();
            if values.iter().any(|(_, v)| v.is_some()) {
                html.push_str(&chart(m, &values));
            }
        }
        html.push_str("</div>");
    }
    html.push_str("</section>");

    // Lines: inputs, then each run's columns; an evaluation's next to the run it scored.
    let groups = groups(runs);
    let evals = groups.iter().filter(|g| g.is_eval()).count();
    let _ = write!(
        html,
        r#"<section id="lines-section"><h2>Lines</h2><div class="controls"><input id="q" type="search" placeholder="Search inputs, outputs, prompts and errors"><select id="status"><option value="all">all lines</option><option value="Completed">completed</option><option value="Failed">failed</option></select><span id="count"></span><span class="muted">{}click a line for its nodes, prompts and errors · click a column to sort</span></div><div class="lines-wrap"><table id="lines"><thead><tr><th rowspan="2" class="num ln" data-col="0">line</th><th rowspan="2" class="inputs" data-col="1">inputs</th>"#,
        if groups.len() - evals >= 2 {
            format!(
                "{} lines differ between runs · ",
                esc(&text(&comparison["differing_lines"]))
            )
        } else {
            String::new()
        }
    );
    for g in &groups {
        let scored = match base_of(g.run, runs) {
            Some(b) => format!(r#"<div class="muted">evaluates <b>{}</b></div>"#, esc(b)),
            None if g.is_eval() => format!(
                r#"<div class="muted">evaluates {}</div>"#,
                esc(g.run.record.properties.run.as_deref().unwrap_or(""))
            ),
            None => String::new(),
        };
        let _ = write!(
            html,
            r#"<th class="group" colspan="{}"><span class="name">{}</span> {}{}{scored}</th>"#,
            g.columns().len(),
            esc(&g.run.name),
            variant_badge(g.run),
            if g.is_eval() {
                r#" <span class="badge eval">evaluation</span>"#
            } else {
                ""
            },
        );
    }
    html.push_str(r#"</tr><tr class="sub">"#);
    let mut col = 2;
    for g in &groups {
        for (i, (label, numeric)) in g.columns().iter().enumerate() {
            let class = match (i == 0, numeric) {
                (true, true) => r#" class="first num""#,
                (true, false) => r#" class="first""#,
                (false, true) => r#" class="num""#,
                (false, false) => "",
            };
            let _ = write!(html, r#"<th{class} data-col="{col}">{label}</th>"#);
            col += 1;
        }
    }
    html.push_str("</tr></thead><tbody>");
    let lines: BTreeSet<usize> = runs.iter().flat_map(|r| r.lines.keys().copied()).collect();
    let mut drawers = String::new();
    for &line in &lines {
        let statuses: Vec<&str> = runs
            .iter()
            .map(|r| r.lines.get(&line).map_or("Missing", |l| l.status.as_str()))
            .collect();
        // The inputs of the line as the scored (non-evaluation) runs saw them.
        let inputs = groups
            .iter()
            .filter(|g| !g.is_eval() || evals == groups.len())
            .find_map(|g| g.run.lines.get(&line).map(|l| &l.inputs))
            .cloned()
            .unwrap_or_default();
        let _ = write!(
            html,
            r##"<tr class="line" id="row-{line}" data-line="{line}" data-status="{}"><td class="num ln" data-v="{line}"><a href="#line-{line}" title="details of line {line}">{line}</a></td><td class="inputs" data-v="{}">{}</td>"##,
            esc(&statuses.join(" ")),
            esc(&sort_text(&inputs)),
            fields(&inputs)
        );
        for g in &groups {
            let Some(l) = g.run.lines.get(&line) else {
                html.push_str(if g.is_eval() {
                    r#"<td class="first"></td><td></td><td class="Missing">Missing</td>"#
                } else {
                    r#"<td class="first"></td><td class="Missing">Missing</td><td></td>"#
                });
                continue;
            };
            let status = l.status.as_str();
            let outcome = if l.status == LineStatus::Completed {
                format!(
                    r#"<td class="out{}" data-v="{}">{}</td>"#,
                    if g.is_eval() { "" } else { " first" },
                    esc(&sort_text(&l.output)),
                    fields(&l.output)
                )
            } else {
                let msg = l.error_message().unwrap_or_default();
                format!(
                    r#"<td class="out{}" data-v="{}"><span class="err">{}</span></td>"#,
                    if g.is_eval() { "" } else { " first" },
                    esc(msg),
                    esc(msg)
                )
            };
            match &g.truth {
                Some(truth) => {
                    let shown: Map = if truth.is_empty() {
                        l.inputs.clone()
                    } else {
                        l.inputs
                            .iter()
                            .filter(|(k, _)| truth.contains(k))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    };
                    let _ = write!(
                        html,
                        r#"<td class="out first" data-v="{}">{}</td>{outcome}<td class="{status}">{status}</td>"#,
                        esc(&sort_text(&shown)),
                        fields(&shown)
                    );
                }
                None => {
                    let ms = latency_ms(l);
                    let _ = write!(
                        html,
                        r#"{outcome}<td class="{status}">{status}</td><td class="num" data-v="{}">{}</td>"#,
                        ms.map(|m| m.to_string()).unwrap_or_default(),
                        ms.map(|m| format!("{m:.0} ms")).unwrap_or_default()
                    );
                }
            }
        }
        html.push_str("</tr>");
        // The drill-down: each run's record of this line, in a drawer.
        let prev = lines.range(..line).next_back();
        let next = lines.range(line + 1..).next();
        let link = |n: Option<&usize>, label: &str| {
            n.map(|n| format!(r##"<a href="#line-{n}">{label}</a>"##))
                .unwrap_or_default()
        };
        let _ = write!(
            drawers,
            r##"<aside class="drawer" id="line-{line}" aria-label="line {line}"><div class="drawer-head"><h2>Line {line}</h2>{}{}<a class="close" href="#lines-section" title="close (Esc)">×</a></div><div class="drawer-inputs">{}</div><div class="drill">"##,
            link(prev, "← previous line"),
            link(next, "next line →"),
            part("inputs", &fields(&inputs)),
        );
        for g in &groups {
            if let Some(l) = g.run.lines.get(&line) {
                drawers.push_str(&line_card(g, l));
            }
        }
        drawers.push_str("</div></aside>");
    }
    let _ = writeln!(
        html,
        "</tbody></table></div></section>{drawers}</main><script>{SCRIPT}</script></body></html>"
    );
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_html() {
        assert_eq!(esc("<b a=\"1\">&'"), "&lt;b a=&quot;1&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn chart_scales_bars_to_the_largest_value() {
        let svg = chart(
            "accuracy",
            &[("a".into(), Some(0.5)), ("b".into(), Some(1.0))],
        );
        assert!(
            svg.contains(r#"width="130.0""#) && svg.contains(r#"width="260.0""#),
            "{svg}"
        );
    }

    #[test]
    fn variants_are_labelled_by_name() {
        let mut v = indexmap::IndexMap::new();
        assert_eq!(variant_label(&v), "");
        v.insert("classify".to_owned(), "variant_1".to_owned());
        assert_eq!(variant_label(&v), "variant_1");
        v.insert("judge".to_owned(), "strict".to_owned());
        assert_eq!(variant_label(&v), "classify: variant_1, judge: strict");
    }

    #[test]
    fn a_prompt_is_escaped_message_by_message() {
        let html = prompt_html(&serde_json::json!([
            {"role": "system", "content": "<script>alert(1)</script>"},
            {"role": "user", "content": "hi\nthere"}
        ]));
        assert!(
            html.contains("&lt;script&gt;") && !html.contains("<script>"),
            "{html}"
        );
        assert!(html.contains("hi\nthere"), "{html}");
    }
}
