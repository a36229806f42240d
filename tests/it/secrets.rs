//! Keys stay secret and servers stay bounded: provider errors that echo a key, secrets given to
//! `connection create`, credentials in `api_base`, redirects to another origin, endless provider
//! responses, `model serve` against half-sent requests and idle clients, and a stuck Python tool
//! after a line timeout. Fake providers run on loopback only.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::fake::{FakeServer, Reply, ok_body};
use common::sluice;
use serde_json::Value as Json;
use sluice_nodes::llm::connections::Connection;
use sluice_nodes::llm::openai::{HttpBackend, HttpConfig};
use sluice_nodes::llm::types::{Backend, GenParams, Prompt};

fn backend(yaml: &str) -> HttpBackend {
    let c = Connection::from_yaml(yaml, Path::new("c.yaml")).unwrap();
    HttpBackend::new(&c.name, HttpConfig::from_connection(&c).unwrap()).unwrap()
}

fn ask(
    rt: &tokio::runtime::Runtime,
    b: &HttpBackend,
    model: Option<&str>,
) -> Result<String, String> {
    rt.block_on(async {
        let params = GenParams {
            model: model.map(str::to_owned),
            ..GenParams::default()
        };
        let s = b.generate(Prompt::Text("hi".into()), params).await?;
        s.collect().await.map(|c| c.text)
    })
    .map_err(|e| e.message)
}

/// Every file under `dir`, as text.
fn all_text_under(dir: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.push_str(&all_text_under(&p));
        } else {
            out.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
        }
    }
    out
}

