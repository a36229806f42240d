//! Connections in Python tools, as promptflow hands them over: a parameter annotated with a connection
//! class receives a connection object (`.configs`, `.secrets`, typed attributes, item access,
//! `dict(conn)`), in process and in worker processes; one annotated `str` receives the name. Secrets
//! stay out of run records and logs. And the `promptflow` stand-in: what it offers, and when an
//! installed promptflow is used instead.

use std::path::Path;

use serde_json::json;

use tempfile::TempDir;

use crate::common::{
    flow_test_with, read_jsonl, run_create, sluice, stdout_json, succeeded, write_files,
};

const CUSTOM_SECRET: &str = "custom-secret-4711-abcdef";
const AZURE_KEY: &str = "azure-key-0815-abcdef";
const OPENAI_KEY: &str = "openai-key-1234-abcdef";

/// Stores the connections the tests use in `home`: a custom one, an Azure OpenAI one, an OpenAI one
/// and a SerpAPI one.
fn create_connections(home: &Path) {
    let files = [
        (
            "custom.yaml",
            format!(
                "name: my_custom\ntype: custom\nconfigs:\n  endpoint: https://search.example/v1\n  api_base: https://strong.example\nsecrets:\n  key: {CUSTOM_SECRET}\n  api_key: {CUSTOM_SECRET}\n"
            ),
        ),
        (
            "azure.yaml",
            format!(
                "name: my_azure\ntype: azure_open_ai\napi_key: {AZURE_KEY}\napi_base: https://res.openai.azure.com/\napi_type: azure\napi_version: 2024-06-01\n"
            ),
        ),
        (
            "openai.yaml",
            format!(
                "name: my_openai\ntype: open_ai\napi_key: {OPENAI_KEY}\nbase_url: https://api.example/v1\norganization: org-1\n"
            ),
        ),
        (
            "serp.yaml",
            "name: my_serp\ntype: serp\napi_key: serp-key-9999-abcdef\n".to_owned(),
        ),
    ];
    for (file, text) in files {
        let path = home.join(file);
        std::fs::write(&path, text).unwrap();
        succeeded(sluice(home).args(["connection", "create", "-f"]).arg(&path));
    }
}

/// A home holding the connections of `create_connections`, and a flow folder holding `files`.
fn connected(files: &[(&str, &str)]) -> (TempDir, TempDir) {
    let (home, flow) = crate::common::home_and_flow();
    create_connections(home.path());
    write_files(flow.path(), files);
    (home, flow)
}

/// A flow whose one tool takes each kind of connection and describes what it received.
fn connections_flow(dir: &Path) {
    write_files(
        dir,
        &[
            (
                "flow.dag.yaml",
                "inputs:\n  n: {type: int, default: 1}\noutputs:\n  seen: {reference: '${describe.output}'}\nnodes:\n- name: describe\n  type: python\n  source: {type: code, path: describe.py}\n  inputs:\n    custom: my_custom\n    azure: my_azure\n    openai: my_openai\n    serp: my_serp\n    strong: my_custom\n    either: my_openai\n    plain: my_custom\n    n: ${inputs.n}\n",
            ),
            (
                "describe.py",
                r#"from typing import Union

from promptflow.connections import CustomConnection, CustomStrongTypeConnection, SerpConnection
from promptflow.contracts.types import Secret
from promptflow.core import tool
from promptflow.entities import AzureOpenAIConnection, OpenAIConnection


class SearchConnection(CustomStrongTypeConnection):
    api_key: Secret
    api_base: str = "not read"


@tool
def describe(custom: CustomConnection, azure: AzureOpenAIConnection, openai: OpenAIConnection,
             serp: SerpConnection, strong: SearchConnection,
             either: Union[AzureOpenAIConnection, OpenAIConnection], plain: str, n: int) -> dict:
    print("tool got", custom, azure, openai, strong)
    return {
        "custom": {
            "class": type(custom).__name__, "name": custom.name, "type": custom.type,
            "configs": custom.configs, "secret_keys": sorted(custom.secrets),
            "attr": custom.endpoint, "item_is_secret": custom["key"] == "CUSTOM_SECRET",
            "dict_keys": sorted(dict(custom)), "is_secret": custom.is_secret("key"),
        },
        "azure": {
            "class": type(azure).__name__, "name": azure.name, "type": azure.type,
            "api_base": azure.api_base, "api_type": azure.api_type, "api_version": azure.api_version,
            "key_ok": azure.api_key == "AZURE_KEY", "item_ok": azure["api_key"] == "AZURE_KEY",
        },
        "openai": {
            "class": type(openai).__name__, "api_base": openai.api_base, "base_url": openai.base_url,
            "organization": openai.organization, "key_ok": openai.api_key == "OPENAI_KEY",
        },
        "serp": {"class": type(serp).__name__, "has_key": bool(serp.api_key)},
        "strong": {
            "class": type(strong).__name__, "api_base": strong.api_base,
            "key_ok": strong.api_key == "CUSTOM_SECRET",
        },
        "either": type(either).__name__,
        "plain": plain,
    }
"#
                .replace("CUSTOM_SECRET", CUSTOM_SECRET)
                .replace("AZURE_KEY", AZURE_KEY)
                .replace("OPENAI_KEY", OPENAI_KEY)
                .as_str(),
            ),
        ],
    );
}

