//! `sluice flow serve`: the real binary on a loopback port, driven over real HTTP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

use crate::common::{read_jsonl, write_files};

/// A flow with a Python node that upper-cases `text` after sleeping `wait` seconds, and an
/// evaluation-only output.
const SLOW_UPPER: &[(&str, &str)] = &[
    (
        "flow.dag.yaml",
        "inputs:\n  text: {type: string}\n  wait: {type: double, default: 0}\noutputs:\n  shout: {type: string, reference: '${up.output}'}\n  graded: {type: string, reference: '${inputs.text}', evaluation_only: true}\nnodes:\n- name: up\n  type: python\n  source: {type: code, path: up.py}\n  inputs: {text: '${inputs.text}', wait: '${inputs.wait}'}\n",
    ),
    (
        "up.py",
        "import time\nfrom promptflow.core import tool\n\n@tool\ndef up(text: str, wait: float) -> str:\n    time.sleep(wait)\n    return text.upper()\n",
    ),
];

/// One input, one output: the raw body is the input.
const ECHO: &[(&str, &str)] = &[
    (
        "flow.dag.yaml",
        "inputs:\n  text: {type: string}\noutputs:\n  echoed: {type: string, reference: '${echo.output}'}\nnodes:\n- name: echo\n  type: prompt\n  source: {type: code, path: echo.jinja2}\n  inputs: {text: '${inputs.text}'}\n",
    ),
    ("echo.jinja2", "said: {{ text }}"),
];

/// A generator output next to a plain one.
const STREAMING: &[(&str, &str)] = &[
    (
        "flow.dag.yaml",
        "inputs:\n  text: {type: string}\noutputs:\n  streamed: {type: string, reference: '${chars.output}'}\n  length: {type: int, reference: '${count.output}'}\nnodes:\n- name: chars\n  type: python\n  source: {type: code, path: chars.py}\n  inputs: {text: '${inputs.text}'}\n- name: count\n  type: python\n  source: {type: code, path: count.py}\n  inputs: {text: '${inputs.text}'}\n",
    ),
    (
        "chars.py",
        "from promptflow.core import tool\n\n@tool\ndef chars(text: str):\n    for ch in text:\n        yield ch.upper()\n",
    ),
    (
        "count.py",
        "from promptflow.core import tool\n\n@tool\ndef count(text: str) -> int:\n    return len(text)\n",
    ),
];

const CHAT: &[(&str, &str)] = &[
    (
        "flow.dag.yaml",
        "inputs:\n  chat_history: {type: list, is_chat_history: true, default: []}\n  question: {type: string, is_chat_input: true}\noutputs:\n  answer: {type: string, reference: '${reply.output}', is_chat_output: true}\nnodes:\n- name: reply\n  type: prompt\n  source: {type: code, path: reply.jinja2}\n  inputs: {question: '${inputs.question}'}\n",
    ),
    ("reply.jinja2", "you asked {{ question }}"),
];

fn flow_dir(root: &Path, files: &[(&str, &str)]) -> PathBuf {
    let dir = root.join("flow");
    std::fs::create_dir_all(&dir).unwrap();
    write_files(&dir, files);
    dir
}

/// `sluice flow serve` on a free loopback port; killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn command(home: &Path, flow: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("sluice"));
    cmd.args(["flow", "serve", "--port", "0", "--flow"])
        .arg(flow)
        .args(args)
        .env("SLUICE_HOME", home)
        .env("SLUICE_MODELS_DIR", sluice_nodes::llm::store::models_dir())
        .env_remove("SLUICE_API_KEY");
    cmd
}

