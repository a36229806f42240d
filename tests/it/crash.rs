//! Runs that lose nothing and never lie about their state: names that cannot leave the run store, a
//! tool that kills the process, SIGKILL at random points, a reader that goes away (SIGPIPE), snapshots
//! that do not follow links, and stdout that stays JSON lines with variants.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::common::{
    DOUBLE_FLOW, assert_every_line_once, numbers_data, read_jsonl, sluice, stdout_json, write_files,
};

fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("sluice")
}

/// A flow whose Python tool doubles `n` after a short sleep, and kills the process (`os._exit`) when
/// `n` is `die_on`.
fn doubling_flow(dir: &Path, lines: usize, die_on: Option<usize>, sleep: f64) -> PathBuf {
    let die = die_on.map_or("None".to_owned(), |n| n.to_string());
    let tool = format!(
        "import os, time\nfrom promptflow.core import tool\n\n@tool\ndef double(n: int) -> int:\n    time.sleep({sleep})\n    if n == {die}:\n        os._exit(3)\n    return 2 * n\n"
    );
    write_files(dir, &[("flow.dag.yaml", DOUBLE_FLOW), ("double.py", &tool)]);
    numbers_data(dir, lines)
}

fn record(home: &Path, name: &str) -> Json {
    let out = sluice(home)
        .args(["run", "show", "-n", name])
        .output()
        .unwrap();
    stdout_json(&out)
}