fn expected_description() -> serde_json::Value {
    json!({
        "custom": {
            "class": "CustomConnection", "name": "my_custom", "type": "Custom",
            "configs": {"endpoint": "https://search.example/v1", "api_base": "https://strong.example"},
            "secret_keys": ["api_key", "key"], "attr": "https://search.example/v1",
            "item_is_secret": true, "dict_keys": ["api_base", "api_key", "endpoint", "key"],
            "is_secret": true,
        },
        "azure": {
            "class": "AzureOpenAIConnection", "name": "my_azure", "type": "AzureOpenAI",
            "api_base": "https://res.openai.azure.com/", "api_type": "azure",
            "api_version": "2024-06-01", "key_ok": true, "item_ok": true,
        },
        "openai": {
            "class": "OpenAIConnection", "api_base": "https://api.example/v1",
            "base_url": "https://api.example/v1", "organization": "org-1", "key_ok": true,
        },
        "serp": {"class": "SerpConnection", "has_key": true},
        "strong": {"class": "SearchConnection", "api_base": "https://strong.example", "key_ok": true},
        "either": "OpenAIConnection",
        "plain": "my_custom",
    })
}

#[test]
fn connection_annotated_parameters_receive_connection_objects_in_process_and_in_workers() {
    let (home, flow) = connected(&[]);
    connections_flow(flow.path());
    for isolation in ["thread", "process"] {
        let out = flow_test_with(home.path(), flow.path(), &["--isolation", isolation]);
        let v = stdout_json(&out);
        assert_eq!(v["seen"], expected_description(), "--isolation {isolation}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("tool got"), "{stderr}");
        for secret in [CUSTOM_SECRET, AZURE_KEY, OPENAI_KEY] {
            assert!(!stderr.contains(secret), "a secret was printed: {stderr}");
        }
        // flow test's own record shows the names.
        let detail: serde_json::Value = serde_json::from_slice(
            &std::fs::read(flow.path().join(".promptflow/flow.detail.json")).unwrap(),
        )
        .unwrap();
        let inputs = &detail["flow_runs"][0]["node_runs"][0]["inputs"];
        assert_eq!(inputs["custom"], "my_custom", "{detail}");
        assert_eq!(inputs["openai"], "my_openai", "{detail}");
        let text = detail.to_string();
        for secret in [CUSTOM_SECRET, AZURE_KEY, OPENAI_KEY] {
            assert!(!text.contains(secret), "a secret in flow.detail.json");
        }
    }
}

#[test]
fn run_records_show_connection_names_not_secrets() {
    let (home, flow) = connected(&[]);
    connections_flow(flow.path());
    let data = crate::common::numbers_data(flow.path(), 2);
    for (name, isolation) in [
        ("in_process", "--isolation thread"),
        ("workers", "--isolation process"),
    ] {
        let out = run_create(home.path(), name, isolation, flow.path(), &data)
            .output()
            .unwrap();
        assert_eq!(stdout_json(&out)["status"], "Completed");
        let run = home.path().join("runs").join(name);
        let details = read_jsonl(&run.join("details.jsonl"));
        assert_eq!(details.len(), 2);
        let inputs = &details[0]["node_runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["node"] == "describe")
            .unwrap_or_else(|| panic!("{}", details[0]))["inputs"];
        assert_eq!(inputs["custom"], "my_custom", "{inputs}");
        assert_eq!(inputs["azure"], "my_azure", "{inputs}");
        assert_eq!(inputs["strong"], "my_custom", "{inputs}");
        for entry in std::fs::read_dir(&run).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
                for secret in [CUSTOM_SECRET, AZURE_KEY, OPENAI_KEY] {
                    assert!(!text.contains(secret), "{} holds a secret", path.display());
                }
            }
        }
    }
}

