//! What `llm` and `embedding` nodes send to an OpenAI-compatible server, and what they make of its
//! reply, next to what promptflow sends: a fake server on loopback records each request's first line
//! and body. No model is needed.

use serde_json::{Value as Json, json};

use std::path::Path;

use tempfile::TempDir;

use crate::common::{add_connection, flow_test_with, tested, write_files};
use crate::fake::{FakeServer, ok_body};

/// Stores connections to `rec` in `home`: `oai` (open_ai), `aoai` (azure_open_ai) and `maas`
/// (serverless).
pub(crate) fn connect(home: &Path, rec: &FakeServer) {
    for (name, kind, base, extra) in [
        ("oai", "open_ai", &rec.base, ""),
        (
            "aoai",
            "azure_open_ai",
            &rec.base,
            "api_version: 2024-06-01\n",
        ),
        ("maas", "serverless", &rec.origin, ""),
    ] {
        add_connection(
            home,
            name,
            &format!("name: {name}\ntype: {kind}\napi_key: k\napi_base: {base}\n{extra}"),
        );
    }
}

/// A fake server that answers every request with `reply`, a home whose connections point at it
/// (as `connect` stores them) and a flow folder holding `chat.jinja2` (`template`) and
/// `flow.dag.yaml` (`yaml`).
fn setup(reply: String, template: &str, yaml: &str) -> (FakeServer, TempDir, TempDir) {
    let rec = FakeServer::replying(reply);
    let (home, flow) = crate::common::home_and_flow();
    connect(home.path(), &rec);
    write_files(
        flow.path(),
        &[("chat.jinja2", template), ("flow.dag.yaml", yaml)],
    );
    (rec, home, flow)
}

#[test]
fn a_prompt_input_replaces_the_template_from_source_path() {
    let (rec, home, flow) = setup(
        ok_body("ok"),
        "# user:\nfrom the file: {{q}}\n",
        "inputs:\n  q: {type: string}\n  tpl: {type: string}\noutputs:\n  a: {reference: '${literal.output}'}\n  b: {reference: '${by_ref.output}'}\nnodes:\n- name: literal\n  type: llm\n  api: chat\n  connection: oai\n  source: {type: code, path: chat.jinja2}\n  inputs:\n    model: literal-model\n    prompt: \"# system:\\nInline.\\n# user:\\n{{q}}\\n\"\n    q: ${inputs.q}\n- name: by_ref\n  type: llm\n  api: chat\n  connection: oai\n  source: {type: code, path: chat.jinja2}\n  inputs:\n    model: ref-model\n    prompt: ${inputs.tpl}\n    q: ${inputs.q}\n",
    );
    let out = tested(
        home.path(),
        flow.path(),
        &["--inputs", "q=hello", "tpl=# user:\nref {{q}}"],
    );
    assert_eq!(out, json!({"a": "ok", "b": "ok"}));
    assert_eq!(rec.requests(), 2);
    let messages = |model: &str| rec.request_for(model)["messages"].clone();
    assert_eq!(
        messages("literal-model"),
        json!([{"role": "system", "content": "Inline."}, {"role": "user", "content": "hello"}])
    );
    assert_eq!(
        messages("ref-model"),
        json!([{"role": "user", "content": "ref hello"}])
    );
}

