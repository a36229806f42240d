//! OpenTelemetry export, read back from a real collector: `flow test`, a batch run and a served
//! request each export their spans to Arize Phoenix (OTLP over HTTP/protobuf, and once over gRPC),
//! and the spans are read back through Phoenix's REST API (`GET /v1/projects/{project}/spans`): the
//! tree (line → nodes → model call), names, attributes and token counts. The `llm` node calls the
//! fake OpenAI server, which reports 7 prompt and 2 completion tokens, so the counts are known.
//! A collector that is gone or hangs never slows a batch: spans are dropped and counted.
//!
//! The Phoenix server is the one `scripts/test.sh` starts (`SLUICE_PHOENIX_URL`,
//! `SLUICE_PHOENIX_GRPC`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use tempfile::TempDir;

use crate::common::{request, sluice, write_files};
use crate::fake::{FakeServer, ok_body};

/// Phoenix's base URL, `http://127.0.0.1:PORT`.
fn phoenix() -> String {
    std::env::var("SLUICE_PHOENIX_URL").expect(
        "SLUICE_PHOENIX_URL is not set: run the tests through scripts/test.sh, which starts an Arize Phoenix server (`sluice_start_phoenix` in scripts/setup.sh) for them",
    )
}

/// Phoenix's OTLP/gRPC endpoint.
fn phoenix_grpc() -> String {
    std::env::var("SLUICE_PHOENIX_GRPC").expect(
        "SLUICE_PHOENIX_GRPC is not set: run the tests through scripts/test.sh, which starts an Arize Phoenix server for them",
    )
}

/// A Phoenix project name no other test uses.
fn project(what: &str) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!(
        "sluice-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    )
}

/// The spans of `project` in Phoenix, once there are at least `want` (60 s at most: Phoenix
/// stores what it receives in the background).
fn spans(project: &str, want: usize) -> Vec<Json> {
    let url = phoenix();
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = request(
            addr,
            "GET",
            &format!("/v1/projects/{project}/spans?limit=1000"),
            &[],
            b"",
        );
        let found = if answer.status == 200 {
            answer.json()["data"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        if found.len() >= want {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "Phoenix has {} spans of project {project}, not {want}: {} {}",
            found.len(),
            answer.status,
            answer.body
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A span attribute, whether Phoenix gives attributes flat (`a.b`) or as a tree.
fn attr<'a>(span: &'a Json, key: &str) -> &'a Json {
    let attrs = &span["attributes"];
    if let Some(v) = attrs.get(key) {
        return v;
    }
    let mut at = attrs;
    for part in key.split('.') {
        at = &at[part];
    }
    at
}

fn id(span: &Json) -> &str {
    span["context"]["span_id"].as_str().unwrap()
}

fn trace_id(span: &Json) -> &str {
    span["context"]["trace_id"].as_str().unwrap()
}

fn parent(span: &Json) -> Option<&str> {
    span["parent_id"].as_str()
}

fn named<'a>(spans: &'a [Json], name: &str) -> Vec<&'a Json> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

fn one<'a>(spans: &'a [Json], name: &str) -> &'a Json {
    let found = named(spans, name);
    assert_eq!(found.len(), 1, "one span {name}: {spans:#?}");
    found[0]
}

/// A flow folder named `traced` (the flow's name): a Python node `prep` lowercases the question,
/// an `llm` chat node `answer` (connection `oai`, model `gpt-test`) answers it.
const FLOW: &str = "inputs:\n  q: {type: string}\noutputs:\n  answer: {reference: '${answer.output}'}\nnodes:\n- name: prep\n  type: python\n  source: {type: code, path: prep.py}\n  inputs: {q: '${inputs.q}'}\n- name: answer\n  type: llm\n  api: chat\n  connection: oai\n  source: {type: code, path: chat.jinja2}\n  inputs:\n    model: gpt-test\n    max_tokens: 16\n    temperature: 0\n    q: ${prep.output}\n";

/// A home whose `oai` connection points at a fake OpenAI server answering `Paris` (7 + 2 tokens,
/// model `m`), and the flow.
struct Setup {
    fake: FakeServer,
    home: TempDir,
    root: TempDir,
    flow: std::path::PathBuf,
}

