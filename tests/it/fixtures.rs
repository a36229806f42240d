//! Walks `tests/fixtures/`: each `<case>/` is a flow with `cases.json` (and maybe `aggregate.json`), run
//! under the serial scheduler (node concurrency 1) and the concurrent one (16), which must agree with each
//! other and with the expectation; each `err_<rule>/` is a flow the loader must reject as
//! `expected_error.json` says. A case may pick a `variant` (`${node.variant_id}`), and `batch.json`
//! holds batch runs through the engine's runner into a run store of their own (data rows, column
//! mapping, variant; expected outputs in line order, metrics, failed lines). LLM nodes in fixtures use
//! the scripted backend (`model: scripted:<file>`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value as Json, json};
use sluice_engine::{
    Flow, FlowError, LineOptions, LineResult, LoadOptions, Map, Status, Value, VariantSelection,
};

fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn case_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_root())
        .expect("tests/fixtures exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn read_json(path: &Path) -> Json {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn to_map(v: &Json) -> Map {
    match Value::from(v.clone()) {
        Value::Map(m) => m,
        _ => panic!("inputs must be a JSON object: {v}"),
    }
}

/// What a line run comes to, in a form both schedulers must agree on.
fn summary(line: &LineResult) -> Json {
    let mut nodes: Vec<(String, &str)> = line
        .node_runs
        .iter()
        .filter(|r| r.status != Status::Canceled)
        .map(|r| (r.node.clone(), r.status.as_str()))
        .collect();
    nodes.sort();
    json!({
        "status": line.status.as_str(),
        "output": Value::Map(line.output.clone()).to_json_lossy(),
        "error": line.error.as_ref().map(|e| e.error_type.clone()),
        "nodes": nodes,
    })
}