#[test]
fn azure_requests_go_to_deployment_name_when_model_is_also_set() {
    // The same inputs on both nodes, `deployment_name` first: Azure takes it, OpenAI takes `model`.
    let node = |name: &str, conn: &str| {
        format!(
            "- name: {name}\n  type: llm\n  api: chat\n  connection: {conn}\n  source: {{type: code, path: chat.jinja2}}\n  inputs:\n    deployment_name: my-deployment\n    model: gpt-4o\n"
        )
    };
    let (rec, home, flow) = setup(
        ok_body("ok"),
        "# user:\nhi\n",
        &format!(
            "outputs:\n  a: {{reference: '${{azure.output}}'}}\n  o: {{reference: '${{openai.output}}'}}\nnodes:\n{}{}",
            node("azure", "aoai"),
            node("openai", "oai")
        ),
    );
    assert_eq!(
        tested(home.path(), flow.path(), &[]),
        json!({"a": "ok", "o": "ok"})
    );
    let azure = rec.request_to(
        "POST /v1/openai/deployments/my-deployment/chat/completions?api-version=2024-06-01 ",
    );
    assert_eq!(azure["model"], "my-deployment");
    let openai = rec.request_to("POST /v1/chat/completions ");
    assert_eq!(openai["model"], "gpt-4o");
}

#[test]
fn functions_and_tools_are_sent_and_a_call_comes_back_as_the_message() {
    let call = json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]});
    let reply = json!({"choices": [{"index": 0, "message": call, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 5}});
    let (rec, home, flow) = setup(
        reply.to_string(),
        "# user:\nWeather in Paris?\n",
        "outputs:\n  t: {reference: '${tools.output}'}\n  f: {reference: '${functions.output}'}\nnodes:\n- name: tools\n  type: llm\n  api: chat\n  connection: oai\n  source: {type: code, path: chat.jinja2}\n  inputs:\n    model: with-tools\n    tools:\n    - type: function\n      function: {name: get_weather, parameters: {type: object, properties: {city: {type: string}}}}\n    tool_choice: auto\n    functions: '[{\"name\": \"ignored\"}]'\n- name: functions\n  type: llm\n  api: chat\n  connection: oai\n  source: {type: code, path: chat.jinja2}\n  inputs:\n    model: with-functions\n    functions: '[{\"name\": \"get_weather\", \"parameters\": {\"type\": \"object\", \"properties\": {}}}]'\n    function_call: '{\"name\": \"get_weather\"}'\n",
    );
    let out = tested(home.path(), flow.path(), &[]);
    let mut message = call.clone();
    message["function_call"] = Json::Null;
    assert_eq!(out["t"], message, "{out}");
    assert_eq!(out["f"], message, "{out}");
    let body = |model: &str| rec.request_for(model);
    let tools = body("with-tools");
    assert_eq!(tools["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(
        tools["tools"][0]["function"]["parameters"]["properties"]["city"]["type"],
        "string"
    );
    assert_eq!(tools["tool_choice"], "auto");
    assert!(
        tools.get("functions").is_none(),
        "with tools, functions are not sent: {tools}"
    );
    let functions = body("with-functions");
    assert_eq!(
        functions["functions"],
        json!([{"name": "get_weather", "parameters": {"type": "object", "properties": {}}}])
    );
    assert_eq!(functions["function_call"], json!({"name": "get_weather"}));
}

#[test]
fn stream_is_true_only_when_the_flow_streams_and_numbers_keep_their_yaml_values() {
    let (rec, home, flow) = setup(
        ok_body("streamed"),
        "# user:\nhi\n",
        "outputs:\n  a: {reference: '${chat.output}'}\nnodes:\n- name: chat\n  type: llm\n  api: chat\n  connection: oai\n  source: {type: code, path: chat.jinja2}\n  inputs:\n    model: m\n    temperature: 0.7\n    top_p: 0.9\n    presence_penalty: 0.1\n    frequency_penalty: 0\n    max_tokens: 20\n    user: u-42\n    logit_bias: {'50256': -100}\n",
    );
    assert_eq!(
        tested(home.path(), flow.path(), &[]),
        json!({"a": "streamed"})
    );
    let raw = rec.bodies()[0].clone();
    let body: Json = serde_json::from_str(&raw).unwrap();
    // As promptflow's chat tools: one choice, `stream: false` unless the flow streams, and a
    // penalty that was given, even 0.
    assert_eq!(body["stream"], false, "{raw}");
    assert_eq!(body["n"], 1, "{raw}");
    assert_eq!(body["frequency_penalty"], 0.0, "{raw}");
    assert_eq!(body["user"], "u-42");
    assert_eq!(body["logit_bias"], json!({"50256": -100}));
    for sent in [
        "\"temperature\":0.7",
        "\"top_p\":0.9",
        "\"presence_penalty\":0.1",
        "\"max_tokens\":20",
    ] {
        assert!(raw.contains(sent), "{sent} in {raw}");
    }
    let out = flow_test_with(home.path(), flow.path(), &["--stream"]);
    crate::common::assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("streamed"));
    let streamed: Json = serde_json::from_str(&rec.bodies()[1]).unwrap();
    assert_eq!(streamed["stream"], true, "{streamed}");
}

