//! The monitor's HTML report: one self-contained page (inline CSS and SVG, nothing fetched) with the
//! verdict and checks, the fields' drift with each side's distribution, drift and operations across
//! windows, and the quality comparison.

use std::fmt::Write;

use sluice_engine::monitor::{FieldDrift, FieldKind, MonitorReport, NumericDrift, Ops};

use crate::commands::run::report::esc;

const BASE: &str = "#6b7a90";
const CUR: &str = "#e0692b";
const SERIES: &[&str] = &[
    "#2f6fdf", "#e0692b", "#2a9d62", "#9b51e0", "#c0392b", "#8a6d3b",
];

const STYLE: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:20px}
header .sub{color:#b9c2d0;font-size:13px}
main{padding:20px 28px;max-width:1200px}
section{background:#fff;border:1px solid #dde2ea;border-radius:8px;padding:16px 20px;margin-bottom:18px}
h2{font-size:16px;margin:0 0 12px}
h3{font-size:14px;margin:0 0 6px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eef1f5;font-variant-numeric:tabular-nums}
th{font-weight:600;color:#4a5568;font-size:12px;text-transform:uppercase;letter-spacing:.03em}
td.n{text-align:right}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:600;font-size:13px}
.bad{background:#fde2dd;color:#a1301b}.good{background:#dcf3e5;color:#1d6b40}.warn{background:#fff1d6;color:#8a5a00}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:14px}
.card{border:1px solid #eef1f5;border-radius:6px;padding:10px 12px}
.card.drift{border-color:#f0a493;background:#fffaf8}
.legend span{display:inline-block;margin-right:14px;font-size:12px;color:#4a5568}
.legend i{display:inline-block;width:10px;height:10px;margin-right:5px;border-radius:2px;vertical-align:-1px}
.muted{color:#6b7a90;font-size:12px}
svg text{font:11px system-ui,sans-serif;fill:#4a5568}
"#;

fn num(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "–".to_owned(), |x| format!("{x:.digits$}"))
}

fn legend(items: &[(&str, &str)]) -> String {
    let mut s = String::from("<div class=\"legend\">");
    for (name, color) in items {
        let _ = write!(
            s,
            "<span><i style=\"background:{color}\"></i>{}</span>",
            esc(name)
        );
    }
    s.push_str("</div>");
    s
}

/// Grouped bars: each label's baseline and current share.
fn bars(labels: &[String], base: &[f64], cur: &[f64]) -> String {
    let (w, h, left, bottom) = (500.0, 170.0, 34.0, 38.0);
    let top = base
        .iter()
        .chain(cur)
        .fold(0.0f64, |a, b| a.max(*b))
        .max(0.01);
    let slot = (w - left) / labels.len().max(1) as f64;
    let bar = (slot * 0.38).min(26.0);
    let y = |v: f64| (h - bottom) * (1.0 - v / top) + 6.0;
    let mut s = format!("<svg viewBox=\"0 0 {w} {h}\" width=\"100%\" role=\"img\">");
    for t in [0.0, 0.5, 1.0] {
        let v = top * t;
        let _ = write!(
            s,
            "<line x1=\"{left}\" x2=\"{w}\" y1=\"{0:.1}\" y2=\"{0:.1}\" stroke=\"#eef1f5\"/><text x=\"{1}\" y=\"{2:.1}\" text-anchor=\"end\">{3:.0}%</text>",
            y(v),
            left - 4.0,
            y(v) + 4.0,
            v * 100.0
        );
    }
    for (i, label) in labels.iter().enumerate() {
        let x0 = left + slot * i as f64 + slot / 2.0 - bar;
        for (j, (vals, color)) in [(base, BASE), (cur, CUR)].into_iter().enumerate() {
            let v = vals.get(i).copied().unwrap_or(0.0);
            let _ = write!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{:.1}\" fill=\"{color}\"><title>{}: {:.1}%</title></rect>",
                x0 + bar * j as f64,
                y(v),
                (y(0.0) - y(v)).max(0.0),
                esc(label),
                v * 100.0
            );
        }
        let short = middle_cut(label, 15);
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            left + slot * i as f64 + slot / 2.0,
            h - bottom + 22.0,
            esc(&short)
        );
    }
    s.push_str("</svg>");
    s
}

/// Lines over windows, with an optional dashed threshold.
fn lines(
    xlabels: &[String],
    series: &[(String, Vec<Option<f64>>)],
    threshold: Option<f64>,
) -> String {
    let (w, h, left, bottom) = (1100.0, 200.0, 46.0, 30.0);
    let top = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .chain(threshold.iter())
        .fold(0.0f64, |a, b| a.max(*b))
        .max(1e-9)
        * 1.1;
    let n = xlabels.len().max(2);
    let x = |i: usize| left + (w - left - 10.0) * i as f64 / (n - 1) as f64;
    let y = |v: f64| (h - bottom) * (1.0 - v / top) + 6.0;
    let mut s = format!("<svg viewBox=\"0 0 {w} {h}\" width=\"100%\" role=\"img\">");
    for t in [0.0, 0.5, 1.0] {
        let v = top * t;
        let _ = write!(
            s,
            "<line x1=\"{left}\" x2=\"{w}\" y1=\"{0:.1}\" y2=\"{0:.1}\" stroke=\"#eef1f5\"/><text x=\"{1}\" y=\"{2:.1}\" text-anchor=\"end\">{3}</text>",
            y(v),
            left - 4.0,
            y(v) + 4.0,
            num(Some(v), if top < 1.0 { 3 } else { 1 })
        );
    }
    if let Some(t) = threshold {
        let _ = write!(
            s,
            "<line x1=\"{left}\" x2=\"{w}\" y1=\"{0:.1}\" y2=\"{0:.1}\" stroke=\"#c0392b\" stroke-dasharray=\"5 4\"/>",
            y(t)
        );
    }
    let every = xlabels.len().div_ceil(10).max(1);
    for (i, l) in xlabels.iter().enumerate().step_by(every) {
        let short: String = l.chars().take(19).collect();
        let anchor = match i {
            0 => "start",
            i if i + 1 == xlabels.len() => "end",
            _ => "middle",
        };
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text>",
            x(i),
            h - 8.0,
            esc(&short)
        );
    }
    for (k, (name, values)) in series.iter().enumerate() {
        let color = SERIES[k % SERIES.len()];
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| format!("{:.1},{:.1}", x(i), y(v))))
            .collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
        for (i, v) in values.iter().enumerate() {
            if let Some(v) = v {
                let _ = write!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"><title>{} {}: {}</title></circle>",
                    x(i),
                    y(*v),
                    esc(name),
                    esc(&xlabels[i]),
                    num(Some(*v), 4)
                );
            }
        }
    }
    s.push_str("</svg>");
    s
}

/// `text` cut to `max` characters by dropping its middle, so labels that share a long start stay apart.
fn middle_cut(text: &str, max: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= max {
        return text.to_owned();
    }
    let head = (max - 1) / 2;
    let tail = max - 1 - head;
    let mut out: String = chars[..head].iter().collect();
    out.push('…');
    out.extend(&chars[chars.len() - tail..]);
    out
}

fn bin_labels(edges: &[f64]) -> Vec<String> {
    let f = |x: f64| {
        if x.abs() >= 100.0 || x.fract() == 0.0 {
            format!("{x:.0}")
        } else {
            format!("{x:.2}")
        }
    };
    let mut out = Vec::new();
    for i in 0..=edges.len() {
        out.push(match i {
            0 if edges.is_empty() => "all".to_owned(),
            0 => format!("< {}", f(edges[0])),
            i if i == edges.len() => format!("≥ {}", f(edges[i - 1])),
            i => format!("{}–{}", f(edges[i - 1]), f(edges[i])),
        });
    }
    out
}

fn numeric_chart(n: &NumericDrift) -> String {
    bars(&bin_labels(&n.edges), &n.baseline_shares, &n.current_shares)
}

fn psi_of(d: &FieldDrift) -> Option<f64> {
    d.numeric
        .as_ref()
        .or(d.length.as_ref())
        .map(|n| n.psi)
        .or(d.category.as_ref().map(|c| c.psi))
}

fn kind(k: FieldKind) -> &'static str {
    match k {
        FieldKind::Numeric => "number",
        FieldKind::Category => "category",
        FieldKind::Text => "text",
    }
}