#[test]
fn a_missing_connection_or_one_of_the_wrong_type_is_a_load_error() {
    let home = tempfile::tempdir().unwrap();
    create_connections(home.path());
    let flow = tempfile::tempdir().unwrap();
    let tool = "from promptflow.connections import AzureOpenAIConnection\nfrom promptflow.core import tool\n\n@tool\ndef f(conn: AzureOpenAIConnection) -> str:\n    return conn.api_base\n";
    for (conn, want) in [
        ("nope", "connection `nope` does not exist"),
        (
            "my_openai",
            "takes AzureOpenAIConnection, but connection `my_openai` is of type open_ai",
        ),
    ] {
        write_files(
            flow.path(),
            &[
                ("f.py", tool),
                (
                    "flow.dag.yaml",
                    &format!(
                        "outputs:\n  o: {{reference: '${{f.output}}'}}\nnodes:\n- name: f\n  type: python\n  source: {{type: code, path: f.py}}\n  inputs: {{conn: {conn}}}\n"
                    ),
                ),
            ],
        );
        crate::common::refused(home.path(), flow.path(), &[want, "input `conn`"]);
    }
}

/// A tool that reports which `promptflow` it imported.
fn which_promptflow_flow(dir: &Path) {
    write_files(
        dir,
        &[
            (
                "flow.dag.yaml",
                "outputs:\n  which: {reference: '${which.output}'}\nnodes:\n- name: which\n  type: python\n  source: {type: code, path: which.py}\n  inputs: {}\n",
            ),
            (
                "which.py",
                "import promptflow\nfrom promptflow.core import tool\n\n@tool\ndef which() -> str:\n    return promptflow.__version__\n",
            ),
        ],
    );
}

#[test]
fn the_stand_in_serves_promptflow_unless_sluice_use_promptflow_is_set() {
    let (home, flow) = crate::common::home_and_flow();
    which_promptflow_flow(flow.path());
    // An "installed" promptflow on PYTHONPATH.
    let site = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(site.path().join("promptflow/core")).unwrap();
    write_files(
        site.path(),
        &[
            ("promptflow/__init__.py", "__version__ = '1.99.0-real'\n"),
            (
                "promptflow/core/__init__.py",
                "def tool(f):\n    f.__tool = True\n    return f\n",
            ),
        ],
    );
    let which = |opt_in: Option<&str>| {
        let mut cmd = sluice(home.path());
        cmd.env("PYTHONPATH", site.path())
            .env_remove("SLUICE_USE_PROMPTFLOW");
        if let Some(v) = opt_in {
            cmd.env("SLUICE_USE_PROMPTFLOW", v);
        }
        let out = cmd
            .args(["flow", "test", "--flow"])
            .arg(flow.path())
            .output()
            .unwrap();
        stdout_json(&out)["which"].as_str().unwrap().to_owned()
    };
    assert_eq!(which(None), "0.0.0+sluice");
    assert_eq!(which(Some("0")), "0.0.0+sluice");
    assert_eq!(which(Some("1")), "1.99.0-real");
}