#[test]
fn embeddings_are_requested_as_promptflow_sends_them() {
    // [0.5, 0.75] as little-endian f32s in base64, as asked for.
    let reply = json!({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": "AAAAPwAAQD8="}],
        "usage": {"prompt_tokens": 2, "total_tokens": 2}});
    let node = |name: &str, conn: &str| {
        format!(
            "- name: {name}\n  type: python\n  source: {{type: package, tool: promptflow.tools.embedding.embedding}}\n  inputs:\n    connection: {conn}\n    deployment_name: emb-deployment\n    model: text-embedding-3-small\n    input: ${{inputs.text}}\n"
        )
    };
    let (rec, home, flow) = setup(
        reply.to_string(),
        "",
        &format!(
            "inputs:\n  text: {{type: string}}\noutputs:\n  a: {{reference: '${{azure.output}}'}}\n  o: {{reference: '${{openai.output}}'}}\nnodes:\n{}{}",
            node("azure", "aoai"),
            node("openai", "oai")
        ),
    );
    let out = tested(home.path(), flow.path(), &["--inputs", "text=hello"]);
    assert_eq!(out, json!({"a": [0.5, 0.75], "o": [0.5, 0.75]}));
    let azure =
        rec.request_to("POST /v1/openai/deployments/emb-deployment/embeddings?api-version=");
    assert_eq!(
        azure,
        json!({"input": "hello", "model": "emb-deployment", "encoding_format": "base64"})
    );
    let openai = rec.request_to("POST /v1/embeddings ");
    assert_eq!(
        openai,
        json!({"input": "hello", "model": "text-embedding-3-small", "encoding_format": "base64"})
    );
}

#[test]
fn a_serverless_connection_is_called_as_openai_under_v1() {
    let (rec, home, flow) = setup(
        ok_body("ok"),
        "# user:\nhi\n",
        "outputs:\n  a: {reference: '${chat.output}'}\nnodes:\n- name: chat\n  type: llm\n  api: chat\n  connection: maas\n  source: {type: code, path: chat.jinja2}\n  inputs:\n    model: llama\n",
    );
    assert_eq!(tested(home.path(), flow.path(), &[]), json!({"a": "ok"}));
    assert_eq!(
        rec.request_to("POST /v1/chat/completions ")["model"],
        "llama"
    );
}

