//! Prompty files as flows: `flow test`, `flow validate` and `run create` on a `.prompty`, the request
//! a server receives (checked against promptflow's: the messages, the model and `model.parameters`
//! as written), the shape of the reply, and front-matter errors with their positions.

use predicates::prelude::*;
use std::path::{Path, PathBuf};

use serde_json::{Value as Json, json};

use crate::common::{
    add_connection, flow_test_with, read_jsonl, sluice, stdout_json, succeeded, tested, write_files,
};
use crate::fake::{FakeServer, Reply, Seen, ok_body};

/// Writes `openai_prompty(base, parameters, rest)` to `dir/name` and returns its path.
fn ask_prompty(dir: &Path, name: &str, base: &str, parameters: &str, rest: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, openai_prompty(base, parameters, rest)).unwrap();
    path
}

/// A prompty that answers questions through `base` with explicit OpenAI settings.
fn openai_prompty(base: &str, parameters: &str, rest: &str) -> String {
    format!(
        "---\nname: Ask\nmodel:\n  api: chat\n  configuration:\n    type: openai\n    model: gpt-4o-mini\n    base_url: {base}\n    api_key: sk-test-123\n  parameters:\n{parameters}{rest}---\nsystem:\nYou are a helpful assistant.\n\nuser:\n{{{{question}}}}\n"
    )
}

#[test]
fn a_prompty_runs_on_the_local_model_with_its_sample() {
    let (home, dir) = crate::common::home_and_flow();
    write_files(
        dir.path(),
        &[(
            "basic.prompty",
            "---\nname: Basic\nmodel:\n  api: chat\n  parameters:\n    max_tokens: 16\n    temperature: 0\ninputs:\n  question:\n    type: string\nsample:\n  question: What is the capital of France?\n---\nsystem:\nYou answer in one short sentence.\n\nuser:\n{{question}}\n",
        )],
    );
    // No inputs: the sample is used. The local model answers (no configuration means no keys).
    let out = tested(home.path(), &dir.path().join("basic.prompty"), &[]);
    let text = out["output"].as_str().expect("the output is text");
    assert!(!text.trim().is_empty(), "{out}");
    assert_eq!(out.as_object().unwrap().len(), 1, "{out}");
    // The folder holding it is the same flow.
    let details: Json = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(".promptflow/flow.detail.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        details["flow_runs"][0]["inputs"]["question"],
        "What is the capital of France?"
    );
    let out = tested(home.path(), dir.path(), &["--inputs", "question=Say hi."]);
    assert!(!out["output"].as_str().unwrap().trim().is_empty(), "{out}");
}

#[test]
fn a_folder_with_one_prompty_validates_and_one_with_two_is_ambiguous() {
    let (home, dir) = crate::common::home_and_flow();
    let server = FakeServer::replying(ok_body("ok"));
    write_files(
        dir.path(),
        &[(
            "ask.prompty",
            &openai_prompty(
                &server.base,
                "    max_tokens: 5\n",
                "inputs:\n  question:\n    type: string\n",
            ),
        )],
    );
    sluice(home.path())
        .args(["flow", "validate", "--flow"])
        .arg(dir.path())
        .assert()
        .success()
        .stderr(predicate::str::contains("flow `Ask` is valid: 1 nodes"));
    write_files(
        dir.path(),
        &[("other.prompty", "---\nname: b\n---\nuser:\nhi\n")],
    );
    sluice(home.path())
        .args(["flow", "validate", "--flow"])
        .arg(dir.path())
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "several flow files (ask.prompty, other.prompty)",
        ));
    assert!(server.seen().is_empty(), "validating sends nothing");
}

