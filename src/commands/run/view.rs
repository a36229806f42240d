//! Looking at runs: list, show, show-details, show-metrics, compare, visualize, archive, restore, delete.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;

use serde_json::{Value as Json, json};

use sluice_engine::store::{Archived, LineRecord, LineStatus, RunRecord, read_details};
use sluice_engine::{PathStep, RunName, StoreError, Value};

use super::{report, sluice_home, store};
use crate::ExitStatus;
use crate::cli::{
    CompareArgs, DeleteArgs, DetailsArgs, ListArgs, NameArg, OutputFormat, ShowArgs, VisualizeArgs,
};
use crate::style::{self, Paint};

/// A loaded run: its record, metrics and per-line records.
pub(crate) struct LoadedRun {
    pub name: String,
    pub record: RunRecord,
    pub metrics: serde_json::Map<String, Json>,
    /// Each line's last record, by line number.
    pub lines: BTreeMap<usize, LineRecord>,
}

pub(crate) fn load_run(name: &str) -> Result<LoadedRun, StoreError> {
    let store = store();
    let name = store.existing(name)?;
    let record = store.read_record(&name)?;
    let dir = store.dir(&name);
    let metrics = std::fs::read_to_string(dir.join("metrics.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Json>(&t).ok())
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    Ok(LoadedRun {
        name: name.to_string(),
        record,
        metrics,
        lines: read_details(&dir),
    })
}

fn not_found(e: StoreError) -> anyhow::Result<ExitStatus> {
    eprintln!("{} {e}", style::error_label());
    Ok(if e.is_user_error() {
        ExitStatus::Invalid
    } else {
        ExitStatus::Failed
    })
}

/// A line's output, or its error, as JSON for comparisons.
fn outcome(l: &LineRecord) -> Json {
    if l.status == LineStatus::Completed {
        Value::Map(l.output.clone()).to_json_lossy()
    } else {
        json!({"error": l.error_message()})
    }
}

/// Renders rows as an aligned text table; cells are cut at `width` characters. With `color`, the
/// header is bold, the rule dim and status words (`Completed`, `Failed`, ...) in their colours.
pub(crate) fn table(headers: &[String], rows: &[Vec<String>], width: usize, color: bool) -> String {
    let cut = |s: &str| {
        let one_line = s.replace(['\n', '\r', '\t'], " ");
        if one_line.chars().count() > width {
            format!("{}…", one_line.chars().take(width - 1).collect::<String>())
        } else {
            one_line
        }
    };
    let cells: Vec<Vec<String>> = std::iter::once(headers.to_vec())
        .chain(rows.iter().cloned())
        .map(|r| r.iter().map(|c| cut(c)).collect())
        .collect();
    let n = headers.len();
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            cells
                .iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (k, row) in cells.iter().enumerate() {
        let line: Vec<String> = (0..n)
            .map(|i| {
                let c = row.get(i).map_or("", String::as_str);
                let pad = " ".repeat(widths[i] - c.chars().count());
                let c = if k == 0 {
                    style::paint(color, Paint::Bold, c)
                } else {
                    style::status(color, c)
                };
                format!("{c}{pad}")
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if k == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&style::paint(color, Paint::Dim, &rule.join("  ")));
            out.push('\n');
        }
    }
    out
}

/// A run's `node_variant` as text: `variant_1` for one node, `node: variant` each for several, `-` for
/// none.
fn variant_cell(v: &Json) -> String {
    let variants: indexmap::IndexMap<String, String> = v
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), cell(v)))
        .collect();
    match report::variant_label(&variants) {
        s if s.is_empty() => "-".to_owned(),
        s => s,
    }
}

