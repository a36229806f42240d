//! Images (§7.4): `type: image` flow inputs in every form promptflow takes, promptflow's `Image` in
//! Python tools, output images written to files, chat prompts with `![image]({{var}})` sent as
//! OpenAI's image parts, and promptflow's GPT-4V tools (`custom_llm` nodes) on Sluice's HTTP backend.
//! Requests go to a fake server on loopback that records them; bodies are compared whole.

use std::path::Path;

use base64::Engine as _;
use serde_json::{Value as Json, json};

use crate::common::{
    flow_test_with, home_and_flow, read_jsonl, stdout_json, succeeded, write_files,
};
use crate::fake::{FakeServer, ok_body};

/// A 1x1 PNG.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAcCBlCwAAAABJRU5ErkJggg==";

/// Its SHA-1, which names it in outputs.
const PNG_SHA1: &str = "54586ec5f67869cef777a040345dbe8702a88977";

fn png_bytes() -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(PNG)
        .unwrap()
}

/// The chat prompt of promptflow's chat-with-image example, reduced to one turn.
const CHAT: &str =
    "# system:\nYou are a helpful assistant.\n\n# user:\n{{question}}\n![image]({{image}})\n";

/// A flow calling both GPT-4V tools (Azure OpenAI with every parameter set, OpenAI with the tool's
/// defaults) and an `llm` chat node with the same prompt.
const GPT4V_FLOW: &str = "inputs:
  question: {type: string}
  image: {type: image}
outputs:
  azure: {reference: '${azure.output}'}
  openai: {reference: '${openai.output}'}
  plain: {reference: '${plain.output}'}
nodes:
- name: azure
  type: custom_llm
  source: {type: package_with_prompt, tool: promptflow.tools.aoai_gpt4v.AzureOpenAI.chat, path: chat.jinja2}
  inputs:
    connection: aoai
    deployment_name: gpt-4v
    temperature: 0.2
    top_p: 0.5
    max_tokens: 512
    stop: [END]
    presence_penalty: 0.5
    seed: 7
    detail: low
    question: ${inputs.question}
    image: ${inputs.image}
- name: openai
  type: custom_llm
  source: {type: package_with_prompt, tool: promptflow.tools.openai_gpt4v.OpenAI.chat, path: chat.jinja2}
  inputs:
    connection: oai
    question: ${inputs.question}
    image: ${inputs.image}
- name: plain
  type: llm
  api: chat
  connection: oai
  source: {type: code, path: chat.jinja2}
  inputs:
    model: gpt-4o
    question: ${inputs.question}
    image: ${inputs.image}
";

fn gpt4v_setup() -> (FakeServer, tempfile::TempDir, tempfile::TempDir) {
    let rec = FakeServer::replying(ok_body("a red dot"));
    let (home, flow) = home_and_flow();
    crate::llm_requests::connect(home.path(), &rec);
    write_files(
        flow.path(),
        &[("chat.jinja2", CHAT), ("flow.dag.yaml", GPT4V_FLOW)],
    );
    std::fs::write(flow.path().join("dot.png"), png_bytes()).unwrap();
    (rec, home, flow)
}

/// The messages promptflow builds for `CHAT`: the image line becomes an image part.
fn messages(url: &str, detail: &str) -> Json {
    json!([
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": url, "detail": detail}},
        ]},
    ])
}