#[test]
fn run_names_that_leave_the_store_are_refused_by_every_command() {
    let home = tempfile::tempdir().unwrap();
    // A folder outside the store that looks like a run.
    let victim = home.path().join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("run.json"), "{}").unwrap();
    for args in [
        &["run", "delete", "-n", "../victim", "--yes"][..],
        &["run", "show", "-n", "../victim"],
        &["run", "archive", "-n", "../victim"],
        &["run", "restore", "-n", "../../victim"],
        &["run", "show-details", "-n", "/etc"],
        &["run", "visualize", "-n", "../victim"],
    ] {
        let out = sluice(home.path()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("not a valid run name"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        victim.join("run.json").is_file(),
        "the folder outside the store was touched"
    );
    // The same check guards the names a run is created with or resumed from.
    let flow = tempfile::tempdir().unwrap();
    let data = doubling_flow(flow.path(), 2, None, 0.0);
    for flag in ["--name", "--resume-from", "--run"] {
        let out = sluice(home.path())
            .args(["run", "create", "--flow"])
            .arg(flow.path())
            .arg("--data")
            .arg(&data)
            .args([flag, "../escape"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag}");
    }
    assert!(!home.path().join("escape").exists());
}

#[test]
fn a_tool_that_kills_the_process_fails_its_line_after_the_second_death_and_the_run_finishes() {
    let (home, flow) = crate::common::home_and_flow();
    let data = doubling_flow(flow.path(), 50, Some(25), 0.005);
    let create = |name: &str, extra: &[&str]| {
        sluice(home.path())
            .args(["run", "create", "--name", name, "--max-concurrency", "4"])
            .args(extra)
            .output()
            .unwrap()
    };
    let first = create(
        "first",
        &[
            "--flow",
            flow.path().to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ],
    );
    assert_eq!(
        first.status.code(),
        Some(3),
        "the tool's os._exit ends the process"
    );
    // Every line that finished before the crash is in the records.
    let details = read_jsonl(&home.path().join("runs/first/details.jsonl"));
    let done: Vec<u64> = details
        .iter()
        .filter(|r| r["status"] == "Completed")
        .map(|r| r["line_number"].as_u64().unwrap())
        .collect();
    assert!(
        done.len() >= 15,
        "only {} lines recorded before the crash",
        done.len()
    );
    assert!(!done.contains(&25));
    // The dead run is not shown as running, and says how to go on.
    let shown = record(home.path(), "first");
    assert_eq!(shown["status"], "Failed");
    assert!(
        shown["status_note"]
            .as_str()
            .unwrap()
            .contains("--resume-from first"),
        "{shown}"
    );
    let listed = stdout_json(&sluice(home.path()).args(["run", "list"]).output().unwrap());
    assert_eq!(listed[0]["status"], "Failed");

    // The resumed run retries the lines that were running, one at a time, and dies on line 25 again.
    let second = create("second", &["--resume-from", "first"]);
    assert_eq!(second.status.code(), Some(3));
    // The next one records line 25 as failed instead of running it a third time, and completes.
    let third = create("third", &["--resume-from", "second"]);
    let rec = stdout_json(&third);
    let sm = &rec["properties"]["system_metrics"];
    assert_eq!(rec["status"], "Completed", "{rec}");
    assert_eq!(sm["completed_lines"], 49);
    assert_eq!(sm["failed_lines"], 1);
    assert_every_line_once(&home.path().join("runs/third/details.jsonl"), 50);
    let details = read_jsonl(&home.path().join("runs/third/details.jsonl"));
    let poison = details.iter().find(|r| r["line_number"] == 25).unwrap();
    assert_eq!(poison["status"], "Failed");
    assert_eq!(poison["error"]["innerError"]["code"], "LineKilledProcess");
    let outputs = read_jsonl(&home.path().join("runs/third/outputs.jsonl"));
    let expected: Vec<u64> = (0..50).filter(|n| *n != 25).collect();
    assert_eq!(
        outputs
            .iter()
            .map(|o| o["line_number"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        expected
    );
    assert!(
        outputs
            .iter()
            .all(|o| o["doubled"] == o["line_number"].as_u64().unwrap() * 2)
    );
}

/// A small deterministic generator for kill times.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn sigkill_at_random_points_loses_and_duplicates_no_line() {
    let (home, flow) = crate::common::home_and_flow();
    let data = doubling_flow(flow.path(), 2000, None, 0.01);
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill-time seed {seed}");
    let mut previous: Option<String> = None;
    for round in 0..4 {
        let name = format!("r{round}");
        let mut cmd = Command::new(bin());
        cmd.env("SLUICE_HOME", home.path())
            .args([
                "run",
                "create",
                "--stream",
                "--max-concurrency",
                "8",
                "--name",
                &name,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        match &previous {
            None => cmd.arg("--flow").arg(flow.path()).arg("--data").arg(&data),
            Some(p) => cmd.args(["--resume-from", p]),
        };
        let mut child = cmd.spawn().unwrap();
        // Read the lines it reports as finished until a random moment, then kill it.
        let stdout = child.stdout.take().unwrap();
        let kill_after = Duration::from_millis(150 + next_random(&mut seed) % 400);
        let reader = std::thread::Builder::new()
            .name("reader".into())
            .spawn(move || {
                let start = Instant::now();
                let mut reported = Vec::new();
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(v) = serde_json::from_str::<Json>(&line) {
                        reported.push(v["line_number"].as_u64().unwrap());
                    }
                    if start.elapsed() >= kill_after {
                        break;
                    }
                }
                reported
            })
            .unwrap();
        let reported = reader.join().unwrap();
        child.kill().unwrap();
        let ended_itself = child.wait().unwrap().success();
        // Every line reported as finished is in the run's records.
        let recorded: std::collections::HashSet<u64> =
            read_jsonl(&home.path().join("runs").join(&name).join("details.jsonl"))
                .iter()
                .filter(|r| r["status"] == "Completed")
                .map(|r| r["line_number"].as_u64().unwrap())
                .collect();
        let missing: Vec<&u64> = reported.iter().filter(|n| !recorded.contains(n)).collect();
        assert!(
            missing.is_empty(),
            "round {round}: reported but not recorded: {missing:?}"
        );
        let status = record(home.path(), &name)["status"].clone();
        previous = Some(name);
        if ended_itself && status == "Completed" {
            break; // the run finished before the kill
        }
        assert_eq!(
            status, "Failed",
            "round {round}: a killed run must not stay Running"
        );
    }
    let out = sluice(home.path())
        .args(["run", "create", "--name", "last", "--resume-from"])
        .arg(previous.unwrap())
        .output()
        .unwrap();
    let rec = stdout_json(&out);
    assert_eq!(rec["status"], "Completed");
    assert_every_line_once(&home.path().join("runs/last/details.jsonl"), 2000);
    // A kill that lands while a line is retried alone fails that line (it may be the line that kills
    // the process); every other line completes.
    let details = read_jsonl(&home.path().join("runs/last/details.jsonl"));
    let killed: std::collections::HashSet<u64> = details
        .iter()
        .filter(|r| r["status"] != "Completed")
        .map(|r| {
            assert_eq!(r["error"]["innerError"]["code"], "LineKilledProcess", "{r}");
            r["line_number"].as_u64().unwrap()
        })
        .collect();
    assert!(killed.len() <= 4, "at most one line per kill: {killed:?}");
    assert_eq!(
        rec["properties"]["system_metrics"]["completed_lines"],
        2000 - killed.len() as u64
    );
    let outputs = read_jsonl(&home.path().join("runs/last/outputs.jsonl"));
    let expected: Vec<u64> = (0..2000).filter(|n| !killed.contains(n)).collect();
    assert_eq!(outputs.len(), expected.len());
    for (n, o) in expected.iter().zip(&outputs) {
        assert_eq!(o["line_number"], *n);
        assert_eq!(o["doubled"], 2 * n);
    }
}

#[test]
fn a_run_killed_by_a_closed_pipe_is_not_shown_running() {
    let (home, flow) = crate::common::home_and_flow();
    let data = doubling_flow(flow.path(), 2000, None, 0.002);
    // `sluice run create --stream ... | head -1`
    let mut child = Command::new(bin())
        .env("SLUICE_HOME", home.path())
        .args([
            "run",
            "create",
            "--stream",
            "--name",
            "piped",
            "--max-concurrency",
            "2",
            "--flow",
        ])
        .arg(flow.path())
        .arg("--data")
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = crate::common::first_line(&mut child);
    // The reader is gone now; the run's next write ends the process.
    let status = child.wait().unwrap();
    assert!(!status.success());
    serde_json::from_str::<Json>(&first).unwrap();
    let shown = record(home.path(), "piped");
    assert_ne!(shown["status"], "Running", "{shown}");
    // Looking at it again gives the same answer (it was stored).
    let raw: Json =
        serde_json::from_slice(&std::fs::read(home.path().join("runs/piped/run.json")).unwrap())
            .unwrap();
    assert_eq!(raw["status"], "Failed");
}

#[test]
fn a_snapshot_copies_no_symbolic_link() {
    let (home, flow) = crate::common::home_and_flow();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "top secret").unwrap();
    let data = doubling_flow(flow.path(), 2, None, 0.0);
    std::os::unix::fs::symlink(
        outside.path().join("secret.txt"),
        flow.path().join("secret.txt"),
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path(), flow.path().join("linked_dir")).unwrap();
    std::os::unix::fs::symlink(flow.path(), flow.path().join("loop")).unwrap();
    let out = crate::common::run_create(home.path(), "snap", "", flow.path(), &data)
        .output()
        .unwrap();
    assert_eq!(stdout_json(&out)["status"], "Completed");
    let snapshot = home.path().join("runs/snap/snapshot");
    assert!(snapshot.join("double.py").is_file());
    for name in ["secret.txt", "linked_dir", "loop"] {
        assert!(
            std::fs::symlink_metadata(snapshot.join(name)).is_err(),
            "{name} was copied into the snapshot"
        );
    }
}

#[test]
fn variants_keep_stdout_json_lines() {
    let (home, flow) = crate::common::home_and_flow();
    std::fs::write(
        flow.path().join("flow.dag.yaml"),
        "inputs:\n  name: {type: string}\noutputs:\n  text: {reference: '${greet.output}'}\nnodes:\n- name: greet\n  use_variants: true\nnode_variants:\n  greet:\n    default_variant_id: hello\n    variants:\n      hello:\n        node: {type: prompt, source: {type: code, path: hello.jinja2}, inputs: {name: '${inputs.name}'}}\n      hi:\n        node: {type: prompt, source: {type: code, path: hi.jinja2}, inputs: {name: '${inputs.name}'}}\n",
    )
    .unwrap();
    std::fs::write(flow.path().join("hello.jinja2"), "Hello {{name}}").unwrap();
    std::fs::write(flow.path().join("hi.jinja2"), "Hi {{name}}").unwrap();
    let data = flow.path().join("data.jsonl");
    std::fs::write(&data, "{\"name\": \"a\"}\n{\"name\": \"b\"}\n").unwrap();
    for stream in [false, true] {
        let mut cmd = sluice(home.path());
        cmd.args([
            "run",
            "create",
            "--variant",
            "all",
            "--name",
            if stream { "s" } else { "p" },
            "--flow",
        ])
        .arg(flow.path())
        .arg("--data")
        .arg(&data);
        if stream {
            cmd.arg("--stream");
        }
        let out = cmd.output().unwrap();
        crate::common::assert_ok(&out);
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<Json> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        // Two variants: two records, or two runs of two lines each.
        assert_eq!(lines.len(), if stream { 4 } else { 2 }, "{stdout}");
        // The comparison table went to stderr.
        assert!(String::from_utf8_lossy(&out.stderr).contains("lines have different outputs"));
    }
    // promptflow's spelling of the report command.
    let report = home.path().join("report.html");
    let html = crate::common::visualize(
        home.path(),
        &["--names", "p_greet_hello,p_greet_hi"],
        &report,
    );
    assert!(html.contains("p_greet_hello") && html.contains("p_greet_hi"));
    assert!(
        html.contains(r#"title="variant of node greet">hi</span>"#),
        "variants are labelled by name"
    );
}
