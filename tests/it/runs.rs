//! The run store end to end: resume after a real SIGKILL, Ctrl-C, evaluation runs over other runs,
//! variants, run files, the index, compare and the HTML report in headless Chromium.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{
    DOUBLE_FLOW, DOUBLE_FLOW_WITH_TOTAL, chromium, dump_dom, numbers_data, read_jsonl, screenshot,
    sluice, stdout_json, succeeded, write_files,
};
use serde_json::Value as Json;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn spawn_sluice(home: &Path, args: &[&str]) -> Child {
    std::process::Command::new(assert_cmd::cargo::cargo_bin("sluice"))
        .args(args)
        .env("SLUICE_HOME", home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn count_lines(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .unwrap_or(0)
}

/// A flow whose Python node sleeps a little per line, with an aggregation computing the mean.
fn slow_flow(dir: &Path, lines: usize) -> PathBuf {
    write_files(
        dir,
        &[
            ("flow.dag.yaml", DOUBLE_FLOW_WITH_TOTAL),
            (
                "double.py",
                "import time\nfrom promptflow.core import tool\n\n@tool\ndef double(n: int) -> int:\n    time.sleep(0.002)\n    return 2 * n\n",
            ),
            (
                "total.py",
                "from promptflow.core import tool, log_metric\n\n@tool\ndef mean(values: list):\n    log_metric('mean', sum(values) / len(values))\n    log_metric('count', len(values))\n",
            ),
        ],
    );
    numbers_data(dir, lines)
}

fn file_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                file_count(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[test]
fn a_run_killed_with_sigkill_resumes_with_every_line_exactly_once() {
    let (home, flow) = crate::common::home_and_flow();
    let data = slow_flow(flow.path(), 10_000);
    let (flow_s, data_s) = (flow.path().to_str().unwrap(), data.to_str().unwrap());

    // The reference: the same run, uninterrupted.
    common::created(
        home.path(),
        "full",
        "--max-concurrency 8",
        flow.path(),
        &data,
    );
    let full_dir = home.path().join("runs/full");
    assert!(
        file_count(&full_dir) < 20,
        "a 10k-line run should need fewer than 20 files, has {}",
        file_count(&full_dir)
    );
    assert!(
        full_dir.join("logs.txt").is_file() && full_dir.join("snapshot/flow.dag.yaml").is_file()
    );

    // Kill -9 halfway through.
    let mut child = spawn_sluice(
        home.path(),
        &[
            "run",
            "create",
            "--name",
            "killed",
            "--max-concurrency",
            "8",
            "--flow",
            flow_s,
            "--data",
            data_s,
        ],
    );
    let details = home.path().join("runs/killed/details.jsonl");
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_lines(&details) < 3000 {
        assert!(Instant::now() < deadline, "the run made no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let survived = count_lines(&details);
    assert!(
        survived < 10_000,
        "the kill came too late: {survived} lines"
    );
    let killed: Json =
        serde_json::from_slice(&std::fs::read(home.path().join("runs/killed/run.json")).unwrap())
            .unwrap();
    assert_eq!(
        killed["status"], "Running",
        "a killed run never wrote its end"
    );

    let out = sluice(home.path())
        .args([
            "run",
            "create",
            "--resume-from",
            "killed",
            "--name",
            "resumed",
            "--max-concurrency",
            "8",
        ])
        .output()
        .unwrap();
    let record = stdout_json(&out);
    let sm = &record["properties"]["system_metrics"];
    assert_eq!(record["status"], "Completed");
    assert_eq!(sm["completed_lines"], 10_000);
    let carried = sm["carried_over_lines"].as_u64().unwrap();
    assert!(
        (2500..10_000).contains(&carried),
        "carried over {carried} lines"
    );

    // Every line exactly once, and the same outputs and metrics as the uninterrupted run.
    common::assert_every_line_once(&home.path().join("runs/resumed/details.jsonl"), 10_000);
    let resumed_out =
        std::fs::read_to_string(home.path().join("runs/resumed/outputs.jsonl")).unwrap();
    let full_out = std::fs::read_to_string(full_dir.join("outputs.jsonl")).unwrap();
    assert_eq!(resumed_out, full_out);
    let metrics = |name: &str| -> Json {
        serde_json::from_slice(
            &std::fs::read(home.path().join("runs").join(name).join("metrics.json")).unwrap(),
        )
        .unwrap()
    };
    assert_eq!(metrics("resumed"), metrics("full"));
    assert_eq!(metrics("full")["count"], 10_000);
}

#[test]
fn ctrl_c_cancels_the_run_and_marks_it_canceled() {
    let (home, flow) = crate::common::home_and_flow();
    let data = slow_flow(flow.path(), 5_000);
    let mut child = spawn_sluice(
        home.path(),
        &[
            "run",
            "create",
            "--name",
            "stopped",
            "--max-concurrency",
            "2",
            "--flow",
            flow.path().to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ],
    );
    let run_json = home.path().join("runs/stopped/run.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run_json.exists() {
        assert!(Instant::now() < deadline, "the run did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: sending a signal to our own child process.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(rc, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let record: Json = serde_json::from_slice(&std::fs::read(&run_json).unwrap()).unwrap();
    assert_eq!(record["status"], "Canceled");
    let sm = &record["properties"]["system_metrics"];
    let done = sm["completed_lines"].as_u64().unwrap();
    assert!(done > 0 && done < 5_000, "{sm}");
    assert_eq!(sm["not_run_lines"].as_u64().unwrap() + done, 5_000);
    // What finished is kept: resuming runs only the rest.
    let out = sluice(home.path())
        .args([
            "run",
            "create",
            "--resume-from",
            "stopped",
            "--name",
            "finished",
            "--max-concurrency",
            "16",
        ])
        .output()
        .unwrap();
    let record = stdout_json(&out);
    assert_eq!(
        record["properties"]["system_metrics"]["carried_over_lines"],
        done
    );
    assert_eq!(
        record["properties"]["system_metrics"]["completed_lines"],
        5_000
    );
}

/// A flow whose tool fails on odd numbers.
fn flaky_flow(dir: &Path) -> PathBuf {
    write_files(
        dir,
        &[
            ("flow.dag.yaml", DOUBLE_FLOW),
            (
                "double.py",
                "from promptflow.core import tool\n\n@tool\ndef double(n: int) -> int:\n    if n % 2:\n        raise ValueError(f'odd: {n}')\n    return 2 * n\n",
            ),
        ],
    );
    let data = dir.join("data.jsonl");
    std::fs::write(
        &data,
        (0..10)
            .map(|n| format!("{{\"n\": {n}, \"expected\": {}}}\n", 2 * n))
            .collect::<String>(),
    )
    .unwrap();
    data
}

#[test]
fn an_eval_run_aligns_with_the_lines_that_succeeded_in_the_base_run() {
    let (home, flow) = crate::common::home_and_flow();
    let data = flaky_flow(flow.path());
    common::created(home.path(), "base", "", flow.path(), &data);
    // Without --data, the base run's data is the data; ${run.outputs.*} lines up by line_number.
    let evaluate = |name: &str, groundtruth: &str, prediction: &str| {
        let mut cmd = sluice(home.path());
        cmd.args(["run", "create", "--name", name, "--run", "base", "--flow"])
            .arg(root().join("flows/eval_accuracy"))
            .arg("--column-mapping")
            .arg(format!("groundtruth={groundtruth}"))
            .arg(format!("prediction={prediction}"));
        cmd
    };
    let out = evaluate("eval", "${data.expected}", "${run.outputs.doubled}")
        .output()
        .unwrap();
    let record = stdout_json(&out);
    assert_eq!(record["properties"]["system_metrics"]["total_lines"], 5);
    assert_eq!(record["properties"]["run"], "base");
    assert_eq!(record["metrics"]["accuracy"], 1.0);
    let inputs = read_jsonl(&home.path().join("runs/eval/inputs.jsonl"));
    let numbers: Vec<u64> = inputs
        .iter()
        .map(|l| l["line_number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [0, 2, 4, 6, 8]);
    assert_eq!(inputs[2]["groundtruth"], "8");
    assert_eq!(inputs[2]["prediction"], "8");

    // A mapping to a column no source has is reported before anything runs.
    evaluate("bad", "${data.nope}", "${run.outputs.missing}")
        .assert()
        .code(2)
        .stderr(
            predicates::str::contains("${data.nope}")
                .and(predicates::str::contains("${run.outputs.missing}")),
        );
    assert!(!home.path().join("runs/bad").exists());
}

use predicates::prelude::PredicateBooleanExt;

#[test]
fn a_run_file_with_set_overrides() {
    let (home, dir) = crate::common::home_and_flow();
    let data = flaky_flow(dir.path());
    let run_yml = dir.path().join("run.yml");
    std::fs::write(
        &run_yml,
        format!(
            "$schema: https://azuremlschemas.azureedge.net/promptflow/latest/Run.schema.json\nflow: .\ndata: {}\ncolumn_mapping:\n  n: ${{data.n}}\ndisplay_name: from the file\ntags:\n  owner: tests\nenvironment_variables:\n  SLUICE_TEST_VAR: x\n",
            data.file_name().unwrap().to_str().unwrap()
        ),
    )
    .unwrap();
    let out = sluice(home.path())
        .args(["run", "create", "-f"])
        .arg(&run_yml)
        .args([
            "--set",
            "display_name=overridden",
            "tags.team=search",
            "name=from_file",
        ])
        .output()
        .unwrap();
    let record = stdout_json(&out);
    assert_eq!(record["name"], "from_file");
    assert_eq!(record["display_name"], "overridden");
    assert_eq!(record["tags"]["owner"], "tests");
    assert_eq!(record["tags"]["team"], "search");
    assert_eq!(record["properties"]["system_metrics"]["total_lines"], 10);
    assert_eq!(record["properties"]["column_mapping"]["n"], "${data.n}");
}

#[test]
fn run_list_archive_restore_delete_and_the_index() {
    let (home, flow) = crate::common::home_and_flow();
    let data = flaky_flow(flow.path());
    for name in ["first", "second"] {
        common::created(home.path(), name, "", flow.path(), &data);
    }
    let names = |args: &[&str]| -> Vec<String> {
        let out = sluice(home.path())
            .args(["run", "list"])
            .args(args)
            .output()
            .unwrap();
        stdout_json(&out)
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&[]), ["second", "first"]);
    assert!(home.path().join("runs.sqlite").is_file());
    sluice(home.path())
        .args(["run", "archive", "-n", "first"])
        .assert()
        .success();
    assert_eq!(names(&[]), ["second"]);
    assert_eq!(names(&["--archived-only"]), ["first"]);
    assert_eq!(names(&["--include-archived"]), ["second", "first"]);
    // The index is a cache: deleting it loses nothing, archive state included.
    std::fs::remove_file(home.path().join("runs.sqlite")).unwrap();
    assert_eq!(names(&[]), ["second"]);
    sluice(home.path())
        .args(["run", "restore", "-n", "first"])
        .assert()
        .success();
    assert_eq!(names(&["--max-results", "1"]), ["second"]);
    sluice(home.path())
        .args(["run", "delete", "-n", "first"])
        .assert()
        .code(2);
    sluice(home.path())
        .args(["run", "delete", "-n", "first", "--yes"])
        .assert()
        .success();
    assert_eq!(names(&[]), ["second"]);
    assert!(!home.path().join("runs/first").exists());
    // Tables for humans.
    sluice(home.path())
        .args(["run", "list", "--format", "table"])
        .assert()
        .success()
        .stdout(predicates::str::contains("second").and(predicates::str::contains("Completed")));
    let details = succeeded(sluice(home.path()).args(["run", "show-details", "-n", "second"]));
    let table = String::from_utf8_lossy(&details.stdout);
    assert!(
        table.contains("outputs.doubled") && table.contains("odd: 3"),
        "{table}"
    );
}

/// Headless Chromium, as the project's CI installs it.
#[test]
fn classify_then_evaluate_compare_and_visualize_on_the_local_model() {
    let home = tempfile::tempdir().unwrap();
    let classify = root().join("flows/classify");
    let data = classify.join("data.jsonl");
    // Both prompt variants as sibling runs, then a comparison table.
    let out = common::created(home.path(), "sentiment", "--variant all", &classify, &data);
    // One record per variant on stdout, the comparison on stderr.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("sentiment_classify_variant_0")
            && stderr.contains("lines have different outputs"),
        "{stdout}\n{stderr}"
    );
    // Evaluate each variant's run by its outputs.
    let mut accuracy = vec![];
    for v in ["variant_0", "variant_1"] {
        let out = sluice(home.path())
            .args([
                "run",
                "create",
                "--name",
                &format!("eval_{v}"),
                "--run",
                &format!("sentiment_classify_{v}"),
                "--flow",
            ])
            .arg(root().join("flows/eval_classification"))
            .args([
                "--column-mapping",
                "prediction=${run.outputs.label}",
                "label=${data.label}",
            ])
            .output()
            .unwrap();
        accuracy.push(stdout_json(&out)["metrics"]["accuracy"].as_f64().unwrap());
    }
    assert!(
        accuracy[0] >= 0.8,
        "the few-shot variant should classify these reviews: {accuracy:?}"
    );
    assert!(accuracy[0] > accuracy[1], "{accuracy:?}");
    let out = sluice(home.path())
        .args(["run", "show-metrics", "-n", "eval_variant_0"])
        .output()
        .unwrap();
    assert_eq!(stdout_json(&out)["accuracy"].as_f64().unwrap(), accuracy[0]);

    // Compare: metrics side by side.
    let out = sluice(home.path())
        .args([
            "run",
            "compare",
            "eval_variant_0",
            "eval_variant_1",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    let c = stdout_json(&out);
    assert_eq!(
        c["metrics"]["accuracy"]["eval_variant_0"].as_f64().unwrap(),
        accuracy[0]
    );
    assert_eq!(c["compared_lines"], 12);

    // Visualize, then look at it in headless Chromium.
    let report = home.path().join("report.html");
    let html = crate::common::visualize(
        home.path(),
        &[
            "sentiment_classify_variant_0",
            "eval_variant_0",
            "eval_variant_1",
        ],
        &report,
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the report must not fetch anything"
    );
    assert!(html.contains("<svg") && html.contains("accuracy"));
    let profile = tempfile::tempdir().unwrap();
    let png = home.path().join("report.png");
    let chromium = chromium().expect("chromium");
    let url = format!("file://{}", report.display());
    let bytes = screenshot(&chromium, profile.path(), &url, &png, (1300, 1400));
    assert!(
        bytes.len() > 20_000,
        "the screenshot looks empty: {} bytes",
        bytes.len()
    );
    // The search box works: the report opened with a query shows only the matching line.
    let dom = dump_dom(
        &chromium,
        profile.path(),
        &format!("{url}#q=smelled"),
        (1300, 1400),
    );
    assert!(
        dom.contains("1 of 12 lines"),
        "{}",
        &dom[..dom.len().min(2000)]
    );
}

#[test]
fn capitals_then_token_f1_over_the_run_outputs() {
    let home = tempfile::tempdir().unwrap();
    let capitals = root().join("flows/capitals");
    let out = sluice(home.path())
        .args([
            "run",
            "create",
            "--name",
            "caps",
            "--column-mapping",
            "country=${data.country}",
            "--flow",
        ])
        .arg(&capitals)
        .arg("--data")
        .arg(capitals.join("data.jsonl"))
        .output()
        .unwrap();
    let record = stdout_json(&out);
    assert_eq!(record["properties"]["system_metrics"]["completed_lines"], 8);
    // Both answers are scored against the data's capitals: the completions are exact, the chat answers
    // of the base model ramble after the first word, so their token F1 is lower.
    let eval = |name: &str, column: &str| -> Json {
        let out = sluice(home.path())
            .args(["run", "create", "--name", name, "--run", "caps", "--flow"])
            .arg(root().join("flows/eval_f1"))
            .arg("--column-mapping")
            .arg(format!("answer=${{run.outputs.{column}}}"))
            .arg("reference=${data.capital}")
            .output()
            .unwrap();
        stdout_json(&out)["metrics"].clone()
    };
    let completion = eval("f1_completion", "completion");
    let chat = eval("f1_chat", "chat");
    assert!(completion["f1"].as_f64().unwrap() >= 0.8, "{completion}");
    assert!(
        completion["f1"].as_f64() > chat["f1"].as_f64(),
        "{completion} vs {chat}"
    );
    let out = sluice(home.path())
        .args([
            "run",
            "compare",
            "f1_completion",
            "f1_chat",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    let c = stdout_json(&out);
    assert_eq!(c["metrics"]["f1"]["f1_completion"], completion["f1"]);
    let report = home.path().join("f1.html");
    let html =
        crate::common::visualize(home.path(), &["caps", "f1_completion", "f1_chat"], &report);
    assert!(html.contains("exact_match"));
}

#[test]
fn four_shards_merged_give_the_outputs_and_metrics_of_one_run() {
    let (home, flow) = crate::common::home_and_flow();
    let data = slow_flow(flow.path(), 103);
    common::created(home.path(), "whole", "", flow.path(), &data);
    for i in 0..4 {
        let shard = format!("--shard {i}/4");
        let out = common::created(home.path(), &format!("part{i}"), &shard, flow.path(), &data);
        let record: Json = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(record["properties"]["shard"], format!("{i}/4"));
        let numbers: Vec<u64> =
            read_jsonl(&home.path().join(format!("runs/part{i}/details.jsonl")))
                .iter()
                .map(|r| r["line_number"].as_u64().unwrap())
                .collect();
        assert_eq!(numbers.len(), (103usize - i).div_ceil(4), "shard {i}");
        assert!(
            numbers.iter().all(|n| n % 4 == i as u64),
            "shard {i}: {numbers:?}"
        );
    }
    // Shards of another flow are not the same run.
    let other = tempfile::tempdir().unwrap();
    let other_data = slow_flow(other.path(), 4);
    common::created(home.path(), "stranger", "", other.path(), &other_data);
    let refused = crate::common::ran(
        sluice(home.path()).args(["run", "merge", "mixed", "--from", "part0", "stranger"]),
    );
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("differ in their flow"),
        "{}",
        refused.stderr
    );

    let out = succeeded(sluice(home.path()).args([
        "run", "merge", "merged", "--from", "part0", "part1", "part2", "part3",
    ]));
    let record: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["status"], "Completed");
    assert_eq!(
        record["properties"]["system_metrics"]["carried_over_lines"],
        103
    );
    let runs = home.path().join("runs");
    for file in ["outputs.jsonl", "metrics.json", "flow_outputs/output.jsonl"] {
        assert_eq!(
            std::fs::read_to_string(runs.join("merged").join(file)).unwrap(),
            std::fs::read_to_string(runs.join("whole").join(file)).unwrap(),
            "{file}"
        );
    }
    crate::common::assert_every_line_once(&runs.join("merged/details.jsonl"), 103);
    let metrics: Json =
        serde_json::from_str(&std::fs::read_to_string(runs.join("merged/metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["count"], 103);
    assert_eq!(metrics["mean"], 102.0);
}

#[test]
fn trace_show_draws_each_line_as_a_span_tree_and_the_report_as_a_waterfall() {
    let (home, flow) = crate::common::home_and_flow();
    let data = slow_flow(flow.path(), 5);
    common::created(home.path(), "traced", "", flow.path(), &data);

    let text =
        crate::common::ran(sluice(home.path()).args(["trace", "show", "traced", "--line", "2"]));
    assert!(text.success, "{}", text.stderr);
    let rows: Vec<&str> = text.stdout.lines().collect();
    assert!(rows[0].starts_with("line 2  Completed"), "{}", text.stdout);
    assert!(
        rows[1].contains("└─ double") && rows[1].contains('█'),
        "{}",
        text.stdout
    );

    let spans = common::json(
        home.path(),
        &["trace", "show", "traced", "--format", "json"],
    );
    let spans = spans.as_array().unwrap();
    assert_eq!(spans.len(), 5);
    for (i, s) in spans.iter().enumerate() {
        assert_eq!(s["line_number"], i);
        let node = &s["nodes"][0];
        assert_eq!(node["node"], "double");
        // The tool sleeps 2 ms; the node starts within its line and ends before the line does.
        let (start, dur) = (
            node["start_ms"].as_f64().unwrap(),
            node["duration_ms"].as_f64().unwrap(),
        );
        assert!(dur >= 2.0, "{s}");
        assert!(
            start >= 0.0 && start + dur <= s["duration_ms"].as_f64().unwrap() + 0.01,
            "{s}"
        );
    }
    let missing =
        crate::common::ran(sluice(home.path()).args(["trace", "show", "traced", "--line", "9"]));
    assert_eq!(missing.code, Some(2));
    assert!(
        missing.stderr.contains("has no line 9"),
        "{}",
        missing.stderr
    );

    let report = home.path().join("r.html");
    let html = crate::common::visualize(home.path(), &["traced"], &report);
    assert_eq!(html.matches(r#"<div class="waterfall">"#).count(), 5);
    assert!(html.contains(r#"class="wf-bar Completed""#));
}