#[test]
fn the_request_carries_the_messages_model_and_parameters_as_promptflow_sends_them() {
    let (home, dir) = crate::common::home_and_flow();
    let server = FakeServer::start(|_| {
        Reply::json(ok_body(
            r#"{"answer": "Paris", "confidence": 0.9, "extra": true}"#,
        ))
    });
    let prompty = ask_prompty(
        dir.path(),
        "ask.prompty",
        &server.base,
        "    max_tokens: 128\n    temperature: 0.7\n    response_format:\n      type: json_object\n",
        "inputs:\n  question:\n    type: string\noutputs:\n  answer:\n    type: string\n  confidence:\n    type: double\n",
    );
    let out = tested(
        home.path(),
        &prompty,
        &["--inputs", "question=Capital of France?"],
    );
    // The JSON reply is parsed and restricted to the declared outputs, one flow output each.
    assert_eq!(out, json!({"answer": "Paris", "confidence": 0.9}));

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.request_line(), "POST /v1/chat/completions HTTP/1.1");
    assert_eq!(
        req.header("authorization").as_deref(),
        Some("Bearer sk-test-123")
    );
    let body = req.json();
    assert_eq!(
        body,
        json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Capital of France?"},
            ],
            "max_tokens": 128,
            "temperature": 0.7,
            "response_format": {"type": "json_object"},
        }),
        "only the prompt, the model and the parameters as written: {}",
        req.body
    );
    assert!(req.body.contains("\"temperature\":0.7"), "{}", req.body);
}

#[test]
fn a_json_reply_without_a_declared_output_fails_the_line() {
    let (home, dir) = crate::common::home_and_flow();
    let server = FakeServer::replying(ok_body(r#"{"other": 1}"#));
    let prompty = ask_prompty(
        dir.path(),
        "ask.prompty",
        &server.base,
        "    response_format: {type: json_object}\n",
        "sample:\n  question: q\noutputs:\n  answer: {type: string}\n",
    );
    let out = flow_test_with(home.path(), &prompty, &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Cannot find answer in response [\"other\"]"),
        "{stderr}"
    );
}

#[test]
fn a_named_azure_connection_env_and_file_references_are_resolved() {
    let (home, dir) = crate::common::home_and_flow();
    let server = FakeServer::start(|seen| Reply::json(ok_body(&seen.last_message())));
    add_connection(
        home.path(),
        "my_aoai",
        &format!(
            "name: my_aoai\ntype: azure_open_ai\napi_base: {}\napi_key: aoai-key-1\napi_version: 2024-02-01\n",
            server.base.trim_end_matches("/v1")
        ),
    );
    write_files(
        dir.path(),
        &[
            ("sample.json", r#"{"question": "from the sample file"}"#),
            (
                "named.prompty",
                "---\nname: Named\nmodel:\n  api: chat\n  configuration:\n    type: azure_openai\n    connection: my_aoai\n    azure_deployment: gpt-35-turbo\n  parameters:\n    temperature: 0.2\nsample: ${file:sample.json}\n---\nuser:\n{{question}}\n",
            ),
            (
                "env.prompty",
                &format!(
                    "---\nname: Env\nmodel:\n  configuration:\n    type: openai\n    model: ${{env:PROMPTY_TEST_MODEL}}\n    base_url: {}\n    api_key: ${{env:PROMPTY_TEST_KEY}}\n---\nuser:\nhello\n",
                    server.base
                ),
            ),
        ],
    );
    let out = tested(home.path(), &dir.path().join("named.prompty"), &[]);
    assert_eq!(out["output"], "from the sample file");
    let out = sluice(home.path())
        .args(["flow", "test", "--flow"])
        .arg(dir.path().join("env.prompty"))
        .env("PROMPTY_TEST_KEY", "sk-from-env")
        .env("PROMPTY_TEST_MODEL", "gpt-4o")
        .output()
        .unwrap();
    assert_eq!(stdout_json(&out)["output"], "hello");

    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].request_line(),
        "POST /openai/deployments/gpt-35-turbo/chat/completions?api-version=2024-02-01 HTTP/1.1"
    );
    assert_eq!(seen[0].header("api-key").as_deref(), Some("aoai-key-1"));
    assert_eq!(
        seen[0].json(),
        json!({"model": "gpt-35-turbo", "temperature": 0.2,
               "messages": [{"role": "user", "content": "from the sample file"}]})
    );
    assert_eq!(
        seen[1].header("authorization").as_deref(),
        Some("Bearer sk-from-env")
    );
    assert_eq!(seen[1].json()["model"], "gpt-4o");

    // An unset variable is reported when the flow loads, and nothing is sent.
    let out = sluice(home.path())
        .args(["flow", "test", "--flow"])
        .arg(dir.path().join("env.prompty"))
        .env_remove("PROMPTY_TEST_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PROMPTY_TEST_KEY"), "{stderr}");
    assert_eq!(server.seen().len(), 2);
}

