//! `sluice run visualize`: one self-contained HTML file (inline CSS, JS and SVG; nothing fetched) with
//! the runs, their metrics as a table and a bar chart per metric, and a searchable table of every line.

use std::fmt::Write;

use serde_json::Value as Json;

use super::view::{LoadedRun, cell as text};

fn esc(s: &str) -> String {
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

/// Values of a JSON object as `key: value` lines.
fn fields(v: &Json) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("<b>{}</b>: {}", esc(k), esc(&text(v))))
            .collect::<Vec<_>>()
            .join("<br>"),
        _ => String::new(),
    }
}

const STYLE: &str = r#"
:root { --fg:#1d2330; --muted:#667085; --line:#e4e7ec; --ok:#127a3e; --bad:#b42318; --accent:#3559e0; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); margin: 0; background: #f7f8fa; }
header { background: #172036; color: #fff; padding: 18px 28px; }
header h1 { margin: 0; font-size: 20px; }
header p { margin: 4px 0 0; color: #c7cede; font-size: 12px; }
main { padding: 20px 28px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px 18px; margin-bottom: 18px; }
h2 { font-size: 16px; margin: 0 0 12px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #f2f4f7; font-weight: 600; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.Completed { color: var(--ok); font-weight: 600; }
.Failed, .Canceled { color: var(--bad); font-weight: 600; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; margin-top: 14px; }
.chart { border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; background: #fcfcfd; }
.chart h3 { font-size: 13px; margin: 0 0 6px; }
.controls { display: flex; gap: 10px; align-items: center; margin-bottom: 10px; }
.controls input { flex: 1; max-width: 420px; padding: 6px 10px; border: 1px solid #c9ced8; border-radius: 6px; font: inherit; }
.controls select { padding: 5px 8px; border-radius: 6px; border: 1px solid #c9ced8; font: inherit; }
#count { color: var(--muted); }
.err { color: var(--bad); font-size: 12px; }
.lines-wrap { max-height: 70vh; overflow: auto; }
"#;

const SCRIPT: &str = r#"
(function () {
  var q = document.getElementById('q'), st = document.getElementById('status');
  var rows = Array.prototype.slice.call(document.querySelectorAll('#lines tbody tr'));
  var count = document.getElementById('count');
  function apply() {
    var needle = q.value.toLowerCase(), want = st.value, shown = 0;
    rows.forEach(function (r) {
      var ok = (!needle || r.textContent.toLowerCase().indexOf(needle) >= 0) &&
               (want === 'all' || r.getAttribute('data-status').indexOf(want) >= 0);
      r.style.display = ok ? '' : 'none';
      if (ok) shown++;
    });
    count.textContent = shown + ' of ' + rows.length + ' lines';
  }
  // A link can open the report filtered: report.html#q=paris&status=Failed
  var params = new URLSearchParams(location.hash.slice(1));
  if (params.get('q')) q.value = params.get('q');
  if (params.get('status')) st.value = params.get('status');
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
        let name: String = run.chars().take(26).collect();
        let _ = write!(
            svg,
            r##"<text x="0" y="{}" font-size="12" fill="#344054">{}</text><rect x="{label_w}" y="{y}" width="{width:.1}" height="{bar_h}" rx="3" fill="{}"/><text x="{:.1}" y="{}" font-size="12" fill="#1d2330">{}</text>"##,
            y + 15,
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

/// The whole report.
/// A run's variants as `node: variant`, or `-` for none.
fn variant_label(variants: &indexmap::IndexMap<String, String>) -> String {
    if variants.is_empty() {
        return "-".into();
    }
    variants
        .iter()
        .map(|(n, v)| format!("{n}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
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

    // Runs.
    html.push_str("<section><h2>Runs</h2><table><thead><tr><th>run</th><th>status</th><th>flow</th><th>variant</th><th>lines</th><th>failed</th><th>duration</th><th>tokens</th></tr></thead><tbody>");
    for r in runs {
        let sm = &r.record.properties.system_metrics;
        let status = r.record.status.as_str().to_owned();
        let _ = write!(
            html,
            r#"<tr><td>{}</td><td class="{}">{}</td><td>{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td></tr>"#,
            esc(&r.name),
            esc(&status),
            esc(&status),
            esc(&r.record.flow_name),
            esc(&variant_label(&r.record.properties.node_variant)),
            sm.total_lines,
            sm.failed_lines.map(|n| n.to_string()).unwrap_or_default(),
            sm.duration.map(|d| format!("{d:.2} s")).unwrap_or_default(),
            sm.tokens
                .total_tokens
                .map(|n| n.to_string())
                .unwrap_or_default(),
        );
    }
    html.push_str("</tbody></table></section>");

    // Metrics: table and charts.
    html.push_str("<section><h2>Metrics</h2>");
    let metrics = comparison["metrics"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    if metrics.is_empty() {
        html.push_str("<p>These runs logged no metrics.</p>");
    } else {
        html.push_str("<table><thead><tr><th>metric</th>");
        for n in &names {
            let _ = write!(html, "<th>{}</th>", esc(n));
        }
        html.push_str("</tr></thead><tbody>");
        for (m, per) in &metrics {
            let _ = write!(html, "<tr><td>{}</td>", esc(m));
            for n in &names {
                let _ = write!(html, r#"<td class="num">{}</td>"#, esc(&text(&per[*n])));
            }
            html.push_str("</tr>");
        }
        html.push_str("</tbody></table><div class=\"charts\">");
        for (m, per) in &metrics {
            let values: Vec<(String, Option<f64>)> = names
                .iter()
                .map(|n| ((*n).to_owned(), per[*n].as_f64()))
                .collect();
            if values.iter().any(|(_, v)| v.is_some()) {
                html.push_str(&chart(m, &values));
            }
        }
        html.push_str("</div>");
    }
    html.push_str("</section>");

    // Lines.
    let _ = write!(
        html,
        r#"<section><h2>Lines</h2><div class="controls"><input id="q" type="search" placeholder="Search inputs, outputs and errors"><select id="status"><option value="all">all lines</option><option value="Completed">completed</option><option value="Failed">failed</option></select><span id="count"></span><span>{} lines differ between runs</span></div><div class="lines-wrap"><table id="lines"><thead><tr><th>line</th><th>inputs</th>"#,
        esc(&text(&comparison["differing_lines"]))
    );
    for n in &names {
        let _ = write!(
            html,
            "<th>{} output</th><th>status</th><th>latency</th>",
            esc(n)
        );
    }
    html.push_str("</tr></thead><tbody>");
    let all: std::collections::BTreeSet<usize> =
        runs.iter().flat_map(|r| r.lines.keys().copied()).collect();
    for line in all {
        let statuses: Vec<String> = runs
            .iter()
            .map(|r| {
                r.lines
                    .get(&line)
                    .map_or("Missing".to_owned(), |l| l.status.as_str().to_owned())
            })
            .collect();
        let inputs = runs
            .iter()
            .find_map(|r| r.lines.get(&line).map(|l| Json::Object(l.inputs.clone())))
            .unwrap_or(Json::Null);
        let _ = write!(
            html,
            r#"<tr data-status="{}"><td class="num">{line}</td><td>{}</td>"#,
            esc(&statuses.join(" ")),
            fields(&inputs)
        );
        for (r, status) in runs.iter().zip(&statuses) {
            match r.lines.get(&line) {
                Some(l) => {
                    let out = if status == "Completed" {
                        fields(&Json::Object(l.output.clone()))
                    } else {
                        format!(
                            r#"<span class="err">{}</span>"#,
                            esc(l.error_message().unwrap_or_default())
                        )
                    };
                    let _ = write!(
                        html,
                        r#"<td>{out}</td><td class="{}">{}</td><td class="num">{}</td>"#,
                        esc(status),
                        esc(status),
                        l.latency()
                            .map(|s| format!("{:.0} ms", s * 1000.0))
                            .unwrap_or_default()
                    );
                }
                None => html.push_str("<td></td><td>Missing</td><td></td>"),
            }
        }
        html.push_str("</tr>");
    }
    let _ = writeln!(
        html,
        "</tbody></table></div></section></main><script>{SCRIPT}</script></body></html>"
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
}