#[test]
fn promptflow_s_llm_tool_sends_what_an_llm_node_sends() {
    // The same call twice: through promptflow's LLM tool (a `custom_llm` node whose `connection`
    // and `api` are inputs) and as an `llm` node; chat on OpenAI, completion on Azure.
    let tool = |name: &str, conn: &str, api: &str, model: &str| {
        format!(
            "- name: {name}\n  type: custom_llm\n  source: {{type: package_with_prompt, tool: promptflow.tools.llm.llm, path: chat.jinja2}}\n  inputs:\n    connection: {conn}\n    api: {api}\n    {model}\n    temperature: 0.2\n    max_tokens: 7\n    q: ${{inputs.q}}\n"
        )
    };
    let node = |name: &str, conn: &str, api: &str, model: &str| {
        format!(
            "- name: {name}\n  type: llm\n  api: {api}\n  connection: {conn}\n  source: {{type: code, path: chat.jinja2}}\n  inputs:\n    {model}\n    temperature: 0.2\n    max_tokens: 7\n    q: ${{inputs.q}}\n"
        )
    };
    let (rec, home, flow) = setup(
        ok_body("ok"),
        "# user:\nsay {{q}}\n",
        &format!(
            "inputs:\n  q: {{type: string}}\noutputs:\n  t: {{reference: '${{t.output}}'}}\n  n: {{reference: '${{n.output}}'}}\n  tc: {{reference: '${{tc.output}}'}}\n  nc: {{reference: '${{nc.output}}'}}\nnodes:\n{}{}{}{}",
            tool("t", "oai", "chat", "model: via-tool"),
            node("n", "oai", "chat", "model: via-node"),
            tool("tc", "aoai", "completion", "deployment_name: tool-dep"),
            node("nc", "aoai", "completion", "deployment_name: node-dep"),
        ),
    );
    let out = tested(home.path(), flow.path(), &["--inputs", "q=hi"]);
    assert_eq!(out["t"], "ok");
    assert_eq!(out["n"], "ok");
    assert_eq!(rec.requests(), 4);
    let without_model = |mut body: Json| {
        body.as_object_mut().unwrap().remove("model");
        body
    };
    let chat_tool = rec.request_for("via-tool");
    assert_eq!(
        chat_tool["messages"],
        json!([{"role": "user", "content": "say hi"}])
    );
    assert_eq!(
        without_model(chat_tool),
        without_model(rec.request_for("via-node"))
    );
    let completion = |dep: &str| {
        rec.request_to(&format!(
            "POST /v1/openai/deployments/{dep}/completions?api-version=2024-06-01 "
        ))
    };
    let tool_completion = completion("tool-dep");
    assert!(
        tool_completion["prompt"]
            .as_str()
            .is_some_and(|p| p.contains("say hi")),
        "{tool_completion}"
    );
    assert_eq!(
        without_model(tool_completion),
        without_model(completion("node-dep"))
    );
}