#[test]
fn bad_front_matter_is_reported_at_its_file_line_and_column() {
    let (home, dir) = crate::common::home_and_flow();
    let cases = [
        // A value the loader refuses: `model.api` on line 4, column 8.
        (
            "api.prompty",
            "---\nname: x\nmodel:\n  api: chatty\n---\nuser:\nhi\n",
            "api.prompty:4:8",
            "`model.api` is 'chatty'",
        ),
        // A YAML syntax error inside the front matter.
        (
            "yaml.prompty",
            "---\nname: x\ninputs:\n  q: {type: string\n---\nuser:\n{{q}}\n",
            "yaml.prompty:5:",
            "invalid YAML",
        ),
        // A template error is placed in the file, below the front matter.
        (
            "tmpl.prompty",
            "---\nname: x\n---\nsystem:\nok\nuser:\n{{ q }\n",
            "tmpl.prompty:7",
            "template",
        ),
        // Connection and explicit keys together.
        (
            "both.prompty",
            "---\nmodel:\n  configuration:\n    type: openai\n    connection: c\n    api_key: k\n---\nuser:\nhi\n",
            "both.prompty:5:17",
            "both `connection` and `api_key`",
        ),
        // No front matter at all.
        (
            "none.prompty",
            "user:\nhi\n",
            "none.prompty:1:1",
            "front matter",
        ),
    ];
    for (name, text, at, what) in cases {
        std::fs::write(dir.path().join(name), text).unwrap();
        for verb in ["validate", "test"] {
            let out = sluice(home.path())
                .args(["flow", verb, "--flow"])
                .arg(dir.path().join(name))
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{name} {verb}: {stderr}");
            assert!(stderr.contains(at), "{name}: want {at} in {stderr}");
            assert!(stderr.contains(what), "{name}: want {what} in {stderr}");
            assert!(out.stdout.is_empty() || verb == "validate", "{name}");
        }
    }
}

