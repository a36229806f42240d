//! `sluice model serve`: the real binary on a loopback port with the local models, driven over real
//! HTTP and by the official `openai` Python client.

use std::path::PathBuf;
use std::process::Stdio;

use serde_json::{Value as Json, json};

use crate::common::{Answer, client, model_serve, request, succeeded};

/// The Python that has the official `openai` package: `SLUICE_OPENAI_PYTHON`, else the venv
/// `~/.cache/sluice/openai-venv` (`python3 -m venv ~/.cache/sluice/openai-venv &&
/// ~/.cache/sluice/openai-venv/bin/pip install openai`). `None` (with a note) where there is none,
/// unless `CI` is set, where it must be there.
fn openai_python() -> Option<PathBuf> {
    let python = std::env::var_os("SLUICE_OPENAI_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/sluice/openai-venv/bin/python"))
        })?;
    let has_openai = std::process::Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_openai {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the model serve client tests need the openai package at {}: python3 -m venv ~/.cache/sluice/openai-venv && ~/.cache/sluice/openai-venv/bin/pip install openai",
        python.display()
    );
    eprintln!(
        "skipping the openai client checks: no `openai` package for {} (python3 -m venv ~/.cache/sluice/openai-venv && ~/.cache/sluice/openai-venv/bin/pip install openai, or set SLUICE_OPENAI_PYTHON)",
        python.display()
    );
    None
}

/// What the `openai` client makes of the server at `base_url`: each call's result, as JSON.
const CLIENT_SCRIPT: &str = r#"
import json, sys
import openai

c = openai.OpenAI(base_url=sys.argv[1], api_key="sk-unused", max_retries=0)
out = {}
out["models"] = [m.id for m in c.models.list().data]
out["retrieved"] = c.models.retrieve("minilm").id
try:
    c.models.retrieve("no-such-model")
    out["missing"] = None
except openai.NotFoundError as e:
    out["missing"] = {"status": e.status_code, "code": e.code}
q = [{"role": "user", "content": "What is the capital of France?"}]
ask = dict(model="default", messages=q, max_tokens=12)
r = c.chat.completions.create(n=3, temperature=1.0, seed=7, **ask)
out["n"] = {
    "indexes": [ch.index for ch in r.choices],
    "texts": [ch.message.content for ch in r.choices],
    "completion_tokens": r.usage.completion_tokens,
}
out["each"] = [c.chat.completions.create(temperature=1.0, seed=7, **ask).usage.completion_tokens]
out["greedy"] = c.chat.completions.create(temperature=0, **ask).choices[0].message.content
chunks = list(c.chat.completions.create(temperature=0, stream=True, stream_options={"include_usage": True}, **ask))
out["stream"] = {
    "text": "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices),
    "last_choices": len(chunks[-1].choices),
    "usage": chunks[-1].usage.model_dump() if chunks[-1].usage else None,
    "usage_before": sum(1 for ch in chunks[:-1] if ch.usage is not None),
}
plain = list(c.chat.completions.create(temperature=0, stream=True, **ask))
out["plain_stream_usage"] = sum(1 for ch in plain if ch.usage is not None)
two = list(c.chat.completions.create(temperature=1.0, n=2, stream=True, **ask))
out["two_stream"] = sorted({ch.choices[0].index for ch in two if ch.choices})

def refused(call, **kw):
    try:
        call(**kw)
        return None
    except openai.BadRequestError as e:
        return {"status": e.status_code, "param": e.param, "code": e.code, "message": e.message}

tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
out["tools"] = refused(c.chat.completions.create, tools=[tool], **ask)
out["top_alone"] = refused(c.chat.completions.create, top_logprobs=2, **ask)
out["top_too_many"] = refused(c.chat.completions.create, logprobs=True, top_logprobs=21, **ask)

def token(t):
    return {"token": t.token, "logprob": t.logprob, "bytes": t.bytes}