fn field_card(name: &str, d: &FieldDrift) -> String {
    let mut s = format!(
        "<div class=\"card{}\" id=\"field-{}\"><h3>{} <span class=\"muted\">{}</span> {}</h3>",
        if d.drifted { " drift" } else { "" },
        esc(name),
        esc(name),
        kind(d.kind),
        if d.drifted {
            "<span class=\"badge bad\">drifted</span>"
        } else {
            "<span class=\"badge good\">stable</span>"
        }
    );
    let mut facts = vec![format!(
        "missing {:.1}% → {:.1}%",
        d.missing.0 * 100.0,
        d.missing.1 * 100.0
    )];
    if let Some(n) = d.numeric.as_ref().or(d.length.as_ref()) {
        facts.push(format!(
            "PSI {:.3} · KS {:.3} (p {}) · mean {} → {}{}",
            n.psi,
            n.ks,
            num(Some(n.ks_p_value), 4),
            num(n.baseline_mean, 2),
            num(n.current_mean, 2),
            if d.length.is_some() {
                " characters"
            } else {
                ""
            }
        ));
    }
    if let Some(c) = &d.category {
        facts.push(format!("PSI {:.3} · Jensen–Shannon {:.3}", c.psi, c.js));
    }
    if let Some(e) = &d.embedding {
        facts.push(format!(
            "embeddings: MMD² {:.4}, p {} ({} vs {} texts)",
            e.mmd2,
            num(Some(e.p_value), 3),
            e.baseline_sample,
            e.current_sample
        ));
    }
    if let Some(note) = &d.note {
        facts.push(note.clone());
    }
    let _ = write!(s, "<div class=\"muted\">{}</div>", esc(&facts.join(" · ")));
    if let Some(n) = d.numeric.as_ref().or(d.length.as_ref()) {
        s.push_str(&numeric_chart(n));
    } else if let Some(c) = &d.category {
        s.push_str(&bars(&c.categories, &c.baseline_shares, &c.current_shares));
    }
    s.push_str("</div>");
    s
}

