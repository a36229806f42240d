//! `sluice run export --mlflow` against a real MLflow tracking server, the one `scripts/test.sh` starts
//! (`SLUICE_MLFLOW_URL=http://127.0.0.1:PORT`): what was exported is read back through MLflow's own
//! REST API (runs/get, runs/search, metrics/get-history, artifacts/list, the artifacts proxy) with a
//! plain HTTP client, not with Sluice's.

use crate::common;

use std::path::{Path, PathBuf};

use common::{
    DOUBLE_FLOW, DOUBLE_FLOW_WITH_TOTAL, Ran, numbers_data, ran, request, sluice, write_files,
};
use serde_json::{Value as Json, json};

fn mlflow_url() -> String {
    std::env::var("SLUICE_MLFLOW_URL")
        .expect(
            "SLUICE_MLFLOW_URL is not set: run the tests through scripts/test.sh, which starts an MLflow server (`mlflow server`) for them",
        )
        .trim_end_matches('/')
        .to_owned()
}

fn addr(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

/// Percent-encodes a query value.
fn q(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A GET of MLflow's API that must succeed: its JSON.
fn get(url: &str, path: &str) -> Json {
    let a = request(&addr(url), "GET", path, &[], b"");
    assert_eq!(a.status, 200, "GET {path}: {}", a.body);
    a.json()
}

/// A POST of MLflow's API that must succeed: its JSON.
fn post(url: &str, path: &str, body: &Json) -> Json {
    let a = request(
        &addr(url),
        "POST",
        path,
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(a.status, 200, "POST {path}: {}", a.body);
    a.json()
}

/// An experiment name no other test (or earlier test run on the same server) uses.
fn experiment(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("it-{what}-{}-{nanos}", std::process::id())
}

/// `sluice run export NAME --mlflow URL ARGS`.
fn export(home: &Path, name: &str, url: &str, args: &[&str]) -> Ran {
    ran(sluice(home)
        .args(["run", "export", name, "--mlflow", url])
        .args(args)
        .env_remove("MLFLOW_TRACKING_URI")
        .env_remove("MLFLOW_EXPERIMENT_NAME")
        .env_remove("MLFLOW_TRACKING_TOKEN")
        .env_remove("MLFLOW_TRACKING_USERNAME")
        .env_remove("MLFLOW_TRACKING_PASSWORD")
        .timeout(std::time::Duration::from_secs(300)))
}

/// The same, which must succeed: what it printed.
fn exported(home: &Path, name: &str, url: &str, args: &[&str]) -> Json {
    let out = export(home, name, url, args);
    assert!(out.success, "export failed: {}\n{}", out.stderr, out.stdout);
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", out.stdout))
}

/// A run's `run.json` and `metrics.json`.
fn run_files(home: &Path, name: &str) -> (Json, Json) {
    let dir = home.join("runs").join(name);
    let read = |f: &str| serde_json::from_slice(&std::fs::read(dir.join(f)).unwrap()).unwrap();
    (read("run.json"), read("metrics.json"))
}

/// A run as MLflow's `runs/get` answers it, its params, tags and latest metrics as maps.
struct MlflowRun {
    info: Json,
    params: serde_json::Map<String, Json>,
    tags: serde_json::Map<String, Json>,
    metrics: serde_json::Map<String, Json>,
}

fn pairs(list: &Json) -> serde_json::Map<String, Json> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|kv| (kv["key"].as_str().unwrap().to_owned(), kv["value"].clone()))
        .collect()
}

fn mlflow_run(url: &str, run_id: &str) -> MlflowRun {
    let run = get(url, &format!("/api/2.0/mlflow/runs/get?run_id={run_id}"))["run"].clone();
    MlflowRun {
        info: run["info"].clone(),
        params: pairs(&run["data"]["params"]),
        tags: pairs(&run["data"]["tags"]),
        metrics: pairs(&run["data"]["metrics"]),
    }
}

/// Every value MLflow keeps of a metric.
fn history(url: &str, run_id: &str, key: &str) -> Vec<Json> {
    get(
        url,
        &format!(
            "/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key={}",
            q(key)
        ),
    )["metrics"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The artifact paths of a run under `path` (`""` for the top).
fn artifacts(url: &str, run_id: &str, path: &str) -> Vec<String> {
    let listing = get(
        url,
        &format!(
            "/api/2.0/mlflow/artifacts/list?run_id={run_id}&path={}",
            q(path)
        ),
    );
    listing["files"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| f["path"].as_str().unwrap().to_owned())
        .collect()
}

/// An artifact's bytes, downloaded through the server's artifacts proxy.
fn download(url: &str, run: &MlflowRun, path: &str) -> String {
    let uri = run.info["artifact_uri"].as_str().unwrap();
    let root = uri
        .strip_prefix("mlflow-artifacts:/")
        .unwrap_or_else(|| panic!("artifacts are not served: {uri}"));
    let a = request(
        &addr(url),
        "GET",
        &format!("/api/2.0/mlflow-artifacts/artifacts/{root}/{path}"),
        &[],
        b"",
    );
    assert_eq!(a.status, 200, "download {path}: {}", a.body);
    a.body
}

/// Milliseconds since the epoch of an RFC 3339 time in a run record.
fn millis(time: &Json) -> i64 {
    chrono::DateTime::parse_from_rfc3339(time.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

/// A number-doubling flow over `lines` numbers whose data also holds `expected`, wrong on line 3.
fn doubling(dir: &Path, lines: usize) -> PathBuf {
    write_files(
        dir,
        &[
            ("flow.dag.yaml", DOUBLE_FLOW),
            (
                "double.py",
                "from promptflow.core import tool\n\n@tool\ndef double(n: int) -> int:\n    return 2 * n\n",
            ),
        ],
    );
    let data = dir.join("data.jsonl");
    std::fs::write(
        &data,
        (0..lines)
            .map(|n| {
                let expected = if n == 3 { 0 } else { 2 * n };
                format!("{{\"n\": {n}, \"expected\": {expected}}}\n")
            })
            .collect::<String>(),
    )
    .unwrap();
    data
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

#[test]
fn a_batch_run_and_its_evaluation_read_back_from_mlflow() {
    let url = mlflow_url();
    let exp = experiment("eval");
    let (home, flow) = common::home_and_flow();
    let data = doubling(flow.path(), 5);
    common::created(
        home.path(),
        "base",
        "--display-name nightly --tags team=search",
        flow.path(),
        &data,
    );
    let mut eval = sluice(home.path());
    eval.args(["run", "create", "--name", "eval", "--run", "base", "--flow"])
        .arg(root().join("flows/eval_accuracy"))
        .args([
            "--column-mapping",
            "groundtruth=${data.expected}",
            "prediction=${run.outputs.doubled}",
        ]);
    common::succeeded(&mut eval);

    // The batch run.
    let printed = exported(home.path(), "base", &url, &["--experiment", &exp]);
    assert_eq!(printed["action"], "created");
    assert_eq!(printed["status"], "FINISHED");
    assert_eq!(printed["experiment_name"], exp.as_str());
    let run_id = printed["run_id"].as_str().unwrap().to_owned();
    assert!(
        printed["url"].as_str().unwrap().ends_with(&format!(
            "#/experiments/{}/runs/{run_id}",
            printed["experiment_id"].as_str().unwrap()
        )),
        "{printed}"
    );
    let (record, _) = run_files(home.path(), "base");
    let sm = &record["properties"]["system_metrics"];
    let base = mlflow_run(&url, &run_id);
    assert_eq!(base.info["status"], "FINISHED");
    assert_eq!(base.info["run_name"], "base");
    assert_eq!(
        base.info["experiment_id"].as_str(),
        printed["experiment_id"].as_str()
    );
    let start = millis(&record["created_on"]);
    assert_eq!(base.info["start_time"].as_i64(), Some(start));
    let duration_ms = (sm["duration"].as_f64().unwrap() * 1000.0).round() as i64;
    assert_eq!(base.info["end_time"].as_i64(), Some(start + duration_ms));
    assert_eq!(
        base.params["flow_path"], record["properties"]["flow_path"],
        "{:?}",
        base.params
    );
    assert_eq!(base.params["data"], record["data"]);
    assert!(
        !base.params.contains_key("run"),
        "a batch run evaluates none"
    );
    assert_eq!(base.tags["mlflow.runName"], "base");
    assert_eq!(base.tags["sluice.run_name"], "base");
    assert_eq!(base.tags["sluice.status"], "Completed");
    assert_eq!(base.tags["sluice.display_name"], "nightly");
    assert_eq!(base.tags["team"], "search");
    assert_eq!(
        base.tags["mlflow.source.name"],
        record["properties"]["flow_path"]
    );
    assert_eq!(base.tags["sluice.version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(base.metrics["system/total_lines"], 5.0);
    assert_eq!(base.metrics["system/completed_lines"], 5.0);
    assert_eq!(base.metrics["system/failed_lines"], 0.0);
    let duration = base.metrics["system/duration_s"].as_f64().unwrap();
    assert!((duration - sm["duration"].as_f64().unwrap()).abs() < 1e-9);

    // Its artifacts: the run's files, the flow snapshot and the report, byte for byte.
    let top = artifacts(&url, &run_id, "");
    for f in [
        "outputs.jsonl",
        "inputs.jsonl",
        "details.jsonl",
        "run.json",
        "metrics.json",
        "snapshot",
        "report.html",
    ] {
        assert!(top.iter().any(|p| p == f), "{f} missing from {top:?}");
    }
    let snapshot = artifacts(&url, &run_id, "snapshot");
    assert!(
        snapshot.contains(&"snapshot/flow.dag.yaml".to_owned())
            && snapshot.contains(&"snapshot/double.py".to_owned()),
        "{snapshot:?}"
    );
    let dir = home.path().join("runs/base");
    for f in ["outputs.jsonl", "details.jsonl", "snapshot/double.py"] {
        assert_eq!(
            download(&url, &base, f),
            std::fs::read_to_string(dir.join(f)).unwrap(),
            "{f} differs"
        );
    }
    let outputs: Vec<Json> = download(&url, &base, "outputs.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(outputs.len(), 5);
    assert_eq!(outputs[4]["doubled"], 8);
    let report = download(&url, &base, "report.html");
    assert!(
        report.starts_with("<!doctype html>") && report.contains("<title>Sluice report: base"),
        "{}",
        &report[..report.len().min(300)]
    );

    // The evaluation: the run it scored and its mapping as params, its aggregation's metric.
    let printed = exported(home.path(), "eval", &url, &["--experiment", &exp]);
    let eval_id = printed["run_id"].as_str().unwrap().to_owned();
    assert_ne!(eval_id, run_id);
    let (record, metrics) = run_files(home.path(), "eval");
    let accuracy = metrics["accuracy"].as_f64().unwrap();
    assert_eq!(accuracy, 0.8, "4 of 5 lines expect what the flow doubles");
    let ev = mlflow_run(&url, &eval_id);
    assert_eq!(ev.info["status"], "FINISHED");
    assert_eq!(ev.params["run"], "base");
    assert_eq!(ev.params["column_mapping.groundtruth"], "${data.expected}");
    assert_eq!(
        ev.params["column_mapping.prediction"],
        "${run.outputs.doubled}"
    );
    assert_eq!(ev.tags["sluice.evaluates"], "base");
    assert_eq!(ev.metrics["accuracy"].as_f64(), Some(accuracy));
    assert_eq!(
        ev.metrics["system/total_lines"].as_f64(),
        record["properties"]["system_metrics"]["total_lines"].as_f64()
    );
    let accuracy_history = history(&url, &eval_id, "accuracy");
    assert_eq!(accuracy_history.len(), 1);
    assert_eq!(accuracy_history[0]["step"], 0);
    // The report joins the evaluation to the run it scored.
    let report = download(&url, &ev, "report.html");
    assert!(
        report.contains("<title>Sluice report: base, eval</title>"),
        "{}",
        &report[..report.len().min(300)]
    );

    // Exporting again updates the same MLflow run: nothing is logged twice.
    let again = exported(home.path(), "eval", &url, &["--experiment", &exp]);
    assert_eq!(again["action"], "updated");
    assert_eq!(again["run_id"], eval_id.as_str());
    let found = post(
        &url,
        "/api/2.0/mlflow/runs/search",
        &json!({
            "experiment_ids": [printed["experiment_id"]],
            "filter": "tags.`sluice.run_name` = 'eval'",
        }),
    );
    assert_eq!(found["runs"].as_array().map(Vec::len), Some(1), "{found}");
    assert_eq!(history(&url, &eval_id, "accuracy").len(), 1);
    assert_eq!(history(&url, &eval_id, "system/total_lines").len(), 1);
    let ev_again = mlflow_run(&url, &eval_id);
    assert_eq!(ev_again.params, ev.params);
    assert_eq!(ev_again.info["end_time"], ev.info["end_time"]);
    assert_eq!(ev_again.info["status"], "FINISHED");

    // A new run under a deleted run's name is another MLflow run; the earlier one is left alone.
    common::succeeded(sluice(home.path()).args(["run", "delete", "-n", "base", "--yes"]));
    common::created(home.path(), "base", "", flow.path(), &data);
    let renewed = exported(home.path(), "base", &url, &["--experiment", &exp]);
    assert_eq!(renewed["action"], "created");
    assert_ne!(renewed["run_id"], run_id.as_str());
    assert!(
        renewed["warnings"].to_string().contains(&run_id),
        "{renewed}"
    );
    assert_eq!(mlflow_run(&url, &run_id).info["status"], "FINISHED");
}

#[test]
fn failed_lines_and_a_timed_out_run_keep_their_status_and_counts() {
    let url = mlflow_url();
    let exp = experiment("failed");
    let (home, flow) = common::home_and_flow();
    // Odd numbers fail: the run completes, as in promptflow, with 5 of 10 lines failed.
    write_files(
        flow.path(),
        &[
            ("flow.dag.yaml", DOUBLE_FLOW),
            (
                "double.py",
                "from promptflow.core import tool\n\n@tool\ndef double(n: int) -> int:\n    if n % 2:\n        raise ValueError(f'odd: {n}')\n    return 2 * n\n",
            ),
        ],
    );
    let data = numbers_data(flow.path(), 10);
    common::created(home.path(), "flaky", "", flow.path(), &data);
    let printed = exported(home.path(), "flaky", &url, &["--experiment", &exp]);
    assert_eq!(printed["status"], "FINISHED");
    let run = mlflow_run(&url, printed["run_id"].as_str().unwrap());
    assert_eq!(run.info["status"], "FINISHED");
    assert_eq!(run.metrics["system/failed_lines"], 5.0);
    assert_eq!(run.metrics["system/completed_lines"], 5.0);
    let top = artifacts(&url, printed["run_id"].as_str().unwrap(), "");
    assert!(top.contains(&"error.json".to_owned()), "{top:?}");

    // A run stopped by its batch timeout failed: FAILED in MLflow, with the lines that never ran.
    let slow = tempfile::tempdir().unwrap();
    write_files(
        slow.path(),
        &[
            ("flow.dag.yaml", DOUBLE_FLOW_WITH_TOTAL),
            (
                "double.py",
                "import time\nfrom promptflow.core import tool\n\n@tool\ndef double(n: int) -> int:\n    time.sleep(0.5)\n    return 2 * n\n",
            ),
            (
                "total.py",
                "from promptflow.core import tool, log_metric\n\n@tool\ndef total(values: list):\n    log_metric('total', sum(values))\n",
            ),
        ],
    );
    let data = numbers_data(slow.path(), 40);
    let out = ran(&mut common::run_create(
        home.path(),
        "slow",
        "--max-concurrency 1 --batch-timeout 1.5",
        slow.path(),
        &data,
    ));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let printed = exported(home.path(), "slow", &url, &["--experiment", &exp]);
    assert_eq!(printed["status"], "FAILED");
    let (record, _) = run_files(home.path(), "slow");
    let not_run = record["properties"]["system_metrics"]["not_run_lines"]
        .as_f64()
        .unwrap();
    assert!(not_run > 0.0, "{record}");
    let run = mlflow_run(&url, printed["run_id"].as_str().unwrap());
    assert_eq!(run.info["status"], "FAILED");
    assert_eq!(run.tags["sluice.status"], "Failed");
    assert_eq!(run.metrics["system/not_run_lines"].as_f64(), Some(not_run));
    assert!(
        !run.metrics.contains_key("total"),
        "a stopped run has no aggregation metrics"
    );
}

#[test]
fn an_unreachable_server_a_refusal_and_a_missing_run_are_clear_errors() {
    let url = mlflow_url();
    let (home, flow) = common::home_and_flow();
    let data = doubling(flow.path(), 2);
    common::created(home.path(), "small", "", flow.path(), &data);

    // Nothing listens on the port: exit 1, the address in the message, nothing on stdout.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let nowhere = format!("http://127.0.0.1:{port}");
    let out = export(home.path(), "small", &nowhere, &[]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("cannot reach the MLflow server at {nowhere}/")),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("caused by"), "{}", out.stderr);
    assert!(out.stdout.is_empty());

    // MLflow refuses a request: its error code and message are shown, exit 1.
    let out = export(
        home.path(),
        "small",
        &url,
        &["--experiment", &"x".repeat(600)],
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("INVALID_PARAMETER_VALUE"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("exporting run `small`"),
        "{}",
        out.stderr
    );

    // An experiment deleted in MLflow is not exported into.
    let gone = experiment("deleted");
    let id = post(
        &url,
        "/api/2.0/mlflow/experiments/create",
        &json!({"name": gone}),
    )["experiment_id"]
        .clone();
    post(
        &url,
        "/api/2.0/mlflow/experiments/delete",
        &json!({"experiment_id": id}),
    );
    let out = export(home.path(), "small", &url, &["--experiment", &gone]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "the MLflow experiment `{gone}` (id {}) is deleted",
            id.as_str().unwrap()
        )),
        "{}",
        out.stderr
    );

    // A run that does not exist, and an address that is not a server's: exit 2.
    let out = export(home.path(), "nope", &url, &[]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("no run named `nope`"), "{}", out.stderr);
    let out = export(home.path(), "small", "file:///tmp/mlruns", &[]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("http:// or https://"), "{}", out.stderr);

    // MLFLOW_TRACKING_URI is the default address; without it or --mlflow the command is misused.
    let out = ran(sluice(home.path())
        .args(["run", "export", "small", "--experiment"])
        .arg(experiment("env"))
        .env("MLFLOW_TRACKING_URI", &url));
    assert!(out.success, "{}", out.stderr);
    let out = ran(sluice(home.path())
        .args(["run", "export", "small"])
        .env_remove("MLFLOW_TRACKING_URI"));
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--mlflow"), "{}", out.stderr);
}

/// Exports run `one` of `home` to a server that answers its first request with an MLflow error (403
/// `PERMISSION_DENIED`), with `env` set: the head of that request, and what the export left.
fn refused_once(home: &Path, env: &[(&str, &str)]) -> (String, Ran) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = common::client(move || {
        let (mut sock, _) = listener.accept().unwrap();
        let (head, _) = common::read_request(&mut sock).unwrap();
        let body = r#"{"error_code": "PERMISSION_DENIED", "message": "no access to experiment"}"#;
        use std::io::Write;
        let _ = write!(
            sock,
            "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        head
    });
    let mut cmd = sluice(home);
    cmd.args(["run", "export", "one", "--mlflow"])
        .arg(format!("http://127.0.0.1:{port}"))
        .env_remove("MLFLOW_TRACKING_TOKEN")
        .env_remove("MLFLOW_TRACKING_USERNAME")
        .env_remove("MLFLOW_TRACKING_PASSWORD")
        .timeout(std::time::Duration::from_secs(60));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = ran(&mut cmd);
    (server.join().unwrap(), out)
}

#[test]
fn credentials_from_the_environment_are_sent_and_never_printed() {
    let (home, flow) = common::home_and_flow();
    let data = doubling(flow.path(), 1);
    common::created(home.path(), "one", "", flow.path(), &data);

    let token = "mlflow-token-0123456789abcdef";
    let (head, out) = refused_once(home.path(), &[("MLFLOW_TRACKING_TOKEN", token)]);
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("authorization: bearer {token}")),
        "{head}"
    );
    assert!(
        head.starts_with("GET /api/2.0/mlflow/experiments/get-by-name?experiment_name="),
        "{head}"
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "403 to GET api/2.0/mlflow/experiments/get-by-name: PERMISSION_DENIED: no access to experiment"
        ),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(token) && !out.stdout.contains(token));

    // A user name and password: HTTP basic authentication, as `mlflow server --app-name basic-auth`
    // takes it.
    let password = "pw-0123456789-secret";
    let (head, out) = refused_once(
        home.path(),
        &[
            ("MLFLOW_TRACKING_USERNAME", "ada"),
            ("MLFLOW_TRACKING_PASSWORD", password),
        ],
    );
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("ada:{password}"));
    assert!(
        head.to_ascii_lowercase().contains(&format!(
            "authorization: basic {}",
            basic.to_ascii_lowercase()
        )),
        "{head}"
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(!out.stderr.contains(password) && !out.stdout.contains(password));
}

#[test]
fn export_help_names_the_defaults_and_exit_statuses_but_no_address_from_the_environment() {
    let home = tempfile::tempdir().unwrap();
    let out = ran(sluice(home.path()).args(["run", "export", "--help"]).env(
        "MLFLOW_TRACKING_URI",
        "http://me:hunter2-secret@mlflow.example:5000",
    ));
    assert!(out.success, "{}", out.stderr);
    for needle in [
        "--mlflow <URI>",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_TOKEN",
        "--experiment",
        "Exit status",
        "sluice.run_name",
    ] {
        assert!(
            out.stdout.contains(needle),
            "{needle} missing:\n{}",
            out.stdout
        );
    }
    assert!(!out.stdout.contains("hunter2"), "{}", out.stdout);
}