/// A JSON value as a table cell: strings bare, floats rounded to 4 places.
pub(crate) fn cell(v: &Json) -> String {
    match v {
        Json::Null => String::new(),
        Json::String(s) => s.clone(),
        Json::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{}", (f * 10000.0).round() / 10000.0),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

pub fn list(args: ListArgs) -> anyhow::Result<ExitStatus> {
    let store = store();
    let index = store.open_index()?;
    index.reconcile(&store)?;
    let archived = if args.archived_only {
        Archived::Only
    } else if args.include_archived {
        Archived::Include
    } else {
        Archived::Exclude
    };
    let mut runs: Vec<Json> = Vec::new();
    for name in index.names(archived, (!args.all_results).then_some(args.max_results))? {
        let Ok(name) = RunName::parse(&name) else {
            continue;
        };
        if let Ok(mut record) = store.read_record(&name) {
            record.archived = Some(index.is_archived(name.as_str())?);
            runs.push(serde_json::to_value(&record)?);
        }
    }
    match args.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&runs)?),
        OutputFormat::Table => {
            let headers: Vec<String> = [
                "name", "status", "created", "lines", "failed", "seconds", "metrics",
            ]
            .map(String::from)
            .to_vec();
            let rows: Vec<Vec<String>> = runs
                .iter()
                .map(|r| {
                    let sm = &r["properties"]["system_metrics"];
                    let metrics = r["metrics"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| format!("{k}={}", cell(v)))
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .unwrap_or_default();
                    vec![
                        cell(&r["name"]),
                        format!(
                            "{}{}",
                            cell(&r["status"]),
                            if r["archived"] == true {
                                " (archived)"
                            } else {
                                ""
                            }
                        ),
                        r["created_on"]
                            .as_str()
                            .map(|s| s.chars().take(19).collect())
                            .unwrap_or_default(),
                        cell(&sm["total_lines"]),
                        cell(&sm["failed_lines"]),
                        sm["duration"]
                            .as_f64()
                            .map(|d| format!("{d:.3}"))
                            .unwrap_or_default(),
                        metrics,
                    ]
                })
                .collect();
            print!("{}", table(&headers, &rows, 60, style::stdout()));
        }
    }
    Ok(ExitStatus::Ok)
}

pub fn show(args: ShowArgs) -> anyhow::Result<ExitStatus> {
    let store = store();
    let record = match store
        .existing(&args.name)
        .and_then(|n| store.read_record(&n))
    {
        Ok(r) => r,
        Err(e) => return not_found(e),
    };
    if let Some(note) = &record.status_note {
        eprintln!("run {}: {note}", record.name);
    }
    let record = serde_json::to_value(&record)?;
    match args.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&record)?),
        OutputFormat::Table => {
            let sm = &record["properties"]["system_metrics"];
            let mut rows = vec![];
            for key in [
                "name",
                "status",
                "display_name",
                "flow_name",
                "created_on",
                "data",
            ] {
                rows.push(vec![key.to_owned(), cell(&record[key])]);
            }
            rows.push(vec![
                "variant".into(),
                variant_cell(&record["properties"]["node_variant"]),
            ]);
            rows.push(vec!["run".into(), cell(&record["properties"]["run"])]);
            if let Some(m) = sm.as_object() {
                for (k, v) in m {
                    rows.push(vec![k.clone(), cell(v)]);
                }
            }
            if let Some(m) = record["metrics"].as_object() {
                for (k, v) in m {
                    rows.push(vec![format!("metric {k}"), cell(v)]);
                }
            }
            print!(
                "{}",
                table(
                    &["field".into(), "value".into()],
                    &rows,
                    80,
                    style::stdout()
                )
            );
        }
    }
    Ok(ExitStatus::Ok)
}

pub fn show_metrics(args: ShowArgs) -> anyhow::Result<ExitStatus> {
    let run = match load_run(&args.name) {
        Ok(r) => r,
        Err(e) => return not_found(e),
    };
    match args.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&run.metrics)?),
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = run
                .metrics
                .iter()
                .map(|(k, v)| vec![k.clone(), cell(v)])
                .collect();
            print!(
                "{}",
                table(
                    &["metric".into(), "value".into()],
                    &rows,
                    60,
                    style::stdout()
                )
            );
        }
    }
    Ok(ExitStatus::Ok)
}

