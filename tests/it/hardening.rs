//! Hostile input through the binary: YAML bombs and repeated keys, runaway templates, tool outputs that
//! nest without end, numbers out of range, stray files in data folders, and index sources that leave
//! their folder. Each ends with a clear error (or a warning) instead of an abort, a hang or a silent change.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use assert_cmd::Command;

fn sluice(home: &Path) -> Command {
    common::sluice(home)
}

/// A 600-byte YAML fragment whose aliases expand to 9^8 (43 million) nodes.
fn alias_bomb(key: &str) -> String {
    let mut s = format!("{key}:\n  a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
    for i in 1..9 {
        let p = i - 1;
        s.push_str(&format!(
            "  a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    s
}

/// A flow of one prompt node `p` that renders `t.jinja2` (it gets `x`).
const PROMPT_FLOW: &str = "inputs:\n  x:\n    type: string\n    default: a\noutputs:\n  out:\n    type: string\n    reference: ${p.output}\nnodes:\n- name: p\n  type: prompt\n  source:\n    type: code\n    path: t.jinja2\n  inputs:\n    x: ${inputs.x}\n";

/// A flow of one prompt node that renders `template`.
fn prompt_flow(dir: &Path, template: &str) {
    common::write_files(
        dir,
        &[("t.jinja2", template), ("flow.dag.yaml", PROMPT_FLOW)],
    );
}

/// `flow test` of the flow `write` makes of `text` (a [`prompt_flow`] or a [`python_flow`]), in a
/// home of its own, given `secs`.
fn test_flow(write: fn(&Path, &str), text: &str, secs: u64) -> common::Ran {
    let (home, dir) = crate::common::home_and_flow();
    write(dir.path(), text);
    common::flow_test(home.path(), dir.path(), secs)
}

#[test]
fn a_flow_with_an_alias_bomb_is_refused_quickly() {
    let (home, dir) = crate::common::home_and_flow();
    prompt_flow(dir.path(), "{{ x }}");
    let mut yaml = std::fs::read_to_string(dir.path().join("flow.dag.yaml")).unwrap();
    yaml.push_str(&alias_bomb("environment_variables"));
    std::fs::write(dir.path().join("flow.dag.yaml"), yaml).unwrap();
    let start = Instant::now();
    common::refused(home.path(), dir.path(), &["alias"]);
    assert!(start.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_connection_file_with_an_alias_bomb_is_refused() {
    let (home, dir) = crate::common::home_and_flow();
    let file = dir.path().join("c.yaml");
    std::fs::write(
        &file,
        format!("name: c\ntype: custom\n{}", alias_bomb("configs")),
    )
    .unwrap();
    sluice(home.path())
        .args(["connection", "create", "-f"])
        .arg(&file)
        .timeout(Duration::from_secs(60))
        .assert()
        .failure()
        .stderr(predicates::str::contains("alias"));
}

#[test]
fn a_repeated_key_in_a_flow_is_an_error_with_its_position() {
    let (home, dir) = crate::common::home_and_flow();
    prompt_flow(dir.path(), "{{ x }}");
    let yaml = std::fs::read_to_string(dir.path().join("flow.dag.yaml")).unwrap();
    // The second `outputs:` would silently replace the first.
    std::fs::write(
        dir.path().join("flow.dag.yaml"),
        format!("{yaml}outputs:\n  other:\n    type: string\n    reference: ${{inputs.x}}\n"),
    )
    .unwrap();
    common::refused(
        home.path(),
        dir.path(),
        &["duplicate key `outputs`", "line 5, column 1"],
    );
}

#[test]
fn a_yaml_error_on_a_huge_line_prints_a_bounded_message() {
    let (home, dir) = crate::common::home_and_flow();
    // 8 MB on one line, never closed.
    let yaml = format!("inputs: [{}", "xxxxxxx, ".repeat(900_000));
    std::fs::write(dir.path().join("flow.dag.yaml"), yaml).unwrap();
    let stderr = common::refused(home.path(), dir.path(), &["invalid YAML"]);
    assert!(stderr.len() < 4096, "{} bytes of stderr", stderr.len());
}

#[test]
fn a_template_cpu_loop_ends_with_an_error() {
    let start = Instant::now();
    let ran = test_flow(
        prompt_flow,
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ x }}{% endfor %}{% endfor %}",
        120,
    );
    assert!(!ran.success);
    assert!(ran.stderr.contains("budget"), "{}", ran.stderr);
    assert!(start.elapsed() < Duration::from_secs(60));
}

#[test]
fn string_building_helpers_in_a_template_fail_the_line_not_the_process() {
    for template in [
        "{{ x.zfill(10**13) }}",
        "{{ x.ljust(10**13) }}",
        "{% set s = namespace(v=x) %}{% for i in range(64) %}{% set s.v = s.v ~ s.v %}{% endfor %}{{ s.v }}",
    ] {
        let ran = test_flow(prompt_flow, template, 120);
        // A failed line, not an abort (which has no exit code) or a success.
        assert_eq!(ran.code, Some(1), "{template}: {ran:?}");
        let stderr = &ran.stderr;
        assert!(stderr.contains("Failed to render"), "{template}: {stderr}");
    }
}

/// A flow of one Python node `tool` that runs `tool.py` (it gets `x`).
const PYTHON_FLOW: &str = "inputs:\n  x:\n    type: string\n    default: a\noutputs:\n  out:\n    type: object\n    reference: ${tool.output}\nnodes:\n- name: tool\n  type: python\n  source:\n    type: code\n    path: tool.py\n  inputs:\n    x: ${inputs.x}\n";

/// A flow of one Python node `tool` whose function body is `body` (it gets `x`).
fn python_flow(dir: &Path, body: &str) {
    let tool = format!("from promptflow.core import tool\n\n@tool\ndef run(x: str):\n{body}\n");
    common::write_files(dir, &[("tool.py", &tool), ("flow.dag.yaml", PYTHON_FLOW)]);
}

#[test]
fn a_tool_returning_a_cyclic_or_very_deep_value_fails_its_line_naming_the_node() {
    for (body, needle) in [
        (
            "    a = [1]\n    a.append(a)\n    return a",
            "contains itself",
        ),
        (
            "    d = {}\n    d['self'] = [d]\n    return d",
            "contains itself",
        ),
        (
            "    v = []\n    for _ in range(5000):\n        v = [v]\n    return v",
            "nest more than",
        ),
        ("    return 10 ** 400", "too large"),
    ] {
        let ran = test_flow(python_flow, body, 120);
        let stderr = &ran.stderr;
        assert_eq!(ran.code, Some(1), "{body}: {stderr}");
        assert!(stderr.contains(needle), "{body}: {stderr}");
        assert!(stderr.contains("node `tool`"), "{body}: {stderr}");
    }
}

#[test]
fn numbers_out_of_range_on_the_command_line_are_usage_errors() {
    let home = tempfile::tempdir().unwrap();
    for line in [
        "flow test --flow flows/hello --line-timeout 1e300",
        "flow test --flow flows/hello --line-timeout nan",
        "flow test --flow flows/hello --line-timeout inf",
        "flow test --flow flows/hello --concurrency 0",
        "run create --flow flows/hello --data x.jsonl --batch-timeout nan",
        "run create --flow flows/hello --data x.jsonl --line-timeout=-1",
        "run create --flow flows/hello --data x.jsonl --max-concurrency 18446744073709551615",
        "index query kb text -k 0",
    ] {
        let args: Vec<&str> = line.split_whitespace().collect();
        let out = sluice(home.path()).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            stderr.contains("at most") || stderr.contains("from 1 to"),
            "{args:?}: {stderr}"
        );
    }
    // PF_LINE_TIMEOUT_SEC is checked the same way.
    let out = sluice(home.path())
        .args(["flow", "test", "--flow", "flows/hello"])
        .env("PF_LINE_TIMEOUT_SEC", "1e300")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("at most"), "{stderr}");
}

#[test]
fn a_data_folder_takes_data_files_only_and_says_which() {
    let home = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let rows = "{\"name\": \"a\"}\n{\"name\": \"b\"}\n";
    for name in [
        "data.jsonl",
        "data.jsonl~",
        "data.jsonl.orig",
        ".data.jsonl",
    ] {
        std::fs::write(data.path().join(name), rows).unwrap();
    }
    let out = sluice(home.path())
        .args([
            "run",
            "create",
            "--name",
            "r",
            "--flow",
            "flows/hello",
            "--data",
        ])
        .arg(data.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let inputs = std::fs::read_to_string(home.path().join("runs/r/inputs.jsonl")).unwrap();
    assert_eq!(inputs.lines().count(), 2, "{inputs}");
    assert!(
        stderr.contains("skipping data.jsonl.orig, data.jsonl~"),
        "{stderr}"
    );
    assert!(stderr.contains("reading data.jsonl"), "{stderr}");
}

#[test]
fn a_jsonl_line_that_is_not_utf8_is_named() {
    let home = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("d.jsonl");
    std::fs::write(&file, b"{\"name\": \"a\"}\n{\"name\": \"caf\xE9\"}\n").unwrap();
    let out = sluice(home.path())
        .args(["run", "create", "--flow", "flows/hello", "--data"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 2: not UTF-8"), "{stderr}");
    // A byte-order mark at the start of the file is accepted, as pandas and promptflow do.
    std::fs::write(&file, b"\xEF\xBB\xBF{\"name\": \"a\"}\n").unwrap();
    common::succeeded(
        sluice(home.path())
            .args(["run", "create", "--flow", "flows/hello", "--data"])
            .arg(&file),
    );
}

/// A folder of three documents with a symlink loop, a link out of the folder (to a folder and to a
/// file) and a FIFO named like a document; `index build` must read the three, once each, and return.
#[cfg(unix)]
#[test]
fn index_sources_stay_in_their_folder_and_skip_special_files() {
    use std::os::unix::fs::symlink;
    let home = tempfile::tempdir().unwrap();
    let base = tempfile::tempdir().unwrap();
    let (docs, outside) = (base.path().join("docs"), base.path().join("outside"));
    std::fs::create_dir_all(docs.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    common::write_files(
        &docs,
        &[
            (
                "bees.md",
                "# Bees\n\nHoney bees live in hives and make honey.\n",
            ),
            (
                "sub/trains.txt",
                "Steam locomotives pulled the first trains.\n",
            ),
            (
                "volcanoes.txt",
                "Volcanoes erupt when magma rises through the crust.\n",
            ),
        ],
    );
    std::fs::write(outside.join("secret.txt"), "a secret outside the folder\n").unwrap();
    symlink(&docs, docs.join("sub/loop")).unwrap();
    symlink(&outside, docs.join("outside")).unwrap();
    symlink(outside.join("secret.txt"), docs.join("secret.txt")).unwrap();
    assert!(
        std::process::Command::new("mkfifo")
            .arg(docs.join("pipe.txt"))
            .status()
            .unwrap()
            .success()
    );
    let out = sluice(home.path())
        .args(["index", "build", "--out", "kb", "--source"])
        .arg(&docs)
        .timeout(Duration::from_secs(300))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["report"]["files_embedded"], 3, "{report}");
    assert!(stderr.contains("outside"), "{stderr}");
    assert!(stderr.contains("not a regular file"), "{stderr}");

    // A hybrid query of one word repeated 18,000 times answers quickly.
    let long = "honey ".repeat(18_000);
    let start = Instant::now();
    common::succeeded(
        sluice(home.path())
            .args(["index", "query", "kb", &long, "--hybrid", "-k", "2"])
            .timeout(Duration::from_secs(120)),
    );
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );

    // top_k 0 or negative in a flow is an error, not 3 hits.
    let flow = tempfile::tempdir().unwrap();
    for k in ["0", "-2"] {
        std::fs::write(
            flow.path().join("flow.dag.yaml"),
            format!("inputs:\n  question: {{type: string}}\noutputs:\n  hits: {{reference: '${{search.output}}'}}\nnodes:\n- name: search\n  type: retrieval\n  inputs:\n    index: kb\n    query: ${{inputs.question}}\n    top_k: {k}\n"),
        )
        .unwrap();
        let out = sluice(home.path())
            .args(["flow", "test", "--flow"])
            .arg(flow.path())
            .args(["--inputs", "question=bees"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "top_k {k}: {stderr}");
        assert!(stderr.contains("top_k must be"), "top_k {k}: {stderr}");
    }
}

#[test]
fn a_flow_with_thousands_of_problems_prints_a_screenful() {
    let (home, dir) = crate::common::home_and_flow();
    let mut yaml = String::from("inputs: {}\noutputs: {}\nnodes:\n");
    for _ in 0..2000 {
        yaml.push_str("- type: prompt\n");
    }
    std::fs::write(dir.path().join("flow.dag.yaml"), yaml).unwrap();
    let stderr = common::refused(home.path(), dir.path(), &[]);
    assert!(stderr.len() < 64 * 1024, "{} bytes", stderr.len());
    assert!(stderr.contains("more problems"), "{stderr}");
}

#[test]
fn non_finite_numbers_are_written_and_read_back_as_python_writes_them() {
    let (home, dir) = crate::common::home_and_flow();
    common::write_files(
        dir.path(),
        &[
            (
                "flow.dag.yaml",
                "inputs:\n  v: {type: double}\noutputs:\n  v: {reference: '${tool.output.v}'}\n  is_nan: {reference: '${tool.output.is_nan}'}\n  inf: {reference: '${tool.output.inf}'}\n  ninf: {reference: '${tool.output.ninf}'}\nnodes:\n- name: tool\n  type: python\n  source: {type: code, path: tool.py}\n  inputs: {v: '${inputs.v}'}\n",
            ),
            (
                "tool.py",
                "import math\nfrom promptflow.core import tool\n\n@tool\ndef run(v: float):\n    return {'v': v, 'is_nan': math.isnan(v), 'inf': float('inf'), 'ninf': -math.inf}\n",
            ),
            (
                "data.jsonl",
                "{\"v\": NaN}\n{\"v\": 1.5}\n{\"v\": -Infinity}\n",
            ),
        ],
    );
    // `flow test` prints them as promptflow does, not as null.
    let out = sluice(home.path())
        .args(["flow", "test", "--flow"])
        .arg(dir.path())
        .args(["--inputs", "v=nan"])
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    crate::common::assert_ok(&out);
    for needle in ["\"inf\": Infinity", "\"ninf\": -Infinity"] {
        assert!(stdout.contains(needle), "{needle} not in {stdout}");
    }

    // A batch run reads them from the data and writes them to its records.
    sluice(home.path())
        .args(["run", "create", "--name", "base", "--flow"])
        .arg(dir.path())
        .arg("--data")
        .arg(dir.path().join("data.jsonl"))
        .timeout(Duration::from_secs(120))
        .assert()
        .success();
    let runs = home.path().join("runs");
    let outputs = std::fs::read_to_string(runs.join("base/outputs.jsonl")).unwrap();
    let lines: Vec<&str> = outputs.lines().collect();
    assert_eq!(
        lines[0],
        r#"{"line_number":0,"v":NaN,"is_nan":true,"inf":Infinity,"ninf":-Infinity}"#
    );
    assert!(
        lines[2].contains(r#""v":-Infinity,"is_nan":false"#),
        "{}",
        lines[2]
    );
    let details = std::fs::read_to_string(runs.join("base/details.jsonl")).unwrap();
    assert!(details.contains(r#""v":NaN"#), "{details}");

    // A run over that run's outputs gets the same numbers back.
    sluice(home.path())
        .args([
            "run", "create", "--name", "again", "--run", "base", "--flow",
        ])
        .arg(dir.path())
        .args(["--column-mapping", "v=${run.outputs.v}"])
        .timeout(Duration::from_secs(120))
        .assert()
        .success();
    let again = std::fs::read_to_string(runs.join("again/outputs.jsonl")).unwrap();
    assert_eq!(again, outputs, "the round trip changed a value");

    // A resumed run carries the finished lines over from the records, numbers and all.
    sluice(home.path())
        .args([
            "run",
            "create",
            "--name",
            "resumed",
            "--resume-from",
            "base",
        ])
        .timeout(Duration::from_secs(120))
        .assert()
        .success();
    let resumed = std::fs::read_to_string(runs.join("resumed/outputs.jsonl")).unwrap();
    assert_eq!(resumed, outputs, "carrying lines over changed a value");

    // `run show-details` shows them as the records hold them.
    let details = ["run", "show-details", "-n", "base", "--format", "json"];
    let shown = crate::common::succeeded(sluice(home.path()).args(details));
    let shown = String::from_utf8_lossy(&shown.stdout);
    for needle in [
        "\"outputs.v\": NaN",
        "\"inputs.v\": -Infinity",
        "\"outputs.inf\": Infinity",
    ] {
        assert!(shown.contains(needle), "{needle} not in {shown}");
    }
    let table = crate::common::succeeded(sluice(home.path()).args(&details[..4]));
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("NaN") && table.contains("-Infinity"),
        "{table}"
    );
}

/// A small tmpfs mounted on a temporary folder, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` where this process may not mount (not root, or in a container that forbids it).
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { dir })
    }

    fn grow(&self, size: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_disk_stops_the_run_naming_the_file_and_a_resume_completes_it() {
    let Some(disk) = SmallDisk::mount("3m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let home = disk.dir.path().join("home");
    let dir = tempfile::tempdir().unwrap();
    common::write_files(
        dir.path(),
        &[
            ("flow.dag.yaml", common::DOUBLE_FLOW),
            (
                "double.py",
                "from promptflow.core import tool\n\n@tool\ndef double(n: int):\n    return str(n * 2) * 500\n",
            ),
        ],
    );
    let data = common::numbers_data(dir.path(), 2000);
    let out = common::run_create(&home, "full", "", dir.path(), &data)
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A run that started and could not keep its records failed (1), not "nothing ran" (2).
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    let run_dir = home.join("runs/full");
    assert!(
        stderr.contains(&run_dir.display().to_string()),
        "the error names no file: {stderr}"
    );
    // It stopped early instead of running every line it could not record.
    let recorded = std::fs::read_to_string(run_dir.join("details.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert!(recorded < 2000, "{recorded} lines recorded");
    let shown = common::json(&home, &["run", "show", "-n", "full"]);
    assert_eq!(shown["status"], "Failed", "{shown}");
    assert!(
        !run_dir.join(".run.json.tmp").exists(),
        "a temporary file was left"
    );
    assert!(std::fs::metadata(run_dir.join("run.json")).unwrap().len() > 0);

    disk.grow("60m");
    sluice(&home)
        .args([
            "run",
            "create",
            "--name",
            "full2",
            "--resume-from",
            "full",
            "--flow",
        ])
        .arg(dir.path())
        .timeout(Duration::from_secs(120))
        .assert()
        .success();
    common::assert_every_line_once(&home.join("runs/full2/details.jsonl"), 2000);
    assert_eq!(
        common::read_jsonl(&home.join("runs/full2/outputs.jsonl")).len(),
        2000
    );
}

#[test]
fn a_template_that_stores_a_namespace_in_itself_is_refused_at_load_not_a_stack_overflow() {
    for template in [
        "{% set ns = namespace(a=1) %}\n{% set ns.a = ns %}{{ ns ~ '' }}",
        "{% set ns = namespace(a=1) %}\n{% set ns.a = [ns] %}{{ ns|string }}",
    ] {
        let ran = test_flow(prompt_flow, template, 60);
        let stderr = &ran.stderr;
        assert_eq!(ran.code, Some(2), "{template}: {stderr}");
        assert!(
            stderr.contains("namespace") && stderr.contains("t.jinja2:2:"),
            "{template}: {stderr}"
        );
    }
}
