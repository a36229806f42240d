//! `sluice flow serve`: the real binary on a loopback port, driven over real HTTP.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

use crate::common::{Answer, Served, client, read_jsonl, request, succeeded, write_files};

/// A flow with a Python node that upper-cases `text` after sleeping `wait` seconds, and an
/// evaluation-only output.
const SLOW_UPPER: &str = "slow_upper";
/// A Python generator that never ends, noting each item in a file.
const ENDLESS: &str = "endless";

/// One input, one output: the raw body is the input.
const ECHO: &str = "echo";

/// A generator output next to a plain one.
const STREAMING: &str = "streaming";

const CHAT: &str = "chat";

/// Two generator outputs.
const TWO_STREAMS: &str = "two_streams";

/// An `image` input that one Python node describes and another returns as a new image: the image
/// fixture flow (with its `logo.png`), shared rather than copied.
const IMAGE: &str = "../../fixtures/image_input_python";

/// A Python node that returns a dict, a dataclass or an object with no JSON form, as `kind` says.
const OBJECTS: &str = "objects";

/// An `llm` node on the local chat model.
const LLM_CHAT: &str = "llm_chat";

/// An `llm` chat node on the Azure OpenAI connection `aoai`, deployment `placeholder`.
const LLM_REMOTE: &str = "llm_remote";

/// An `llm` completion that counts on for up to 2,000 tokens.
const LLM_COUNT: &str = "llm_count";

