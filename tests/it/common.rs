//! What the integration tests share: the `sluice` binary run against a home of the test's own, with
//! the models installed on this machine.

#![allow(dead_code)]

use std::path::Path;
use std::process::Output;

use assert_cmd::Command;
use serde_json::Value as Json;

/// `sluice` with `SLUICE_HOME=home`, the machine's models, in the repository root.
pub fn sluice(home: &Path) -> Command {
    let mut cmd = Command::cargo_bin("sluice").unwrap();
    cmd.env("SLUICE_HOME", home)
        .env("SLUICE_MODELS_DIR", sluice_nodes::llm::store::models_dir())
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

/// The JSON a successful command printed; a failure shows its status and stderr.
pub fn stdout_json(out: &Output) -> Json {
    assert!(
        out.status.success(),
        "sluice failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Runs `sluice ARGS` and returns its JSON output.
pub fn json(home: &Path, args: &[&str]) -> Json {
    stdout_json(&sluice(home).args(args).output().unwrap())
}

/// Every JSON line of a file; unreadable lines (and a missing file) give nothing.
pub fn read_jsonl(path: &Path) -> Vec<Json> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Writes files of a flow folder: `(name, text)` pairs.
pub fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// Writes `data.jsonl` with `{"n": 0}` ... `{"n": lines - 1}` into `dir` and returns its path.
pub fn numbers_data(dir: &Path, lines: usize) -> std::path::PathBuf {
    let data = dir.join("data.jsonl");
    std::fs::write(
        &data,
        (0..lines)
            .map(|n| format!("{{\"n\": {n}}}\n"))
            .collect::<String>(),
    )
    .unwrap();
    data
}

/// A flow with one Python node, `double` (from `double.py`), over the input `n`.
pub const DOUBLE_FLOW: &str = "inputs:\n  n: {type: int}\noutputs:\n  doubled: {reference: '${double.output}'}\nnodes:\n- name: double\n  type: python\n  source: {type: code, path: double.py}\n  inputs: {n: '${inputs.n}'}\n";

/// The same flow plus an aggregation node, `total` (from `total.py`), over the doubled values.
pub const DOUBLE_FLOW_WITH_TOTAL: &str = "inputs:\n  n: {type: int}\noutputs:\n  doubled: {reference: '${double.output}'}\nnodes:\n- name: double\n  type: python\n  source: {type: code, path: double.py}\n  inputs: {n: '${inputs.n}'}\n- name: total\n  type: python\n  source: {type: code, path: total.py}\n  inputs: {values: '${double.output}'}\n  aggregation: true\n";

/// Asserts that a run's `details.jsonl` holds exactly one record for each line `0..lines`.
pub fn assert_every_line_once(details: &Path, lines: u64) {
    let mut numbers: Vec<u64> = read_jsonl(details)
        .iter()
        .map(|r| r["line_number"].as_u64().unwrap())
        .collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (0..lines).collect::<Vec<u64>>(),
        "every line exactly once"
    );
}

/// Debian's Chromium, which the report tests render in; `None` (with a note) where it is missing,
/// unless `CI` is set, where it must be there (the setup script installs it).
pub fn chromium() -> Option<std::path::PathBuf> {
    let path = std::path::PathBuf::from("/usr/bin/chromium");
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the report tests need Debian's chromium: apt-get install chromium"
    );
    eprintln!("skipping the browser checks: no /usr/bin/chromium (apt-get install chromium)");
    None
}

/// Headless Chromium with a profile of its own, nothing fetched, at `width` x `height`.
pub fn chromium_at(
    chromium: &Path,
    profile: &Path,
    width: u32,
    height: u32,
) -> std::process::Command {
    let mut cmd = std::process::Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--window-size={width},{height}"))
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

/// What a finished command left: its exit code (`None` where a signal ended it), stdout and stderr
/// as text.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to its end and returns what it left.
pub fn ran(cmd: &mut Command) -> Ran {
    let out = cmd.output().unwrap();
    Ran {
        code: out.status.code(),
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `sluice flow test --flow FLOW`, given `secs` seconds.
pub fn flow_test(home: &Path, flow: &Path, secs: u64) -> Ran {
    ran(sluice(home)
        .args(["flow", "test", "--flow"])
        .arg(flow)
        .timeout(std::time::Duration::from_secs(secs)))
}

/// Runs `cmd` and asserts that it succeeded, showing its stderr where it did not; returns what it
/// left.
pub fn succeeded(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert_ok(&out);
    out
}

/// Asserts that a command succeeded, showing its stderr where it did not.
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `sluice run create --name NAME OPTIONS --flow FLOW --data DATA` in `home`; `options` are words
/// apart by spaces.
pub fn run_create(home: &Path, name: &str, options: &str, flow: &Path, data: &Path) -> Command {
    let mut cmd = sluice(home);
    cmd.args(["run", "create", "--name", name])
        .args(options.split_whitespace())
        .arg("--flow")
        .arg(flow)
        .arg("--data")
        .arg(data);
    cmd
}

/// `sluice flow validate --flow FLOW` in `home`, which must refuse the flow (exit 2) with every one of
/// `needles` in its stderr; returns the stderr.
pub fn refused(home: &Path, flow: &Path, needles: &[&str]) -> String {
    let out = ran(sluice(home)
        .args(["flow", "validate", "--flow"])
        .arg(flow)
        .timeout(std::time::Duration::from_secs(60)));
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    for needle in needles {
        assert!(
            out.stderr.contains(needle),
            "{needle:?} not in {}",
            out.stderr
        );
    }
    out.stderr
}

/// The models folder, after checking that `name` is installed there for `use_` (the failure says
/// how to install it).
pub fn installed(name: &str, use_: sluice_nodes::llm::store::ModelUse) -> std::path::PathBuf {
    let dir = sluice_nodes::llm::store::models_dir();
    assert!(
        sluice_nodes::llm::store::resolve_model(name, Path::new("."), use_).is_ok(),
        "model `{name}` is not installed in {}: run `sluice model pull {name}`",
        dir.display()
    );
    dir
}

/// A screenshot of `url` by headless Chromium at `width` x `height` into `png`; checks that Chromium
/// succeeded and wrote a PNG that wide, and returns its bytes.
pub fn screenshot(
    chromium: &Path,
    profile: &Path,
    url: &str,
    png: &Path,
    (width, height): (u32, u32),
) -> Vec<u8> {
    let shot = chromium_at(chromium, profile, width, height)
        .arg(format!("--screenshot={}", png.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let bytes = std::fs::read(png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), width);
    bytes
}

/// The first line a spawned child writes to its piped stdout.
pub fn first_line(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout piped"))
        .read_line(&mut line)
        .unwrap();
    line
}

/// Reads one HTTP request from a blocking socket: its head (as sent) and body (by
/// `Content-Length`); `None` when the peer closed first.
pub fn read_request(sock: &mut impl std::io::Read) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        let n = sock.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len = content_length(&head);
    while buf.len() < end + len {
        let n = sock.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[end..(end + len).min(buf.len())].to_vec();
    Some((head, body))
}

/// The `Content-Length` of a request head; 0 where there is none.
pub fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

/// The DOM of `url` after its scripts ran, as headless Chromium at `width` x `height` dumps it.
pub fn dump_dom(chromium: &Path, profile: &Path, url: &str, (width, height): (u32, u32)) -> String {
    let out = chromium_at(chromium, profile, width, height)
        .arg("--dump-dom")
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `sluice` server (`model serve`, `flow serve`) on a free loopback port, killed on drop.
#[derive(Debug)]
pub struct Served {
    pub child: std::process::Child,
    /// What it said it listens on: `http://127.0.0.1:PORT` plus any path it named (`/v1`).
    pub url: String,
    /// `127.0.0.1:PORT`, for raw sockets.
    pub addr: String,
}

impl Served {
    /// Sends the server `signal` (`-TERM`, `-INT`) with `kill`.
    pub fn signal(&self, signal: &str) {
        let killed = std::process::Command::new("kill")
            .arg(signal)
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(killed.success());
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `sluice ARGS` in `home` with `env` and waits for its first line, `listening on URL`.
pub fn serve(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Served {
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("sluice"))
        .args(args)
        .env("SLUICE_HOME", home)
        .env("SLUICE_MODELS_DIR", sluice_nodes::llm::store::models_dir())
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let line = first_line(&mut child);
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned();
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    Served { child, url, addr }
}

/// `sluice flow test --flow FLOW ARGS` in `home`, run to its end.
pub fn flow_test_with(home: &Path, flow: &Path, args: &[&str]) -> Output {
    sluice(home)
        .args(["flow", "test", "--flow"])
        .arg(flow)
        .args(args)
        .output()
        .unwrap()
}

/// The same, which must succeed: the outputs it printed.
pub fn tested(home: &Path, flow: &Path, args: &[&str]) -> Json {
    stdout_json(&flow_test_with(home, flow, args))
}

/// Stores the connection that the YAML `file` describes in `home`.
pub fn create_connection(home: &Path, file: &Path) {
    succeeded(sluice(home).args(["connection", "create", "-f"]).arg(file));
}

/// Writes `yaml` to `home/NAME.yaml` and stores it as the connection `name`.
pub fn add_connection(home: &Path, name: &str, yaml: &str) {
    let file = home.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    create_connection(home, &file);
}

/// Writes `text` to `dir/name`.
pub fn write_file(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// A tokio runtime with two workers, as on this machine.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Writes a flow into `dir`: `flow.dag.yaml` (`yaml`) and the one file its node reads (`file`, holding
/// `source`).
pub fn write_flow(dir: &Path, file: &str, source: &str, yaml: &str) {
    write_files(dir, &[(file, source), ("flow.dag.yaml", yaml)]);
}

/// The same flow in a new temporary folder.
pub fn flow_with(file: &str, source: &str, yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_flow(dir.path(), file, source, yaml);
    dir
}

/// `run_create`, which must succeed: what it left.
pub fn created(home: &Path, name: &str, options: &str, flow: &Path, data: &Path) -> Output {
    succeeded(&mut run_create(home, name, options, flow, data))
}

/// Two new temporary folders: a Sluice home and a flow folder.
pub fn home_and_flow() -> (tempfile::TempDir, tempfile::TempDir) {
    (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap())
}

/// `sluice run visualize RUNS --html-path PATH` in `home`, which must succeed: the report's HTML.
pub fn visualize(home: &Path, runs: &[&str], report: &Path) -> String {
    succeeded(
        sluice(home)
            .args(["run", "visualize"])
            .args(runs)
            .arg("--html-path")
            .arg(report),
    );
    std::fs::read_to_string(report).unwrap()
}