lp = c.chat.completions.create(temperature=0, logprobs=True, top_logprobs=3, **ask)
out["logprobs"] = {
    "text": lp.choices[0].message.content,
    "completion_tokens": lp.usage.completion_tokens,
    "finish": lp.choices[0].finish_reason,
    "content": [dict(token(t), top=[token(a) for a in t.top_logprobs]) for t in lp.choices[0].logprobs.content],
}
streamed = list(c.chat.completions.create(temperature=0, logprobs=True, stream=True, **ask))
out["stream_logprobs"] = {
    "text": "".join(ch.choices[0].delta.content or "" for ch in streamed),
    "tokens": [t.token for ch in streamed if ch.choices[0].logprobs for t in ch.choices[0].logprobs.content],
    "logprobs": [t.logprob for ch in streamed if ch.choices[0].logprobs for t in ch.choices[0].logprobs.content],
}
cl = c.completions.create(model="default", prompt="1, 2, 3, 4,", logprobs=2, max_tokens=4, temperature=0)
out["completion_logprobs"] = {"text": cl.choices[0].text, **cl.choices[0].logprobs.model_dump()}
out["plain"] = c.chat.completions.create(temperature=0, **ask).choices[0].logprobs
texts = ["Paris is the capital of France.", "hello"]
e64 = c.embeddings.create(model="minilm", input=texts)
ef = c.embeddings.create(model="minilm", input=texts, encoding_format="float")
out["embeddings"] = {
    "base64": [d.embedding for d in e64.data],
    "float": [d.embedding for d in ef.data],
    "usage": e64.usage.model_dump(),
}
print(json.dumps(out))
"#;