#[test]
fn promptflow_tools_chat_and_completion_from_python_send_what_an_llm_node_sends() {
    // promptflow-tools' functions called from a Python tool with the connection objects it is
    // given: `promptflow.tools.openai.chat` and `promptflow.tools.aoai.completion` (and the
    // `AzureOpenAI` class), each next to the `llm` node with the same inputs.
    let (rec, home, flow) = setup(
        ok_body("7"),
        "# user:\nrate {{answer}}\n",
        "inputs:\n  answer: {type: string}\noutputs:\n  tool: {reference: '${tool.output}'}\n  n: {reference: '${n.output}'}\n  nc: {reference: '${nc.output}'}\nnodes:\n- name: tool\n  type: python\n  source: {type: code, path: grade.py}\n  inputs:\n    oai: oai\n    aoai: aoai\n    answer: ${inputs.answer}\n- name: n\n  type: llm\n  api: chat\n  connection: oai\n  source: {type: code, path: chat.jinja2}\n  inputs:\n    model: via-node\n    temperature: 0.2\n    max_tokens: 7\n    answer: ${inputs.answer}\n- name: nc\n  type: llm\n  api: completion\n  connection: aoai\n  source: {type: code, path: chat.jinja2}\n  inputs:\n    deployment_name: node-dep\n    temperature: 0.2\n    max_tokens: 7\n    answer: ${inputs.answer}\n",
    );
    write_files(
        flow.path(),
        &[(
            "grade.py",
            r##"from promptflow.core import tool
from promptflow.connections import AzureOpenAIConnection, OpenAIConnection
from promptflow.tools.aoai import AzureOpenAI, completion as aoai_completion
from promptflow.tools.openai import chat as openai_chat

PROMPT = "# user:\nrate {{answer}}\n"


@tool
def grade(oai: OpenAIConnection, aoai: AzureOpenAIConnection, answer: str) -> dict:
    chat = openai_chat(connection=oai, prompt=PROMPT, model="via-tool", temperature=0.2, max_tokens=7, answer=answer)
    done = aoai_completion(connection=aoai, prompt=PROMPT, deployment_name="tool-dep", temperature=0.2,
                           max_tokens=7, answer=answer)
    # The same connection asked again through the class: one more request.
    again = AzureOpenAI(aoai).chat(prompt=PROMPT, deployment_name="class-dep", answer=answer)
    # Streamed, the answer comes as an iterator of text.
    chunks = openai_chat(connection=oai, prompt=PROMPT, model="via-stream", stream=True, answer=answer)
    assert not isinstance(chunks, str), type(chunks)
    return {"chat": int(chat), "completion": done, "again": again, "streamed": "".join(chunks)}
"##,
        )],
    );
    let out = tested(home.path(), flow.path(), &["--inputs", "answer=fine"]);
    assert_eq!(
        out["tool"],
        json!({"chat": 7, "completion": "7", "again": "7", "streamed": "7"})
    );
    assert_eq!(rec.requests(), 6);
    let streamed = rec.request_for("via-stream");
    assert_eq!(streamed["stream"], json!(true), "{streamed}");
    assert_eq!(
        streamed["messages"],
        json!([{"role": "user", "content": "rate fine"}])
    );
    let without_model = |mut body: Json| {
        body.as_object_mut().unwrap().remove("model");
        body
    };
    let chat_tool = rec.request_for("via-tool");
    assert_eq!(
        chat_tool["messages"],
        json!([{"role": "user", "content": "rate fine"}])
    );
    assert_eq!(
        without_model(chat_tool),
        without_model(rec.request_for("via-node"))
    );
    let to = |dep: &str, api: &str| {
        rec.request_to(&format!(
            "POST /v1/openai/deployments/{dep}/{api}?api-version=2024-06-01 "
        ))
    };
    assert_eq!(
        without_model(to("tool-dep", "completions")),
        without_model(to("node-dep", "completions"))
    );
    // promptflow-tools' defaults for a chat call given no parameters.
    let class = to("class-dep", "chat/completions");
    assert_eq!(class["temperature"].as_f64(), Some(1.0));
    assert_eq!(class["top_p"].as_f64(), Some(1.0));
    assert_eq!(class["n"], json!(1));
    assert_eq!(class["stream"], json!(false));
    assert!(class.get("presence_penalty").is_none(), "{class}");
    // The connection's key reached the server with each call.
    let seen = rec.seen();
    let class_call = seen
        .iter()
        .find(|s| s.request_line().contains("class-dep"))
        .unwrap();
    assert_eq!(class_call.header("api-key").as_deref(), Some("k"));
}