#[test]
fn run_create_on_a_prompty_writes_each_lines_output_and_an_eval_run_reads_them() {
    let (home, dir) = crate::common::home_and_flow();
    let server =
        FakeServer::start(|seen| Reply::json(ok_body(&format!("echo: {}", seen.last_message()))));
    write_files(
        dir.path(),
        &[
            (
                "ask.prompty",
                &openai_prompty(
                    &server.base,
                    "    max_tokens: 5\n",
                    "inputs:\n  question:\n    type: string\n",
                ),
            ),
            (
                "grade.prompty",
                &format!(
                    "---\nname: Grade\nmodel:\n  configuration:\n    type: openai\n    model: judge\n    base_url: {}\n    api_key: k\ninputs:\n  answer: {{type: string}}\n  question: {{type: string}}\n---\nuser:\nQ={{{{question}}}} A={{{{answer}}}}\n",
                    server.base
                ),
            ),
            (
                "data.jsonl",
                "{\"question\": \"one\"}\n{\"question\": \"two\"}\n{\"question\": \"three\"}\n",
            ),
        ],
    );
    let run = |args: &[&str]| {
        succeeded(
            sluice(home.path())
                .current_dir(dir.path())
                .args(["run", "create"])
                .args(args),
        )
    };
    run(&[
        "--flow",
        "ask.prompty",
        "--data",
        "data.jsonl",
        "--name",
        "asked",
    ]);
    let outputs = read_jsonl(&home.path().join("runs/asked/outputs.jsonl"));
    let mut texts: Vec<(u64, String)> = outputs
        .iter()
        .map(|o| {
            (
                o["line_number"].as_u64().unwrap(),
                o["output"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    texts.sort();
    assert_eq!(
        texts,
        vec![
            (0, "echo: one".to_owned()),
            (1, "echo: two".to_owned()),
            (2, "echo: three".to_owned())
        ]
    );
    run(&[
        "--flow",
        "grade.prompty",
        "--data",
        "data.jsonl",
        "--run",
        "asked",
        "--column-mapping",
        "answer=${run.outputs.output}",
        "question=${data.question}",
        "--name",
        "graded",
    ]);
    let graded = read_jsonl(&home.path().join("runs/graded/outputs.jsonl"));
    assert_eq!(graded.len(), 3);
    assert!(
        graded
            .iter()
            .any(|o| o["output"] == "echo: Q=two A=echo: two"),
        "{graded:?}"
    );
    let judged: Vec<Json> = server
        .seen()
        .iter()
        .map(Seen::json)
        .filter(|b| b["model"] == "judge")
        .collect();
    assert_eq!(judged.len(), 3);
}

#[test]
fn streaming_tool_calls_and_whole_responses_come_back_as_promptflow_returns_them() {
    let (home, dir) = crate::common::home_and_flow();
    let server = FakeServer::start(|seen| {
        let body = seen.json();
        if body["stream"] == true {
            let chunk = |t: &str| {
                format!(
                    "data: {}\n\n",
                    json!({"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": null}]})
                )
            };
            return Reply::events(format!("{}{}data: [DONE]\n\n", chunk("Hel"), chunk("lo!")));
        }
        if body.get("tools").is_some() {
            return Reply::json(json!({"choices": [{"index": 0, "finish_reason": "tool_calls",
                  "message": {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}}]})
                .to_string());
        }
        Reply::json(ok_body("whole"))
    });
    let stream = ask_prompty(
        dir.path(),
        "stream.prompty",
        &server.base,
        "    max_tokens: 5\n",
        "sample:\n  question: hi\n",
    );
    let out = flow_test_with(home.path(), &stream, &["--stream"]);
    crate::common::assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Hello!"));
    let body = server.seen()[0].json();
    assert_eq!(body["stream"], true);
    assert_eq!(body["max_tokens"], 5);

    let tools = ask_prompty(
        dir.path(),
        "tools.prompty",
        &server.base,
        "    tools:\n    - type: function\n      function:\n        name: get_weather\n        parameters: {type: object, properties: {city: {type: string}}}\n    tool_choice: auto\n",
        "sample:\n  question: weather in Paris?\n",
    );
    let out = tested(home.path(), &tools, &[]);
    let called = &out["output"]["tool_calls"][0]["function"]["name"];
    assert_eq!(called, "get_weather", "{out}");
    let body = server.seen()[1].json();
    assert_eq!(body["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(body["tool_choice"], "auto");

    let all = ask_prompty(
        dir.path(),
        "all.prompty",
        &server.base,
        "    max_tokens: 5\n  response: all\n",
        "sample:\n  question: hi\n",
    );
    let out = tested(home.path(), &all, &[]);
    assert_eq!(
        out["output"]["choices"][0]["message"]["content"], "whole",
        "{out}"
    );
    assert_eq!(out["output"]["usage"]["total_tokens"], 9, "{out}");
}

#[test]
fn the_older_form_and_completion_prompts_are_sent_as_promptflow_sends_them() {
    let (home, dir) = crate::common::home_and_flow();
    let server = FakeServer::start(|seen| {
        let body = seen.json();
        if body.get("prompt").is_some() {
            let reply =
                json!({"choices": [{"index": 0, "text": " completed", "finish_reason": "stop"}]});
            return Reply::json(reply.to_string());
        }
        Reply::json(ok_body(&seen.last_message()))
    });
    add_connection(
        home.path(),
        "oai",
        &format!(
            "name: oai\ntype: open_ai\napi_key: sk-old\napi_base: {}\n",
            server.base
        ),
    );
    write_files(
        dir.path(),
        &[
            (
                "sample.json",
                r#"{"question": "Why?", "chat_history": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}"#,
            ),
            // `model.connection` and `parameters.deployment_name`, a bare `sample: file.json`,
            // and a chat history rendered into messages.
            (
                "chat.prompty",
                "---\nname: Chat\nmodel:\n    api: chat\n    connection: oai\n    parameters:\n        deployment_name: gpt-4\n        max_tokens: 256\ninputs:\n    question:\n        type: string\n    chat_history:\n        type: list\n        default: []\nsample: sample.json\n---\nsystem:\nBe brief.\n\n{% for item in chat_history %}\n{{item.role}}:\n{{item.content}}\n{% endfor %}\n\nuser:\n{{question}}",
            ),
            (
                "complete.prompty",
                &format!(
                    "---\nmodel:\n  api: completion\n  configuration:\n    type: openai\n    model: davinci\n    base_url: {}\n    api_key: k\n  parameters:\n    max_tokens: 3\ninputs:\n  word: {{type: string, default: Once}}\n---\n{{{{word}}}} upon a time\n",
                    server.base
                ),
            ),
        ],
    );
    for (prompty, answer) in [("chat.prompty", "Why?"), ("complete.prompty", " completed")] {
        let out = tested(home.path(), &dir.path().join(prompty), &[]);
        assert_eq!(out["output"], answer);
    }

    let seen = server.seen();
    assert_eq!(
        seen[0].json(),
        json!({"model": "gpt-4", "max_tokens": 256, "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Why?"},
        ]}),
        "{}",
        seen[0].body
    );
    assert_eq!(seen[1].request_line(), "POST /v1/completions HTTP/1.1");
    assert_eq!(
        seen[1].json(),
        json!({"model": "davinci", "max_tokens": 3, "prompt": "Once upon a time\n"})
    );
}

#[test]
fn a_python_tool_runs_a_prompty_with_prompty_load() {
    let (home, dir) = crate::common::home_and_flow();
    let server = FakeServer::start(|seen| {
        Reply::json(ok_body(&format!("answer to {}", seen.last_message())))
    });
    write_files(
        dir.path(),
        &[
            (
                "ask.prompty",
                &openai_prompty(
                    &server.base,
                    "    max_tokens: 5\n    temperature: 0.7\n",
                    "inputs:\n  question:\n    type: string\n",
                ),
            ),
            (
                "flow.dag.yaml",
                "inputs:\n  q: {type: string}\noutputs:\n  a: {reference: '${ask.output}'}\nnodes:\n- name: ask\n  type: python\n  source: {type: code, path: ask.py}\n  inputs: {q: '${inputs.q}'}\n",
            ),
            (
                "ask.py",
                "from promptflow.core import tool, Prompty\n\n\n@tool\ndef ask(q: str) -> str:\n    p = Prompty.load(\"ask.prompty\", model={\"parameters\": {\"max_tokens\": 7}})\n    return p(question=q).upper()\n",
            ),
        ],
    );
    let out = tested(home.path(), dir.path(), &["--inputs", "q=why"]);
    assert_eq!(out["a"], "ANSWER TO WHY");
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let body = seen[0].json();
    assert_eq!(body["max_tokens"], 7, "the override wins");
    assert_eq!(body["temperature"], 0.7, "the rest is kept");
}

#[test]
fn without_inputs_the_sample_gives_the_inputs_and_their_types() {
    let (home, dir) = crate::common::home_and_flow();
    let server = FakeServer::start(|seen| Reply::json(ok_body(&seen.last_message())));
    let prompty = dir.path().join("count.prompty");
    std::fs::write(
        &prompty,
        format!(
            "---\nmodel:\n  configuration:\n    type: openai\n    model: m\n    base_url: {}\n    api_key: k\nsample:\n  word: apple\n  times: 3\n---\nuser:\n{{{{word}}}} x{{{{times + 1}}}}\n",
            server.base
        ),
    )
    .unwrap();
    sluice(home.path())
        .args(["flow", "validate", "--flow"])
        .arg(&prompty)
        .assert()
        .success()
        .stderr(predicate::str::contains("2 inputs"));
    let out = tested(home.path(), &prompty, &[]);
    assert_eq!(out["output"], "apple x4");
    // Given inputs replace the sample, and `times` is read as an int.
    let out = tested(home.path(), &prompty, &["--inputs", "word=pear", "times=1"]);
    assert_eq!(out["output"], "pear x2");
}

#[test]
fn file_references_among_the_parameters_are_read_and_sent() {
    let (home, dir) = crate::common::home_and_flow();
    let server = FakeServer::replying(ok_body("done"));
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    write_files(dir.path(), &[("tools.json", &tools.to_string())]);
    let prompty = ask_prompty(
        dir.path(),
        "ask.prompty",
        &server.base,
        "    tools: ${file:tools.json}\n    tool_choice: auto\n",
        "sample:\n  question: Weather in Paris?\n",
    );
    tested(home.path(), &prompty, &[]);
    let body = server.seen()[0].json();
    assert_eq!(body["tools"], tools, "{body}");
    assert_eq!(body["tool_choice"], "auto", "{body}");

    // A file that is not there is a load error naming it.
    let missing = ask_prompty(
        dir.path(),
        "missing.prompty",
        &server.base,
        "    tools: ${file:nope.json}\n",
        "sample:\n  question: q\n",
    );
    let out = flow_test_with(home.path(), &missing, &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot read `nope.json`"), "{stderr}");
}

#[test]
fn n_choices_come_back_as_the_first_or_as_the_whole_reply() {
    // promptflow's `format_llm_response`: `response: first` is the first choice's content (streamed:
    // the first choice's deltas), `response: all` the whole reply with every choice.
    let (home, dir) = crate::common::home_and_flow();
    let server = FakeServer::start(|seen| crate::fake::n_choices(seen, "answer"));
    let first = ask_prompty(dir.path(), "first.prompty", &server.base, "    n: 3\n", "");
    let out = tested(home.path(), &first, &["--inputs", "question=hi"]);
    assert_eq!(out, json!({"output": "answer 0"}));
    assert_eq!(server.seen()[0].json()["n"], 3);

    let out = flow_test_with(
        home.path(),
        &first,
        &["--stream", "--inputs", "question=hi"],
    );
    crate::common::assert_ok(&out);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("answer 0"), "{printed}");
    assert!(
        !printed.contains('1') && !printed.contains('2'),
        "{printed}"
    );
    assert_eq!(server.seen()[1].json()["stream"], true);

    let all = ask_prompty(
        dir.path(),
        "all.prompty",
        &server.base,
        "    n: 2\n  response: all\n",
        "",
    );
    let out = tested(home.path(), &all, &["--inputs", "question=hi"]);
    let contents: Vec<&Json> = out["output"]["choices"]
        .as_array()
        .unwrap_or_else(|| panic!("{out}"))
        .iter()
        .map(|c| &c["message"]["content"])
        .collect();
    assert_eq!(contents, [&json!("answer 0"), &json!("answer 1")], "{out}");
    assert_eq!(out["output"]["usage"]["total_tokens"], 11, "{out}");

    let completion = dir.path().join("completion.prompty");
    std::fs::write(
        &completion,
        openai_prompty(&server.base, "    n: 2\n  response: all\n", "")
            .replace("api: chat", "api: completion"),
    )
    .unwrap();
    let out = tested(home.path(), &completion, &["--inputs", "question=hi"]);
    let texts: Vec<&Json> = out["output"]["choices"]
        .as_array()
        .unwrap_or_else(|| panic!("{out}"))
        .iter()
        .map(|c| &c["text"])
        .collect();
    assert_eq!(texts, [&json!("answer 0"), &json!("answer 1")], "{out}");
}

#[test]
fn n_above_one_on_the_local_model_is_refused_when_the_prompty_loads() {
    let (home, dir) = crate::common::home_and_flow();
    write_files(
        dir.path(),
        &[(
            "local.prompty",
            "---\nname: Local\nmodel:\n  api: chat\n  parameters:\n    n: 2\n---\nuser:\nhi\n",
        )],
    );
    let out = sluice(home.path())
        .args(["flow", "validate", "--flow"])
        .arg(dir.path().join("local.prompty"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for needle in [
        "local.prompty:6:",
        "`model.parameters` has `n: 2`, but the local model answers one choice per call",
        "give `model.configuration` an OpenAI-compatible endpoint",
    ] {
        assert!(stderr.contains(needle), "{needle} in {stderr}");
    }
}