#[test]
fn the_openai_python_client_gets_choices_streams_usage_embeddings_and_clear_refusals() {
    let Some(python) = openai_python() else {
        return;
    };
    crate::common::installed("minilm", sluice_nodes::llm::store::ModelUse::Embedding);
    let home = tempfile::tempdir().unwrap();
    let server = model_serve(home.path(), &["--embedding-model", "minilm"], &[]);
    let script = home.path().join("client.py");
    std::fs::write(&script, CLIENT_SCRIPT).unwrap();
    let out = succeeded(
        assert_cmd::Command::new(&python)
            .arg(&script)
            .arg(&server.url),
    );
    let r: Json = serde_json::from_slice(&out.stdout).unwrap();

    assert!(r["models"].as_array().unwrap().contains(&json!("minilm")));
    assert_eq!(r["retrieved"], "minilm");
    assert_eq!(
        r["missing"],
        json!({"status": 404, "code": "model_not_found"})
    );

    // n = 3: three choices; the first is what one request with the same seed gets, and the usage
    // counts every choice's tokens.
    assert_eq!(r["n"]["indexes"], json!([0, 1, 2]));
    let texts: Vec<&str> = r["n"]["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(texts.iter().all(|t| !t.is_empty()), "{texts:?}");
    assert!(
        texts[1] != texts[0] || texts[2] != texts[0],
        "sampled choices should differ: {texts:?}"
    );
    let tokens = r["n"]["completion_tokens"].as_u64().unwrap();
    assert!(
        tokens > r["each"][0].as_u64().unwrap(),
        "{tokens} tokens for three choices"
    );

    // A stream with include_usage ends with a chunk of no choices and the usage, and says the
    // same as the whole answer.
    let greedy = r["greedy"].as_str().unwrap();
    assert!(greedy.contains("Paris"), "{greedy}");
    assert_eq!(r["stream"]["text"], greedy);
    assert_eq!(r["stream"]["last_choices"], 0);
    assert_eq!(r["stream"]["usage_before"], 0);
    let usage = &r["stream"]["usage"];
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0, "{usage}");
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 5, "{usage}");
    assert_eq!(r["plain_stream_usage"], 0, "no usage unless asked for");
    assert_eq!(r["two_stream"], json!([0, 1]));

    // What the local models cannot do is refused, naming the parameter.
    let e = &r["tools"];
    assert_eq!(e["status"], 400, "{e}");
    assert_eq!(e["param"], "tools", "{e}");
    assert_eq!(e["code"], "unsupported_parameter", "{e}");
    for (case, param) in [
        ("top_alone", "top_logprobs"),
        ("top_too_many", "top_logprobs"),
    ] {
        let e = &r[case];
        assert_eq!(e["status"], 400, "{case}: {e}");
        assert_eq!(e["param"], param, "{case}: {e}");
    }

    // Log probabilities: one entry per generated token, whose texts make up the answer; each a
    // probability (at most 0) with its alternatives, most likely first; greedy decoding picks the
    // most likely token, so each token is its own first alternative.
    let lp = &r["logprobs"];
    assert_eq!(lp["text"], greedy);
    let content = lp["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        lp["completion_tokens"].as_u64().unwrap()
    );
    let joined: String = content
        .iter()
        .map(|t| t["token"].as_str().unwrap())
        .collect();
    assert_eq!(joined, greedy);
    for t in content {
        let logprob = t["logprob"].as_f64().unwrap();
        assert!(logprob <= 0.0, "{t}");
        let top = t["top"].as_array().unwrap();
        assert_eq!(top.len(), 3, "{t}");
        assert_eq!(top[0]["token"], t["token"], "{t}");
        assert!((top[0]["logprob"].as_f64().unwrap() - logprob).abs() < 1e-6);
        let probs: Vec<f64> = top.iter().map(|a| a["logprob"].as_f64().unwrap()).collect();
        assert!(probs.windows(2).all(|w| w[0] >= w[1]), "{probs:?}");
        assert!(probs.iter().map(|p| p.exp()).sum::<f64>() <= 1.0 + 1e-6);
        let bytes: Vec<u8> = t["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            t["token"].as_str().unwrap()
        );
    }
    // Streamed, each chunk carries the tokens of its text: the same tokens and numbers.
    let streamed = &r["stream_logprobs"];
    assert_eq!(streamed["text"], greedy);
    let tokens: Vec<&Json> = content.iter().map(|t| &t["token"]).collect();
    assert_eq!(
        streamed["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        tokens
    );
    for (a, b) in streamed["logprobs"].as_array().unwrap().iter().zip(content) {
        assert!((a.as_f64().unwrap() - b["logprob"].as_f64().unwrap()).abs() < 1e-4);
    }
    // A completion's: tokens, their log probabilities, two alternatives each and offsets.
    let cl = &r["completion_logprobs"];
    let tokens: Vec<&str> = cl["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens.concat(), cl["text"].as_str().unwrap(), "{cl}");
    assert_eq!(cl["token_logprobs"].as_array().unwrap().len(), tokens.len());
    assert!(
        cl["top_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m.as_object().unwrap().len() == 2)
    );
    let mut offset = 0;
    for (t, o) in tokens.iter().zip(cl["text_offset"].as_array().unwrap()) {
        assert_eq!(o.as_u64().unwrap(), offset as u64);
        offset += t.len();
    }
    // Not asked for, none are sent.
    assert_eq!(r["plain"], Json::Null);

    // The client asks for base64 by default and decodes it; the vectors are the float ones.
    let e = &r["embeddings"];
    assert_eq!(e["base64"], e["float"]);
    assert_eq!(e["float"][0].as_array().unwrap().len(), 384);
    let used = e["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        (8..=20).contains(&used),
        "{used} tokens for two short texts"
    );
    assert_eq!(e["usage"]["total_tokens"], used);
}

#[test]
fn embeddings_come_as_little_endian_f32_in_base64_and_errors_in_openai_shape() {
    crate::common::installed("minilm", sluice_nodes::llm::store::ModelUse::Embedding);
    let home = tempfile::tempdir().unwrap();
    let server = model_serve(home.path(), &["--embedding-model", "minilm"], &[]);
    let embed = |format: &str| {
        let body = json!({"model": "minilm", "input": "hello world", "encoding_format": format});
        server.post_json("/v1/embeddings", &body)
    };
    let floats: Vec<f32> = embed("float").json()["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let b64 = embed("base64").json();
    let bytes = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(b64["data"][0]["embedding"].as_str().unwrap())
            .unwrap()
    };
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(decoded, floats);
    // "hello world" is two tokens.
    assert_eq!(b64["usage"], json!({"prompt_tokens": 2, "total_tokens": 2}));

    let openai_error = |a: &Answer, status: u16| {
        assert_eq!(a.status, status, "{}", a.body);
        let e = &a.json()["error"];
        assert!(e["message"].is_string() && e["type"].is_string(), "{e}");
        assert!(e.get("param").is_some() && e.get("code").is_some(), "{e}");
        e.clone()
    };
    assert_eq!(
        openai_error(&embed("int8"), 400)["param"],
        "encoding_format"
    );
    assert_eq!(
        openai_error(&server.get("/v1/models/nope"), 404)["code"],
        "model_not_found"
    );
    assert_eq!(server.get("/v1/models/minilm").json()["id"], "minilm");
    openai_error(&server.get("/v1/nowhere"), 404);
    openai_error(&server.get("/v1/chat/completions"), 405);
    let n = server.post_json(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}], "n": 0}),
    );
    assert_eq!(openai_error(&n, 400)["param"], "n");
}