fn check_case_dir(dir: &Path, rt: &tokio::runtime::Runtime) -> Vec<String> {
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let mut failures = vec![];
    let registry = sluice_nodes::builtin_registry();
    let load = |variant: Option<&str>| {
        let variant =
            variant.map(|v| VariantSelection::parse(v).expect("a ${node.variant} selection"));
        Flow::load(
            dir,
            &registry,
            &LoadOptions {
                variant,
                ..LoadOptions::default()
            },
        )
    };
    let default_flow = match load(None) {
        Ok(f) => f,
        Err(e) => return vec![format!("{name}: failed to load:\n{}", e.render())],
    };
    let mut variant_flows = std::collections::HashMap::new();
    let cases_path = dir.join("cases.json");
    let cases = if cases_path.exists() {
        read_json(&cases_path)
    } else {
        json!([])
    };
    for (i, case) in cases
        .as_array()
        .expect("cases.json is a list")
        .iter()
        .enumerate()
    {
        let inputs = to_map(&case["inputs"]);
        let timeout = case["timeout_sec"].as_f64().map(Duration::from_secs_f64);
        let flow = match case["variant"].as_str() {
            None => &default_flow,
            Some(v) => match variant_flows
                .entry(v.to_owned())
                .or_insert_with(|| load(Some(v)))
            {
                Ok(f) => &*f,
                Err(e) => {
                    failures.push(format!(
                        "{name}: variant {v} failed to load:\n{}",
                        e.render()
                    ));
                    continue;
                }
            },
        };
        let mut summaries = vec![];
        for concurrency in [1, 16] {
            let opts = LineOptions {
                node_concurrency: concurrency,
                timeout,
                ..Default::default()
            };
            let line = rt.block_on(flow.run_line(&inputs, &opts));
            let where_ = format!("{name} case {i} (concurrency {concurrency})");
            if let Some(expected) = case.get("output") {
                let got = Value::Map(line.output.clone()).to_json_lossy();
                if line.status != Status::Completed {
                    failures.push(format!(
                        "{where_}: expected output {expected}, line failed: {:?}",
                        line.error
                    ));
                } else if &got != expected {
                    failures.push(format!(
                        "{where_}: output\n  expected {expected}\n  got      {got}"
                    ));
                }
            }
            if let Some(expected) = case.get("error").and_then(Json::as_str) {
                match &line.error {
                    None => failures.push(format!(
                        "{where_}: expected error {expected}, got output {:?}",
                        line.output
                    )),
                    Some(e) if e.error_type != expected => failures.push(format!(
                        "{where_}: expected error {expected}, got {} ({})",
                        e.error_type, e.message
                    )),
                    Some(e) => {
                        if let Some(part) = case.get("error_contains").and_then(Json::as_str)
                            && !e.message.contains(part)
                        {
                            failures.push(format!(
                                "{where_}: error message {:?} lacks {part:?}",
                                e.message
                            ));
                        }
                    }
                }
            }
            if let Some(statuses) = case.get("node_status").and_then(Json::as_object) {
                for (node, want) in statuses {
                    let got = line
                        .node_runs
                        .iter()
                        .find(|r| &r.node == node)
                        .map(|r| r.status.as_str());
                    if got != want.as_str() {
                        failures.push(format!(
                            "{where_}: node {node} status {got:?}, expected {want}"
                        ));
                    }
                }
            }
            if let Some(expected) = case.get("metrics") {
                let agg = rt.block_on(flow.run_aggregation(&[&line.aggregation_inputs], &opts));
                let got = Value::Map(agg.metrics.clone()).to_json_lossy();
                if &got != expected {
                    failures.push(format!(
                        "{where_}: metrics\n  expected {expected}\n  got      {got} (error {:?})",
                        agg.error
                    ));
                }
            }
            summaries.push(summary(&line));
        }
        if summaries[0] != summaries[1] {
            failures.push(format!(
                "{name} case {i}: serial and concurrent runs differ:\n  {}\n  {}",
                summaries[0], summaries[1]
            ));
        }
    }
    let flow = &default_flow;
    let batch_path = dir.join("batch.json");
    if batch_path.exists() {
        failures.extend(check_batches(
            &name,
            dir,
            &read_json(&batch_path),
            &load,
            rt,
        ));
    }
    let agg_path = dir.join("aggregate.json");
    if agg_path.exists() {
        let spec = read_json(&agg_path);
        for concurrency in [1, 16] {
            let opts = LineOptions {
                node_concurrency: concurrency,
                ..Default::default()
            };
            let lines: Vec<LineResult> = spec["lines"]
                .as_array()
                .expect("aggregate.json has lines")
                .iter()
                .enumerate()
                .map(|(n, inputs)| {
                    let opts = LineOptions {
                        line_number: Some(n),
                        ..opts.clone()
                    };
                    rt.block_on(flow.run_line(&to_map(inputs), &opts))
                })
                .collect();
            let ok: Vec<&Map> = lines
                .iter()
                .filter(|l| l.status == Status::Completed)
                .map(|l| &l.aggregation_inputs)
                .collect();
            let agg = rt.block_on(flow.run_aggregation(&ok, &opts));
            let got = Value::Map(agg.metrics.clone()).to_json_lossy();
            if got != spec["metrics"] {
                failures.push(format!(
                    "{name} aggregate (concurrency {concurrency}): metrics\n  expected {}\n  got      {got} (error {:?})",
                    spec["metrics"], agg.error
                ));
            }
        }
    }
    failures
}