pub fn show_details(args: DetailsArgs) -> anyhow::Result<ExitStatus> {
    let run = match load_run(&args.name) {
        Ok(r) => r,
        Err(e) => return not_found(e),
    };
    let limit = if args.all_results {
        usize::MAX
    } else {
        args.max_results
    };
    let lines: Vec<&LineRecord> = run.lines.values().take(limit).collect();
    // promptflow's shape: one object per line with `inputs.x` and `outputs.y` keys; values as the
    // run files hold them (NaN and infinities as Python writes them).
    let records: Vec<Value> = lines
        .iter()
        .map(|l| {
            let mut o = sluice_engine::Map::new();
            o.insert("line_number".into(), Value::Int(l.line_number as i64));
            for (prefix, m) in [("inputs", &l.inputs), ("outputs", &l.output)] {
                for (k, v) in m {
                    o.insert(format!("{prefix}.{k}"), v.clone());
                }
            }
            o.insert("status".into(), Value::from(l.status.as_str()));
            o.insert(
                "latency".into(),
                l.latency().map_or(Value::Null, Value::Float),
            );
            o.insert(
                "error".into(),
                l.error_message().map_or(Value::Null, Value::from),
            );
            Value::Map(o)
        })
        .collect();
    match args.format {
        OutputFormat::Json => println!("{}", sluice_engine::json::to_string_pretty(&records)?),
        OutputFormat::Table => {
            let flat: Vec<Json> = records.iter().map(Value::to_json_lossy).collect();
            let mut headers: Vec<String> = vec![];
            for row in &flat {
                for k in row.as_object().into_iter().flat_map(|m| m.keys()) {
                    if !headers.contains(k) {
                        headers.push(k.clone());
                    }
                }
            }
            let rows: Vec<Vec<String>> = flat
                .iter()
                .zip(&records)
                .map(|(r, record)| {
                    headers
                        .iter()
                        .map(|h| match (h.as_str(), &r[h]) {
                            ("latency", Json::Number(n)) => {
                                format!("{:.3}s", n.as_f64().unwrap_or(0.0))
                            }
                            _ => match record.lookup(&PathStep::Key(h.clone())) {
                                Some(Value::Float(f)) if !f.is_finite() => {
                                    sluice_engine::json::non_finite_word(f).to_owned()
                                }
                                _ => cell(&r[h]),
                            },
                        })
                        .collect()
                })
                .collect();
            print!("{}", table(&headers, &rows, 60, style::stdout()));
            if run.lines.len() > lines.len() {
                eprintln!(
                    "({} of {} lines; --all-results for every line)",
                    lines.len(),
                    run.lines.len()
                );
            }
        }
    }
    Ok(ExitStatus::Ok)
}

/// The comparison of runs as JSON: metrics side by side and the lines whose outputs differ.
fn comparison(runs: &[LoadedRun], max_diffs: usize) -> Json {
    let mut metric_names = BTreeSet::new();
    for r in runs {
        metric_names.extend(r.metrics.keys().cloned());
    }
    let metrics: serde_json::Map<String, Json> = metric_names
        .iter()
        .map(|m| {
            let per: serde_json::Map<String, Json> = runs
                .iter()
                .map(|r| {
                    (
                        r.name.clone(),
                        r.metrics.get(m).cloned().unwrap_or(Json::Null),
                    )
                })
                .collect();
            (m.clone(), Json::Object(per))
        })
        .collect();
    let all_lines: BTreeSet<usize> = runs.iter().flat_map(|r| r.lines.keys().copied()).collect();
    let mut diffs = vec![];
    let mut differing = 0;
    for n in &all_lines {
        let outs: Vec<Json> = runs
            .iter()
            .map(|r| r.lines.get(n).map_or(Json::Null, outcome))
            .collect();
        if outs.windows(2).any(|w| w[0] != w[1]) {
            differing += 1;
            if diffs.len() < max_diffs {
                let per: serde_json::Map<String, Json> = runs
                    .iter()
                    .zip(&outs)
                    .map(|(r, o)| (r.name.clone(), o.clone()))
                    .collect();
                let inputs = runs
                    .iter()
                    .find_map(|r| {
                        r.lines
                            .get(n)
                            .map(|l| Value::Map(l.inputs.clone()).to_json_lossy())
                    })
                    .unwrap_or(Json::Null);
                diffs.push(json!({"line_number": n, "inputs": inputs, "outputs": per}));
            }
        }
    }
    let summary: Vec<Json> = runs
        .iter()
        .map(|r| {
            let sm = &r.record.properties.system_metrics;
            json!({"name": r.name, "status": r.record.status.as_str(), "variant": r.record.properties.node_variant,
                   "total_lines": sm.total_lines, "failed_lines": sm.failed_lines,
                   "duration": sm.duration, "total_tokens": sm.tokens.total_tokens})
        })
        .collect();
    json!({"runs": summary, "metrics": metrics, "compared_lines": all_lines.len(),
           "differing_lines": differing, "diffs": diffs})
}