fn ops_row(label: &str, o: &Ops) -> String {
    format!(
        "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{:.2}%</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
        esc(label),
        o.lines,
        o.error_rate * 100.0,
        num(o.latency_p50.map(|x| x * 1000.0), 1),
        num(o.latency_p95.map(|x| x * 1000.0), 1),
        num(o.latency_p99.map(|x| x * 1000.0), 1),
        num(o.tokens_per_line, 1)
    )
}

pub(crate) fn render(r: &MonitorReport) -> String {
    let mut s = String::with_capacity(64 * 1024);
    let all = &r.windows[0];
    let _ = write!(
        s,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sluice monitor: {}</title><style>{STYLE}</style></head><body>",
        esc(&r.current.source.spec)
    );
    let verdict = if r.failed {
        "<span class=\"badge bad\">a check holds</span>"
    } else if r.drift.detected {
        "<span class=\"badge warn\">drift detected</span>"
    } else {
        "<span class=\"badge good\">no drift detected</span>"
    };
    let _ = write!(
        s,
        "<header><h1>Monitor: {} against {} {verdict}</h1><div class=\"sub\">current: {} lines{} · baseline: {} lines{} · {} · made {}</div></header><main>",
        esc(&r.current.source.spec),
        esc(&r.baseline.source.spec),
        r.current.lines,
        span(r.current.start, r.current.end),
        r.baseline.lines,
        span(r.baseline.start, r.baseline.end),
        r.embedding_model.as_ref().map_or_else(
            || "no embedding test".to_owned(),
            |m| format!("embeddings: {}", esc(m))
        ),
        r.created_on.format("%Y-%m-%d %H:%M:%S UTC")
    );

    if !r.checks.is_empty() {
        s.push_str("<section id=\"checks\"><h2>Checks</h2><table><tr><th>rule</th><th>result</th><th>worst value</th><th>where</th><th>measures holding</th></tr>");
        for c in &r.checks {
            let _ = write!(
                s,
                "<tr><td><code>{}</code></td><td>{}</td><td class=\"n\">{}</td><td>{}{}</td><td class=\"n\">{} of {}</td></tr>",
                esc(&c.rule),
                if c.failed {
                    "<span class=\"badge bad\">holds</span>"
                } else {
                    "<span class=\"badge good\">ok</span>"
                },
                num(Some(c.value), 4),
                c.field
                    .as_deref()
                    .map_or_else(String::new, |f| format!("{} · ", esc(f))),
                esc(&c.window),
                c.holding,
                c.measures
            );
        }
        s.push_str("</table></section>");
    }

    s.push_str("<section id=\"fields\"><h2>Drift by field (all current lines)</h2><table><tr><th>field</th><th>kind</th><th>PSI</th><th>KS</th><th>JS</th><th>embedding p</th><th>windows drifted</th><th></th></tr>");
    for (name, d) in &all.fields {
        let windows = r.windows[1..]
            .iter()
            .filter(|w| w.drifted.contains(name))
            .count();
        let n = d.numeric.as_ref().or(d.length.as_ref());
        let _ = write!(
            s,
            "<tr><td><a href=\"#field-{0}\">{0}</a></td><td>{1}</td><td class=\"n\">{2}</td><td class=\"n\">{3}</td><td class=\"n\">{4}</td><td class=\"n\">{5}</td><td class=\"n\">{6}</td><td>{7}</td></tr>",
            esc(name),
            kind(d.kind),
            num(psi_of(d), 3),
            num(n.map(|n| n.ks), 3),
            num(d.category.as_ref().map(|c| c.js), 3),
            num(d.embedding.as_ref().map(|e| e.p_value), 3),
            if r.windows.len() > 1 {
                format!("{windows} of {}", r.windows.len() - 1)
            } else {
                "–".to_owned()
            },
            if d.drifted {
                "<span class=\"badge bad\">drifted</span>"
            } else {
                "<span class=\"badge good\">stable</span>"
            }
        );
    }
    for (name, why) in &r.skipped {
        let _ = write!(
            s,
            "<tr><td>{}</td><td colspan=\"7\" class=\"muted\">not compared: {}</td></tr>",
            esc(name),
            esc(why)
        );
    }
    s.push_str("</table></section>");

    s.push_str("<section id=\"distributions\"><h2>Distributions</h2>");
    s.push_str(&legend(&[("baseline", BASE), ("current", CUR)]));
    s.push_str("<div class=\"grid\">");
    for (name, d) in &all.fields {
        s.push_str(&field_card(name, d));
    }
    s.push_str("</div></section>");

    if r.windows.len() > 1 {
        let labels: Vec<String> = r.windows[1..].iter().map(|w| w.label.clone()).collect();
        let psi: Vec<(String, Vec<Option<f64>>)> = all
            .fields
            .keys()
            .map(|f| {
                (
                    f.clone(),
                    r.windows[1..]
                        .iter()
                        .map(|w| w.fields.get(f).and_then(psi_of))
                        .collect(),
                )
            })
            .collect();
        let names: Vec<&str> = psi.iter().map(|(n, _)| n.as_str()).collect();
        let colors: Vec<(&str, &str)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, SERIES[i % SERIES.len()]))
            .collect();
        let threshold = r.settings["psi_threshold"].as_f64();
        let _ = write!(
            s,
            "<section id=\"windows\"><h2>PSI by window</h2><div class=\"muted\">dashed: the drift threshold</div>{}{}",
            legend(&colors),
            lines(&labels, &psi, threshold)
        );
        let embedded: Vec<(String, Vec<Option<f64>>)> = all
            .fields
            .iter()
            .filter(|(_, d)| d.embedding.is_some())
            .map(|(f, _)| {
                (
                    f.clone(),
                    r.windows[1..]
                        .iter()
                        .map(|w| {
                            w.fields
                                .get(f)
                                .and_then(|d| d.embedding.as_ref())
                                .map(|e| e.p_value)
                        })
                        .collect(),
                )
            })
            .collect();
        if !embedded.is_empty() {
            let _ = write!(
                s,
                "<h3>Embedding test p-value by window</h3><div class=\"muted\">dashed: alpha; below it the texts drifted</div>{}",
                lines(&labels, &embedded, r.settings["alpha"].as_f64())
            );
        }
        s.push_str("<table><tr><th>window</th><th>lines</th><th>drifted fields</th></tr>");
        for w in &r.windows[1..] {
            let _ = write!(
                s,
                "<tr><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                esc(&w.label),
                w.lines,
                if w.drifted.is_empty() {
                    "–".to_owned()
                } else {
                    esc(&w.drifted.join(", "))
                }
            );
        }
        s.push_str("</table></section>");
    }

    if all.ops.is_some() || r.baseline_ops.is_some() {
        s.push_str("<section id=\"operations\"><h2>Operations</h2>");
        if r.windows.len() > 1 {
            let labels: Vec<String> = r.windows[1..].iter().map(|w| w.label.clone()).collect();
            let pick = |f: fn(&Ops) -> Option<f64>| -> Vec<Option<f64>> {
                r.windows[1..]
                    .iter()
                    .map(|w| w.ops.as_ref().and_then(f).map(|x| x * 1000.0))
                    .collect()
            };
            let series = vec![
                ("p50 ms".to_owned(), pick(|o| o.latency_p50)),
                ("p95 ms".to_owned(), pick(|o| o.latency_p95)),
                ("p99 ms".to_owned(), pick(|o| o.latency_p99)),
            ];
            let _ = write!(
                s,
                "<h3>Latency by window (ms)</h3>{}{}",
                legend(&[("p50", SERIES[0]), ("p95", SERIES[1]), ("p99", SERIES[2])]),
                lines(&labels, &series, None)
            );
            let any_error = r.windows[1..]
                .iter()
                .any(|w| w.ops.as_ref().is_some_and(|o| o.error_rate > 0.0));
            let errors = vec![(
                "error rate %".to_owned(),
                r.windows[1..]
                    .iter()
                    .map(|w| w.ops.as_ref().map(|o| o.error_rate * 100.0))
                    .collect(),
            )];
            if any_error {
                let _ = write!(
                    s,
                    "<h3>Error rate (%) by window</h3>{}",
                    lines(&labels, &errors, None)
                );
            } else {
                s.push_str("<p class=\"muted\">No failed lines in any window.</p>");
            }
        }
        s.push_str("<table><tr><th>lines</th><th>count</th><th>error rate</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th><th>tokens/line</th></tr>");
        if let Some(o) = &r.baseline_ops {
            s.push_str(&ops_row("baseline", o));
        }
        for w in &r.windows {
            if let Some(o) = &w.ops {
                s.push_str(&ops_row(
                    if w.label == "all" {
                        "current (all)"
                    } else {
                        &w.label
                    },
                    o,
                ));
            }
        }
        s.push_str("</table></section>");
    }

    if let Some(q) = &r.quality {
        let _ = write!(
            s,
            "<section id=\"quality\"><h2>Quality</h2><div class=\"muted\">{} over {} baseline and {} current lines (failed evaluation lines: {} / {})</div><table><tr><th>metric</th><th>baseline</th><th>current</th><th>change</th><th>p</th></tr>",
            esc(q["eval_flow"].as_str().unwrap_or("")),
            q["sample"]["baseline"],
            q["sample"]["current"],
            q["failed_lines"]["baseline"],
            q["failed_lines"]["current"]
        );
        for (name, m) in q["metrics"].as_object().into_iter().flatten() {
            let _ = write!(
                s,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">–</td></tr>",
                esc(name),
                num(m["baseline"].as_f64(), 3),
                num(m["current"].as_f64(), 3),
                num(m["delta"].as_f64(), 3)
            );
        }
        for (name, m) in q["outputs"].as_object().into_iter().flatten() {
            let _ = write!(
                s,
                "<tr><td>mean of {}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                esc(name),
                num(m["baseline_mean"].as_f64(), 3),
                num(m["current_mean"].as_f64(), 3),
                num(m["delta"].as_f64(), 3),
                num(m["p_value"].as_f64(), 3)
            );
        }
        s.push_str("</table></section>");
    }
    s.push_str("</main></body></html>");
    s
}

fn span(
    start: Option<chrono::DateTime<chrono::Utc>>,
    end: Option<chrono::DateTime<chrono::Utc>>,
) -> String {
    match (start, end) {
        (Some(a), Some(b)) => format!(
            " ({} – {})",
            a.format("%Y-%m-%d %H:%M"),
            b.format("%Y-%m-%d %H:%M")
        ),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_keep_their_ends() {
        assert_eq!(middle_cut("short", 15), "short");
        assert_eq!(
            middle_cut("Here is what I know about salmon.", 15),
            "Here is…salmon."
        );
        assert_eq!(bin_labels(&[]), vec!["all"]);
        assert_eq!(
            bin_labels(&[10.0, 12.5]),
            vec!["< 10", "10–12.50", "≥ 12.50"]
        );
    }
}
