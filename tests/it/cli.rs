//! The `sluice` binary as users meet it: help, exit statuses, outputs, errors, and the example flows.

use std::path::Path;

use assert_cmd::Command;
use predicates::prelude::*;

fn sluice() -> Command {
    Command::cargo_bin("sluice").unwrap()
}

#[test]
fn help_explains_the_commands_and_exit_statuses() {
    sluice()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("flow").and(predicate::str::contains("Python")));
    sluice()
        .args(["flow", "test", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Exit status").and(predicate::str::contains("--inputs")));
}

#[test]
fn init_then_test_prints_outputs_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("starter");
    sluice()
        .args(["flow", "init"])
        .arg(&flow)
        .assert()
        .success();
    let out = sluice()
        .args(["flow", "test", "--flow"])
        .arg(&flow)
        .args(["--inputs", "text=rivers"])
        .assert()
        .success();
    let json: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(json["output"], "Prompt: Write a haiku about: rivers\n");
    assert!(flow.join(".promptflow/flow.output.json").is_file());
    assert!(flow.join(".promptflow/flow.detail.json").is_file());
}

#[test]
fn a_failing_tool_exits_1_with_node_and_traceback() {
    let dir = crate::common::flow_with(
        "bad.py",
        "from promptflow import tool\n\n@tool\ndef bad(x: str):\n    raise ValueError('no good: ' + x)\n",
        "inputs: {x: {type: string}}\noutputs: {y: {reference: '${bad.output}'}}\nnodes:\n- name: bad\n  type: python\n  source: {type: code, path: bad.py}\n  inputs: {x: '${inputs.x}'}\n",
    );
    sluice()
        .args(["flow", "test", "--flow"])
        .arg(dir.path())
        .args(["--inputs", "x=abc"])
        .assert()
        .code(1)
        .stdout(predicate::str::is_empty())
        .stderr(
            predicate::str::contains("Execution failure in 'bad': (ValueError) no good: abc")
                .and(predicate::str::contains("Traceback"))
                .and(predicate::str::contains("bad.py\", line 5")),
        );
}

/// A flow whose prompt node `a` reads the output of a node that does not exist (line 8, column 11).
fn missing_node_flow() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    crate::common::write_files(
        dir.path(),
        &[
            (
                "flow.dag.yaml",
                "inputs: {x: {type: string}}\noutputs: {y: {reference: '${a.output}'}}\nnodes:\n- name: a\n  type: prompt\n  source: {type: code, path: a.jinja2}\n  inputs:\n    text: ${missing_node.output}\n",
            ),
            ("a.jinja2", "{{ text }}"),
        ],
    );
    dir
}

#[test]
fn an_invalid_flow_exits_2_naming_file_node_line_and_column() {
    let dir = missing_node_flow();
    for cmd in ["test", "validate"] {
        sluice()
            .args(["flow", cmd, "--flow"])
            .arg(dir.path())
            .assert()
            .code(2)
            .stderr(
                predicate::str::contains("NodeReferenceNotFound")
                    .and(predicate::str::contains(
                        "node `a` references node `missing_node`",
                    ))
                    .and(predicate::str::contains("flow.dag.yaml:8:11")),
            );
    }
}

#[test]
fn plan_shows_levels_and_concurrency() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("flows/conditional");
    sluice()
        .args(["flow", "plan", "--flow"])
        .arg(&root)
        .assert()
        .success()
        .stdout(
            predicate::str::contains("level 0").and(predicate::str::contains("run concurrently")),
        );
}

/// Every example flow in `flows/` runs as its `tests.json` says: a list of {inputs, output, metrics?}.
#[test]
fn example_flows_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("flows");
    let mut ran = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        let spec = dir.join("tests.json");
        if !spec.is_file() {
            continue;
        }
        let cases: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&spec).unwrap()).unwrap();
        for case in cases.as_array().unwrap() {
            let mut cmd = sluice();
            cmd.args(["flow", "test", "--flow"]).arg(&dir);
            let inputs: Vec<String> = case["inputs"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{k}={}",
                        v.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| v.to_string())
                    )
                })
                .collect();
            if !inputs.is_empty() {
                cmd.arg("--inputs").args(&inputs);
            }
            let out = cmd.assert().success();
            let got: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
            assert_eq!(got, case["output"], "{} with {inputs:?}", dir.display());
            if let Some(metrics) = case.get("metrics") {
                let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
                let line = stderr
                    .lines()
                    .find_map(|l| l.strip_prefix("metrics: "))
                    .unwrap_or_else(|| panic!("no metrics in {stderr}"));
                let got: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(&got, metrics, "{}", dir.display());
            }
            ran += 1;
        }
    }
    assert!(ran >= 3, "expected the example flows to run, ran {ran}");
}

#[test]
fn a_flex_flow_without_its_entry_module_is_refused_not_run_as_an_empty_flow() {
    let flex = tempfile::tempdir().unwrap();
    std::fs::write(flex.path().join("flow.flex.yaml"), "entry: app:run\n").unwrap();
    sluice()
        .args(["flow", "validate", "--flow"])
        .arg(flex.path())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("entry module `app` is not found"));
}