#[test]
fn model_serve_needs_its_api_key_and_refuses_wide_addresses_without_one() {
    let home = tempfile::tempdir().unwrap();
    let key = "sk-model-serve-test-0123456789";
    let refused = crate::common::sluice(home.path())
        .args(["model", "serve", "--port", "0", "--host", "0.0.0.0"])
        .env_remove("SLUICE_API_KEY")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--insecure"));

    let server = model_serve(home.path(), &[], &[("SLUICE_API_KEY", key)]);
    let none = server.get("/v1/models");
    assert_eq!(none.status, 401, "{}", none.body);
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    assert_eq!(none.json()["error"]["type"], "invalid_request_error");
    assert_eq!(server.get("/metrics").status, 401);
    assert_eq!(server.get("/health").status, 200);
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

/// A completion that counts on for `tokens` tokens (greedy, no stop), streamed.
fn long_completion(addr: &str, auth: &str, tokens: u32) -> Answer {
    let body = json!({"model": "default", "prompt": "1, 2, 3, 4, 5, 6,", "temperature": 0,
                      "max_tokens": tokens, "stream": true});
    request(
        addr,
        "POST",
        "/v1/completions",
        &[("authorization", auth)],
        body.to_string().as_bytes(),
    )
}

#[test]
fn model_serve_limits_what_it_takes_on_counts_it_in_metrics_logs_each_request_and_drains() {
    let home = tempfile::tempdir().unwrap();
    let key = "sk-model-serve-limits-0123456789";
    let log_path = home.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let args = [
        "--max-inflight",
        "1",
        "--max-queue",
        "0",
        "--max-body-bytes",
        "2000",
        "--drain-timeout",
        "120",
    ];
    let mut server = crate::common::serve_to(
        home.path(),
        &[&crate::common::MODEL_SERVE[..], &args].concat(),
        &[("SLUICE_API_KEY", key)],
        Stdio::from(log),
    );
    let auth = format!("Bearer {key}");
    let headers = [("authorization", auth.as_str())];

    // One long answer holds the one place in flight; with no queue, the next is refused at once.
    let (addr, a) = (server.addr.clone(), auth.clone());
    let running = client(move || long_completion(&addr, &a, 48));
    server.await_metric(
        "sluice_serve_requests_in_flight",
        1.0,
        &headers,
        "the first request never started",
    );
    let refused = long_completion(&server.addr, &auth, 4);
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.json()["error"]["code"], "rate_limit_exceeded");
    let big = json!({"messages": [{"role": "user", "content": "x".repeat(3000)}]});
    let too_big = request(
        &server.addr,
        "POST",
        "/v1/chat/completions",
        &headers,
        big.to_string().as_bytes(),
    );
    assert_eq!(too_big.status, 413, "{}", too_big.body);
    assert_eq!(too_big.json()["error"]["type"], "invalid_request_error");

    // SIGTERM with the answer still streaming: it is finished, then the server exits 0.
    server.signal("-TERM");
    let done = running.join().unwrap();
    assert_eq!(done.status, 200);
    let events = done.events();
    assert_eq!(events.last(), Some(&"[DONE]"), "{}", done.body);
    let text: String = events[..events.len() - 1]
        .iter()
        .map(|e| {
            let v: Json = serde_json::from_str(e).unwrap();
            v["choices"][0]["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(text.contains(" 7, 8"), "{text}");
    let status = server.wait_within(std::time::Duration::from_secs(60));
    assert_eq!(status.and_then(|s| s.code()), Some(0));

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!log.contains(key), "{log}");
    let logged = [
        "GET /metrics 200 ",
        "POST /v1/completions 429 ",
        "POST /v1/chat/completions 413 ",
        "POST /v1/completions 200 ",
    ];
    let missing: Vec<&str> = logged.into_iter().filter(|l| !log.contains(l)).collect();
    assert!(missing.is_empty(), "{missing:?} not in the log: {log}");
}

#[test]
fn model_serve_counts_requests_tokens_and_first_tokens_in_metrics() {
    let home = tempfile::tempdir().unwrap();
    let server = model_serve(home.path(), &[], &[]);
    let model = sluice_nodes::llm::store::default_model(sluice_nodes::llm::store::ModelUse::Chat);
    let body = json!({"messages": [{"role": "user", "content": "Say hi"}], "temperature": 0, "max_tokens": 5});
    let answer = server.post_json("/v1/chat/completions", &body).json();
    let completion = answer["usage"]["completion_tokens"].as_f64().unwrap();
    let prompt = answer["usage"]["prompt_tokens"].as_f64().unwrap();
    let series = |direction: &str| {
        format!(r#"sluice_serve_llm_tokens_total{{direction="{direction}",model="{model}"}}"#)
    };
    let text = server.get("/metrics").body;
    assert!(
        text.contains("# TYPE sluice_serve_requests_total counter"),
        "{text}"
    );
    assert_eq!(server.metric(&series("completion")), completion);
    assert_eq!(server.metric(&series("prompt")), prompt);
    assert_eq!(
        server.metric(&format!(
            r#"sluice_serve_llm_time_to_first_token_seconds_count{{model="{model}"}}"#
        )),
        1.0
    );
    assert_eq!(
        server.metric(r#"sluice_serve_requests_total{route="/v1/chat/completions",status="200"}"#),
        1.0
    );
    assert_eq!(server.metric("sluice_serve_requests_in_flight"), 0.0);
}

#[test]
fn model_serve_without_metrics_answers_and_has_no_metrics_route() {
    let home = tempfile::tempdir().unwrap();
    let server = model_serve(home.path(), &["--no-metrics"], &[]);
    let models = server.get("/v1/models");
    assert_eq!(models.status, 200, "{}", models.body);
    let metrics = server.get("/metrics");
    assert_eq!(metrics.status, 404, "{}", metrics.body);
    assert_eq!(metrics.json()["error"]["type"], "invalid_request_error");
}

/// Used by the content-part test: the chat answer's text.
fn answer_text(a: &Answer) -> String {
    a.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn model_serve_reads_content_parts_and_bodies_without_a_json_content_type() {
    let home = tempfile::tempdir().unwrap();
    let server = model_serve(home.path(), &[], &[]);
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
    // Text parts joined make the same prompt, so greedy decoding gives the same answer.
    assert_eq!(answer_text(&plain), answer_text(&split));
    assert!(
        answer_text(&plain).contains("Paris"),
        "{}",
        answer_text(&plain)
    );

    let image = ask(
        &body(
            r#""messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]"#,
        ),
        &[],
    );
    assert_eq!(image.status, 400);
    let v = image.json();
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
    let v = broken.json();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not the JSON expected"),
        "{v}"
    );
}
