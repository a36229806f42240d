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
    refused_by(&mut sluice(home), flow, needles)
}

/// The same with `cmd`, a `sluice` command with options of its own (its environment).
pub fn refused_by(cmd: &mut Command, flow: &Path, needles: &[&str]) -> String {
    let out = ran(cmd
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
pub fn dump_dom(chromium: &Path, profile: &Path, url: &str, size: (u32, u32)) -> String {
    dump_dom_with(chromium, profile, url, size, &[])
}

/// [`dump_dom`] with more Chromium switches (`--virtual-time-budget=MS` to wait for what the
/// page's scripts fetch).
pub fn dump_dom_with(
    chromium: &Path,
    profile: &Path,
    url: &str,
    (width, height): (u32, u32),
    switches: &[&str],
) -> String {
    let out = chromium_at(chromium, profile, width, height)
        .args(switches)
        .arg("--dump-dom")
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Opens `url` in headless Chromium and evaluates `expression` in the page (through the DevTools
/// protocol over `--remote-debugging-pipe`) every 100 ms until `done` accepts its value or 30 s
/// pass; returns the last value. Unlike `--virtual-time-budget`, this waits in real time, for work
/// that no virtual clock tracks (a response body read as a stream).
pub fn chromium_poll(
    chromium: &Path,
    profile: &Path,
    url: &str,
    expression: &str,
    done: impl Fn(&Json) -> bool,
) -> Json {
    use std::io::{BufRead, BufReader, Write};
    use std::time::{Duration, Instant};

    // Chromium reads the protocol from descriptor 3 and writes to 4: a shell moves the pipes there
    // from stdin and stdout before it becomes Chromium.
    let browser = chromium_at(chromium, profile, 900, 700);
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(r#"exec 3<&0 4>&1 </dev/null >/dev/null; exec "$0" "$@""#)
        .arg(browser.get_program())
        .args(browser.get_args())
        .arg("--remote-debugging-pipe")
        .arg(url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = cmd.spawn().unwrap();
    let mut commands = child.stdin.take().unwrap();
    let mut replies = BufReader::new(child.stdout.take().unwrap());
    let _chromium = Kill(child);
    let mut next_id = 0u64;
    // Sends one command and returns its reply's `result`, skipping the events before it.
    let mut call = |method: &str, params: Json, session: Option<&str>| -> Json {
        next_id += 1;
        let mut message = serde_json::json!({"id": next_id, "method": method, "params": params});
        if let Some(s) = session {
            message["sessionId"] = Json::from(s);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        commands.write_all(&bytes).unwrap();
        loop {
            let mut reply = Vec::new();
            let n = replies.read_until(0, &mut reply).unwrap();
            assert!(n > 0, "Chromium closed its DevTools pipe");
            reply.pop();
            let reply: Json = serde_json::from_slice(&reply).unwrap();
            if reply["id"] == next_id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let target = loop {
        let targets = call("Target.getTargets", serde_json::json!({}), None);
        let page = targets["targetInfos"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| {
                t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with("http"))
            })
            .map(|t| t["targetId"].as_str().unwrap().to_owned());
        if let Some(page) = page {
            break page;
        }
        assert!(
            Instant::now() < deadline,
            "Chromium opened no page for {url}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let attached = call(
        "Target.attachToTarget",
        serde_json::json!({"targetId": target, "flatten": true}),
        None,
    );
    let session = attached["sessionId"].as_str().unwrap().to_owned();
    loop {
        let value = call(
            "Runtime.evaluate",
            serde_json::json!({"expression": expression, "returnByValue": true}),
            Some(&session),
        )["result"]["value"]
            .clone();
        if done(&value) || Instant::now() >= deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    pub fn get(&self, path: &str) -> Answer {
        request(&self.addr, "GET", path, &[], b"")
    }

    /// `POST PATH` with a JSON body.
    pub fn post_json(&self, path: &str, body: &Json) -> Answer {
        request(
            &self.addr,
            "POST",
            path,
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    /// The value of a metric line (`name{labels}`) in /metrics, 0 when absent; `headers` go with the
    /// request (an API key).
    pub fn metric_with(&self, series: &str, headers: &[(&str, &str)]) -> f64 {
        let text = request(&self.addr, "GET", "/metrics", headers, b"").body;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// The value of a metric line (`name{labels}`) in /metrics, 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.metric_with(series, &[])
    }

    /// Waits (10 s at most) until the metric `series` is at least `at_least`; `what` says what that
    /// means for the failure.
    pub fn await_metric(&self, series: &str, at_least: f64, headers: &[(&str, &str)], what: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.metric_with(series, headers) < at_least {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Sends the server `sig` (`-TERM`, `-INT`) with `kill`.
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .arg(sig)
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Stops the server with `sig` (`-TERM`, `-INT`), as a supervisor would, and checks that it
    /// exits 0 within 10 seconds.
    pub fn stop_with(mut self, sig: &str) {
        self.signal(sig);
        let status = self.wait_within(std::time::Duration::from_secs(10));
        assert_eq!(status.and_then(|s| s.code()), Some(0), "{sig}: {status:?}");
    }

    /// Stops the server with SIGTERM and checks that it exits 0.
    pub fn stop(self) {
        self.stop_with("-TERM");
    }

    pub fn wait_within(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let started = std::time::Instant::now();
        while started.elapsed() < limit {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }
}

/// Starts `sluice ARGS` in `home` with `env` (and no `SLUICE_API_KEY` but one `env` gives) and waits
/// for its first line, `listening on URL`; its stderr is the test's.
pub fn serve(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Served {
    serve_to(home, args, env, std::process::Stdio::inherit())
}

/// [`serve`], with the server's stderr sent to `stderr`.
pub fn serve_to(
    home: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    stderr: std::process::Stdio,
) -> Served {
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("sluice"))
        .args(args)
        .env("SLUICE_HOME", home)
        .env("SLUICE_MODELS_DIR", sluice_nodes::llm::store::models_dir())
        .env_remove("SLUICE_API_KEY")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
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

/// `sluice model serve` on a free loopback port with two slots of 512 tokens.
pub const MODEL_SERVE: [&str; 8] = [
    "model",
    "serve",
    "--port",
    "0",
    "--parallel",
    "2",
    "--ctx",
    "512",
];

/// [`MODEL_SERVE`] with `args`, started by [`serve`].
pub fn model_serve(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Served {
    serve(home, &[&MODEL_SERVE[..], args].concat(), env)
}

/// An answer: status, headers (lowercased names) and the body, de-chunked.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Json {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// `error.innerError.code` of a `flow serve` error answer.
    pub fn error_code(&self) -> String {
        self.json()["error"]["innerError"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The `data:` of each server-sent event.
    pub fn events(&self) -> Vec<&str> {
        self.body
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| e.strip_prefix("data: ").unwrap_or(e))
            .collect()
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&raw[..end])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[end + 2..end + 2 + size]);
        raw = &raw[end + 2 + size + 2..];
    }
}

/// Sends one request (`connection: close`) and reads the whole answer.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    // A generous bound: on a loaded machine the local model can take minutes.
    s.set_read_timeout(Some(std::time::Duration::from_secs(600)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // A refused body may be answered before it is all sent.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer: {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let rest = &raw[split + 4..];
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A client on a thread of its own.
pub fn client<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::Builder::new()
        .name("client".into())
        .spawn(f)
        .unwrap()
}