fn setup() -> Setup {
    let fake = FakeServer::replying(ok_body("Paris"));
    let home = tempfile::tempdir().unwrap();
    crate::llm_requests::connect(home.path(), &fake);
    let root = tempfile::tempdir().unwrap();
    let flow = root.path().join("traced");
    std::fs::create_dir_all(&flow).unwrap();
    write_files(
        &flow,
        &[
            ("flow.dag.yaml", FLOW),
            (
                "prep.py",
                "from promptflow.core import tool\n\n@tool\ndef prep(q: str) -> str:\n    return q.strip().lower()\n",
            ),
            (
                "chat.jinja2",
                "# system:\nAnswer in one word.\n# user:\n{{q}}\n",
            ),
        ],
    );
    Setup {
        fake,
        home,
        root,
        flow,
    }
}

/// Checks one line's spans: the line at the root (or under `root_parent`), `prep` and `answer`
/// under it, the model call under `answer`, their kinds, and the tokens the fake server reported.
/// Returns the line's span.
fn assert_line_tree<'a>(trace: &'a [Json], question: &str, root_parent: Option<&str>) -> &'a Json {
    assert_eq!(trace.len(), 4, "line, 2 nodes, 1 model call: {trace:#?}");
    let line = one(trace, "traced");
    let prep = one(trace, "prep");
    let answer = one(trace, "answer");
    let call = one(trace, "chat gpt-test");
    assert_eq!(parent(line), root_parent, "{line:#}");
    assert_eq!(parent(prep), Some(id(line)));
    assert_eq!(parent(answer), Some(id(line)));
    assert_eq!(
        parent(call),
        Some(id(answer)),
        "the model call is the llm node's child"
    );
    for s in trace {
        assert_eq!(trace_id(s), trace_id(line));
        assert_eq!(attr(s, "framework"), "promptflow", "{s:#}");
        assert_eq!(s["status_code"], "OK", "{s:#}");
    }
    // promptflow's span types, OpenInference's kinds (Phoenix moves `openinference.span.kind` into
    // `span_kind`).
    for (span, span_type, kind) in [
        (line, "Flow", "CHAIN"),
        (prep, "Function", "TOOL"),
        (answer, "LLM", "CHAIN"),
        (call, "LLM", "LLM"),
    ] {
        assert_eq!(attr(span, "span_type"), span_type, "{span:#}");
        assert_eq!(span["span_kind"], kind, "{span:#}");
    }
    assert_eq!(attr(prep, "node_name"), "prep");
    assert_eq!(attr(prep, "function"), "prep.py");
    assert_eq!(attr(answer, "node_name"), "answer");
    // The model call: GenAI conventions, promptflow's llm.usage, OpenInference's token counts.
    for (key, want) in [
        ("gen_ai.operation.name", json!("chat")),
        ("gen_ai.provider.name", json!("openai")),
        ("gen_ai.system", json!("openai")),
        ("gen_ai.request.model", json!("gpt-test")),
        ("gen_ai.request.max_tokens", json!(16)),
        ("gen_ai.request.temperature", json!(0.0)),
        ("gen_ai.response.model", json!("m")),
        ("gen_ai.usage.input_tokens", json!(7)),
        ("gen_ai.usage.output_tokens", json!(2)),
        ("llm.usage.prompt_tokens", json!(7)),
        ("llm.usage.completion_tokens", json!(2)),
        ("llm.usage.total_tokens", json!(9)),
        ("llm.token_count.prompt", json!(7)),
        ("llm.token_count.completion", json!(2)),
        ("llm.token_count.total", json!(9)),
        ("llm.model_name", json!("gpt-test")),
        ("llm.response.model", json!("m")),
    ] {
        assert_eq!(attr(call, key), &want, "{key}: {call:#}");
    }
    // Cumulative counts on the line and the node.
    for span in [line, answer] {
        assert_eq!(
            attr(span, "__computed__.cumulative_token_count.total"),
            9,
            "{span:#}"
        );
        assert_eq!(attr(span, "__computed__.cumulative_token_count.prompt"), 7);
    }
    // The call lies within its node, the node within its line.
    let t = |s: &Json, k: &str| {
        chrono::DateTime::parse_from_rfc3339(s[k].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{k}: {e}: {s:#}"))
    };
    assert!(t(call, "start_time") >= t(answer, "start_time"));
    assert!(t(call, "end_time") <= t(answer, "end_time"));
    assert!(t(answer, "start_time") >= t(line, "start_time"));
    assert!(t(answer, "end_time") <= t(line, "end_time"));
    // Payloads: the line's inputs, the prompt as sent, the reply.
    assert!(
        attr(line, "input.value")
            .as_str()
            .is_some_and(|v| v.contains(question)),
        "{line:#}"
    );
    assert_eq!(
        attr(call, "llm.input_messages.1.message.content"),
        &json!(question.trim().to_lowercase())
    );
    assert_eq!(attr(call, "llm.input_messages.0.message.role"), "system");
    assert_eq!(attr(call, "output.value"), "Paris");
    assert!(
        line["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["name"] == "promptflow.function.inputs")),
        "{line:#}"
    );
    line
}

/// The spans grouped by trace.
fn traces(spans: &[Json]) -> HashMap<String, Vec<Json>> {
    let mut by: HashMap<String, Vec<Json>> = HashMap::new();
    for s in spans {
        by.entry(trace_id(s).to_owned())
            .or_default()
            .push(s.clone());
    }
    by
}

#[test]
fn flow_test_exports_the_line_its_nodes_and_the_model_call_to_phoenix() {
    let s = setup();
    let project = project("test");
    let out = sluice(s.home.path())
        .args(["flow", "test", "--flow"])
        .arg(&s.flow)
        .args(["--inputs", "q=  What is the capital of FRANCE?", "--trace"])
        .arg(phoenix())
        .env("SLUICE_TRACE_PROJECT", &project)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("traces: 4 spans exported to") && stderr.contains(", 0 dropped"),
        "{stderr}"
    );
    assert_eq!(s.fake.requests(), 1);
    let found = spans(&project, 4);
    let line = assert_line_tree(&found, "  What is the capital of FRANCE?", None);
    // A test line has a line run id and no batch run.
    assert!(
        attr(line, "line_run_id")
            .as_str()
            .is_some_and(|i| i.len() == 36)
    );
    assert!(attr(line, "batch_run_id").is_null());
}

#[test]
fn flow_test_exports_over_grpc_and_leaves_payloads_out_when_asked() {
    let s = setup();
    let project = project("grpc");
    let out = sluice(s.home.path())
        .args(["flow", "test", "--flow"])
        .arg(&s.flow)
        .args(["--inputs", "q=secret question"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", phoenix_grpc())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_SERVICE_NAME", "sluice-grpc-test")
        .env("SLUICE_TRACE_PAYLOADS", "0")
        .env("SLUICE_TRACE_PROJECT", &project)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("traces: 4 spans exported to http://"),
        "{stderr}"
    );
    let found = spans(&project, 4);
    assert_eq!(found.len(), 4);
    let call = one(&found, "chat gpt-test");
    assert_eq!(parent(call), Some(id(one(&found, "answer"))));
    // Tokens stay; no input, output or prompt leaves. (Phoenix makes an `output.value` of its own
    // from `gen_ai.response.model`; it holds no payload.)
    assert_eq!(attr(call, "llm.token_count.total"), 9);
    for span in &found {
        let text = span.to_string();
        assert!(!text.contains("secret question"), "{span:#}");
        assert!(!text.contains("Paris"), "{span:#}");
        assert!(attr(span, "input.value").is_null(), "{span:#}");
        assert!(attr(span, "inputs").is_null(), "{span:#}");
        assert!(
            span["events"].as_array().is_none_or(Vec::is_empty),
            "{span:#}"
        );
    }
}

#[test]
fn a_batch_run_exports_one_trace_per_line_with_the_run_and_line_numbers() {
    let s = setup();
    let project = project("batch");
    let data = s.root.path().join("data.jsonl");
    let questions: Vec<String> = (0..5).map(|n| format!("Question {n}?")).collect();
    std::fs::write(
        &data,
        questions
            .iter()
            .map(|q| format!("{}\n", json!({"q": q})))
            .collect::<String>(),
    )
    .unwrap();
    let out = sluice(s.home.path())
        .args(["run", "create", "--name", "traced_run", "--flow"])
        .arg(&s.flow)
        .arg("--data")
        .arg(&data)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", phoenix())
        .env("SLUICE_TRACE_PROJECT", &project)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("traces: 20 spans exported"), "{stderr}");
    let found = spans(&project, 20);
    let by_trace = traces(&found);
    assert_eq!(by_trace.len(), 5, "one trace per line");
    let mut numbers = Vec::new();
    for trace in by_trace.values() {
        let line = one(trace, "traced");
        let n = attr(line, "line_number").as_u64().expect("line_number") as usize;
        numbers.push(n);
        assert_line_tree(trace, &questions[n], None);
        for span in trace {
            assert_eq!(attr(span, "batch_run_id"), "traced_run", "{span:#}");
            assert_eq!(
                attr(span, "line_run_id"),
                format!("traced_run_{n}").as_str()
            );
        }
    }
    numbers.sort_unstable();
    assert_eq!(numbers, [0, 1, 2, 3, 4]);
}