fn print_table_comparison(c: &Json) {
    print!("{}", table_comparison(c, style::stdout()));
}

/// The comparison as text tables and line diffs.
fn table_comparison(c: &Json, color: bool) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    let runs = c["runs"].as_array().cloned().unwrap_or_default();
    let mut headers = vec!["".to_owned()];
    headers.extend(runs.iter().map(|r| cell(&r["name"])));
    let mut rows = vec![];
    for key in [
        "status",
        "variant",
        "total_lines",
        "failed_lines",
        "duration",
        "total_tokens",
    ] {
        let mut row = vec![key.to_owned()];
        row.extend(runs.iter().map(|r| {
            match key {
                "duration" => r[key]
                    .as_f64()
                    .map(|d| format!("{d:.3}s"))
                    .unwrap_or_default(),
                "variant" => variant_cell(&r[key]),
                _ => cell(&r[key]),
            }
        }));
        rows.push(row);
    }
    if let Some(m) = c["metrics"].as_object() {
        for (metric, per) in m {
            let mut row = vec![metric.clone()];
            row.extend(
                runs.iter()
                    .map(|r| cell(&per[r["name"].as_str().unwrap_or("")])),
            );
            rows.push(row);
        }
    }
    text.push_str(&table(&headers, &rows, 40, color));
    let _ = writeln!(
        text,
        "\n{} of {} lines have different outputs",
        c["differing_lines"], c["compared_lines"]
    );
    for d in c["diffs"].as_array().into_iter().flatten() {
        let _ = writeln!(
            text,
            "\nline {} inputs {}",
            d["line_number"],
            cell(&d["inputs"])
        );
        for r in &runs {
            let name = r["name"].as_str().unwrap_or("");
            let _ = writeln!(text, "  {name}: {}", cell(&d["outputs"][name]));
        }
    }
    text
}

/// Prints the comparison table of runs on stderr (after `--variant all`, whose stdout carries the
/// runs' records).
pub(crate) fn print_comparison_to_stderr(names: &[String]) -> anyhow::Result<ExitStatus> {
    let mut runs = vec![];
    for n in names {
        match load_run(n) {
            Ok(r) => runs.push(r),
            Err(e) => return not_found(e),
        }
    }
    eprint!(
        "{}",
        table_comparison(&comparison(&runs, 20), style::stderr())
    );
    Ok(ExitStatus::Ok)
}

pub fn compare(args: CompareArgs) -> anyhow::Result<ExitStatus> {
    let mut runs = vec![];
    for n in &args.names {
        match load_run(n) {
            Ok(r) => runs.push(r),
            Err(e) => return not_found(e),
        }
    }
    let c = comparison(&runs, args.max_diffs);
    match args.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&c)?),
        OutputFormat::Table => print_table_comparison(&c),
    }
    Ok(ExitStatus::Ok)
}

pub fn visualize(mut args: VisualizeArgs) -> anyhow::Result<ExitStatus> {
    args.names.append(&mut args.names_flag);
    let html = match report_html(&args.names) {
        Ok(html) => html,
        Err(e) => return not_found(e),
    };
    let path = args.html_path.unwrap_or_else(|| {
        let stem: String = args.names.join("__").chars().take(150).collect();
        sluice_home().join("reports").join(format!("{stem}.html"))
    });
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, html)?;
    println!("{}", std::path::absolute(&path).unwrap_or(path).display());
    Ok(ExitStatus::Ok)
}