fn serve(home: &Path, flow: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut child = command(home, flow, args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned();
    let server = Server { child, addr };
    assert_eq!(server.get("/health").status, 200);
    server
}

/// An answer: status, headers (lowercased names) and the body, de-chunked.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Json {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// `error.innerError.code` of an error answer.
    fn error_code(&self) -> String {
        self.json()["error"]["innerError"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
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
pub(crate) fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
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

impl Server {
    fn get(&self, path: &str) -> Answer {
        request(&self.addr, "GET", path, &[], b"")
    }

    fn score(&self, body: &Json) -> Answer {
        request(
            &self.addr,
            "POST",
            "/score",
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    /// The value of a metric line (`name{labels}`) in /metrics, 0 when absent.
    fn metric(&self, series: &str) -> f64 {
        let text = self.get("/metrics").body;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(sig)
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Stops the server with SIGTERM, as a supervisor would, and checks it exits 0.
    fn stop(mut self) {
        self.signal("-TERM");
        let status = self.wait_within(Duration::from_secs(10));
        assert_eq!(status.and_then(|s| s.code()), Some(0));
    }

    fn wait_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

/// A client on a thread of its own.
fn client(f: impl FnOnce() -> Answer + Send + 'static) -> std::thread::JoinHandle<Answer> {
    std::thread::Builder::new()
        .name("client".into())
        .spawn(f)
        .unwrap()
}

/// The one traffic log segment of a flow named `flow`.
fn segment(home: &Path) -> PathBuf {
    let runs = home.join("serve/flow/runs");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&runs)
        .unwrap_or_else(|e| panic!("{}: {e}", runs.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.pop().unwrap()
}

#[test]
fn flow_serve_answers_score_health_version_swagger_feedback_metrics_and_the_page() {
    let root = tempfile::tempdir().unwrap();
    let flow = flow_dir(root.path(), SLOW_UPPER);
    let server = serve(
        root.path(),
        &flow,
        &[],
        &[("BUILD_INFO", r#"{"commit": "abc"}"#)],
    );

    let ok = server.score(&json!({"text": "hi"}));
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.header("content-type"), Some("application/json"));
    // The evaluation-only output is left out.
    assert_eq!(ok.json(), json!({"shout": "HI"}));

    let health = server.get("/health");
    assert_eq!(health.json()["status"], "Healthy");
    let version = server.get("/version");
    assert_eq!(version.json()["build_info"]["commit"], "abc");
    assert_eq!(version.json()["version"], env!("CARGO_PKG_VERSION"));

    let swagger = server.get("/swagger.json").json();
    assert_eq!(swagger["openapi"], "3.0.0");
    assert_eq!(swagger["info"]["title"], "Promptflow[flow] API");
    assert_eq!(swagger["info"]["x-flow-name"], "flow");
    assert!(swagger["info"].get("x-flow-type").is_none());
    let schema =
        &swagger["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(schema["required"], json!(["text", "wait"]));
    assert_eq!(schema["properties"]["wait"]["type"], "number");
    assert_eq!(schema["properties"]["text"]["type"], "string");
    assert!(swagger["components"]["securitySchemes"]["bearerAuth"].is_object());

    let fb = request(
        &server.addr,
        "POST",
        "/feedback?flatten=true",
        &[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )],
        br#"{"rating": 5}"#,
    );
    assert_eq!(fb.json(), json!({"status": "Feedback received."}));

    let page = server.get("/");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<h1>flow</h1>") && page.body.contains("/score"));
    assert!(
        !page.body.contains("http://") && !page.body.contains("https://"),
        "the page loads nothing"
    );

    let missing_route = server.get("/nope");
    assert_eq!(missing_route.status, 404);

    let metrics = server.get("/metrics");
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .contains("version=0.0.4"),
        "{:?}",
        metrics.headers
    );
    assert_eq!(
        server.metric(r#"sluice_serve_requests_total{route="/score",status="200"}"#),
        1.0
    );
    assert_eq!(
        server.metric(r#"sluice_serve_line_duration_seconds_count{status="Completed"}"#),
        1.0
    );
    assert_eq!(
        server.metric(r#"sluice_serve_node_duration_seconds_count{node="up"}"#),
        1.0
    );
    assert_eq!(server.metric("sluice_serve_lines_in_flight"), 0.0);

    server.stop();
    let feedback = read_jsonl(&root.path().join("serve/flow/feedback.jsonl"));
    assert_eq!(feedback.len(), 1);
    assert_eq!(feedback[0]["feedback"]["rating"], 5);
    assert_eq!(feedback[0]["flatten"], true);
    assert!(
        feedback[0]["traceparent"]
            .as_str()
            .unwrap()
            .starts_with("00-0af7")
    );
}

#[test]
fn flow_serve_takes_a_raw_body_for_a_one_input_flow_and_marks_chat_flows() {
    let root = tempfile::tempdir().unwrap();
    let flow = flow_dir(root.path(), ECHO);
    let server = serve(root.path(), &flow, &[], &[]);
    let raw = request(
        &server.addr,
        "POST",
        "/score",
        &[("content-type", "text/plain")],
        b"plain words",
    );
    assert_eq!(raw.json(), json!({"echoed": "said: plain words"}));
    let as_json = server.score(&json!({"text": "x"}));
    assert_eq!(as_json.json(), json!({"echoed": "said: x"}));
    drop(server);

    let chat_root = tempfile::tempdir().unwrap();
    let flow = flow_dir(chat_root.path(), CHAT);
    let server = serve(chat_root.path(), &flow, &[], &[]);
    let info = &server.get("/swagger.json").json()["info"];
    assert_eq!(info["x-flow-type"], "chat");
    assert_eq!(info["x-chat-input"], "question");
    assert_eq!(info["x-chat-history"], "chat_history");
    assert_eq!(info["x-chat-output"], "answer");
    // Not a JSON object, and more than one input: a 400.
    let two_inputs = request(&server.addr, "POST", "/score", &[], b"hello");
    assert_eq!(two_inputs.status, 400, "{}", two_inputs.body);
    assert_eq!(two_inputs.error_code(), "InvalidRequestBody");
}

#[test]
fn flow_serve_answers_a_missing_required_input_with_400_missing_required_flow_input() {
    let root = tempfile::tempdir().unwrap();
    let flow = flow_dir(root.path(), SLOW_UPPER);
    let server = serve(root.path(), &flow, &[], &[]);
    let r = server.score(&json!({"wait": 0}));
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "UserError");
    assert_eq!(r.error_code(), "MissingRequiredFlowInput");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'text'")
    );
    // An input of the wrong type is a user error too.
    let bad = server.score(&json!({"text": "x", "wait": "soon"}));
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(
        server.metric(r#"sluice_serve_errors_total{code="MissingRequiredFlowInput"}"#),
        1.0
    );
}

#[test]
fn a_broken_flow_refuses_to_start_and_prints_its_problems() {
    let root = tempfile::tempdir().unwrap();
    let flow = flow_dir(
        root.path(),
        &[(
            "flow.dag.yaml",
            "inputs: {}\noutputs:\n  o: {reference: '${nowhere.output}'}\nnodes: []\n",
        )],
    );
    let out = command(root.path(), &flow, &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "it must not say it listens");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nowhere"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn flow_serve_requires_the_api_key_on_every_route_but_health() {
    let root = tempfile::tempdir().unwrap();
    let flow = flow_dir(root.path(), SLOW_UPPER);
    let key = "sk-serve-test-0123456789abcdef";
    let server = serve(root.path(), &flow, &[], &[("SLUICE_API_KEY", key)]);
    let body = br#"{"text": "hi"}"#;
    for (path, method) in [
        ("/score", "POST"),
        ("/swagger.json", "GET"),
        ("/metrics", "GET"),
        ("/version", "GET"),
        ("/feedback", "POST"),
        ("/", "GET"),
    ] {
        let none = request(&server.addr, method, path, &[], body);
        assert_eq!(none.status, 401, "{method} {path}: {}", none.body);
        assert_eq!(none.header("www-authenticate"), Some("Bearer"));
        let wrong = request(
            &server.addr,
            method,
            path,
            &[("authorization", "Bearer sk-serve-test-0123456789abcdeX")],
            body,
        );
        assert_eq!(wrong.status, 401, "{method} {path}");
        assert!(!wrong.body.contains(key));
    }
    assert_eq!(server.get("/health").status, 200);
    let auth = format!("Bearer {key}");
    let ok = request(
        &server.addr,
        "POST",
        "/score",
        &[("authorization", &auth)],
        body,
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["shout"], "HI");
    // A non-loopback address without a key is refused before anything listens.
    let out = command(root.path(), &flow, &["--host", "0.0.0.0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure"));
}

#[test]
fn flow_serve_refuses_a_body_over_the_limit_with_413() {
    let root = tempfile::tempdir().unwrap();
    let flow = flow_dir(root.path(), SLOW_UPPER);
    let server = serve(root.path(), &flow, &["--max-body-bytes", "1000"], &[]);
    let big = json!({"text": "x".repeat(2000)});
    let r = server.score(&big);
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.error_code(), "RequestEntityTooLarge");
    let small = server.score(&json!({"text": "x".repeat(500)}));
    assert_eq!(small.status, 200);
    assert_eq!(
        server.metric(r#"sluice_serve_rejections_total{reason="body_too_large"}"#),
        1.0
    );
}

#[test]
fn flow_serve_answers_429_with_retry_after_beyond_the_queue() {
    let root = tempfile::tempdir().unwrap();
    let flow = flow_dir(root.path(), SLOW_UPPER);
    let server = serve(
        root.path(),
        &flow,
        &["--max-inflight", "1", "--max-queue", "1"],
        &[],
    );
    let addr = server.addr.clone();
    let slow = |addr: String| {
        client(move || {
            request(
                &addr,
                "POST",
                "/score",
                &[],
                br#"{"text": "slow", "wait": 2}"#,
            )
        })
    };
    let running = slow(addr.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.metric("sluice_serve_lines_in_flight") < 1.0 {
        assert!(Instant::now() < deadline, "the first line never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let queued = slow(addr.clone());
    while server.metric("sluice_serve_queue_depth") < 1.0 {
        assert!(Instant::now() < deadline, "the second request never queued");
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let refused = server.score(&json!({"text": "third"}));
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.error_code(), "TooManyRequests");
    assert_eq!(running.join().unwrap().json()["shout"], "SLOW");
    assert_eq!(queued.join().unwrap().json()["shout"], "SLOW");
    assert_eq!(
        server.metric(r#"sluice_serve_rejections_total{reason="queue_full"}"#),
        1.0
    );
    assert_eq!(server.metric("sluice_serve_queue_depth"), 0.0);
}

#[test]
fn a_line_past_the_line_timeout_is_cancelled_and_answered_504() {
    let root = tempfile::tempdir().unwrap();
    let flow = flow_dir(root.path(), SLOW_UPPER);
    let server = serve(
        root.path(),
        &flow,
        &["--line-timeout", "1", "--max-inflight", "1"],
        &[],
    );
    let started = Instant::now();
    let r = server.score(&json!({"text": "late", "wait": 5}));
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.error_code(), "LineExecutionTimeoutError");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // The line gave its place back: the one line allowed runs the next request.
    assert_eq!(server.metric("sluice_serve_lines_in_flight"), 0.0);
    let next = server.score(&json!({"text": "next"}));
    assert_eq!(next.json()["shout"], "NEXT");
}

#[test]
fn accept_headers_that_cannot_be_served_are_answered_406() {
    let root = tempfile::tempdir().unwrap();
    let flow = flow_dir(root.path(), SLOW_UPPER);
    let server = serve(root.path(), &flow, &[], &[]);
    let body = br#"{"text": "hi"}"#;
    let html = request(
        &server.addr,
        "POST",
        "/score",
        &[("accept", "text/html")],
        body,
    );
    assert_eq!(html.status, 406);
    assert_eq!(html.error_code(), "NotAcceptable");
    // Only a stream is accepted, and no output streams.
    let sse_only = request(
        &server.addr,
        "POST",
        "/score",
        &[("accept", "text/event-stream")],
        body,
    );
    assert_eq!(sse_only.status, 406, "{}", sse_only.body);
    for accept in [
        "application/json",
        "*/*",
        "text/event-stream, application/json",
    ] {
        let ok = request(&server.addr, "POST", "/score", &[("accept", accept)], body);
        assert_eq!(ok.status, 200, "{accept}: {}", ok.body);
        assert_eq!(ok.json()["shout"], "HI");
    }
}

#[test]
fn a_streaming_output_is_sent_as_server_sent_events() {
    let root = tempfile::tempdir().unwrap();
    let flow = flow_dir(root.path(), STREAMING);
    let server = serve(root.path(), &flow, &[], &[]);
    let r = request(
        &server.addr,
        "POST",
        "/score",
        &[("accept", "text/event-stream")],
        br#"{"text": "abc"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    // The other outputs first, then one event per chunk, each `data: {...}` and a blank line.
    assert_eq!(
        r.body,
        "data: {\"length\":3}\n\ndata: {\"streamed\":\"A\"}\n\ndata: {\"streamed\":\"B\"}\n\ndata: {\"streamed\":\"C\"}\n\n"
    );
    // Without a stream in Accept, the stream is joined.
    let joined = server.score(&json!({"text": "abc"}));
    assert_eq!(joined.json(), json!({"streamed": "ABC", "length": 3}));
    server.stop();
    // The streamed line is logged with the whole text.
    let outputs = read_jsonl(&segment(root.path()).join("outputs.jsonl"));
    assert_eq!(outputs[0]["streamed"], "ABC");
    assert_eq!(outputs[0]["length"], 3);
}

#[test]
fn sigterm_stops_accepting_and_finishes_the_lines_in_flight() {
    let root = tempfile::tempdir().unwrap();
    let flow = flow_dir(root.path(), SLOW_UPPER);
    let mut server = serve(root.path(), &flow, &["--max-inflight", "4"], &[]);
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let addr = server.addr.clone();
            client(move || {
                let body = format!(r#"{{"text": "line{i}", "wait": 1.5}}"#);
                request(&addr, "POST", "/score", &[], body.as_bytes())
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.metric("sluice_serve_lines_in_flight") < 4.0 {
        assert!(Instant::now() < deadline, "the lines never all started");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.signal("-TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        TcpStream::connect(&server.addr).is_err(),
        "a draining server accepts no new connections"
    );
    for (i, c) in clients.into_iter().enumerate() {
        let r = c.join().unwrap();
        assert_eq!(r.status, 200, "line {i}: {}", r.body);
        assert_eq!(r.json()["shout"], format!("LINE{i}"));
    }
    let status = server.wait_within(Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    // Every drained line is in the traffic log, and the segment is closed.
    let seg = segment(root.path());
    assert_eq!(read_jsonl(&seg.join("details.jsonl")).len(), 4);
    let record: Json =
        serde_json::from_str(&std::fs::read_to_string(seg.join("run.json")).unwrap()).unwrap();
    assert_eq!(record["status"], "Completed");
    assert_eq!(record["properties"]["system_metrics"]["completed_lines"], 4);
}

#[test]
fn the_traffic_log_reads_back_as_a_run() {
    let root = tempfile::tempdir().unwrap();
    let flow = flow_dir(root.path(), SLOW_UPPER);
    let mut server = serve(root.path(), &flow, &[], &[]);
    for text in ["a", "b", "c"] {
        assert_eq!(server.score(&json!({"text": text})).status, 200);
    }
    // A failed line is logged too.
    assert_eq!(
        server.score(&json!({"text": "x", "wait": "soon"})).status,
        400
    );
    server.signal("-INT");
    assert_eq!(
        server
            .wait_within(Duration::from_secs(10))
            .and_then(|s| s.code()),
        Some(0)
    );
    let seg = segment(root.path());
    let details = read_jsonl(&seg.join("details.jsonl"));
    assert_eq!(details.len(), 4);
    assert_eq!(details[0]["line_number"], 0);
    assert_eq!(details[0]["inputs"]["text"], "a");
    assert_eq!(details[0]["output"]["shout"], "A");
    assert_eq!(details[3]["status"], "Failed");
    assert_eq!(details[0]["node_runs"][0]["node"], "up");
    assert!(details[0]["node_runs"][0]["system_metrics"]["duration"].is_number());
    assert!(details[0]["start_time"].is_string() && details[0]["end_time"].is_string());

    // The serve store lists it as a run.
    let shown = crate::common::sluice(&root.path().join("serve/flow"))
        .args(["run", "show-details", "-n"])
        .arg(seg.file_name().unwrap())
        .output()
        .unwrap();
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(String::from_utf8_lossy(&shown.stdout).contains("A"));

    // An evaluation run reads the served lines through --run.
    let eval = root.path().join("eval");
    std::fs::create_dir_all(&eval).unwrap();
    write_files(
        &eval,
        &[
            (
                "flow.dag.yaml",
                "inputs:\n  answer: {type: string}\n  question: {type: string}\noutputs:\n  grade: {reference: '${g.output}'}\nnodes:\n- name: g\n  type: prompt\n  source: {type: code, path: g.jinja2}\n  inputs: {answer: '${inputs.answer}', question: '${inputs.question}'}\n",
            ),
            ("g.jinja2", "{{ question }}->{{ answer }}"),
        ],
    );
    let out = crate::common::sluice(root.path())
        .args(["run", "create", "--name", "graded", "--flow"])
        .arg(&eval)
        .arg("--run")
        .arg(&seg)
        .args([
            "--column-mapping",
            "answer=${run.outputs.shout}",
            "question=${data.text}",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let graded = read_jsonl(&root.path().join("runs/graded/outputs.jsonl"));
    let grades: Vec<&str> = graded
        .iter()
        .map(|g| g["grade"].as_str().unwrap())
        .collect();
    assert_eq!(grades, ["a->A", "b->B", "c->C"]);
}

#[test]
fn the_traffic_log_samples_and_can_leave_payloads_out() {
    let root = tempfile::tempdir().unwrap();
    let flow = flow_dir(root.path(), SLOW_UPPER);
    let mut server = serve(
        root.path(),
        &flow,
        &["--log-sample", "0.5", "--no-log-payloads"],
        &[],
    );
    for i in 0..4 {
        assert_eq!(
            server.score(&json!({"text": format!("secret{i}")})).status,
            200
        );
    }
    server.signal("-TERM");
    assert_eq!(
        server
            .wait_within(Duration::from_secs(10))
            .and_then(|s| s.code()),
        Some(0)
    );
    let seg = segment(root.path());
    let details = std::fs::read_to_string(seg.join("details.jsonl")).unwrap();
    assert_eq!(details.lines().count(), 2, "{details}");
    assert!(
        !details.contains("secret") && !details.contains("SECRET"),
        "{details}"
    );
    let first: Json = serde_json::from_str(details.lines().next().unwrap()).unwrap();
    assert_eq!(first["status"], "Completed");
    assert!(first["node_runs"][0]["system_metrics"]["duration"].is_number());
}

#[test]
fn the_traffic_log_starts_a_new_segment_past_its_size() {
    let root = tempfile::tempdir().unwrap();
    let flow = flow_dir(root.path(), SLOW_UPPER);
    let mut server = serve(root.path(), &flow, &["--log-max-bytes", "1"], &[]);
    for text in ["a", "b", "c"] {
        assert_eq!(server.score(&json!({"text": text})).status, 200);
    }
    server.signal("-TERM");
    assert_eq!(
        server
            .wait_within(Duration::from_secs(10))
            .and_then(|s| s.code()),
        Some(0)
    );
    let runs = root.path().join("serve/flow/runs");
    let segments: Vec<PathBuf> = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(segments.len(), 3, "{segments:?}");
    for s in segments {
        assert_eq!(read_jsonl(&s.join("details.jsonl")).len(), 1);
        let record: Json =
            serde_json::from_str(&std::fs::read_to_string(s.join("run.json")).unwrap()).unwrap();
        assert_eq!(record["status"], "Completed");
    }
}

#[test]
fn two_streaming_outputs_cannot_be_streamed_together() {
    let root = tempfile::tempdir().unwrap();
    let flow = flow_dir(
        root.path(),
        &[
            (
                "flow.dag.yaml",
                "inputs:\n  text: {type: string}\noutputs:\n  one: {reference: '${a.output}'}\n  two: {reference: '${b.output}'}\nnodes:\n- name: a\n  type: python\n  source: {type: code, path: chars.py}\n  inputs: {text: '${inputs.text}'}\n- name: b\n  type: python\n  source: {type: code, path: chars.py}\n  inputs: {text: '${inputs.text}'}\n",
            ),
            (
                "chars.py",
                "from promptflow.core import tool\n\n@tool\ndef chars(text: str):\n    yield from text\n",
            ),
        ],
    );
    let server = serve(root.path(), &flow, &[], &[]);
    let body = br#"{"text": "ab"}"#;
    let streamed = request(
        &server.addr,
        "POST",
        "/score",
        &[("accept", "text/event-stream")],
        body,
    );
    assert_eq!(streamed.status, 400, "{}", streamed.body);
    assert_eq!(
        streamed.error_code(),
        "MultipleStreamOutputFieldsNotSupported"
    );
    let joined = request(&server.addr, "POST", "/score", &[], body);
    assert_eq!(joined.json(), json!({"one": "ab", "two": "ab"}));
}

#[test]
fn slow_clients_cannot_hold_the_server() {
    let root = tempfile::tempdir().unwrap();
    let flow = flow_dir(root.path(), SLOW_UPPER);
    let server = serve(
        root.path(),
        &flow,
        &[],
        &[
            ("SLUICE_SERVE_HEADER_TIMEOUT", "1"),
            ("SLUICE_SERVE_BODY_TIMEOUT", "1"),
        ],
    );
    // Headers that never finish: the connection is closed.
    let mut half = TcpStream::connect(&server.addr).unwrap();
    half.write_all(b"POST /score HTTP/1.1\r\nhost: x\r\ncontent-ty")
        .unwrap();
    half.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = half.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a half-sent request was held for {:?}",
        started.elapsed()
    );
    // A body that stops arriving: 408 after the body timeout.
    let mut slow = TcpStream::connect(&server.addr).unwrap();
    slow.write_all(
        b"POST /score HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\nconnection: close\r\n\r\n{\"text\"",
    )
    .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = slow.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("RequestTimeout"), "{answer}");
    // And the server still answers.
    assert_eq!(server.score(&json!({"text": "ok"})).json()["shout"], "OK");
}

#[test]
fn an_llm_answer_streams_chunk_by_chunk_and_its_tokens_are_counted() {
    let root = tempfile::tempdir().unwrap();
    let flow = flow_dir(
        root.path(),
        &[
            (
                "flow.dag.yaml",
                "inputs:\n  question: {type: string}\noutputs:\n  answer: {reference: '${chat.output}'}\nnodes:\n- name: chat\n  type: llm\n  api: chat\n  source: {type: code, path: chat.jinja2}\n  inputs:\n    model: default\n    temperature: 0\n    max_tokens: 32\n    question: ${inputs.question}\n",
            ),
            ("chat.jinja2", "# user:\n{{question}}\n"),
        ],
    );
    let server = serve(root.path(), &flow, &[], &[]);
    let r = request(
        &server.addr,
        "POST",
        "/score",
        &[("accept", "text/event-stream")],
        br#"{"question": "What is the capital of France?"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events: Vec<Json> = r
        .body
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    assert!(events.len() > 1, "one event per chunk: {events:?}");
    let text: String = events
        .iter()
        .map(|e| e["answer"].as_str().unwrap())
        .collect();
    assert!(text.contains("Paris"), "{text:?}");
    // A streamed answer's usage is not part of its line's result; a whole answer's is.
    let whole = server.score(&json!({"question": "What is the capital of France?"}));
    assert!(
        whole.json()["answer"].as_str().unwrap().contains("Paris"),
        "{}",
        whole.body
    );
    assert!(server.metric(r#"sluice_serve_llm_tokens_total{direction="prompt"}"#) > 0.0);
    assert!(server.metric(r#"sluice_serve_llm_tokens_total{direction="completion"}"#) > 0.0);
}

#[test]
fn model_serve_shares_the_api_key_check() {
    let home = tempfile::tempdir().unwrap();
    let key = "sk-model-serve-test-0123456789";
    let model_serve = || {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("sluice"));
        cmd.args([
            "model",
            "serve",
            "--port",
            "0",
            "--parallel",
            "2",
            "--ctx",
            "512",
        ])
        .env("SLUICE_HOME", home.path())
        .env("SLUICE_MODELS_DIR", sluice_nodes::llm::store::models_dir())
        .env_remove("SLUICE_API_KEY");
        cmd
    };
    let refused = model_serve().args(["--host", "0.0.0.0"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--insecure"));

    let mut child = model_serve()
        .env("SLUICE_API_KEY", key)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .and_then(|a| a.strip_suffix("/v1"))
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned();
    let server = Server { child, addr };
    let none = server.get("/v1/models");
    assert_eq!(none.status, 401, "{}", none.body);
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    let auth = format!("Bearer {key}");
    let ok = request(
        &server.addr,
        "GET",
        "/v1/models",
        &[("authorization", &auth)],
        b"",
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.json()["data"].as_array().is_some_and(|d| !d.is_empty()));
}

#[test]
fn model_serve_reads_content_parts_and_bodies_without_a_json_content_type() {
    let home = tempfile::tempdir().unwrap();
    let args = [
        "model",
        "serve",
        "--port",
        "0",
        "--parallel",
        "2",
        "--ctx",
        "512",
    ];
    let server = crate::common::serve(home.path(), &args, &[]);
    let ask = |body: &str, headers: &[(&str, &str)]| {
        request(
            &server.addr,
            "POST",
            "/v1/chat/completions",
            headers,
            body.as_bytes(),
        )
    };
    let words = r#""messages": [{"role": "user", "content": "What is the capital of France?"}]"#;
    let parts = r#""messages": [{"role": "user", "content": [{"type": "text", "text": "What is the capital"}, {"type": "text", "text": " of France?"}]}]"#;
    let body = |messages: &str| {
        format!(r#"{{"model": "default", "temperature": 0, "max_tokens": 8, {messages}}}"#)
    };
    // curl -d sends a form content type; the body is JSON all the same.
    let plain = ask(
        &body(words),
        &[("content-type", "application/x-www-form-urlencoded")],
    );
    assert_eq!(plain.status, 200, "{}", plain.body);
    let split = ask(&body(parts), &[]);
    assert_eq!(split.status, 200, "{}", split.body);
    let answer = |a: &Answer| {
        let v: Json = serde_json::from_str(&a.body).unwrap();
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // Text parts joined make the same prompt, so greedy decoding gives the same answer.
    assert_eq!(answer(&plain), answer(&split));
    assert!(answer(&plain).contains("Paris"), "{}", answer(&plain));

    let image = ask(
        &body(
            r#""messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]"#,
        ),
        &[],
    );
    assert_eq!(image.status, 400);
    let v: Json = serde_json::from_str(&image.body).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`image_url`"),
        "{v}"
    );

    let broken = ask("{not json", &[("content-type", "application/json")]);
    assert_eq!(broken.status, 400);
    let v: Json = serde_json::from_str(&broken.body).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not the JSON expected"),
        "{v}"
    );
}