/// A copy of the test flow `name` (a folder of `tests/data/serve_flows`) at `ROOT/flow`.
fn flow_dir(root: &Path, name: &str) -> PathBuf {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/serve_flows")
        .join(name);
    let dir = root.join("flow");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

/// `sluice flow serve --flow FLOW ARGS` in `home`, without an API key but one `env` gives.
fn command(home: &Path, flow: &Path, args: &[&str]) -> assert_cmd::Command {
    let mut cmd = crate::common::sluice(home);
    cmd.args(["flow", "serve", "--port", "0", "--flow"])
        .arg(flow)
        .args(args)
        .env_remove("SLUICE_API_KEY");
    cmd
}

/// `sluice flow serve` on a free loopback port, answering /health; killed on drop.
fn serve(home: &Path, flow: &Path, args: &[&str], env: &[(&str, &str)]) -> Served {
    let flow = flow.to_str().unwrap();
    let mut all = vec!["flow", "serve", "--port", "0", "--flow", flow];
    all.extend_from_slice(args);
    let server = crate::common::serve(home, &all, env);
    assert_eq!(server.get("/health").status, 200);
    server
}

/// `POST /score` with a JSON body.
fn score(server: &Served, body: &Json) -> Answer {
    server.post_json("/score", body)
}

/// `POST /score` with `headers` and a body as it is.
fn post_score(server: &Served, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    request(&server.addr, "POST", "/score", headers, body)
}

/// `POST /score` asking for server-sent events.
fn stream_score(server: &Served, body: &[u8]) -> Answer {
    post_score(server, &[("accept", "text/event-stream")], body)
}

/// The test flow `flow` in a new temporary root, and `flow serve` on it with `args`.
fn start(flow: &str, args: &[&str]) -> (tempfile::TempDir, PathBuf, Served) {
    start_with(flow, args, &[])
}

/// [`start`] with `env`.
fn start_with(
    flow: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (tempfile::TempDir, PathBuf, Served) {
    let root = tempfile::tempdir().unwrap();
    let flow = flow_dir(root.path(), flow);
    let server = serve(root.path(), &flow, args, env);
    (root, flow, server)
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
    let (root, _, server) = start_with(SLOW_UPPER, &[], &[("BUILD_INFO", r#"{"commit": "abc"}"#)]);

    let ok = score(&server, &json!({"text": "hi"}));
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
fn flow_serve_without_metrics_serves_lines_and_no_metrics_route() {
    let (_root, _, server) = start(SLOW_UPPER, &["--no-metrics"]);
    let ok = score(&server, &json!({"text": "hi"}));
    assert_eq!(ok.json(), json!({"shout": "HI"}));
    let metrics = server.get("/metrics");
    assert_eq!(metrics.status, 404, "{}", metrics.body);
    assert_eq!(metrics.json()["error"]["code"], "UserError");
    assert!(!metrics.body.contains("sluice_serve_"));
}

#[test]
fn flow_serve_takes_a_raw_body_for_a_one_input_flow_and_marks_chat_flows() {
    let (_root, _, server) = start(ECHO, &[]);
    let raw = post_score(&server, &[("content-type", "text/plain")], b"plain words");
    assert_eq!(raw.json(), json!({"echoed": "said: plain words"}));
    let as_json = score(&server, &json!({"text": "x"}));
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
    let two_inputs = post_score(&server, &[], b"hello");
    assert_eq!(two_inputs.status, 400, "{}", two_inputs.body);
    assert_eq!(two_inputs.error_code(), "InvalidRequestBody");
}

#[test]
fn flow_serve_answers_a_missing_required_input_with_400_missing_required_flow_input() {
    let (_root, _, server) = start(SLOW_UPPER, &[]);
    let r = score(&server, &json!({"wait": 0}));
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
    let bad = score(&server, &json!({"text": "x", "wait": "soon"}));
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(
        server.metric(r#"sluice_serve_errors_total{code="MissingRequiredFlowInput"}"#),
        1.0
    );
}

#[test]
fn python_objects_in_outputs_are_answered_in_their_json_form_or_as_a_user_error() {
    let (_root, _, server) = start(OBJECTS, &[]);
    let plain = score(&server, &json!({"kind": "dict"}));
    assert_eq!(plain.status, 200, "{}", plain.body);
    assert_eq!(
        plain.json(),
        json!({"result": {"text": "a dict", "items": [1, 2.5, null, true]}})
    );
    let dataclass = score(&server, &json!({"kind": "dataclass"}));
    assert_eq!(dataclass.status, 200, "{}", dataclass.body);
    assert_eq!(
        dataclass.json(),
        json!({"result": {"text": "a dataclass", "score": 0.5}})
    );
    let opaque = score(&server, &json!({"kind": "opaque"}));
    // As promptflow has it: the flow's output is wrong, a user error.
    assert_eq!(opaque.status, 400, "{}", opaque.body);
    assert_eq!(opaque.json()["error"]["code"], "UserError");
    assert_eq!(opaque.error_code(), "FlowOutputUnserializable");
    assert!(
        opaque.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'result'"),
        "{}",
        opaque.body
    );
}

#[test]
fn a_broken_flow_refuses_to_start_and_prints_its_problems() {
    let root = tempfile::tempdir().unwrap();
    let flow = flow_dir(root.path(), "broken");
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
    let ok = post_score(&server, &[("authorization", &auth)], body);
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
    let (_root, _, server) = start(SLOW_UPPER, &["--max-body-bytes", "1000"]);
    let big = json!({"text": "x".repeat(2000)});
    let r = score(&server, &big);
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.error_code(), "RequestEntityTooLarge");
    let small = score(&server, &json!({"text": "x".repeat(500)}));
    assert_eq!(small.status, 200);
    assert_eq!(
        server.metric(r#"sluice_serve_rejections_total{reason="body_too_large"}"#),
        1.0
    );
}

#[test]
fn flow_serve_answers_429_with_retry_after_beyond_the_queue() {
    let (_root, _, server) = start(SLOW_UPPER, &["--max-inflight", "1", "--max-queue", "1"]);
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
    server.await_metric(
        "sluice_serve_lines_in_flight",
        1.0,
        &[],
        "the first line never started",
    );
    let queued = slow(addr.clone());
    server.await_metric(
        "sluice_serve_queue_depth",
        1.0,
        &[],
        "the second request never queued",
    );
    let started = Instant::now();
    let refused = score(&server, &json!({"text": "third"}));
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
    let (_root, _, server) = start(SLOW_UPPER, &["--line-timeout", "1", "--max-inflight", "1"]);
    let started = Instant::now();
    let r = score(&server, &json!({"text": "late", "wait": 5}));
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.error_code(), "LineExecutionTimeoutError");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // The line gave its place back: the one line allowed runs the next request.
    assert_eq!(server.metric("sluice_serve_lines_in_flight"), 0.0);
    let next = score(&server, &json!({"text": "next"}));
    assert_eq!(next.json()["shout"], "NEXT");
}

#[test]
fn accept_headers_that_cannot_be_served_are_answered_406() {
    let (_root, _, server) = start(SLOW_UPPER, &[]);
    let body = br#"{"text": "hi"}"#;
    let html = post_score(&server, &[("accept", "text/html")], body);
    assert_eq!(html.status, 406);
    assert_eq!(html.error_code(), "NotAcceptable");
    // Only a stream is accepted, and no output streams.
    let sse_only = stream_score(&server, body);
    assert_eq!(sse_only.status, 406, "{}", sse_only.body);
    for accept in [
        "application/json",
        "*/*",
        "text/event-stream, application/json",
    ] {
        let ok = post_score(&server, &[("accept", accept)], body);
        assert_eq!(ok.status, 200, "{accept}: {}", ok.body);
        assert_eq!(ok.json()["shout"], "HI");
    }
}

#[test]
fn a_streaming_output_is_sent_as_server_sent_events() {
    let (root, _, server) = start(STREAMING, &[]);
    let r = stream_score(&server, br#"{"text": "abc"}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    // The other outputs first, then one event per chunk, each `data: {...}` and a blank line.
    assert_eq!(
        r.body,
        "data: {\"length\":3}\n\ndata: {\"streamed\":\"A\"}\n\ndata: {\"streamed\":\"B\"}\n\ndata: {\"streamed\":\"C\"}\n\n"
    );
    // Without a stream in Accept, the stream is joined.
    let joined = score(&server, &json!({"text": "abc"}));
    assert_eq!(joined.json(), json!({"streamed": "ABC", "length": 3}));
    server.stop();
    // The streamed line is logged with the whole text.
    let outputs = read_jsonl(&segment(root.path()).join("outputs.jsonl"));
    assert_eq!(outputs[0]["streamed"], "ABC");
    assert_eq!(outputs[0]["length"], 3);
}

#[test]
fn a_python_stream_past_the_line_timeout_stops_producing_and_is_closed() {
    let (root, _, server) = start(ENDLESS, &["--line-timeout", "1"]);
    let marker = root.path().join("ticks.txt");
    let body = json!({ "marker": marker }).to_string();
    let r = stream_score(&server, body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("LineExecutionTimeoutError"), "{}", r.body);
    // The generator is closed (its `finally` ran) and makes no more items.
    let read = || std::fs::read_to_string(&marker).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !read().contains("closed") {
        assert!(
            Instant::now() < deadline,
            "the generator was not closed: {}",
            read()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ticks = read().lines().filter(|l| l.starts_with("tick")).count();
    assert!(ticks >= 5, "{}", read());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        read().lines().filter(|l| l.starts_with("tick")).count(),
        ticks
    );
    // Without a stream in Accept, the joined output times out as a 504 and stops too.
    std::fs::remove_file(&marker).unwrap();
    let joined = score(&server, &json!({ "marker": marker }));
    assert_eq!(joined.status, 504, "{}", joined.body);
    std::thread::sleep(Duration::from_millis(1500));
    let after = read().lines().filter(|l| l.starts_with("tick")).count();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        read().lines().filter(|l| l.starts_with("tick")).count(),
        after,
        "the joined stream went on after its line timed out"
    );
    server.stop();
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
    server.await_metric(
        "sluice_serve_lines_in_flight",
        4.0,
        &[],
        "the lines never all started",
    );
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
    drop(server);
    // Every drained line is in the traffic log, and the segment is closed.
    let seg = segment(root.path());
    assert_eq!(read_jsonl(&seg.join("details.jsonl")).len(), 4);
    let record: Json =
        serde_json::from_str(&std::fs::read_to_string(seg.join("run.json")).unwrap()).unwrap();
    assert_eq!(record["status"], "Completed");
    assert_eq!(record["properties"]["system_metrics"]["completed_lines"], 4);
    assert_eq!(
        record["properties"]["system_metrics"]["node_status"]["up.completed"], 4,
        "{record}"
    );
}

#[test]
fn the_traffic_log_reads_back_as_a_run() {
    let (root, _, server) = start(SLOW_UPPER, &[]);
    for text in ["a", "b", "c"] {
        assert_eq!(score(&server, &json!({"text": text})).status, 200);
    }
    // A failed line is logged too.
    assert_eq!(
        score(&server, &json!({"text": "x", "wait": "soon"})).status,
        400
    );
    // The log can be read while the server runs: each line reaches it within moments.
    let deadline = Instant::now() + Duration::from_secs(5);
    let logged = || {
        let details = root.path().join("serve/flow/runs");
        std::fs::read_dir(details).is_ok_and(|mut d| d.next().is_some())
            && read_jsonl(&segment(root.path()).join("details.jsonl")).len() == 4
    };
    while !logged() {
        assert!(
            Instant::now() < deadline,
            "the served lines never reached the log"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.stop_with("-INT");
    let seg = segment(root.path());
    let details = read_jsonl(&seg.join("details.jsonl"));
    assert_eq!(details.len(), 4);
    // Each line's number, in its record, its nodes' runs and inputs.jsonl, is its place in the log.
    let inputs = read_jsonl(&seg.join("inputs.jsonl"));
    let outputs = read_jsonl(&seg.join("outputs.jsonl"));
    assert_eq!(inputs.len(), 4);
    assert_eq!(outputs.len(), 3, "the failed line has no outputs");
    for (i, (record, input)) in details.iter().zip(&inputs).enumerate() {
        assert_eq!(record["line_number"], i, "{record}");
        assert_eq!(input["line_number"], i, "{input}");
        assert_eq!(input["text"], record["inputs"]["text"]);
        for run in record["node_runs"].as_array().unwrap() {
            assert_eq!(run["index"], i, "{run}");
        }
    }
    for (i, output) in outputs.iter().enumerate() {
        assert_eq!(output["line_number"], i, "{output}");
        assert_eq!(output["shout"], details[i]["output"]["shout"]);
    }
    assert_eq!(details[0]["inputs"]["text"], "a");
    assert_eq!(details[0]["output"]["shout"], "A");
    assert_eq!(details[3]["status"], "Failed");
    assert_eq!(details[0]["node_runs"][0]["node"], "up");
    assert_eq!(details[0]["node_runs"][0]["status"], "Completed");
    assert!(details[0]["node_runs"][0]["system_metrics"]["duration"].is_number());
    assert!(details[0]["start_time"].is_string() && details[0]["end_time"].is_string());
    // Nodes' own payloads are left out unless asked for (traces carry them).
    assert_eq!(
        details[0]["node_runs"][0]["inputs"],
        json!({}),
        "{}",
        details[0]
    );
    assert_eq!(details[0]["node_runs"][0]["output"], Json::Null);
    // flow_outputs/output.jsonl holds the same lines as outputs.jsonl: it is the same file.
    let flow_outputs = seg.join("flow_outputs/output.jsonl");
    assert_eq!(read_jsonl(&flow_outputs), outputs);
    {
        use std::os::unix::fs::MetadataExt;
        let (a, b) = (
            std::fs::metadata(&flow_outputs).unwrap(),
            std::fs::metadata(seg.join("outputs.jsonl")).unwrap(),
        );
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
    }

    // The serve store lists it as a run.
    let shown = succeeded(
        crate::common::sluice(&root.path().join("serve/flow"))
            .args(["run", "show-details", "-n"])
            .arg(seg.file_name().unwrap()),
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
    succeeded(
        crate::common::sluice(root.path())
            .args(["run", "create", "--name", "graded", "--flow"])
            .arg(&eval)
            .arg("--run")
            .arg(&seg)
            .args([
                "--column-mapping",
                "answer=${run.outputs.shout}",
                "question=${data.text}",
            ]),
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
    let (root, _, server) = start(SLOW_UPPER, &["--log-sample", "0.5", "--no-log-payloads"]);
    for i in 0..4 {
        assert_eq!(
            score(&server, &json!({"text": format!("secret{i}")})).status,
            200
        );
    }
    server.stop();
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
fn the_traffic_log_keeps_node_payloads_when_asked() {
    let (root, flow, server) = start(SLOW_UPPER, &["--log-node-payloads"]);
    assert_eq!(score(&server, &json!({"text": "quiet"})).status, 200);
    server.stop();
    let details = read_jsonl(&segment(root.path()).join("details.jsonl"));
    assert_eq!(details.len(), 1);
    let run = &details[0]["node_runs"][0];
    assert_eq!(run["inputs"]["text"], "quiet", "{run}");
    assert_eq!(run["output"], "QUIET", "{run}");
    assert_eq!(details[0]["output"]["shout"], "QUIET");

    // Keeping the nodes' payloads and none at all cannot both be asked for.
    let refused = crate::common::sluice(root.path())
        .args([
            "flow",
            "serve",
            "--port",
            "0",
            "--no-log-payloads",
            "--log-node-payloads",
            "--flow",
        ])
        .arg(&flow)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("--log-node-payloads") && err.contains("cannot be used"),
        "{err}"
    );
}

#[test]
fn the_traffic_log_masks_credentials_in_served_inputs_and_outputs() {
    let (root, _, server) = start(SLOW_UPPER, &[]);
    let text = "fetch https://ann:hunter2pass@example.com/doc?api_key=abc123xyz with Bearer tok-0123456789abcdef";
    let r = score(&server, &json!({"text": text}));
    assert_eq!(r.status, 200, "{}", r.body);
    server.stop();
    let seg = segment(root.path());
    for name in ["inputs.jsonl", "outputs.jsonl", "flow_outputs/output.jsonl"] {
        let logged = std::fs::read_to_string(seg.join(name)).unwrap();
        let lower = logged.to_lowercase();
        for secret in ["hunter2pass", "abc123xyz", "tok-0123456789abcdef"] {
            assert!(!lower.contains(secret), "{name}: {logged}");
        }
        assert!(lower.contains("example.com/doc"), "{name}: {logged}");
        let line: Json = serde_json::from_str(logged.lines().next().unwrap()).unwrap();
        assert_eq!(line["line_number"], 0, "{name}: {logged}");
    }
}

/// The bytes of `path` in the OS's page cache, as util-linux's `fincore` counts them.
fn cached_bytes(path: &Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .expect("util-linux's fincore");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("fincore said {text:?}: {e}"))
}

#[test]
fn the_traffic_log_leaves_the_page_cache_once_on_disk() {
    // Lines of about 27 kB in details.jsonl (the text in, and out twice): a segment closes after
    // its third, and a closed segment leaves the cache whole.
    let (root, _, server) = start(SLOW_UPPER, &["--log-max-bytes", "60000"]);
    let page = 4096;
    let texts: Vec<String> = (0..5).map(|i| format!("{i}{}", "x".repeat(9000))).collect();
    for text in &texts {
        assert_eq!(score(&server, &json!({"text": text})).status, 200);
    }
    let runs = root.path().join("serve/flow/runs");
    let segments = || {
        let mut s: Vec<PathBuf> = std::fs::read_dir(&runs)
            .into_iter()
            .flatten()
            .map(|e| e.unwrap().path())
            .collect();
        s.sort();
        s
    };
    // Waits on the files' sizes: reading them would bring their pages back.
    let deadline = Instant::now() + Duration::from_secs(5);
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    loop {
        let s = segments();
        if s.len() == 2 && size(&s[1].join("details.jsonl")) > 50_000 {
            break;
        }
        assert!(Instant::now() < deadline, "{s:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let segments = segments();
    let closed = &segments[0];
    let open = &segments[1];
    let files = ["details.jsonl", "inputs.jsonl", "outputs.jsonl"];
    for name in files {
        let path = closed.join(name);
        assert!(std::fs::metadata(&path).unwrap().len() > 4 * page);
        assert_eq!(cached_bytes(&path), 0, "{}", path.display());
    }
    // The open segment's whole pages leave once synced (every second); its partly written last
    // page stays, for the next line to be appended to.
    let deadline = Instant::now() + Duration::from_secs(10);
    for name in files {
        let path = open.join(name);
        while cached_bytes(&path) > page {
            assert!(
                Instant::now() < deadline,
                "{} stays in the cache: {} bytes of {}",
                path.display(),
                cached_bytes(&path),
                std::fs::metadata(&path).unwrap().len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Lines logged after that are appended whole, and everything reads back.
    assert_eq!(score(&server, &json!({"text": "last"})).status, 200);
    server.stop();
    let logged: Vec<Json> = segments
        .iter()
        .flat_map(|s| read_jsonl(&s.join("details.jsonl")))
        .collect();
    let mut expected: Vec<&str> = texts.iter().map(String::as_str).collect();
    expected.push("last");
    let inputs: Vec<&str> = logged
        .iter()
        .map(|r| r["inputs"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(inputs, expected);
    for s in &segments {
        assert_eq!(
            read_jsonl(&s.join("inputs.jsonl")).len(),
            read_jsonl(&s.join("details.jsonl")).len()
        );
    }
}

#[test]
fn the_traffic_log_starts_a_new_segment_past_its_size() {
    let (root, _, server) = start(SLOW_UPPER, &["--log-max-bytes", "1"]);
    for text in ["a", "b", "c"] {
        assert_eq!(score(&server, &json!({"text": text})).status, 200);
    }
    server.stop();
    let runs = root.path().join("serve/flow/runs");
    let segments: Vec<PathBuf> = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(segments.len(), 3, "{segments:?}");
    for s in segments {
        let details = read_jsonl(&s.join("details.jsonl"));
        assert_eq!(details.len(), 1);
        assert_eq!(details[0]["line_number"], 0, "each segment numbers from 0");
        let record: Json =
            serde_json::from_str(&std::fs::read_to_string(s.join("run.json")).unwrap()).unwrap();
        assert_eq!(record["status"], "Completed");
    }
}

#[test]
fn two_streaming_outputs_cannot_be_streamed_together() {
    let (_root, _, server) = start(TWO_STREAMS, &[]);
    let body = br#"{"text": "ab"}"#;
    let streamed = stream_score(&server, body);
    assert_eq!(streamed.status, 400, "{}", streamed.body);
    assert_eq!(
        streamed.error_code(),
        "MultipleStreamOutputFieldsNotSupported"
    );
    let joined = post_score(&server, &[], body);
    assert_eq!(joined.json(), json!({"one": "ab", "two": "ab"}));
}

#[test]
fn slow_clients_cannot_hold_the_server() {
    let (_root, _, server) = start_with(
        SLOW_UPPER,
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
    assert_eq!(score(&server, &json!({"text": "ok"})).json()["shout"], "OK");
}

#[test]
fn an_llm_answer_streams_chunk_by_chunk_and_its_tokens_are_counted() {
    let (root, _, server) = start(LLM_CHAT, &[]);
    let r = stream_score(
        &server,
        br#"{"question": "What is the capital of France?"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events: Vec<Json> = r
        .events()
        .into_iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(events.len() > 1, "one event per chunk: {events:?}");
    let text: String = events
        .iter()
        .map(|e| e["answer"].as_str().unwrap())
        .collect();
    assert!(text.contains("Paris"), "{text:?}");
    // The stream's tokens are counted once it has ended, in the metrics and in the traffic log.
    let completion = r#"sluice_serve_llm_tokens_total{direction="completion"}"#;
    let streamed = server.metric(completion);
    assert!(streamed > 0.0);
    assert!(server.metric(r#"sluice_serve_llm_tokens_total{direction="prompt"}"#) > 0.0);
    let whole = score(
        &server,
        &json!({"question": "What is the capital of France?"}),
    );
    assert!(
        whole.json()["answer"].as_str().unwrap().contains("Paris"),
        "{}",
        whole.body
    );
    // Greedy decoding: the whole answer is the streamed one, token for token.
    assert_eq!(server.metric(completion), 2.0 * streamed);
    server.stop();
    let details = read_jsonl(&segment(root.path()).join("details.jsonl"));
    let tokens: Vec<f64> = details
        .iter()
        .map(|d| {
            d["node_runs"][0]["system_metrics"]["completion_tokens"]
                .as_f64()
                .unwrap_or(0.0)
        })
        .collect();
    assert_eq!(tokens, [streamed, streamed], "{details:?}");
}

#[test]
fn the_test_page_runs_inputs_against_the_server_in_chromium() {
    let Some(chromium) = crate::common::chromium() else {
        return;
    };
    // The page's own script fills in the inputs from the link, runs them and shows the answer.
    let page = |server: &Served, profile: &Path, query: &str| {
        let url = format!("http://{}/?{query}&run=1", server.addr);
        let wait = ["--virtual-time-budget=20000"];
        crate::common::dump_dom_with(&chromium, profile, &url, (900, 700), &wait)
    };
    let (root, _, server) = start(SLOW_UPPER, &[]);
    let dom = page(
        &server,
        &root.path().join("profile"),
        "inputs=%7B%22text%22%3A%22from%20the%20page%22%7D",
    );
    let out = dom.split(r#"<pre id="out">"#).nth(1).unwrap_or_default();
    assert!(out.starts_with("200\n"), "{dom}");
    assert!(out.contains("FROM THE PAGE"), "{dom}");
    assert!(
        !out.contains("graded"),
        "evaluation-only outputs stay out: {out}"
    );
    assert_eq!(
        server.metric(r#"sluice_serve_requests_total{route="/score",status="200"}"#),
        1.0
    );
}

#[test]
fn the_test_page_shows_a_streamed_answer_event_by_event_in_chromium() {
    let Some(chromium) = crate::common::chromium() else {
        return;
    };
    let (root, _, server) = start(STREAMING, &[]);
    let url = format!(
        "http://{}/?inputs=%7B%22text%22%3A%22abc%22%7D&stream=1&run=1",
        server.addr
    );
    // The page reads the answer's body as a stream, which no virtual clock waits for: Chromium is
    // asked in real time until the page says the stream has ended.
    let out = crate::common::chromium_poll(
        &chromium,
        &root.path().join("profile"),
        &url,
        "(() => { const o = document.getElementById('out'); \
         return {state: o.dataset.state || '', events: o.dataset.events || '', text: o.textContent}; })()",
        |v| matches!(v["state"].as_str(), Some("done" | "failed")),
    );
    // The non-streamed output first, then one event per chunk, each shown as it came.
    assert_eq!(out["state"], "done", "{out}");
    assert_eq!(out["events"], "4", "{out}");
    assert_eq!(out["text"], "{\"length\":3}\nABC", "{out}");
    // It went out as an event stream.
    assert_eq!(
        server.metric(r#"sluice_serve_requests_total{route="/score",status="200"}"#),
        1.0
    );
}

#[test]
fn a_stream_past_the_line_timeout_is_cancelled_and_logged_as_timed_out() {
    // A completion that would count on for 2,000 tokens, given three seconds.
    let (root, _, server) = start(LLM_COUNT, &["--line-timeout", "3"]);
    // The model loads in the first line, which times out as a whole answer (504).
    let first = score(&server, &json!({"start": "1,"}));
    assert_eq!(first.status, 504, "{}", first.body);
    let r = stream_score(&server, br#"{"start": "1, 2, 3, 4, 5, 6, 7,"}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    // The chunks that came in time (how many depends on the machine's speed), then the error.
    let events = r.events();
    let last: Json = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(
        last["error"]["innerError"]["code"], "LineExecutionTimeoutError",
        "{}",
        r.body
    );
    for e in &events[..events.len() - 1] {
        let chunk: Json = serde_json::from_str(e).unwrap();
        assert!(chunk["counted"].is_string(), "{e}");
    }
    assert_eq!(
        server.metric(r#"sluice_serve_errors_total{code="LineExecutionTimeoutError"}"#),
        2.0
    );
    assert_eq!(server.metric("sluice_serve_lines_in_flight"), 0.0);
    server.stop();
    let details = read_jsonl(&segment(root.path()).join("details.jsonl"));
    assert_eq!(details.len(), 2);
    assert_eq!(details[1]["status"], "Failed");
    assert!(
        details[1]["error"]
            .to_string()
            .contains("LineExecutionTimeoutError"),
        "{}",
        details[1]
    );
}

#[test]
fn connections_given_on_the_command_line_are_what_the_served_llm_node_calls() {
    let rec = crate::fake::FakeServer::replying(crate::fake::ok_body("from the fake"));
    let root = tempfile::tempdir().unwrap();
    crate::llm_requests::connect(root.path(), &rec);
    let flow = flow_dir(root.path(), LLM_REMOTE);
    // The flow names the Azure connection; the server is told to use the OpenAI one, and a model.
    let args = [
        "--connections",
        "ask.connection=oai",
        "ask.model=gpt-served",
    ];
    let server = serve(root.path(), &flow, &args, &[]);
    let r = score(&server, &json!({"question": "hi"}));
    assert_eq!(r.json(), json!({"answer": "from the fake"}), "{}", r.body);
    let sent = rec.request_to("POST /v1/chat/completions ");
    assert_eq!(sent["model"], "gpt-served");
    assert_eq!(sent["messages"][0]["content"], "hi");
    drop(server);
    // A setting for a node the flow does not have is refused before anything listens.
    let refused = command(
        root.path(),
        &flow,
        &["--connections", "nope.connection=oai"],
    )
    .output()
    .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("`nope`"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[test]
fn images_come_and_go_as_base64_and_are_logged_as_files() {
    // The smallest PNG: one transparent pixel.
    const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAcCBlCwAAAABJRU5ErkJggg==";
    let (root, flow, server) = start(IMAGE, &[]);
    for pic in [
        json!({"data:image/png;base64": PNG}),
        json!(format!("data:image/png;base64,{PNG}")),
    ] {
        let r = score(&server, &json!({ "pic": pic }));
        assert_eq!(r.status, 200, "{}", r.body);
        let out = r.json();
        assert_eq!(out["info"]["type"], "Image", "{out}");
        assert_eq!(out["info"]["mime"], "image/png", "{out}");
        // An image output is sent back as promptflow's serving sends it: a base64 data dict.
        assert_eq!(out["mirrored"], json!({"data:image/png;base64": PNG}));
    }
    // A client cannot make the server read its files, by path or by path dict (`logo.png` is in
    // the flow's folder).
    assert!(flow.join("logo.png").is_file());
    for pic in [
        json!("logo.png"),
        json!({"data:image/png;path": "logo.png"}),
        json!({"data:image/png;path": "/etc/hostname"}),
        json!(r#"{"data:image/png;path": "logo.png"}"#),
    ] {
        let r = score(&server, &json!({ "pic": pic }));
        assert_eq!(r.status, 400, "{pic}: {}", r.body);
        assert!(r.body.contains("InvalidImageInput"), "{}", r.body);
        assert!(r.body.contains("does not read files"), "{}", r.body);
    }
    server.stop();
    // The log keeps the served images as files, referred to by path, as a batch run does.
    let seg = segment(root.path());
    let outputs = read_jsonl(&seg.join("outputs.jsonl"));
    assert_eq!(outputs.len(), 2);
    let file = outputs[0]["mirrored"]["data:image/png;path"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", outputs[0]));
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(PNG)
        .unwrap();
    assert_eq!(std::fs::read(file).unwrap(), png);
    let inputs = read_jsonl(&seg.join("inputs.jsonl"));
    assert!(
        inputs[0]["pic"]["data:image/png;path"].is_string(),
        "{}",
        inputs[0]
    );
}
