//! Looking at runs: list, show, show-details, show-metrics, compare, visualize, archive, restore, delete.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::PathBuf;

use serde_json::{Value as Json, json};

use super::index::{Archived, Index, read_record};
use super::{read_details, report, run_dir, runs_root, sluice_home};
use crate::cli::{
    CompareArgs, DeleteArgs, DetailsArgs, ListArgs, NameArg, OutputFormat, ShowArgs, VisualizeArgs,
};
use crate::exit;

pub use crate::cli::OutputFormat as Format;

/// A loaded run: its record, metrics and per-line results.
pub(crate) struct LoadedRun {
    pub name: String,
    pub record: Json,
    pub metrics: serde_json::Map<String, Json>,
    /// By line number: status, inputs, output, error, latency in seconds.
    pub lines: BTreeMap<usize, Json>,
}

pub(crate) fn load_run(name: &str) -> Result<LoadedRun, String> {
    let dir = run_dir(name);
    let record = read_record(&dir).ok_or_else(|| {
        format!(
            "no run named `{name}` in {} (see `sluice run list`)",
            runs_root().display()
        )
    })?;
    let metrics = std::fs::read_to_string(dir.join("metrics.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Json>(&t).ok())
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    let lines = read_details(&dir)
        .into_iter()
        .map(|(n, r)| {
            let latency = match (
                r["start_time"].as_str().and_then(|s| s.parse::<chrono::DateTime<chrono::Utc>>().ok()),
                r["end_time"].as_str().and_then(|s| s.parse::<chrono::DateTime<chrono::Utc>>().ok()),
            ) {
                (Some(a), Some(b)) => (b - a).num_microseconds().map(|us| us as f64 / 1e6),
                _ => None,
            };
            (
                n,
                json!({"line_number": n, "status": r["status"], "inputs": r["inputs"], "output": r["output"],
                       "error": r["error"]["message"], "latency": latency}),
            )
        })
        .collect();
    Ok(LoadedRun {
        name: name.to_owned(),
        record,
        metrics,
        lines,
    })
}

fn not_found(e: String) -> anyhow::Result<u8> {
    eprintln!("error: {e}");
    Ok(exit::INVALID)
}

/// Renders rows as an aligned text table; cells are cut at `width` characters.
pub(crate) fn table(headers: &[String], rows: &[Vec<String>], width: usize) -> String {
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
                format!("{c:<w$}", w = widths[i])
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if k == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    out
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

pub fn list(args: ListArgs) -> anyhow::Result<u8> {
    let index = Index::open()?;
    index.reconcile()?;
    let archived = if args.archived_only {
        Archived::Only
    } else if args.include_archived {
        Archived::Include
    } else {
        Archived::Exclude
    };
    let runs = index.list(archived, (!args.all_results).then_some(args.max_results))?;
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
            print!("{}", table(&headers, &rows, 60));
        }
    }
    Ok(exit::OK)
}

pub fn show(args: ShowArgs) -> anyhow::Result<u8> {
    let Some(record) = read_record(&run_dir(&args.name)) else {
        return not_found(format!(
            "no run named `{}` in {}",
            args.name,
            runs_root().display()
        ));
    };
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
                cell(&record["properties"]["node_variant"]),
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
            print!("{}", table(&["field".into(), "value".into()], &rows, 80));
        }
    }
    Ok(exit::OK)
}

pub fn show_metrics(args: ShowArgs) -> anyhow::Result<u8> {
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
            print!("{}", table(&["metric".into(), "value".into()], &rows, 60));
        }
    }
    Ok(exit::OK)
}

