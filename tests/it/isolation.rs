//! `--isolation process`: Python tools in worker processes. A tool that crashes the interpreter, exits
//! the process, hangs or holds the GIL fails its own line, named; the others run and give the same
//! results as in process.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{DOUBLE_FLOW_WITH_TOTAL, numbers_data, read_jsonl, sluice, stdout_json};

/// A flow whose tool misbehaves on chosen lines, with an aggregation node that logs metrics.
fn hostile_flow(dir: &Path, lines: usize) -> std::path::PathBuf {
    std::fs::write(dir.join("flow.dag.yaml"), DOUBLE_FLOW_WITH_TOTAL).unwrap();
    std::fs::write(
        dir.join("double.py"),
        r#"import ctypes, os, time
from promptflow.core import tool

@tool
def double(n: int) -> int:
    print(f"doubling {n}")  # prints must not disturb the worker's answers
    if n == 1:
        return 10 ** (10 ** 9)  # holds the GIL for minutes
    if n == 2:
        time.sleep(3600)
    if n == 3:
        ctypes.string_at(0)  # segfault
    if n == 5:
        os._exit(7)
    if n == 6:
        raise ValueError("six is not welcome")
    return 2 * n
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("total.py"),
        "from promptflow.core import tool, log_metric\n\n@tool\ndef total(values: list):\n    log_metric('sum', sum(values))\n    log_metric('count', len(values))\n    return sum(values)\n",
    )
    .unwrap();
    numbers_data(dir, lines)
}

#[test]
fn crashing_hanging_and_gil_holding_tools_fail_only_their_lines() {
    let (home, flow) = crate::common::home_and_flow();
    let data = hostile_flow(flow.path(), 20);
    let started = Instant::now();
    let options = "--isolation process --max-concurrency 4 --line-timeout 3";
    let out = crate::common::run_create(home.path(), "iso", options, flow.path(), &data)
        .output()
        .unwrap();
    let took = started.elapsed();
    let record = stdout_json(&out);
    assert!(took < Duration::from_secs(60), "took {took:?}");
    let sm = &record["properties"]["system_metrics"];
    assert_eq!(record["status"], "Completed", "{record}");
    assert_eq!(sm["completed_lines"], 15);
    assert_eq!(sm["failed_lines"], 5);
    let details = read_jsonl(&home.path().join("runs/iso/details.jsonl"));
    let error_of = |n: u64| -> String {
        let line = details.iter().find(|r| r["line_number"] == n).unwrap();
        assert_eq!(line["status"], "Failed", "line {n}: {line}");
        line["error"]["message"].as_str().unwrap().to_owned()
    };
    for n in [1, 2] {
        let e = error_of(n);
        assert!(
            e.to_lowercase().contains("timeout") || e.contains("timed out"),
            "line {n}: {e}"
        );
    }
    let segv = error_of(3);
    assert!(
        segv.contains("`double`") && segv.contains("SIGSEGV"),
        "{segv}"
    );
    let exited = error_of(5);
    assert!(
        exited.contains("`double`") && exited.contains("exit status 7"),
        "{exited}"
    );
    assert!(error_of(6).contains("six is not welcome"));
    // The healthy lines ran, in workers that replaced the dead ones, and aggregation saw them all.
    let outputs = read_jsonl(&home.path().join("runs/iso/outputs.jsonl"));
    let ok: Vec<u64> = outputs
        .iter()
        .map(|o| o["line_number"].as_u64().unwrap())
        .collect();
    assert_eq!(ok, [0, 4, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]);
    assert!(
        outputs
            .iter()
            .all(|o| o["doubled"] == 2 * o["line_number"].as_u64().unwrap())
    );
    assert_eq!(record["metrics"]["count"], 15);
    assert_eq!(
        record["metrics"]["sum"],
        ok.iter().map(|n| 2 * n).sum::<u64>()
    );
}

#[test]
fn process_isolation_gives_the_same_results_as_in_process() {
    let (home, flow) = crate::common::home_and_flow();
    let files = [
        ("flow.dag.yaml", SHAPE_FLOW),
        ("shape.py", SHAPE_PY),
        ("total.py", TOTAL_PY),
    ];
    crate::common::write_files(flow.path(), &files);
    let data = numbers_data(flow.path(), 30);
    for mode in ["thread", "process"] {
        let isolation = format!("--isolation {mode}");
        let out = crate::common::created(home.path(), mode, &isolation, flow.path(), &data);
        assert_eq!(stdout_json(&out)["status"], "Completed");
    }
    let read = |name: &str, file: &str| {
        std::fs::read_to_string(home.path().join("runs").join(name).join(file)).unwrap()
    };
    assert_eq!(
        read("thread", "outputs.jsonl"),
        read("process", "outputs.jsonl")
    );
    assert_eq!(
        read("thread", "metrics.json"),
        read("process", "metrics.json")
    );
    assert!(read("process", "metrics.json").contains("1305"));
}

#[test]
fn flow_test_stops_a_stuck_tool_at_the_line_timeout() {
    let (home, flow) = crate::common::home_and_flow();
    hostile_flow(flow.path(), 1);
    let started = Instant::now();
    let out = sluice(home.path())
        .args([
            "flow",
            "test",
            "--isolation",
            "process",
            "--line-timeout",
            "1",
            "--flow",
        ])
        .arg(flow.path())
        .args(["--inputs", "n=2"])
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn in_process_a_tool_holding_the_gil_is_named_and_the_process_still_ends() {
    let (home, flow) = crate::common::home_and_flow();
    std::fs::write(
        flow.path().join("flow.dag.yaml"),
        crate::common::DOUBLE_FLOW,
    )
    .unwrap();
    std::fs::write(
        flow.path().join("double.py"),
        "from promptflow.core import tool\n\n@tool\ndef double(n: int) -> int:\n    if n == 0:\n        return 10 ** (10 ** 9)\n    return 2 * n\n",
    )
    .unwrap();
    // One line at a time, so the next line surely waits for the interpreter the first one holds.
    let data = numbers_data(flow.path(), 3);
    let started = Instant::now();
    let options = "--max-concurrency 1 --line-timeout 3";
    let out = crate::common::run_create(home.path(), "gil", options, flow.path(), &data)
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    // The stuck call cannot be stopped in process, but the run ends at its line timeout.
    assert!(started.elapsed() < Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("node `double` (line 0) has held the interpreter")
            && stderr.contains("--isolation process"),
        "{stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "the run completed with failed lines: {stderr}"
    );
}

/// A flow whose node shapes each line's inputs into a dict, with an aggregation over them.
const SHAPE_FLOW: &str = "inputs:\n  n: {type: int}\n  word: {type: string, default: x}\noutputs:\n  out: {reference: '${shape.output}'}\nnodes:\n- name: shape\n  type: python\n  source: {type: code, path: shape.py}\n  inputs: {n: '${inputs.n}', word: '${inputs.word}', factor: 3}\n- name: total\n  type: python\n  source: {type: code, path: total.py}\n  inputs: {values: '${shape.output}'}\n  aggregation: true\n";
const SHAPE_PY: &str = "from promptflow.core import tool\n\n@tool\ndef shape(n: int, word: str, factor: int) -> dict:\n    return {'n': n * factor, 'list': [word] * (n % 3), 'half': n / 2, 'none': None}\n";
const TOTAL_PY: &str = "from promptflow.core import tool, log_metric\n\n@tool\ndef total(values: list):\n    log_metric('total', sum(v['n'] for v in values))\n";