#[test]
fn gpt4v_tools_send_image_parts_and_their_parameters_as_promptflow_does() {
    let (rec, home, flow) = gpt4v_setup();
    let out = stdout_json(&flow_test_with(
        home.path(),
        flow.path(),
        &[
            "--inputs",
            "question=What is in this picture?",
            "image=dot.png",
        ],
    ));
    assert_eq!(
        out,
        json!({"azure": "a red dot", "openai": "a red dot", "plain": "a red dot"})
    );
    let data_url = format!("data:image/png;base64,{PNG}");
    // The bodies below are what promptflow 1.18.5 (promptflow-tools 1.6.1) sent for this flow to a
    // recording server. Its tools never pass `detail` on to the image parts: they ask for `auto`.
    assert_eq!(
        rec.request_to(
            "POST /v1/openai/deployments/gpt-4v/chat/completions?api-version=2024-06-01 "
        ),
        json!({
            "messages": messages(&data_url, "auto"),
            "model": "gpt-4v",
            "temperature": 0.2,
            "top_p": 0.5,
            "n": 1,
            "stream": false,
            "presence_penalty": 0.5,
            "frequency_penalty": 0,
            "stop": ["END"],
            "max_tokens": 512,
            "seed": 7,
        })
    );
    let azure = rec
        .seen()
        .into_iter()
        .find(|s| s.request_line().contains("/deployments/gpt-4v/"))
        .unwrap();
    assert_eq!(
        azure
            .header("ms-azure-ai-promptflow-called-from")
            .as_deref(),
        Some("aoai-gpt4v-tool")
    );
    // The OpenAI tool's defaults: its model, detail `auto`, penalties as the integer 0.
    assert_eq!(
        rec.request_for("gpt-4-vision-preview"),
        json!({
            "messages": messages(&data_url, "auto"),
            "model": "gpt-4-vision-preview",
            "temperature": 1.0,
            "top_p": 1.0,
            "n": 1,
            "stream": false,
            "presence_penalty": 0,
            "frequency_penalty": 0,
        })
    );
    // An `llm` chat node shows the image the same way. (promptflow's own `llm` tool sends the
    // markdown with the placeholder as text, `![image](Image(54586ec5))`, so the model never sees
    // the image; Sluice sends the image.)
    assert_eq!(
        rec.request_for("gpt-4o")["messages"],
        messages(&data_url, "auto")
    );
}

#[test]
fn an_image_from_a_url_is_sent_as_its_url() {
    let (rec, home, flow) = gpt4v_setup();
    let out = stdout_json(&flow_test_with(
        home.path(),
        flow.path(),
        &[
            "--inputs",
            "question=What is in this picture?",
            r#"image={"data:image/jpeg;url": "https://example.com/cat.jpg"}"#,
        ],
    ));
    assert_eq!(out["openai"], "a red dot", "{out}");
    assert_eq!(
        rec.request_for("gpt-4-vision-preview")["messages"],
        messages("https://example.com/cat.jpg", "auto")
    );
}

#[test]
fn a_gpt4v_tool_without_a_connection_is_refused_when_the_flow_loads() {
    let (home, flow) = home_and_flow();
    write_files(
        flow.path(),
        &[
            ("chat.jinja2", CHAT),
            (
                "flow.dag.yaml",
                "inputs:\n  question: {type: string}\n  image: {type: image}\noutputs:\n  a: {reference: '${look.output}'}\nnodes:\n- name: look\n  type: custom_llm\n  source: {type: package_with_prompt, tool: promptflow.tools.openai_gpt4v.OpenAI.chat, path: chat.jinja2}\n  inputs:\n    question: ${inputs.question}\n    image: ${inputs.image}\n",
            ),
        ],
    );
    crate::common::refused(
        home.path(),
        flow.path(),
        &[
            "node `look` calls promptflow.tools.openai_gpt4v.OpenAI.chat, but has no connection",
            "cannot see images",
        ],
    );
}