pub fn show_details(args: DetailsArgs) -> anyhow::Result<u8> {
    let run = match load_run(&args.name) {
        Ok(r) => r,
        Err(e) => return not_found(e),
    };
    let limit = if args.all_results {
        usize::MAX
    } else {
        args.max_results
    };
    let lines: Vec<&Json> = run.lines.values().take(limit).collect();
    // promptflow's shape: one object per line with `inputs.x` and `outputs.y` keys.
    let flat: Vec<Json> = lines
        .iter()
        .map(|l| {
            let mut o = serde_json::Map::new();
            o.insert("line_number".into(), l["line_number"].clone());
            for (prefix, key) in [("inputs", "inputs"), ("outputs", "output")] {
                if let Some(m) = l[key].as_object() {
                    for (k, v) in m {
                        o.insert(format!("{prefix}.{k}"), v.clone());
                    }
                }
            }
            o.insert("status".into(), l["status"].clone());
            o.insert("latency".into(), l["latency"].clone());
            o.insert("error".into(), l["error"].clone());
            Json::Object(o)
        })
        .collect();
    match args.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&flat)?),
        OutputFormat::Table => {
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
                .map(|r| {
                    headers
                        .iter()
                        .map(|h| match (h.as_str(), &r[h]) {
                            ("latency", Json::Number(n)) => {
                                format!("{:.3}s", n.as_f64().unwrap_or(0.0))
                            }
                            (_, v) => cell(v),
                        })
                        .collect()
                })
                .collect();
            print!("{}", table(&headers, &rows, 60));
            if run.lines.len() > lines.len() {
                eprintln!(
                    "({} of {} lines; --all-results for every line)",
                    lines.len(),
                    run.lines.len()
                );
            }
        }
    }
    Ok(exit::OK)
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
            .map(|r| {
                r.lines.get(n).map_or(Json::Null, |l| {
                    if l["status"] == "Completed" {
                        l["output"].clone()
                    } else {
                        json!({"error": l["error"]})
                    }
                })
            })
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
                    .find_map(|r| r.lines.get(n).map(|l| l["inputs"].clone()))
                    .unwrap_or(Json::Null);
                diffs.push(json!({"line_number": n, "inputs": inputs, "outputs": per}));
            }
        }
    }
    let summary: Vec<Json> = runs
        .iter()
        .map(|r| {
            let sm = &r.record["properties"]["system_metrics"];
            json!({"name": r.name, "status": r.record["status"], "variant": r.record["properties"]["node_variant"],
                   "total_lines": sm["total_lines"], "failed_lines": sm["failed_lines"],
                   "duration": sm["duration"], "total_tokens": sm["total_tokens"]})
        })
        .collect();
    json!({"runs": summary, "metrics": metrics, "compared_lines": all_lines.len(),
           "differing_lines": differing, "diffs": diffs})
}

fn print_table_comparison(c: &Json) {
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
                "variant" if r[key].as_object().is_some_and(|m| m.is_empty()) => "-".to_owned(),
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
    print!("{}", table(&headers, &rows, 40));
    println!(
        "\n{} of {} lines have different outputs",
        c["differing_lines"], c["compared_lines"]
    );
    for d in c["diffs"].as_array().into_iter().flatten() {
        println!("\nline {} inputs {}", d["line_number"], cell(&d["inputs"]));
        for r in &runs {
            let name = r["name"].as_str().unwrap_or("");
            println!("  {name}: {}", cell(&d["outputs"][name]));
        }
    }
}

/// Prints the comparison of runs (used by `run compare` and after `--variant all`).
pub(crate) fn print_comparison(names: &[String], format: Format) -> anyhow::Result<u8> {
    let mut runs = vec![];
    for n in names {
        match load_run(n) {
            Ok(r) => runs.push(r),
            Err(e) => return not_found(e),
        }
    }
    let c = comparison(&runs, 20);
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&c)?),
        OutputFormat::Table => print_table_comparison(&c),
    }
    Ok(exit::OK)
}

pub fn compare(args: CompareArgs) -> anyhow::Result<u8> {
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
    Ok(exit::OK)
}

pub fn visualize(args: VisualizeArgs) -> anyhow::Result<u8> {
    let mut runs = vec![];
    for n in &args.names {
        match load_run(n) {
            Ok(r) => runs.push(r),
            Err(e) => return not_found(e),
        }
    }
    let html = report::render(&runs, &comparison(&runs, usize::MAX));
    let path = args.html_path.unwrap_or_else(|| {
        let stem: String = args.names.join("__").chars().take(150).collect();
        sluice_home().join("reports").join(format!("{stem}.html"))
    });
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, html)?;
    println!("{}", std::path::absolute(&path).unwrap_or(path).display());
    Ok(exit::OK)
}

fn set_archived(name: &str, archived: bool) -> anyhow::Result<u8> {
    let dir = run_dir(name);
    let Some(mut record) = read_record(&dir) else {
        return not_found(format!(
            "no run named `{name}` in {}",
            runs_root().display()
        ));
    };
    record["archived"] = Json::Bool(archived);
    std::fs::write(dir.join("run.json"), serde_json::to_vec_pretty(&record)?)?;
    let index = Index::open()?;
    index.upsert(&record)?;
    index.set_archived(name, archived)?;
    eprintln!(
        "{} run {name}",
        if archived { "archived" } else { "restored" }
    );
    Ok(exit::OK)
}

pub fn archive(args: NameArg) -> anyhow::Result<u8> {
    set_archived(&args.name, true)
}

pub fn restore(args: NameArg) -> anyhow::Result<u8> {
    set_archived(&args.name, false)
}

pub fn delete(args: DeleteArgs) -> anyhow::Result<u8> {
    let dir: PathBuf = run_dir(&args.name);
    if read_record(&dir).is_none() {
        return not_found(format!(
            "no run named `{}` in {}",
            args.name,
            runs_root().display()
        ));
    }
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            eprintln!(
                "error: deleting run `{}` needs --yes when not at a terminal",
                args.name
            );
            return Ok(exit::INVALID);
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
            return Ok(exit::FAILED);
        }
    }
    std::fs::remove_dir_all(&dir)?;
    Index::open()?.remove(&args.name)?;
    eprintln!("deleted run {}", args.name);
    Ok(exit::OK)
}