fn check_error_dir(dir: &Path) -> Vec<String> {
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let expected = read_json(&dir.join("expected_error.json"));
    let registry = sluice_nodes::builtin_registry();
    let err = match Flow::load(dir, &registry, &LoadOptions::default()) {
        Ok(_) => {
            return vec![format!(
                "{name}: loaded, but it should have been rejected with {}",
                expected["codes"]
            )];
        }
        Err(e) => e,
    };
    let rendered = err.render();
    let mut failures = vec![];
    let codes: Vec<&str> = match &err {
        FlowError::Yaml { .. } => vec!["YAML"],
        other => other.problems().iter().map(|p| p.code).collect(),
    };
    for want in expected["codes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Json::as_str)
    {
        if !codes.contains(&want) {
            failures.push(format!(
                "{name}: expected problem {want}, got {codes:?}\n{rendered}"
            ));
        }
    }
    for part in expected["contains"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Json::as_str)
    {
        if !rendered.contains(part) {
            failures.push(format!(
                "{name}: rendered error lacks {part:?}:\n{rendered}"
            ));
        }
    }
    if let Some(line) = expected["line"].as_u64() {
        let got = match &err {
            FlowError::Yaml { span, .. } => Some(span.line),
            other => other.problems().first().and_then(|p| {
                if p.file.is_none() {
                    p.span.map(|s| s.line)
                } else {
                    None
                }
            }),
        };
        if got != Some(line as usize) {
            failures.push(format!(
                "{name}: first problem at line {got:?}, expected {line}\n{rendered}"
            ));
        }
    }
    failures
}

/// Runs each batch of `batch.json` through the engine's batch runner and compares what it recorded.
fn check_batches(
    name: &str,
    dir: &Path,
    spec: &Json,
    load: &dyn Fn(Option<&str>) -> Result<Flow, FlowError>,
    rt: &tokio::runtime::Runtime,
) -> Vec<String> {
    use sluice_engine::{BatchRun, RunOptions, RunSpec, RunStore};
    let mut failures = vec![];
    for (i, batch) in spec
        .as_array()
        .expect("batch.json is a list")
        .iter()
        .enumerate()
    {
        let where_ = format!("{name} batch {i}");
        let home = tempfile::tempdir().unwrap();
        let data = home.path().join("data.jsonl");
        let rows: String = batch["data"]
            .as_array()
            .expect("a batch has data rows")
            .iter()
            .map(|r| format!("{r}\n"))
            .collect();
        std::fs::write(&data, rows).unwrap();
        let variant = batch["variant"].as_str();
        let flow = match load(variant) {
            Ok(f) => f,
            Err(e) => {
                failures.push(format!("{where_}: failed to load:\n{}", e.render()));
                continue;
            }
        };
        let mut run_spec = RunSpec {
            flow: Some(dir.to_path_buf()),
            data: Some(data),
            name: Some("fixture".into()),
            ..Default::default()
        };
        for (k, v) in batch["column_mapping"].as_object().into_iter().flatten() {
            run_spec
                .column_mapping
                .insert(k.clone(), Value::from(v.clone()));
        }
        let store = RunStore::new(home.path());
        let run = match BatchRun::prepare(&store, flow, &run_spec, RunOptions::default()) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{where_}: {e}"));
                continue;
            }
        };
        let record = match rt.block_on(run.execute(&mut (), std::future::pending())) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{where_}: {e}"));
                continue;
            }
        };
        let run_dir = home.path().join("runs/fixture");
        let outputs: Vec<Json> = std::fs::read_to_string(run_dir.join("outputs.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if let Some(expected) = batch.get("outputs")
            && expected != &Json::Array(outputs.clone())
        {
            failures.push(format!(
                "{where_}: outputs\n  expected {expected}\n  got      {}",
                Json::Array(outputs)
            ));
        }
        let metrics = Json::Object(record.metrics.clone());
        if let Some(expected) = batch.get("metrics")
            && expected != &metrics
        {
            failures.push(format!(
                "{where_}: metrics\n  expected {expected}\n  got      {metrics}"
            ));
        }
        let failed = record.properties.system_metrics.failed_lines.unwrap_or(0) as u64;
        if failed != batch["failed_lines"].as_u64().unwrap_or(0) {
            failures.push(format!(
                "{where_}: {failed} failed lines, expected {}",
                batch["failed_lines"]
            ));
        }
        if let Some(tokens) = batch.get("total_tokens")
            && tokens.as_u64() != record.properties.system_metrics.tokens.total_tokens
        {
            failures.push(format!(
                "{where_}: total_tokens {:?}, expected {tokens}",
                record.properties.system_metrics.tokens.total_tokens
            ));
        }
    }
    failures
}

#[test]
fn every_fixture_behaves_as_expected_under_both_schedulers() {
    let rt = crate::common::runtime();
    let mut failures = vec![];
    let mut count = 0;
    for dir in case_dirs() {
        count += 1;
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("err_") {
            failures.extend(check_error_dir(&dir));
        } else {
            failures.extend(check_case_dir(&dir, &rt));
        }
    }
    assert!(count >= 10, "expected the fixture folders, found {count}");
    assert!(
        failures.is_empty(),
        "{} fixture failures:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
