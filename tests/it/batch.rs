//! `sluice run create` end to end: the run folder, failed lines, mapping errors, metrics.

use std::path::Path;

use assert_cmd::Command;
use assert_cmd::assert::Assert;
use predicates::prelude::*;
use tempfile::TempDir;

fn sluice(home: &Path) -> Command {
    let mut cmd = Command::cargo_bin("sluice").unwrap();
    cmd.env("SLUICE_HOME", home);
    cmd
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A flow whose tool fails on odd numbers, with an aggregation node averaging the successful lines.
fn flaky_flow(dir: &Path) {
    crate::common::write_files(
        dir,
        &[
            ("flow.dag.yaml", FLAKY_FLOW),
            ("double.py", ODD_FAILING_DOUBLE),
            ("mean.py", MEAN_METRIC),
        ],
    );
}

const FLAKY_FLOW: &str = "inputs:\n  n: {type: int}\n  label: {type: string, default: fixed}\noutputs:\n  doubled: {reference: '${double.output}'}\n  label: {reference: '${inputs.label}'}\nnodes:\n- name: double\n  type: python\n  source: {type: code, path: double.py}\n  inputs: {n: '${inputs.n}'}\n- name: mean\n  type: python\n  source: {type: code, path: mean.py}\n  inputs: {values: '${double.output}'}\n  aggregation: true\n";
const ODD_FAILING_DOUBLE: &str = "from promptflow.core import tool\n\n@tool\ndef double(n: int) -> int:\n    if n % 2:\n        raise ValueError(f'odd: {n}')\n    return 2 * n\n";
const MEAN_METRIC: &str = "from promptflow.core import tool, log_metric\n\n@tool\ndef mean(values: list):\n    log_metric('mean', sum(values) / len(values))\n    log_metric('count', len(values))\n";

#[test]
fn a_batch_records_every_line_and_failed_lines_do_not_stop_the_others() {
    let (home, flow) = crate::common::home_and_flow();
    flaky_flow(flow.path());
    let data = flow.path().join("data.jsonl");
    std::fs::write(
        &data,
        (0..10)
            .map(|n| format!("{{\"n\": {n}, \"label\": \"from data\"}}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let out =
        crate::common::run_create(home.path(), "r", "--max-concurrency 4", flow.path(), &data)
            .assert()
            .success()
            .stderr(predicate::str::contains("has a default"));
    let record: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(record["properties"]["system_metrics"]["failed_lines"], 5);
    assert_eq!(
        record["properties"]["system_metrics"]["node_status"]["double.failed"],
        5
    );
    assert_eq!(
        record["properties"]["system_metrics"]["node_status"]["mean.completed"],
        1
    );

    let run = home.path().join("runs/r");
    let outputs = lines(&run.join("flow_outputs/output.jsonl"));
    let numbers: Vec<i64> = outputs
        .iter()
        .map(|o| o["line_number"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, [0, 2, 4, 6, 8], "successful lines, in line order");
    assert_eq!(outputs[2]["doubled"], 8);
    assert_eq!(
        outputs[0]["label"], "fixed",
        "a default wins over a same-named data column"
    );
    assert_eq!(
        lines(&run.join("inputs.jsonl")).len(),
        10,
        "inputs of every line, failed ones too"
    );
    assert_eq!(lines(&run.join("details.jsonl")).len(), 10);
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics, serde_json::json!({"mean": 8.0, "count": 5}));
    let error: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("error.json")).unwrap()).unwrap();
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("Failed to run 5/10 lines"),
        "{error}"
    );
    assert!(std::fs::read_dir(&run).unwrap().count() < 20);

    sluice(home.path())
        .args(["run", "show-metrics", "-n", "r"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"mean\": 8.0"));
    sluice(home.path())
        .args(["run", "show", "-n", "r"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"failed_lines\": 5"));
}

/// The flaky flow run as `name` over a CSV file holding `csv`, with `--column-mapping MAPPING`.
fn csv_run(csv: &str, name: &str, mapping: &str) -> (TempDir, Assert) {
    let (home, flow) = crate::common::home_and_flow();
    flaky_flow(flow.path());
    let data = flow.path().join("data.csv");
    std::fs::write(&data, csv).unwrap();
    let assert = crate::common::run_create(home.path(), name, "", flow.path(), &data)
        .args(["--column-mapping", mapping])
        .assert();
    (home, assert)
}

#[test]
fn every_unresolvable_mapping_is_reported_before_any_line_runs() {
    let (home, run) = csv_run("number,other\n1,a\n", "bad", "label=${data.nope}");
    run.code(2).stderr(
        predicate::str::contains("Couldn't find these mapping relations: ${data.n}, ${data.nope}")
            .and(predicate::str::contains("${data.number}")),
    );
    assert!(!home.path().join("runs/bad").exists());
}

#[test]
fn csv_cells_are_strings_converted_by_input_types() {
    let (home, run) = csv_run("number\n2\n4\n", "csv", "n=${data.number}");
    run.success();
    let outputs = lines(&home.path().join("runs/csv/flow_outputs/output.jsonl"));
    assert_eq!(outputs[1]["doubled"], 8);
}