#[test]
fn a_provider_error_that_echoes_the_key_leaks_nowhere() {
    // The provider fails once with a 500, then with a 401, each echoing the key it was sent.
    let server = FakeServer::raw(|seen, sock| {
        let key = seen
            .header("authorization")
            .unwrap_or_default()
            .trim_start_matches("Bearer ")
            .to_owned();
        let status = if seen.request_line().contains("retry-me") {
            500
        } else {
            401
        };
        let body = serde_json::json!({"error": {"message": format!("Incorrect API key provided: {key}.")}});
        Reply::status(status, body.to_string()).send(sock);
    });
    let home = tempfile::tempdir().unwrap();
    let literal_key = "sk-literal-0123456789abcdef";
    let env_key = "sk-from-env-fedcba9876543210";
    for (name, key, base) in [
        (
            "leaky",
            literal_key.to_owned(),
            format!("{}/v1", server.origin),
        ),
        (
            "leaky_env",
            "${env:SLUICE_TEST_LEAKY_KEY}".to_owned(),
            format!("{}/v1?retry-me=1", server.origin),
        ),
    ] {
        let file = home.path().join(format!("{name}.yaml"));
        std::fs::write(
            &file,
            format!(
                "name: {name}\ntype: open_ai\napi_key: '{key}'\napi_base: {base}\nmax_retries: 1\nretry_backoff: 0.01\n"
            ),
        )
        .unwrap();
        sluice(home.path())
            .args(["connection", "create", "-f"])
            .arg(&file)
            .assert()
            .success();
    }
    for (conn, key) in [("leaky", literal_key), ("leaky_env", env_key)] {
        let flow = tempfile::tempdir().unwrap();
        common::write_file(flow.path(), "prompt.jinja2", "Say hi to {{name}}");
        common::write_file(
            flow.path(),
            "flow.dag.yaml",
            &format!(
                "inputs:\n  name: {{type: string, default: bob}}\noutputs:\n  answer: {{reference: '${{hi.output}}'}}\nnodes:\n- name: hi\n  type: llm\n  api: completion\n  connection: {conn}\n  source: {{type: code, path: prompt.jinja2}}\n  inputs:\n    name: ${{inputs.name}}\n"
            ),
        );
        let out = sluice(home.path())
            .env("SLUICE_TEST_LEAKY_KEY", env_key)
            .args(["-v", "flow", "test", "--flow"])
            .arg(flow.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("Incorrect API key provided: ***"),
            "the provider's message should still be shown: {stderr}"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let records = all_text_under(&flow.path().join(".promptflow"));
        assert!(records.contains("Incorrect API key provided"), "{records}");
        for (what, text) in [
            ("stderr", &*stderr),
            ("stdout", &*stdout),
            (".promptflow", &records),
        ] {
            assert!(
                !text.contains(key),
                "{conn}: the key leaked into {what}: {text}"
            );
        }
        // A batch run's records, its report and what the run commands print hold no key either.
        let data = flow.path().join("data.jsonl");
        common::write_file(
            flow.path(),
            "data.jsonl",
            "{\"name\": \"a\"}\n{\"name\": \"b\"}\n",
        );
        let run = format!("run_{conn}");
        let out = sluice(home.path())
            .env("SLUICE_TEST_LEAKY_KEY", env_key)
            .args(["run", "create", "--name", &run, "--flow"])
            .arg(flow.path())
            .arg("--data")
            .arg(&data)
            .output()
            .unwrap();
        let mut seen_text = String::from_utf8_lossy(&out.stdout).into_owned();
        seen_text.push_str(&String::from_utf8_lossy(&out.stderr));
        let report = home.path().join(format!("{run}.html"));
        for args in [
            vec!["run", "show", "-n", &run],
            vec!["run", "show-details", "-n", &run],
            vec![
                "run",
                "visualize",
                &run,
                "--html-path",
                report.to_str().unwrap(),
            ],
        ] {
            let out = sluice(home.path()).args(&args).output().unwrap();
            seen_text.push_str(&String::from_utf8_lossy(&out.stdout));
            seen_text.push_str(&String::from_utf8_lossy(&out.stderr));
        }
        let run_files = all_text_under(&home.path().join("runs").join(&run));
        assert!(
            run_files.contains("Incorrect API key provided: ***"),
            "{run_files}"
        );
        let html = std::fs::read_to_string(&report).unwrap();
        for (what, text) in [
            ("run output", &seen_text),
            ("run folder", &run_files),
            ("report", &html),
        ] {
            assert!(
                !text.contains(key),
                "{conn}: the key leaked into the {what}: {text}"
            );
        }
        // The key did reach the provider: the connection works, only its echo is masked.
        assert!(
            server
                .seen()
                .iter()
                .any(|s| s.header("authorization").as_deref() == Some(&format!("Bearer {key}"))),
        );
    }
}

#[test]
fn a_secret_in_a_python_tool_error_is_masked() {
    let token = "tok-env-secret-0042";
    let (home, flow) = crate::common::home_and_flow();
    crate::common::write_flow(
        flow.path(),
        "leak.py",
        "import os\nfrom promptflow.core import tool\n\n@tool\ndef leak(x: str) -> str:\n    raise ValueError('token ' + os.environ['MY_SERVICE_TOKEN'] + ' and ' + os.environ['SERVICE_PASSWORD'])\n",
        "environment_variables:\n  SERVICE_PASSWORD: pw-from-the-flow-yaml-77\ninputs:\n  x: {type: string, default: a}\noutputs:\n  y: {reference: '${leak.output}'}\nnodes:\n- name: leak\n  type: python\n  source: {type: code, path: leak.py}\n  inputs:\n    x: ${inputs.x}\n",
    );
    let out = sluice(home.path())
        .env("MY_SERVICE_TOKEN", token)
        .args(["flow", "test", "--flow"])
        .arg(flow.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ValueError"), "{stderr}");
    let records = all_text_under(&flow.path().join(".promptflow"));
    for secret in [token, "pw-from-the-flow-yaml-77"] {
        assert!(!stderr.contains(secret), "{stderr}");
        assert!(!records.contains(secret), "{records}");
    }
}

#[test]
fn connection_secrets_given_any_way_are_stored_as_secrets_and_shown_masked() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("c.yaml");
    std::fs::write(
        &file,
        "name: many\ntype: custom\nclient_secret: cs-secret-000111\naccess_token: at-secret-000222\n\
         secret: s-secret-000333\napikey: ak-secret-000444\nsearch_api_key: sak-secret-000555\n\
         api_base: https://bob:pw-in-url-000666@search.example/v1?key=qk-secret-000777&region=eu\n",
    )
    .unwrap();
    let out = crate::common::succeeded(
        sluice(home.path())
            .args(["connection", "create", "-f"])
            .arg(&file)
            .args([
                "--set",
                "token=tok-secret-000888",
                "password=pw-secret-000999",
                "key=key-secret-001000",
                "region=eu",
            ]),
    );
    let created = String::from_utf8_lossy(&out.stdout).into_owned();
    let shown = sluice(home.path())
        .args(["connection", "show", "-n", "many"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    let listed = sluice(home.path())
        .args(["connection", "list"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    for text in [&created, &shown, &listed] {
        for secret in ["-secret-", "pw-in-url"] {
            assert!(!text.contains(secret), "a secret is shown: {text}");
        }
    }
    assert!(
        listed.contains("https://bob:***@search.example/v1?key=***&region=eu"),
        "{listed}"
    );
    let v: Json = serde_json::from_str(&shown).unwrap();
    assert_eq!(v["configs"]["region"], "eu", "{v}");
    let stored: Json =
        serde_json::from_slice(&std::fs::read(home.path().join("connections/many.json")).unwrap())
            .unwrap();
    let keys = "client_secret access_token secret apikey search_api_key token password key";
    for k in keys.split(' ') {
        assert!(
            stored["secrets"][k]
                .as_str()
                .is_some_and(|s| s.contains("-secret-")),
            "`{k}` should be stored as a secret: {stored}"
        );
        assert!(stored["configs"].get(k).is_none(), "{stored}");
    }
}

#[test]
fn a_query_string_in_api_base_stays_after_the_endpoint_path() {
    let server = FakeServer::raw(|_, sock| Reply::json(ok_body("fine")).send(sock));
    let rt = crate::common::runtime();
    let b = backend(&format!(
        "name: q\ntype: open_ai\napi_key: sk-q-0123456789\napi_base: {}/v1/?key=qk-1&x=2\n",
        server.origin
    ));
    assert_eq!(ask(&rt, &b, None).unwrap(), "fine");
    let b = backend(&format!(
        "name: qa\ntype: azure_open_ai\napi_key: az-q-0123456789\napi_base: {}/?sig=s1\napi_version: 2024-06-01\n",
        server.origin
    ));
    assert_eq!(ask(&rt, &b, Some("dep")).unwrap(), "fine");
    let seen = server.seen();
    assert_eq!(
        seen[0].request_line(),
        "POST /v1/completions?key=qk-1&x=2 HTTP/1.1"
    );
    assert_eq!(
        seen[1].request_line(),
        "POST /openai/deployments/dep/completions?sig=s1&api-version=2024-06-01 HTTP/1.1"
    );
}

#[test]
fn keys_do_not_follow_a_redirect_to_another_origin() {
    let elsewhere = FakeServer::raw(|_, sock| Reply::json(ok_body("stolen")).send(sock));
    let target = format!("{}/v1/completions", elsewhere.origin);
    let origin = FakeServer::raw(move |seen, sock| {
        if seen.request_line().contains("/moved/") {
            // Same origin: followed.
            Reply::json(ok_body("same origin")).send(sock);
        } else if seen.request_line().contains("/local/") {
            Reply::status(307, "")
                .header("location", "/moved/completions")
                .send(sock);
        } else {
            Reply::status(307, "")
                .header("location", &target)
                .send(sock);
        }
    });
    let rt = crate::common::runtime();
    for (kind, key) in [
        ("azure_open_ai", "az-redirect-0123456789"),
        ("open_ai", "sk-redirect-0123456789"),
    ] {
        let b = backend(&format!(
            "name: r\ntype: {kind}\napi_key: {key}\napi_base: {}/v1\nmax_retries: 0\n",
            origin.origin
        ));
        let err = ask(&rt, &b, Some("dep")).unwrap_err();
        assert!(err.contains("redirected to another origin"), "{err}");
    }
    assert!(
        elsewhere.seen().is_empty(),
        "a request reached the other origin: {:?}",
        elsewhere.seen()
    );
    let b = backend(&format!(
        "name: r\ntype: open_ai\napi_key: sk-redirect-0123456789\napi_base: {}/local\n",
        origin.origin
    ));
    assert_eq!(ask(&rt, &b, None).unwrap(), "same origin");
}

/// Sends the head of a response, then `bytes` bytes of body, then holds the connection open.
fn endless(sock: &mut TcpStream, status: u16, bytes: usize) {
    let _ = sock.write_all(
        format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n["
        )
        .as_bytes(),
    );
    let chunk = vec![b'1'; 1 << 20];
    let mut sent = 0;
    while sent < bytes {
        if sock.write_all(&chunk).is_err() {
            return;
        }
        sent += chunk.len();
    }
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn an_endless_provider_response_is_cut_off() {
    let ok = FakeServer::raw(|_, sock| endless(sock, 200, 80 << 20));
    let bad = FakeServer::raw(|_, sock| endless(sock, 401, 80 << 20));
    let rt = crate::common::runtime();
    for (server, want) in [(&ok, "larger than 64 MiB"), (&bad, "AuthenticationError")] {
        let b = backend(&format!(
            "name: big\ntype: open_ai\napi_key: sk-big-0123456789\napi_base: {}/v1\nmax_retries: 0\ntimeout: 30\n",
            server.origin
        ));
        let started = Instant::now();
        let err = ask(&rt, &b, None).unwrap_err();
        assert!(err.contains(want), "{err}");
        assert!(
            err.len() < 2000,
            "the error should be short: {} bytes",
            err.len()
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
    }
}

/// Waits for a child with a deadline; kills it if it is still running then.
fn wait_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn stuck_tool_flow(dir: &Path) {
    crate::common::write_flow(
        dir,
        "stuck.py",
        "import time\nfrom promptflow.core import tool\n\n@tool\ndef stuck(x: str) -> str:\n    time.sleep(3600)\n    return x\n",
        "inputs:\n  x: {type: string, default: a}\noutputs:\n  y: {reference: '${stuck.output}'}\nnodes:\n- name: stuck\n  type: python\n  source: {type: code, path: stuck.py}\n  inputs:\n    x: ${inputs.x}\n",
    );
    common::write_file(dir, "data.jsonl", "{\"x\": \"a\"}\n{\"x\": \"b\"}\n");
}

#[test]
fn a_stuck_python_tool_does_not_keep_the_process_alive_after_a_line_timeout() {
    let flow = tempfile::tempdir().unwrap();
    stuck_tool_flow(flow.path());
    let home = tempfile::tempdir().unwrap();
    let bin = assert_cmd::cargo::cargo_bin("sluice");
    let runs: [&[&str]; 2] = [
        &["flow", "test", "--line-timeout", "1", "--flow"],
        &[
            "run",
            "create",
            "--line-timeout",
            "1",
            "--data",
            "data.jsonl",
            "--flow",
        ],
    ];
    for args in runs {
        let started = Instant::now();
        let mut child = Command::new(&bin)
            .args(args)
            .arg(flow.path())
            .current_dir(flow.path())
            .env("SLUICE_HOME", home.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let status = wait_within(&mut child, Duration::from_secs(20));
        // `flow test` fails with its line; a batch run completes with its lines failed.
        let want = if args[0] == "flow" { 1 } else { 0 };
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(want),
            "{args:?} should time its lines out and exit, after {:?}",
            started.elapsed()
        );
    }
}

/// `sluice model serve` on a free loopback port, two slots of 512 tokens; killed on drop.
fn serve(home: &Path, env: &[(&str, &str)]) -> common::Served {
    common::model_serve(home, &[], env)
}

/// Two clients of `addr`: one that sent only `head` of a request, one that sent a whole request
/// and then nothing.
fn half_and_idle(addr: &str, head: &[u8]) -> (TcpStream, TcpStream) {
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(head).unwrap();
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    (half, idle)
}

/// Reads until the server closes the connection (true) or `limit` passes (false).
fn closed_within(sock: &mut TcpStream, limit: Duration) -> bool {
    sock.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
        if started.elapsed() > limit {
            return false;
        }
    }
}

#[test]
fn model_serve_closes_half_sent_requests_and_idle_connections_after_the_header_timeout() {
    let home = tempfile::tempdir().unwrap();
    let server = serve(home.path(), &[("SLUICE_SERVE_HEADER_TIMEOUT", "1")]);
    let (mut half, mut idle) = half_and_idle(
        &server.addr,
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: applic",
    );
    let started = Instant::now();
    assert!(
        closed_within(&mut half, Duration::from_secs(5)),
        "a half-sent request was held"
    );
    assert!(
        closed_within(&mut idle, Duration::from_secs(5)),
        "an idle connection was held"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // The server still answers.
    let mut ok = TcpStream::connect(&server.addr).unwrap();
    ok.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    ok.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[test]
fn model_serve_refuses_oversized_requests() {
    let home = tempfile::tempdir().unwrap();
    let server = serve(home.path(), &[]);
    // Sends the head, declaring `len` bytes of body, then `body`; reads the answer for at most 60 s.
    let post_declared = |path: &str, len: usize, body: &str| -> String {
        let mut s = TcpStream::connect(&server.addr).unwrap();
        s.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n{body}"
            )
            .as_bytes(),
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut text = Vec::new();
        let _ = s.read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    };
    let post = |path: &str, body: &str| post_declared(path, body.len(), body);
    let stops: Vec<String> = (0..100).map(|i| format!("s{i}")).collect();
    let r = post(
        "/v1/completions",
        &serde_json::json!({"prompt": "hi", "stop": stops}).to_string(),
    );
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = post(
        "/v1/completions",
        &serde_json::json!({"prompt": "hi", "max_tokens": 4_000_000_000u32}).to_string(),
    );
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = post(
        "/v1/embeddings",
        &serde_json::json!({"input": vec!["x"; 3000]}).to_string(),
    );
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // A body over the limit is refused from its declared length, before it is read.
    let r = post_declared("/v1/completions", 17 << 20, "{\"prompt\": \"");
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
}

#[test]
fn model_serve_shuts_down_promptly_with_idle_and_half_open_clients() {
    for signal in ["-INT", "-TERM"] {
        let home = tempfile::tempdir().unwrap();
        let mut server = serve(home.path(), &[]);
        let (_half, mut idle) = half_and_idle(
            &server.addr,
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n",
        );
        let mut buf = [0u8; 512];
        let _ = idle.read(&mut buf).unwrap();
        let _silent = TcpStream::connect(&server.addr).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        server.signal(signal);
        let status = wait_within(&mut server.child, Duration::from_secs(8));
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "{signal}: the server should exit cleanly and promptly (after {:?})",
            started.elapsed()
        );
    }
}