#[test]
fn an_image_sent_to_the_local_model_fails_the_line_and_is_never_dropped() {
    crate::common::installed("default", sluice_nodes::llm::store::ModelUse::Chat);
    let (home, flow) = home_and_flow();
    write_files(
        flow.path(),
        &[
            ("chat.jinja2", CHAT),
            (
                "flow.dag.yaml",
                "inputs:\n  question: {type: string}\n  image: {type: image}\noutputs:\n  a: {reference: '${look.output}'}\nnodes:\n- name: look\n  type: llm\n  api: chat\n  source: {type: code, path: chat.jinja2}\n  inputs:\n    question: ${inputs.question}\n    image: ${inputs.image}\n",
            ),
        ],
    );
    std::fs::write(flow.path().join("dot.png"), png_bytes()).unwrap();
    let out = flow_test_with(
        home.path(),
        flow.path(),
        &["--inputs", "question=What is this?", "image=dot.png"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("node `look` sends an image to the local model")
            && stderr.contains("cannot see images"),
        "{stderr}"
    );
}

#[test]
fn bad_image_inputs_name_the_input_and_the_forms_it_takes() {
    let (home, flow) = home_and_flow();
    write_files(
        flow.path(),
        &[
            ("notes.txt", "not an image"),
            (
                "flow.dag.yaml",
                "inputs:\n  pic: {type: image}\noutputs:\n  a: {reference: '${inputs.pic}'}\nnodes: []\n",
            ),
        ],
    );
    for (given, why) in [
        ("pic=gone.png", "gone.png does not exist"),
        ("pic=notes.txt", "notes.txt is not an image"),
    ] {
        let out = flow_test_with(home.path(), flow.path(), &["--inputs", given]);
        assert!(!out.status.success(), "{given}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for needle in [
            "Failed to load image for input 'pic'",
            why,
            "relative to the flow folder",
        ] {
            assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
        }
    }
}

/// A Python tool that returns its image input, and the tool's view of it.
const ROUND_TRIP_FLOW: &str = "inputs:\n  pic: {type: image}\noutputs:\n  same: {reference: '${echo.output.image}'}\n  seen: {reference: '${echo.output.seen}'}\nnodes:\n- name: echo\n  type: python\n  source: {type: code, path: echo.py}\n  inputs: {pic: '${inputs.pic}'}\n";
const ECHO_TOOL: &str = "from promptflow.contracts.multimedia import Image\nfrom promptflow.core import tool\n\n\n@tool\ndef echo(pic: Image) -> dict:\n    copy = Image(bytes(pic))\n    return {\"image\": copy, \"seen\": [str(pic), pic._mime_type, copy._mime_type, pic.to_base64() == copy.to_base64()]}\n";

#[test]
fn a_python_tool_image_round_trips_and_flow_test_writes_it_to_a_file() {
    let (home, flow) = home_and_flow();
    write_files(
        flow.path(),
        &[("flow.dag.yaml", ROUND_TRIP_FLOW), ("echo.py", ECHO_TOOL)],
    );
    std::fs::write(flow.path().join("dot.png"), png_bytes()).unwrap();
    let out = stdout_json(&flow_test_with(
        home.path(),
        flow.path(),
        &["--inputs", r#"pic={"data:image/png;path": "dot.png"}"#],
    ));
    // As promptflow's flow test: in .promptflow/output/, by absolute path.
    let file = flow
        .path()
        .join(format!(".promptflow/output/{PNG_SHA1}.png"))
        .to_string_lossy()
        .into_owned();
    assert_eq!(
        out,
        json!({"same": {"data:image/png;path": file}, "seen": ["Image(54586ec5)", "image/png", "image/png", true]})
    );
    assert_eq!(std::fs::read(&file).unwrap(), png_bytes());
    let saved: Json = serde_json::from_str(
        &std::fs::read_to_string(flow.path().join(".promptflow/flow.output.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["same"], json!({"data:image/png;path": file}));
}

#[test]
fn a_batch_run_reads_image_columns_relative_to_the_data_file_and_stores_output_images() {
    let (home, flow) = home_and_flow();
    write_files(
        flow.path(),
        &[("flow.dag.yaml", ROUND_TRIP_FLOW), ("echo.py", ECHO_TOOL)],
    );
    let data_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(data_dir.path().join("pics")).unwrap();
    std::fs::write(data_dir.path().join("pics/dot.png"), png_bytes()).unwrap();
    let data = data_dir.path().join("rows.jsonl");
    std::fs::write(
        &data,
        format!(
            "{{\"pic\": {{\"data:image/png;path\": \"pics/dot.png\"}}}}\n{{\"pic\": \"data:image/png;base64,{PNG}\"}}\n"
        ),
    )
    .unwrap();
    succeeded(&mut crate::common::run_create(
        home.path(),
        "pics",
        "",
        flow.path(),
        &data,
    ));
    let run = home.path().join("runs/pics");
    let outputs = read_jsonl(&run.join("flow_outputs/output.jsonl"));
    assert_eq!(outputs.len(), 2);
    for (n, line) in outputs.iter().enumerate() {
        assert_eq!(
            line,
            &json!({"line_number": n, "same": {"data:image/png;path": format!("{PNG_SHA1}.png")},
                    "seen": ["Image(54586ec5)", "image/png", "image/png", true]})
        );
    }
    assert_eq!(
        std::fs::read(run.join(format!("flow_outputs/{PNG_SHA1}.png"))).unwrap(),
        png_bytes()
    );
    // The run folder's outputs.jsonl and inputs.jsonl name the files by absolute path, as
    // promptflow's do.
    let absolute = json!({"data:image/png;path": run.join(format!("flow_outputs/{PNG_SHA1}.png")).to_string_lossy()});
    let top = read_jsonl(&run.join("outputs.jsonl"));
    assert_eq!(top[0]["same"], absolute);
    let inputs = read_jsonl(&run.join("inputs.jsonl"));
    assert_eq!(inputs[0]["pic"], absolute);
    assert_eq!(inputs[1]["pic"], absolute);
}

/// The chat flow of `tests/data/chat_with_image` (promptflow's chat-with-image example): the question
/// and earlier questions are lists of text and images.
#[test]
fn a_chat_question_that_is_a_list_of_text_and_images_becomes_parts() {
    let rec = FakeServer::replying(ok_body("two"));
    let (home, flow) = home_and_flow();
    crate::common::add_connection(
        home.path(),
        "aoai_gpt4v_connection",
        &format!(
            "name: aoai_gpt4v_connection\ntype: azure_open_ai\napi_key: k\napi_base: {}\napi_version: 2024-06-01\n",
            rec.base
        ),
    );
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/chat_with_image");
    for file in ["flow.dag.yaml", "chat.jinja2"] {
        std::fs::copy(src.join(file), flow.path().join(file)).unwrap();
    }
    let image = json!({"data:image/png;base64": PNG});
    let history = json!([{"inputs": {"question": ["What is this?", image]}, "outputs": {"answer": "A dot."}}]);
    let question = json!(["How many colors can you see?", image]);
    let out = stdout_json(&flow_test_with(
        home.path(),
        flow.path(),
        &[
            "--inputs",
            &format!("chat_history={history}"),
            &format!("question={question}"),
        ],
    ));
    assert_eq!(out, json!({"answer": "two"}));
    let data_url = format!("data:image/png;base64,{PNG}");
    let image_part = json!({"type": "image_url", "image_url": {"url": data_url, "detail": "auto"}});
    // What promptflow 1.18.5 sent for these inputs (recorded).
    assert_eq!(
        rec.request_to(
            "POST /v1/openai/deployments/gpt-4v/chat/completions?api-version=2024-06-01 "
        ),
        json!({
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": [{"type": "text", "text": "What is this?"}, image_part]},
                {"role": "assistant", "content": "A dot."},
                {"role": "user", "content": [{"type": "text", "text": "How many colors can you see?"}, image_part]},
            ],
            "model": "gpt-4v",
            "temperature": 1.0,
            "top_p": 1.0,
            "n": 1,
            "stream": false,
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "max_tokens": 512,
        })
    );
    // The question's default holds a URL image, sent as its URL.
    let out = stdout_json(&flow_test_with(home.path(), flow.path(), &[]));
    assert_eq!(out, json!({"answer": "two"}));
    let last = rec.seen().last().unwrap().json();
    assert_eq!(
        last["messages"][1]["content"],
        json!([
            {"type": "image_url", "image_url": {"url": "https://example.com/logo.png", "detail": "auto"}},
            {"type": "text", "text": "How many colors can you see?"},
        ])
    );
}

/// A Python tool that describes the image it is given.
const LOOK_FLOW: &str = "inputs:\n  pic: {type: image}\noutputs:\n  seen: {reference: '${look.output}'}\nnodes:\n- name: look\n  type: python\n  source: {type: code, path: look.py}\n  inputs: {pic: '${inputs.pic}'}\n";
const LOOK_TOOL: &str = "import hashlib\n\nfrom promptflow.contracts.multimedia import Image\nfrom promptflow.core import tool\n\n\n@tool\ndef look(pic: Image) -> dict:\n    return {\"type\": type(pic).__name__, \"mime\": pic._mime_type, \"url\": pic.source_url,\n            \"sha1\": hashlib.sha1(bytes(pic)).hexdigest(), \"str\": str(pic)}\n";

/// A web server on loopback: `/dot.png` is the PNG, `/dot` the PNG without a content type,
/// `/hop` a redirect to it, `/page` an HTML page, anything else 404.
fn image_server() -> FakeServer {
    use std::io::Write as _;
    FakeServer::raw(|seen, sock| {
        let path = seen
            .request_line()
            .split(' ')
            .nth(1)
            .unwrap_or("")
            .to_owned();
        let (status, head, body): (&str, String, Vec<u8>) = match path.as_str() {
            "/dot.png" => ("200 OK", "content-type: image/png\r\n".into(), png_bytes()),
            "/dot" => ("200 OK", String::new(), png_bytes()),
            "/hop" => ("302 Found", "location: /dot.png\r\n".into(), vec![]),
            "/page" => (
                "200 OK",
                "content-type: text/html\r\n".into(),
                b"<html>no</html>".to_vec(),
            ),
            _ => ("404 Not Found", String::new(), b"no such image".to_vec()),
        };
        let _ = write!(
            sock,
            "HTTP/1.1 {status}\r\n{head}content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let _ = sock.write_all(&body);
        let _ = sock.flush();
    })
}

fn look_flow() -> (tempfile::TempDir, tempfile::TempDir) {
    let (home, flow) = home_and_flow();
    write_files(
        flow.path(),
        &[("flow.dag.yaml", LOOK_FLOW), ("look.py", LOOK_TOOL)],
    );
    (home, flow)
}

/// `flow test` of the look flow with `pic` given, loopback allowed or not, and `extra` options.
fn look_at(
    home: &Path,
    flow: &Path,
    pic: &str,
    allow: bool,
    extra: &[&str],
) -> std::process::Output {
    let mut cmd = crate::common::sluice(home);
    cmd.args(["flow", "test", "--flow"]).arg(flow).args(extra);
    cmd.args(["--inputs", &format!("pic={pic}")]);
    if allow {
        cmd.env(sluice_engine::image::ALLOW_PRIVATE_URLS, "1");
    } else {
        cmd.env_remove(sluice_engine::image::ALLOW_PRIVATE_URLS);
    }
    cmd.output().unwrap()
}

#[test]
fn a_python_tool_gets_the_bytes_of_an_image_url_in_process_and_in_a_worker() {
    let server = image_server();
    let (home, flow) = look_flow();
    let url = format!("{}/dot.png", server.origin);
    for isolation in ["thread", "process"] {
        for (pic, url) in [
            (format!(r#"{{"data:image/png;url": "{url}"}}"#), url.clone()),
            // A bare URL, and one without a content type: the bytes tell the type.
            (url.clone(), url.clone()),
            (
                format!("{}/dot", server.origin),
                format!("{}/dot", server.origin),
            ),
            // A redirect is followed; the image keeps the URL it was given.
            (
                format!("{}/hop", server.origin),
                format!("{}/hop", server.origin),
            ),
        ] {
            let out = stdout_json(&look_at(
                home.path(),
                flow.path(),
                &pic,
                true,
                &["--isolation", isolation],
            ));
            assert_eq!(
                out["seen"],
                json!({"type": "Image", "mime": "image/png", "url": url, "sha1": PNG_SHA1,
                       "str": "Image(54586ec5)"}),
                "{isolation}, {pic}"
            );
        }
    }
}

#[test]
fn image_urls_on_internal_addresses_are_refused_unless_allowed() {
    let server = image_server();
    let (home, flow) = look_flow();
    for host in [
        server.origin.clone(),
        server.origin.replace("127.0.0.1", "localhost"),
    ] {
        let out = look_at(
            home.path(),
            flow.path(),
            &format!("{host}/dot.png"),
            false,
            &[],
        );
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        for needle in [
            "InvalidImageInput",
            "input `pic`: Failed to fetch image from URL: ",
            "a loopback address; Sluice does not fetch images from loopback",
            "Set SLUICE_ALLOW_PRIVATE_URLS=1 to allow them",
        ] {
            assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
        }
    }
    assert_eq!(server.requests(), 0, "nothing was fetched");
}

#[test]
fn an_image_url_that_fails_or_is_not_an_image_fails_the_node() {
    let server = image_server();
    let (home, flow) = look_flow();
    for (path, why) in [
        ("/gone.png", "the server answered 404: no such image"),
        (
            "/page",
            "the answer is not an image (content type `text/html`",
        ),
    ] {
        let url = format!("{}{path}", server.origin);
        let out = look_at(home.path(), flow.path(), &url, true, &[]);
        assert!(!out.status.success(), "{path}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let needle = format!("Failed to fetch image from URL: {url}: {why}");
        assert!(stderr.contains(&needle), "{needle:?} not in {stderr}");
    }
}

#[test]
fn images_cross_to_and_from_a_worker_process_whole() {
    let (home, flow) = home_and_flow();
    write_files(
        flow.path(),
        &[("flow.dag.yaml", ROUND_TRIP_FLOW), ("echo.py", ECHO_TOOL)],
    );
    std::fs::write(flow.path().join("dot.png"), png_bytes()).unwrap();
    let out = stdout_json(&flow_test_with(
        home.path(),
        flow.path(),
        &[
            "--isolation",
            "process",
            "--inputs",
            r#"pic={"data:image/png;path": "dot.png"}"#,
        ],
    ));
    // The tool got an `Image` and returned one, written to a file as in process.
    let file = flow
        .path()
        .join(format!(".promptflow/output/{PNG_SHA1}.png"))
        .to_string_lossy()
        .into_owned();
    assert_eq!(
        out,
        json!({"same": {"data:image/png;path": file}, "seen": ["Image(54586ec5)", "image/png", "image/png", true]})
    );
    assert_eq!(std::fs::read(&file).unwrap(), png_bytes());
}

#[test]
fn a_prompty_image_input_is_sent_as_an_image_part() {
    let server = FakeServer::replying(ok_body("a red dot"));
    let (home, dir) = home_and_flow();
    let prompty = dir.path().join("look.prompty");
    std::fs::write(
        &prompty,
        format!(
            "---\nname: Look\nmodel:\n  api: chat\n  configuration:\n    type: openai\n    model: gpt-4o\n    base_url: {}\n    api_key: sk-test\ninputs:\n  question:\n    type: string\n  pic:\n    type: image\n---\nsystem:\nYou are a helpful assistant.\n\nuser:\n{{{{question}}}}\n![image]({{{{pic}}}})\n",
            server.base
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("dot.png"), png_bytes()).unwrap();
    for (pic, url) in [
        ("dot.png".to_owned(), format!("data:image/png;base64,{PNG}")),
        (
            r#"{"data:image/jpeg;url": "https://example.com/cat.jpg"}"#.to_owned(),
            "https://example.com/cat.jpg".to_owned(),
        ),
    ] {
        let out = stdout_json(&flow_test_with(
            home.path(),
            &prompty,
            &[
                "--inputs",
                "question=What is in this picture?",
                &format!("pic={pic}"),
            ],
        ));
        assert_eq!(out["output"], "a red dot");
        let body = server.seen().last().unwrap().json();
        assert_eq!(body["messages"], messages(&url, "auto"), "{pic}");
    }
}

#[test]
fn with_openai_vision_images_come_and_go_as_content_parts() {
    let (home, flow) = home_and_flow();
    let vision_flow = format!("message_format: openai-vision\n{ROUND_TRIP_FLOW}");
    write_files(
        flow.path(),
        &[("flow.dag.yaml", &vision_flow), ("echo.py", ECHO_TOOL)],
    );
    std::fs::write(flow.path().join("dot.png"), png_bytes()).unwrap();
    // flow test: the output image is a file, referred to as an `image_file` part.
    let out = stdout_json(&flow_test_with(
        home.path(),
        flow.path(),
        &[
            "--inputs",
            r#"pic={"type": "image_file", "image_file": {"path": "dot.png"}}"#,
        ],
    ));
    let file = flow
        .path()
        .join(format!(".promptflow/output/{PNG_SHA1}.png"))
        .to_string_lossy()
        .into_owned();
    assert_eq!(
        out["same"],
        json!({"type": "image_file", "image_file": {"path": file}})
    );
    assert_eq!(out["seen"][0], "Image(54586ec5)");
    // A URL image stays its URL, as an `image_url` part.
    let out = stdout_json(&flow_test_with(
        home.path(),
        flow.path(),
        &[
            "--inputs",
            &format!(
                r#"pic={{"type": "image_url", "image_url": {{"url": "data:image/png;base64,{PNG}"}}}}"#
            ),
        ],
    ));
    assert_eq!(out["same"]["image_file"]["path"], file.as_str());

    // A batch run: data paths are relative to the data file; outputs are `image_file` parts.
    let data_dir = tempfile::tempdir().unwrap();
    std::fs::write(data_dir.path().join("dot.png"), png_bytes()).unwrap();
    let data = data_dir.path().join("rows.jsonl");
    std::fs::write(
        &data,
        "{\"pic\": {\"type\": \"image_file\", \"image_file\": {\"path\": \"dot.png\"}}}\n",
    )
    .unwrap();
    succeeded(&mut crate::common::run_create(
        home.path(),
        "vision",
        "",
        flow.path(),
        &data,
    ));
    let outputs = read_jsonl(&home.path().join("runs/vision/flow_outputs/output.jsonl"));
    assert_eq!(
        outputs[0]["same"],
        json!({"type": "image_file", "image_file": {"path": format!("{PNG_SHA1}.png")}})
    );

    // A served flow answers with `image_url` parts holding data URIs, and refuses `image_file`.
    let served = crate::common::serve(
        home.path(),
        &[
            "flow",
            "serve",
            "--port",
            "0",
            "--flow",
            flow.path().to_str().unwrap(),
        ],
        &[],
    );
    let url = format!("data:image/png;base64,{PNG}");
    let r = served.post_json(
        "/score",
        &json!({"pic": {"type": "image_url", "image_url": {"url": url}}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["same"],
        json!({"type": "image_url", "image_url": {"url": url}})
    );
    let r = served.post_json(
        "/score",
        &json!({"pic": {"type": "image_file", "image_file": {"path": "dot.png"}}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("does not read files"), "{}", r.body);
    served.stop();
}