/// The HTML report of the runs `names` (and of the runs their evaluations scored).
pub(crate) fn report_html(names: &[String]) -> Result<String, StoreError> {
    let mut runs = vec![];
    for n in names {
        runs.push(load_run(n)?);
    }
    // An evaluation run is shown next to the run it scored, which joins the report if it was not named.
    let bases: Vec<String> = runs
        .iter()
        .filter_map(|r| r.record.properties.run.clone())
        .collect();
    for base in bases {
        if runs.iter().any(|r| r.name == base) {
            continue;
        }
        if let Ok(r) = load_run(&base) {
            eprintln!("including run {base}, which an evaluation run in the report scored");
            runs.push(r);
        }
    }
    let runs = evaluations_after_their_runs(runs);
    Ok(report::render(&runs, &comparison(&runs, usize::MAX)))
}

/// Orders runs so that each evaluation run follows the run it scored; the rest keep their order.
fn evaluations_after_their_runs(runs: Vec<LoadedRun>) -> Vec<LoadedRun> {
    let names: Vec<String> = runs.iter().map(|r| r.name.clone()).collect();
    let scores_one_here = |r: &LoadedRun| {
        r.record
            .properties
            .run
            .as_ref()
            .is_some_and(|b| names.contains(b) && *b != r.name)
    };
    let (evals, mut rest): (Vec<LoadedRun>, Vec<LoadedRun>) =
        runs.into_iter().partition(scores_one_here);
    let mut evals: Vec<Option<LoadedRun>> = evals.into_iter().map(Some).collect();
    let mut i = 0;
    while i < rest.len() {
        let name = rest[i].name.clone();
        let mut at = i + 1;
        for slot in evals.iter_mut() {
            if slot
                .as_ref()
                .is_some_and(|e| e.record.properties.run.as_deref() == Some(name.as_str()))
            {
                rest.insert(at, slot.take().expect("checked"));
                at += 1;
            }
        }
        i += 1;
    }
    // Evaluations of evaluations whose base came later in the loop.
    rest.extend(evals.into_iter().flatten());
    rest
}

fn set_archived(name: &str, archived: bool) -> anyhow::Result<ExitStatus> {
    let store = store();
    let (name, mut record) = match store
        .existing(name)
        .and_then(|n| Ok((n.clone(), store.read_record(&n)?)))
    {
        Ok(r) => r,
        Err(e) => return not_found(e),
    };
    // Kept in run.json too, so a rebuilt index keeps it.
    record.archived = Some(archived);
    store.write_record(&record)?;
    let index = store.open_index()?;
    index.upsert(&record)?;
    index.set_archived(name.as_str(), archived)?;
    eprintln!(
        "{} run {name}",
        if archived { "archived" } else { "restored" }
    );
    Ok(ExitStatus::Ok)
}

pub fn archive(args: NameArg) -> anyhow::Result<ExitStatus> {
    set_archived(&args.name, true)
}

pub fn restore(args: NameArg) -> anyhow::Result<ExitStatus> {
    set_archived(&args.name, false)
}

pub fn delete(args: DeleteArgs) -> anyhow::Result<ExitStatus> {
    let store = store();
    let name = match store.existing(&args.name) {
        Ok(n) => n,
        Err(e) => return not_found(e),
    };
    let dir = store.dir(&name);
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            eprintln!(
                "{} deleting run `{}` needs --yes when not at a terminal",
                crate::style::error_label(),
                args.name
            );
            return Ok(ExitStatus::Invalid);
        }
        eprint!(
            "delete run `{}` and its files in {}? [y/N] ",
            args.name,
            dir.display()
        );
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("kept");
            return Ok(ExitStatus::Failed);
        }
    }
    store.delete(&name)?;
    eprintln!("deleted run {}", args.name);
    Ok(ExitStatus::Ok)
}