#[test]
fn a_batch_runs_aggregation_is_a_trace_of_its_own_with_its_nodes_and_metrics() {
    let s = setup();
    let project = project("aggregation");
    let data = s.root.path().join("graded.jsonl");
    let rows = [
        (
            "How long should I roast the chicken?",
            "The chicken takes an hour.",
        ),
        ("Can I boil frozen tofu?", "Yes, tofu boils well."),
        ("What spice goes with salmon?", "Dill."),
    ];
    std::fs::write(
        &data,
        rows.iter()
            .map(|(q, a)| format!("{}\n", json!({"question": q, "answer": a})))
            .collect::<String>(),
    )
    .unwrap();
    let judge = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/monitor/judge");
    let out = sluice(s.home.path())
        .args(["run", "create", "--name", "graded_run", "--flow"])
        .arg(&judge)
        .arg("--data")
        .arg(&data)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", phoenix())
        .env("SLUICE_TRACE_PROJECT", &project)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Three lines of two spans (the line, `grade`), then the aggregation and its `accuracy` node.
    assert!(stderr.contains("traces: 8 spans exported"), "{stderr}");
    let found = spans(&project, 8);
    assert_eq!(
        traces(&found).len(),
        4,
        "a trace per line and one for the aggregation"
    );
    let agg = one(&found, "aggregation");
    assert_eq!(parent(agg), None);
    assert_eq!(attr(agg, "batch_run_id"), "graded_run");
    assert_eq!(attr(agg, "line_run_id"), "graded_run_aggregation");
    assert!(attr(agg, "line_number").is_null());
    let metrics: Json = serde_json::from_str(attr(agg, "output.value").as_str().unwrap()).unwrap();
    assert!(
        (metrics["accuracy"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9,
        "{metrics}"
    );
    let node = one(&found, "accuracy");
    assert_eq!(parent(node), Some(id(agg)));
    assert_eq!(trace_id(node), trace_id(agg));
    assert_eq!(attr(node, "node_name"), "accuracy");
}

#[test]
fn a_served_request_continues_the_callers_trace_and_metrics_count_spans() {
    let s = setup();
    let project = project("serve");
    let flow = s.flow.to_str().unwrap().to_owned();
    let server = crate::common::serve(
        s.home.path(),
        &[
            "flow",
            "serve",
            "--port",
            "0",
            "--flow",
            &flow,
            "--trace",
            &phoenix(),
        ],
        &[("SLUICE_TRACE_PROJECT", project.as_str())],
    );
    // A trace id of this run's own: Phoenix files a trace under the project it first came in.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let trace = format!("{:032x}", nanos ^ (u128::from(std::process::id()) << 96));
    let (trace, caller) = (trace.as_str(), "00f067aa0ba902b7");
    let answer = request(
        &server.addr,
        "POST",
        "/score",
        &[
            ("content-type", "application/json"),
            ("traceparent", &format!("00-{trace}-{caller}-01")),
        ],
        json!({"q": "Where is the Louvre?"}).to_string().as_bytes(),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json(), json!({"answer": "Paris"}));
    // A request without a traceparent starts a trace of its own.
    assert_eq!(
        server.post_json("/score", &json!({"q": "Again?"})).status,
        200
    );
    server.await_metric(
        "sluice_trace_spans_exported_total",
        8.0,
        &[],
        "the served lines' spans should be exported",
    );
    assert_eq!(
        server.metric("sluice_trace_spans_dropped_total{reason=\"queue_full\"}"),
        0.0
    );
    let found = spans(&project, 8);
    let by_trace = traces(&found);
    assert_eq!(by_trace.len(), 2, "{found:#?}");
    let continued = by_trace.get(trace).expect("the caller's trace id");
    let line = assert_line_tree(continued, "Where is the Louvre?", Some(caller));
    assert!(attr(line, "batch_run_id").is_null());
    let own = by_trace
        .values()
        .find(|t| trace_id(&t[0]) != trace)
        .unwrap();
    assert_line_tree(own, "Again?", None);
    server.stop();
}

/// A batch of `lines` lines of the flow, with `env`; how long it took and its stderr.
fn timed_batch(s: &Setup, lines: usize, name: &str, env: &[(&str, &str)]) -> (Duration, String) {
    let data = s.root.path().join(format!("{name}.jsonl"));
    std::fs::write(
        &data,
        (0..lines)
            .map(|n| format!("{}\n", json!({"q": format!("q{n}")})))
            .collect::<String>(),
    )
    .unwrap();
    let mut cmd = sluice(s.home.path());
    cmd.args([
        "run",
        "create",
        "--max-concurrency",
        "8",
        "--name",
        name,
        "--flow",
    ])
    .arg(&s.flow)
    .arg("--data")
    .arg(&data)
    .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
    .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    .envs(env.iter().copied());
    let started = Instant::now();
    let out = cmd.output().unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (took, stderr)
}

/// The counts of the `traces:` line: (exported, dropped).
fn trace_counts(stderr: &str) -> (u64, u64) {
    let line = stderr
        .lines()
        .find(|l| l.contains("traces: "))
        .unwrap_or_else(|| panic!("no traces line: {stderr}"));
    let number_before = |word: &str| -> u64 {
        let at = line.find(word).unwrap_or_else(|| panic!("{word}: {line}"));
        line[..at]
            .split_whitespace()
            .last()
            .unwrap()
            .trim_end_matches(',')
            .parse()
            .unwrap_or_else(|e| panic!("{e}: {line}"))
    };
    (number_before(" spans exported"), number_before(" dropped"))
}

#[test]
fn a_collector_that_is_gone_or_hangs_never_slows_a_batch_and_drops_are_counted() {
    let s = setup();
    let lines = 200;
    let (plain, _) = timed_batch(&s, lines, "plain", &[]);
    // Nothing listens on this port.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let closed_url = format!("http://{closed}");
    let (gone, stderr) = timed_batch(
        &s,
        lines,
        "gone",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", closed_url.as_str()),
            ("SLUICE_TRACE_QUEUE", "2"),
        ],
    );
    let (exported, dropped) = trace_counts(&stderr);
    assert_eq!(exported, 0, "{stderr}");
    assert_eq!(dropped, 4 * lines as u64, "every span is counted: {stderr}");
    assert!(stderr.contains("queue full"), "{stderr}");
    // A collector that accepts connections and never answers: exports hang, the queue fills.
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hanging_url = format!("http://{}", hanging.local_addr().unwrap());
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::Builder::new()
        .name("hanging-collector".into())
        .spawn(move || {
            for sock in hanging.incoming().flatten() {
                keep.lock().unwrap().push(sock);
            }
        })
        .unwrap();
    let (hung, stderr) = timed_batch(
        &s,
        lines,
        "hung",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", hanging_url.as_str()),
            ("SLUICE_TRACE_QUEUE", "4"),
            ("SLUICE_TRACE_FLUSH_TIMEOUT", "1"),
        ],
    );
    let (exported, dropped) = trace_counts(&stderr);
    assert_eq!(exported, 0, "{stderr}");
    assert!(dropped > 0, "{stderr}");
    assert!(stderr.contains("queue full"), "{stderr}");
    // Generous bounds: the lines do not wait for the exporter, and the end waits for it only up to
    // the flush deadline (1 s here).
    let bound = plain * 3 + Duration::from_secs(3);
    assert!(
        gone < bound,
        "collector gone: {gone:?} vs {plain:?} without tracing"
    );
    assert!(
        hung < bound + Duration::from_secs(1),
        "collector hangs: {hung:?} vs {plain:?}"
    );
    assert!(
        !held.lock().unwrap().is_empty(),
        "the exporter tried the hanging collector"
    );
}

#[test]
fn flow_serve_counts_dropped_spans_in_its_metrics() {
    let s = setup();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let flow = s.flow.to_str().unwrap().to_owned();
    let server = crate::common::serve(
        s.home.path(),
        &[
            "flow", "serve", "--port", "0", "--flow", &flow, "--trace", &closed,
        ],
        &[],
    );
    for n in 0..3 {
        let a = server.post_json("/score", &json!({"q": format!("q{n}")}));
        assert_eq!(a.status, 200, "{}", a.body);
    }
    server.await_metric(
        "sluice_trace_spans_dropped_total{reason=\"export_failed\"}",
        12.0,
        &[],
        "the spans of 3 lines (4 each) fail to export and are counted",
    );
    assert_eq!(server.metric("sluice_trace_spans_exported_total"), 0.0);
    server.stop();
}

#[test]
fn a_trace_endpoint_that_cannot_work_is_a_usage_error() {
    let s = setup();
    let out = sluice(s.home.path())
        .args(["flow", "test", "--flow"])
        .arg(&s.flow)
        .args([
            "--inputs",
            "q=x",
            "--trace",
            "https://collector.invalid:4318",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("https is not supported"), "{stderr}");
    assert_eq!(s.fake.requests(), 0, "nothing ran");
}