#[test]
fn the_stand_in_covers_what_example_flows_import() {
    let (home, flow) = crate::common::home_and_flow();
    write_files(
        flow.path(),
        &[
            (
                "flow.dag.yaml",
                "outputs:\n  got: {reference: '${imports.output}'}\nnodes:\n- name: imports\n  type: python\n  source: {type: code, path: imports.py}\n  inputs: {}\n",
            ),
            (
                "imports.py",
                r##"from promptflow import tool as legacy_tool
from promptflow.connections import CustomConnection
from promptflow.contracts.multimedia import Image
from promptflow.core import AzureOpenAIModelConfiguration, OpenAIModelConfiguration, log_metric, tool
from promptflow.entities import AzureOpenAIConnection
from promptflow._sdk.entities import CustomConnection as SdkCustomConnection
from promptflow.tools.common import init_azure_openai_client, parse_chat, render_jinja_template
from promptflow.tracing import start_trace, trace

start_trace(collection="demo")


@trace
def shout(text):
    return text.upper()


@tool
def imports() -> dict:
    conn = AzureOpenAIConnection(api_base="https://a.example", api_key="k", name="c")
    config = AzureOpenAIModelConfiguration.from_connection(conn, azure_deployment="gpt")
    chat = parse_chat(render_jinja_template("# system:\nBe {{ how }}.\n# user:\nhi\n", how="brief"))
    return {
        "shout": shout("hi"),
        "deployment": config.azure_deployment,
        "endpoint": config.azure_endpoint,
        "model": OpenAIModelConfiguration(model="gpt-4o").model,
        "image": Image(b"png", mime_type="image/png").to_base64(with_type=True),
        "chat": chat,
        "custom": dict(CustomConnection(configs={"a": "1"}, secrets={"b": "2"})),
        "legacy_is_core": legacy_tool is tool,
        "sdk_entities": SdkCustomConnection is CustomConnection and callable(init_azure_openai_client),
    }
"##,
            ),
        ],
    );
    let out = sluice(home.path())
        .args(["flow", "test", "--flow"])
        .arg(flow.path())
        .output()
        .unwrap();
    assert_eq!(
        stdout_json(&out)["got"],
        json!({
            "shout": "HI", "deployment": "gpt", "endpoint": "https://a.example", "model": "gpt-4o",
            "image": "data:image/png;base64,cG5n",
            "chat": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
            "custom": {"a": "1", "b": "2"}, "legacy_is_core": true, "sdk_entities": true,
        })
    );
}

#[test]
fn a_tool_provider_receives_its_connection_in_init() {
    let (home, flow) = connected(&[
        (
            "flow.dag.yaml",
            "inputs:\n  q: {type: string, default: weather}\noutputs:\n  a: {reference: '${search.output}'}\nnodes:\n- name: search\n  type: python\n  source: {type: code, path: search.py}\n  inputs: {conn: my_azure, q: '${inputs.q}'}\n",
        ),
        (
            "search.py",
            "from promptflow.connections import AzureOpenAIConnection\nfrom promptflow.core import ToolProvider, tool\n\n\nclass Search(ToolProvider):\n    def __init__(self, conn: AzureOpenAIConnection):\n        self.conn = conn\n\n    @tool\n    def search(self, q: str) -> str:\n        return '%s via %s at %s' % (q, type(self.conn).__name__, self.conn.api_base)\n",
        ),
    ]);
    for isolation in ["thread", "process"] {
        let out = flow_test_with(home.path(), flow.path(), &["--isolation", isolation]);
        assert_eq!(
            stdout_json(&out)["a"],
            "weather via AzureOpenAIConnection at https://res.openai.azure.com/",
            "--isolation {isolation}"
        );
    }
}

#[test]
fn a_connection_named_by_a_flow_input_is_looked_up_when_the_line_runs() {
    let which = "from typing import Union\n\nfrom promptflow.connections import AzureOpenAIConnection, CustomConnection\nfrom promptflow.core import tool\n\n\n@tool\ndef which(conn: Union[AzureOpenAIConnection, CustomConnection]) -> str:\n    return '%s %s' % (type(conn).__name__, conn.name)\n";
    let (home, flow) = connected(&[
        ("which.py", which),
        (
            "flow.dag.yaml",
            "inputs:\n  conn: {type: string}\noutputs:\n  a: {reference: '${which.output}'}\nnodes:\n- name: which\n  type: python\n  source: {type: code, path: which.py}\n  inputs: {conn: '${inputs.conn}'}\n",
        ),
    ]);
    for isolation in ["thread", "process"] {
        let run = |conn: &str| {
            let input = format!("conn={conn}");
            flow_test_with(
                home.path(),
                flow.path(),
                &["--isolation", isolation, "--inputs", &input],
            )
        };
        assert_eq!(
            stdout_json(&run("my_azure"))["a"],
            "AzureOpenAIConnection my_azure"
        );
        assert_eq!(
            stdout_json(&run("my_custom"))["a"],
            "CustomConnection my_custom"
        );
        let out = run("my_serp");
        assert!(!out.status.success(), "--isolation {isolation}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("connection `my_serp` is of type serp"),
            "--isolation {isolation}: {stderr}"
        );
    }
}
