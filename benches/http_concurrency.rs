//! Concurrency with slow remote calls: every line makes one call that takes 200 ms, served by a mock
//! OpenAI-compatible server on loopback (keep-alive HTTP/1.1). 1,000 lines at concurrency 64 can at best
//! finish at 64 / 0.2 s = 320 lines/s; this prints how close Sluice gets, for an `llm` node using the
//! HTTP backend and for a Python tool calling the server with `urllib`.
//!
//! `cargo bench --bench http_concurrency -- [LINES] [CONCURRENCY]`

mod common;

use std::path::Path;
use std::time::Duration;

use sluice_engine::spawn::SpawnedTask;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const DELAY: Duration = Duration::from_millis(200);

/// Answers every POST after `DELAY` with a fixed chat completion; keeps connections open.
async fn mock_server() -> (String, SpawnedTask<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let task = SpawnedTask::spawn(async move {
        let mut conns = Vec::new();
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            conns.push(SpawnedTask::spawn(async move {
                let mut reader = BufReader::new(sock);
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end().to_ascii_lowercase();
                        if l.is_empty() {
                            break;
                        }
                        if let Some(v) = l.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; len];
                    if reader.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(DELAY).await;
                    let answer = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1}}"#;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if reader.get_mut().write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            }));
        }
    });
    (base, task)
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn measure(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    lines: usize,
    concurrency: usize,
) -> (f64, usize) {
    let flow = common::load_flow(dir);
    let question = |i| format!("question {i}");
    let (summary, secs) = common::run_lines(rt, flow, lines, concurrency, "q", question, |_| {});
    (secs, summary.failed_lines)
}

fn main() {
    let args = common::number_args();
    let lines = args.first().copied().unwrap_or(1000);
    let concurrency = args.get(1).copied().unwrap_or(64);
    let home = tempfile::tempdir().unwrap();
    // SAFETY: set before the runtime or any other thread starts.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("SLUICE_HOME", home.path());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (base, _server) = rt.block_on(mock_server());
    let conn = sluice_nodes::llm::connections::Connection::from_yaml(
        &format!("name: mock\ntype: open_ai\napi_key: k\napi_base: {base}\nmax_concurrency: {concurrency}\n"),
        Path::new("mock.yaml"),
    )
    .unwrap();
    sluice_nodes::llm::connections::save(&conn).unwrap();

    let llm = tempfile::tempdir().unwrap();
    write(llm.path(), "chat.jinja2", "# user:\n{{ q }}\n");
    write(
        llm.path(),
        "flow.dag.yaml",
        "inputs:\n  q: {type: string}\noutputs:\n  a: {reference: '${chat.output}'}\nnodes:\n- name: chat\n  type: llm\n  api: chat\n  connection: mock\n  source: {type: code, path: chat.jinja2}\n  inputs: {model: mock, q: '${inputs.q}'}\n",
    );
    let py = tempfile::tempdir().unwrap();
    write(
        py.path(),
        "call.py",
        &format!(
            "import json, urllib.request\nfrom promptflow.core import tool\n\n@tool\ndef call(q: str) -> str:\n    req = urllib.request.Request('{base}/chat/completions', data=json.dumps({{'messages': [{{'role': 'user', 'content': q}}]}}).encode(), headers={{'content-type': 'application/json'}})\n    with urllib.request.urlopen(req) as r:\n        return json.load(r)['choices'][0]['message']['content']\n"
        ),
    );
    write(
        py.path(),
        "flow.dag.yaml",
        "inputs:\n  q: {type: string}\noutputs:\n  a: {reference: '${call.output}'}\nnodes:\n- name: call\n  type: python\n  source: {type: code, path: call.py}\n  inputs: {q: '${inputs.q}'}\n",
    );

    let ideal = concurrency as f64 / DELAY.as_secs_f64();
    println!("| flow | lines | concurrency | seconds | lines/s | % of ideal {ideal:.0} lines/s |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (label, dir) in [
        ("llm node, HTTP backend", llm.path()),
        ("python tool, urllib", py.path()),
    ] {
        let (secs, failed) = measure(&rt, dir, lines, concurrency);
        assert_eq!(failed, 0, "{label}: lines failed");
        let rate = lines as f64 / secs;
        println!(
            "| {label} | {lines} | {concurrency} | {secs:.2} | {rate:.1} | {:.0}% |",
            rate / ideal * 100.0
        );
    }
}