#[test]
fn completion_requests_carry_every_field_promptflow_s_completion_tools_send() {
    // The expected bodies are what promptflow-tools builds (`OpenAI.completion` in
    // promptflow/tools/openai.py, `AzureOpenAI.completion` in promptflow/tools/aoai.py) and the
    // `openai` client writes: a `None` it is passed goes out as `null`. Both send `suffix` (an empty
    // one as null), `max_tokens` (16 unless given), `temperature`, `top_p`, `n`, `stream`, `logprobs`
    // (0 as null), `echo`, `stop` (an empty list as null), `best_of`, `logit_bias` ({}) and `user`
    // (""); the OpenAI tool sends both penalties (null when not given), the Azure tool only those
    // given, and names itself in a header. promptflow's LLM tool passes `max_tokens=None` on.
    let (rec, home, flow) = setup(
        ok_body("ok"),
        "say {{q}}",
        r#"inputs:
  q: {type: string}
outputs:
  a: {reference: '${oai_default.output}'}
  b: {reference: '${oai_all.output}'}
  c: {reference: '${aoai_default.output}'}
  d: {reference: '${aoai_given.output}'}
  e: {reference: '${via_tool.output}'}
nodes:
- name: oai_default
  type: llm
  api: completion
  connection: oai
  source: {type: code, path: chat.jinja2}
  inputs: {model: m-default, q: '${inputs.q}'}
- name: oai_all
  type: llm
  api: completion
  connection: oai
  source: {type: code, path: chat.jinja2}
  inputs:
    model: m-all
    q: ${inputs.q}
    suffix: ' end'
    max_tokens: 20
    temperature: 0.5
    top_p: 0.9
    logprobs: 2
    echo: true
    stop: ["\n"]
    presence_penalty: 0.1
    frequency_penalty: 0
    best_of: 2
    logit_bias: {'50256': -100}
    user: u-1
- name: aoai_default
  type: llm
  api: completion
  connection: aoai
  source: {type: code, path: chat.jinja2}
  inputs: {deployment_name: dep, q: '${inputs.q}'}
- name: aoai_given
  type: llm
  api: completion
  connection: aoai
  source: {type: code, path: chat.jinja2}
  inputs: {deployment_name: dep2, q: '${inputs.q}', frequency_penalty: 0, suffix: '', logprobs: 0, stop: []}
- name: via_tool
  type: custom_llm
  source: {type: package_with_prompt, tool: promptflow.tools.llm.llm, path: chat.jinja2}
  inputs: {connection: aoai, api: completion, deployment_name: tool-dep, q: '${inputs.q}'}
"#,
    );
    let out = tested(home.path(), flow.path(), &["--inputs", "q=hi"]);
    assert_eq!(
        out,
        json!({"a": "ok", "b": "ok", "c": "ok", "d": "ok", "e": "ok"})
    );
    let defaults = json!({"prompt": "say hi", "suffix": null, "max_tokens": 16, "temperature": 1.0,
        "top_p": 1.0, "n": 1, "stream": false, "logprobs": null, "echo": false, "stop": null,
        "best_of": 1, "logit_bias": {}, "user": ""});
    let with = |extra: Json| {
        let mut body = defaults.clone();
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let openai = |model: &str| {
        let seen = rec.seen();
        let s = seen
            .iter()
            .find(|s| s.json()["model"] == model)
            .unwrap_or_else(|| panic!("{model}: {seen:?}"))
            .clone();
        assert_eq!(s.request_line(), "POST /v1/completions HTTP/1.1");
        assert_eq!(s.header("ms-azure-ai-promptflow-called-from"), None);
        s.json()
    };
    assert_eq!(
        openai("m-default"),
        with(json!({"model": "m-default", "presence_penalty": null, "frequency_penalty": null}))
    );
    assert_eq!(
        openai("m-all"),
        with(
            json!({"model": "m-all", "suffix": " end", "max_tokens": 20, "temperature": 0.5,
            "top_p": 0.9, "logprobs": 2, "echo": true, "stop": ["\n"], "presence_penalty": 0.1,
            "frequency_penalty": 0.0, "best_of": 2, "logit_bias": {"50256": -100}, "user": "u-1"})
        )
    );
    let azure = |dep: &str| {
        let line = format!(
            "POST /v1/openai/deployments/{dep}/completions?api-version=2024-06-01 HTTP/1.1"
        );
        let seen = rec.seen();
        let s = seen
            .iter()
            .find(|s| s.request_line() == line)
            .unwrap_or_else(|| panic!("{line}: {seen:?}"))
            .clone();
        assert_eq!(
            s.header("ms-azure-ai-promptflow-called-from").as_deref(),
            Some("aoai-tool")
        );
        s.json()
    };
    assert_eq!(azure("dep"), with(json!({"model": "dep"})));
    assert_eq!(
        azure("dep2"),
        with(json!({"model": "dep2", "frequency_penalty": 0.0}))
    );
    assert_eq!(
        azure("tool-dep"),
        with(json!({"model": "tool-dep", "max_tokens": null}))
    );
}