#[test]
fn a_missing_connection_points_at_its_line() {
    let dir = crate::common::flow_with(
        "chat.jinja2",
        "user:\n{{q}}\n",
        "inputs:\n  q: {type: string}\noutputs:\n  a: {type: string, reference: '${ask.output}'}\nnodes:\n- name: ask\n  type: llm\n  api: chat\n  source: {type: code, path: chat.jinja2}\n  connection: nowhere\n  inputs: {q: '${inputs.q}'}\n",
    );
    let home = tempfile::tempdir().unwrap();
    let needles = [
        "connection `nowhere`",
        "flow.dag.yaml:10:15",
        "sluice connection create",
    ];
    crate::common::refused(home.path(), dir.path(), &needles);
}

#[test]
fn unknown_inputs_warn_and_pf_flag_spellings_work() {
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("starter");
    sluice()
        .args(["flow", "init", "--flow"])
        .arg(&flow)
        .assert()
        .success();
    sluice()
        .args(["flow", "test", "--flow"])
        .arg(&flow)
        .args(["--inputs", "text=hi", "txet=typo"])
        .assert()
        .success()
        .stderr(
            predicate::str::contains("no input `txet`")
                .and(predicate::str::contains("its inputs: text")),
        );
    sluice()
        .args(["flow", "validate", "--source"])
        .arg(&flow)
        .assert()
        .success();
}

#[test]
fn listings_print_json_for_scripts_and_tables_for_people() {
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = crate::common::succeeded(crate::common::sluice(home.path()).args(args));
        String::from_utf8(out.stdout).unwrap()
    };
    let models: serde_json::Value = serde_json::from_str(&run(&["model", "list"])).unwrap();
    assert!(
        models["available"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "smollm2")
    );
    // Which model `default` is, for which api.
    assert_eq!(models["defaults"]["chat"], "smollm2", "{models}");
    assert_eq!(models["defaults"]["completion"], "smollm2", "{models}");
    assert_eq!(models["defaults"]["embedding"], "minilm", "{models}");
    let smollm2 = models["available"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "smollm2")
        .unwrap();
    assert_eq!(
        smollm2["default_for"],
        serde_json::json!(["chat", "completion"])
    );
    let table = run(&["model", "list", "--format", "table"]);
    let header = table.lines().next().unwrap();
    assert!(
        header.contains("name")
            && header.contains("installed")
            && header.contains("default for")
            && header.contains("about"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("smollm2") && l.contains("chat, completion")),
        "{table}"
    );
    assert!(
        table.contains("smollm2") && serde_json::from_str::<serde_json::Value>(&table).is_err()
    );
    std::fs::write(
        home.path().join("c.yaml"),
        "name: team_openai\ntype: open_ai\napi_key: sk-not-a-real-key-123456\napi_base: https://user:pw@example.invalid/v1\n",
    )
    .unwrap();
    run(&[
        "connection",
        "create",
        "-f",
        home.path().join("c.yaml").to_str().unwrap(),
    ]);
    let conns: serde_json::Value = serde_json::from_str(&run(&["connection", "list"])).unwrap();
    assert_eq!(conns[0]["name"], "team_openai");
    let table = run(&["connection", "list", "--format", "table"]);
    assert!(
        table.lines().next().unwrap().contains("api_base"),
        "{table}"
    );
    assert!(
        table.contains("team_openai") && !table.contains("pw@"),
        "{table}"
    );
    assert_eq!(run(&["index", "list"]).trim(), "[]");
    assert!(run(&["index", "list", "--format", "table"]).starts_with("name"));
}

/// Colour only on a terminal, never with `NO_COLOR`; piped output (and JSON) has no escape codes.
#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    let dir = missing_node_flow();
    let home = tempfile::tempdir().unwrap();
    // Not a terminal, NO_COLOR unset: plain text.
    let out = crate::common::sluice(home.path())
        .env_remove("NO_COLOR")
        .args(["flow", "validate", "--flow"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("NodeReferenceNotFound"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "escape codes in piped stderr: {stderr:?}"
    );
    for args in [
        &["model", "list", "--format", "table"][..],
        &["model", "list"][..],
        &["run", "list", "--format", "table"][..],
    ] {
        let out = crate::common::sluice(home.path())
            .env_remove("NO_COLOR")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(
            !out.stdout.contains(&0x1b) && !out.stderr.contains(&0x1b),
            "escape codes in {args:?}"
        );
    }

    // On a terminal (a pseudo-terminal from util-linux's `script`): colour, unless NO_COLOR is set.
    let Some(script) = which_script() else {
        eprintln!("skipping the terminal half: no `script` (util-linux)");
        return;
    };
    let bin = assert_cmd::cargo::cargo_bin("sluice");
    let on_tty = |no_color: Option<&str>| {
        let mut cmd = std::process::Command::new(&script);
        cmd.args(["-qec"])
            .arg(format!(
                "{} flow validate --flow {}",
                bin.display(),
                dir.path().display()
            ))
            .arg("/dev/null")
            .env("SLUICE_HOME", home.path())
            .env_remove("NO_COLOR");
        if let Some(v) = no_color {
            cmd.env("NO_COLOR", v);
        }
        let out = cmd.output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let coloured = on_tty(None);
    assert!(coloured.contains("NodeReferenceNotFound"), "{coloured:?}");
    assert!(
        coloured.contains("\x1b[1;31merror[NodeReferenceNotFound]:\x1b[0m"),
        "no colour on a terminal: {coloured:?}"
    );
    let plain = on_tty(Some("1"));
    assert!(plain.contains("NodeReferenceNotFound"), "{plain:?}");
    assert!(
        !plain.contains('\x1b'),
        "colour despite NO_COLOR: {plain:?}"
    );
}

fn which_script() -> Option<std::path::PathBuf> {
    ["/usr/bin/script", "/bin/script"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}
