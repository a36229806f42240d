//! Custom tool packages: `source: {type: package, tool: ...}` and `package_with_prompt` nodes run a
//! tool from a Python package the tools' Python can import (here a folder on `PYTHONPATH`).

use std::path::Path;

use serde_json::json;

use crate::common::{
    add_connection, assert_ok, home_and_flow, ran, read_jsonl, refused_by, run_create, sluice,
    stdout_json, write_files,
};

/// The package: an @tool function, an async one, a generator, a `ToolProvider` whose `__init__`
/// takes a connection, and a custom LLM tool that takes a prompt template.
const GREET: &str = r#"from promptflow.connections import CustomConnection
from promptflow.contracts.types import PromptTemplate
from promptflow.core import ToolProvider, tool


@tool
def greet(name: str, times: int = 1) -> str:
    return " ".join(["hello " + name] * times)


@tool
async def shout(name: str) -> str:
    return name.upper()


@tool
def spell(word: str):
    for c in word:
        yield c + "."


class Greeter(ToolProvider):
    def __init__(self, conn: CustomConnection, punct: str = "!"):
        self.conn = conn
        self.punct = punct

    @tool
    def hello(self, name: str) -> str:
        return "%s %s%s" % (self.conn.secrets["greeting"], name, self.punct)


@tool
def templated(prompt: PromptTemplate, suffix: str, **kwargs) -> str:
    return "%s|%s|%s|%s" % (type(prompt).__name__, prompt.strip(), suffix, sorted(kwargs.items()))
"#;

/// A flow with one node of each kind of package tool.
const FLOW: &str = r#"inputs:
  name: {type: string}
outputs:
  greeted: {reference: '${g.output}'}
  shouted: {reference: '${s.output}'}
  spelled: {reference: '${w.output}'}
  provided: {reference: '${p.output}'}
  prompted: {reference: '${c.output}'}
nodes:
- name: g
  type: python
  source: {type: package, tool: my_tools.tools.greet.greet}
  inputs: {name: '${inputs.name}', times: '2'}
- name: s
  type: python
  source: {type: package, tool: my_tools.tools.greet.shout}
  inputs: {name: '${inputs.name}'}
- name: w
  type: python
  source: {type: package, tool: my_tools.tools.greet.spell}
  inputs: {word: '${inputs.name}'}
- name: p
  type: python
  source: {type: package, tool: my_tools.tools.greet.Greeter.hello}
  inputs: {conn: greetings, punct: '?', name: '${inputs.name}'}
- name: c
  type: custom_llm
  source: {type: package_with_prompt, tool: my_tools.tools.greet.templated, path: hi.jinja2}
  inputs: {suffix: x, who: '${inputs.name}'}
"#;

/// The package's `package_tools` entry point: two tools by ids that are not import paths, one with
/// an old id.
const LISTING: &str = r#"def list_tools():
    return {
        "my_tools.greeting": {
            "name": "Greeting", "type": "python", "module": "my_tools.tools.greet", "function": "greet",
            "deprecated_tools": ["old_tools.greet"],
        },
        "my_tools.hello": {
            "name": "Hello", "type": "python", "module": "my_tools.tools.greet", "class_name": "Greeter",
            "function": "hello",
        },
    }
"#;

/// Writes the package `my_tools` into `dir` (which goes on `PYTHONPATH`), installed as pip installs
/// it: with a `.dist-info` that declares its `package_tools` entry point.
fn write_package(dir: &Path) {
    std::fs::create_dir_all(dir.join("my_tools/tools")).unwrap();
    std::fs::create_dir_all(dir.join("my_tools-0.1.dist-info")).unwrap();
    write_files(
        dir,
        &[
            ("my_tools/__init__.py", ""),
            ("my_tools/tools/__init__.py", ""),
            ("my_tools/tools/greet.py", GREET),
            ("my_tools/tools/listing.py", LISTING),
            (
                "my_tools-0.1.dist-info/METADATA",
                "Metadata-Version: 2.1\nName: my-tools\nVersion: 0.1\n",
            ),
            (
                "my_tools-0.1.dist-info/entry_points.txt",
                "[package_tools]\nmy_tools = my_tools.tools.listing:list_tools\n",
            ),
        ],
    );
}

/// A home with the connection `greetings`, a flow folder holding `flow` and the template, and a
/// folder holding the package.
fn setup(flow: &str) -> (tempfile::TempDir, tempfile::TempDir, tempfile::TempDir) {
    let (home, dir) = home_and_flow();
    add_connection(
        home.path(),
        "greetings",
        "name: greetings\ntype: custom\nconfigs: {}\nsecrets: {greeting: Howdy}\n",
    );
    write_files(
        dir.path(),
        &[("flow.dag.yaml", flow), ("hi.jinja2", "Hi {{who}}\n")],
    );
    let packages = tempfile::tempdir().unwrap();
    write_package(packages.path());
    (home, dir, packages)
}

/// What each node gives for the name `name`.
fn expected(name: &str) -> serde_json::Value {
    let spelled: String = name.chars().map(|c| format!("{c}.")).collect();
    json!({
        "greeted": format!("hello {name} hello {name}"),
        "shouted": name.to_uppercase(),
        "spelled": spelled,
        "provided": format!("Howdy {name}?"),
        "prompted": format!("PromptTemplate|Hi {{{{who}}}}|x|[('who', '{name}')]"),
    })
}

/// `sluice flow test --isolation ISOLATION --inputs name=NAME` of the flow in `dir`, with the
/// package on `PYTHONPATH`, which must succeed: the outputs it printed.
fn tested_in(
    home: &tempfile::TempDir,
    dir: &tempfile::TempDir,
    packages: &tempfile::TempDir,
    isolation: &str,
    name: &str,
) -> serde_json::Value {
    let out = sluice(home.path())
        .env("PYTHONPATH", packages.path())
        .args(["flow", "test", "--isolation", isolation, "--inputs"])
        .arg(format!("name={name}"))
        .arg("--flow")
        .arg(dir.path())
        .output()
        .unwrap();
    stdout_json(&out)
}

#[test]
fn package_tools_run_in_flow_test_in_process_and_in_workers() {
    let (home, dir, packages) = setup(FLOW);
    for isolation in ["thread", "process"] {
        assert_eq!(
            tested_in(&home, &dir, &packages, isolation, "Bo"),
            expected("Bo"),
            "isolation {isolation}"
        );
    }
}

#[test]
fn tools_listed_by_a_package_tools_entry_point_are_found_by_their_ids() {
    let (home, dir, packages) = setup(
        "inputs:\n  name: {type: string}\noutputs:\n  a: {reference: '${a.output}'}\n  b: {reference: '${b.output}'}\n  c: {reference: '${c.output}'}\nnodes:\n- name: a\n  type: python\n  source: {type: package, tool: my_tools.greeting}\n  inputs: {name: '${inputs.name}'}\n- name: b\n  type: python\n  source: {type: package, tool: old_tools.greet}\n  inputs: {name: '${inputs.name}', times: 2}\n- name: c\n  type: python\n  source: {type: package, tool: my_tools.hello}\n  inputs: {conn: greetings, name: '${inputs.name}'}\n",
    );
    for isolation in ["thread", "process"] {
        assert_eq!(
            tested_in(&home, &dir, &packages, isolation, "Di"),
            json!({"a": "hello Di", "b": "hello Di hello Di", "c": "Howdy Di!"}),
            "isolation {isolation}"
        );
    }
}

#[test]
fn package_tools_run_in_a_batch_in_process_and_in_workers() {
    let (home, dir, packages) = setup(FLOW);
    let data = dir.path().join("names.jsonl");
    std::fs::write(&data, "{\"name\": \"Al\"}\n{\"name\": \"Cy\"}\n").unwrap();
    for isolation in ["thread", "process"] {
        let mut cmd = run_create(
            home.path(),
            isolation,
            &format!("--isolation {isolation}"),
            dir.path(),
            &data,
        );
        assert_ok(&cmd.env("PYTHONPATH", packages.path()).output().unwrap());
        let mut outputs = read_jsonl(&home.path().join(format!("runs/{isolation}/outputs.jsonl")));
        outputs.sort_by_key(|o| o["line_number"].as_u64());
        let got: Vec<_> = outputs.iter().map(|o| o["prompted"].clone()).collect();
        assert_eq!(
            got,
            [
                expected("Al")["prompted"].clone(),
                expected("Cy")["prompted"].clone()
            ],
            "isolation {isolation}: {outputs:?}"
        );
        assert_eq!(outputs[1]["provided"], "Howdy Cy?", "isolation {isolation}");
        assert_eq!(outputs[0]["spelled"], "A.l.", "isolation {isolation}");
    }
}

/// `sluice flow validate` of `flow` (beside `hi.jinja2` and `clash.jinja2`, whose `suffix` is a
/// parameter of `templated`) with the package on `PYTHONPATH`, which must refuse it with every one of
/// `needles` in its stderr; returns the stderr.
fn refused_with_package(flow: &str, needles: &[&str]) -> String {
    let (home, dir, packages) = setup(flow);
    write_files(dir.path(), &[("clash.jinja2", "{{suffix}} and {{who}}\n")]);
    refused_by(
        sluice(home.path()).env("PYTHONPATH", packages.path()),
        dir.path(),
        needles,
    )
}

#[test]
fn a_package_that_cannot_be_imported_or_lacks_the_tool_is_a_load_error() {
    let stderr = refused_with_package(
        "inputs:\n  name: {type: string}\noutputs:\n  a: {reference: '${a.output}'}\nnodes:\n- name: a\n  type: python\n  source: {type: package, tool: nope_pkg.tools.greet}\n  inputs: {name: '${inputs.name}'}\n- name: b\n  type: python\n  source: {type: package, tool: my_tools.tools.greet.missing}\n  inputs: {name: '${inputs.name}'}\n- name: c\n  type: python\n  source: {type: package, tool: my_tools.tools.greet.Greeter.nothing}\n  inputs: {name: '${inputs.name}'}\n- name: d\n  type: python\n  source: {type: package, tool: promptflow.tools.serpapi.SerpAPI.search}\n  inputs: {name: '${inputs.name}'}\n",
        &[
            "tool load failed in `d`",
            "one of promptflow's own tools, which Sluice does not run",
            "SLUICE_USE_PROMPTFLOW=1",
            "tool load failed in `a`",
            "module `nope_pkg` cannot be imported",
            "`pip install` the package",
            "flow.dag.yaml:8:33",
            "tool load failed in `b`",
            "has no `missing`",
            "flow.dag.yaml:12:33",
            "tool load failed in `c`",
            "has no `Greeter.nothing`",
        ],
    );
    assert!(!stderr.contains("copy the"), "{stderr}");
}

#[test]
fn inputs_a_package_tool_does_not_take_and_bad_templates_are_load_errors() {
    let stderr = refused_with_package(
        "inputs:\n  name: {type: string}\noutputs:\n  a: {reference: '${a.output}'}\nnodes:\n- name: a\n  type: python\n  source: {type: package, tool: my_tools.tools.greet.greet}\n  inputs: {name: '${inputs.name}', colour: red}\n- name: b\n  type: custom_llm\n  source: {type: package_with_prompt, tool: my_tools.tools.greet.greet, path: hi.jinja2}\n  inputs: {name: '${inputs.name}'}\n- name: c\n  type: custom_llm\n  source: {type: package_with_prompt, tool: my_tools.tools.greet.templated, path: hi.jinja2}\n  inputs: {suffix: x, who: x}\n- name: d\n  type: python\n  source: {type: package, tool: my_tools.tools.greet.Greeter.hello}\n  inputs: {conn: nobody, name: '${inputs.name}'}\n",
        &[
            "node `a` has input `colour`, which its tool does not take",
            "tool load failed in `b`",
            "takes no prompt template",
            "connection `nobody` does not exist",
        ],
    );
    // `c` is fine: the template's `who` is not one of the tool's parameters.
    assert!(!stderr.contains("failed in `c`"), "{stderr}");
}

#[test]
fn a_template_variable_that_is_also_a_tool_parameter_is_a_load_error() {
    refused_with_package(
        "inputs:\n  name: {type: string}\noutputs:\n  c: {reference: '${c.output}'}\nnodes:\n- name: c\n  type: custom_llm\n  source: {type: package_with_prompt, tool: my_tools.tools.greet.templated, path: clash.jinja2}\n  inputs: {suffix: x}\n",
        &[
            "clash.jinja2 of node `c` uses `suffix`",
            "my_tools.tools.greet.templated also takes as a parameter",
        ],
    );
}

#[test]
fn promptflow_own_package_tools_keep_their_mapping() {
    let (home, dir, packages) = setup("");
    // A package of the mapped tool's name: if the mapping were bypassed, it would run.
    std::fs::create_dir_all(packages.path().join("promptflow_vectordb/tool")).unwrap();
    write_files(
        packages.path(),
        &[
            ("promptflow_vectordb/__init__.py", ""),
            ("promptflow_vectordb/tool/__init__.py", ""),
            (
                "promptflow_vectordb/tool/common_index_lookup.py",
                "def search(mlindex_content, queries, top_k=3):\n    return 'the package ran'\n",
            ),
        ],
    );
    write_files(
        dir.path(),
        &[(
            "flow.dag.yaml",
            "inputs:\n  q: {type: string}\noutputs:\n  a: {reference: '${a.output}'}\nnodes:\n- name: a\n  type: python\n  source: {type: package, tool: promptflow_vectordb.tool.common_index_lookup.search}\n  inputs: {mlindex_content: nowhere.sqlite, queries: '${inputs.q}', top_k: 2}\n",
        )],
    );
    let out = ran(sluice(home.path())
        .env("PYTHONPATH", packages.path())
        .args(["flow", "test", "--inputs", "q=x", "--flow"])
        .arg(dir.path()));
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("uses the index `nowhere.sqlite`, which does not exist"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_package_installed_in_the_active_virtualenv_is_found() {
    let (home, dir, _) = setup(
        "inputs:\n  name: {type: string}\noutputs:\n  a: {reference: '${a.output}'}\nnodes:\n- name: a\n  type: python\n  source: {type: package, tool: my_tools.tools.greet.greet}\n  inputs: {name: '${inputs.name}'}\n",
    );
    let venv = tempfile::tempdir().unwrap();
    assert_ok(
        &std::process::Command::new(option_env!("PYO3_PYTHON").unwrap_or("python3"))
            .args(["-m", "venv", "--without-pip"])
            .arg(venv.path())
            .output()
            .unwrap(),
    );
    let lib = std::fs::read_dir(venv.path().join("lib"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("site-packages").is_dir())
        .expect("the virtualenv has lib/pythonX.Y/site-packages");
    write_package(&lib.join("site-packages"));
    let out = sluice(home.path())
        .env("VIRTUAL_ENV", venv.path())
        .args(["flow", "test", "--inputs", "name=Ed", "--flow"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(stdout_json(&out), json!({"a": "hello Ed"}));
}

/// A package whose tools are described by YAML metadata, as promptflow's tool packages are: its
/// functions and class carry no annotations, so what the metadata declares (connection types, a
/// custom strong-type connection, value types) is all that makes their inputs connections and
/// numbers.
const LOOKUP: &str = r#"from promptflow.connections import CustomStrongTypeConnection
from promptflow.contracts.types import Secret


class GreetingConnection(CustomStrongTypeConnection):
    greeting: Secret


def lookup(conn, key, times=1, mode="plain", extra="unset"):
    return "%s %s %s %r %s %s" % (type(conn).__name__, conn.secrets["greeting"], key, times, mode, extra)


def strong(conn, name):
    return "%s %s %s" % (type(conn).__name__, conn.greeting, name)


class Client:
    def __init__(self, conn, prefix, retries=0):
        self.conn = conn
        self.prefix = prefix
        self.retries = retries

    def ask(self, question):
        return "%s %s %s %r" % (self.prefix, self.conn.secrets["greeting"], question, self.retries)
"#;

/// The tools' YAML, as promptflow's tool package template writes it (`enabled_by`, `enum`, `default`
/// and `icon` only matter to an editor). JSON is YAML, so the listing below reads it without a YAML
/// library.
const LOOKUP_YAML: &str = r#"{
  "yaml_tools.tools.lookup.lookup": {
    "name": "Lookup", "description": "Looks a key up", "type": "python",
    "module": "yaml_tools.tools.lookup", "function": "lookup", "icon": "data:image/png;base64,AAAA",
    "inputs": {
      "conn": {"type": ["CustomConnection"]},
      "key": {"type": ["string"]},
      "times": {"type": ["int"], "default": 1},
      "mode": {"type": ["string"], "enum": ["plain", "fancy"], "default": "plain"},
      "extra": {"type": ["string"], "enabled_by": "mode", "enabled_by_value": ["fancy"], "default": "x"}
    }
  },
  "yaml_tools.strong": {
    "name": "Strong", "type": "python", "module": "yaml_tools.tools.lookup", "function": "strong",
    "inputs": {
      "conn": {"type": ["CustomConnection"], "custom_type": ["GreetingConnection"]},
      "name": {"type": ["string"]}
    }
  },
  "yaml_tools.client": {
    "name": "Client", "type": "python", "module": "yaml_tools.tools.lookup", "class_name": "Client",
    "function": "ask",
    "inputs": {
      "conn": {"type": ["CustomConnection", "OpenAIConnection"]},
      "prefix": {"type": ["string"]},
      "retries": {"type": ["int"]},
      "question": {"type": ["string"], "dynamic_list": {"func_path": "yaml_tools.tools.lookup.lookup"}}
    }
  }
}
"#;

/// Writes the package `yaml_tools` into `dir`, with a `.dist-info` declaring its `package_tools`
/// entry point, which returns the tools' metadata read from `yamls/lookup.yaml`.
fn write_yaml_package(dir: &Path) {
    std::fs::create_dir_all(dir.join("yaml_tools/tools")).unwrap();
    std::fs::create_dir_all(dir.join("yaml_tools/yamls")).unwrap();
    std::fs::create_dir_all(dir.join("yaml_tools-0.1.dist-info")).unwrap();
    write_files(
        dir,
        &[
            ("yaml_tools/__init__.py", ""),
            ("yaml_tools/tools/__init__.py", ""),
            ("yaml_tools/tools/lookup.py", LOOKUP),
            ("yaml_tools/yamls/lookup.yaml", LOOKUP_YAML),
            (
                "yaml_tools/tools/listing.py",
                "import json, pathlib\n\n\ndef list_package_tools():\n    tools = {}\n    for f in (pathlib.Path(__file__).parents[1] / 'yamls').glob('*.yaml'):\n        tools.update(json.loads(f.read_text()))\n    return tools\n",
            ),
            (
                "yaml_tools-0.1.dist-info/METADATA",
                "Metadata-Version: 2.1\nName: yaml-tools\nVersion: 0.1\n",
            ),
            (
                "yaml_tools-0.1.dist-info/entry_points.txt",
                "[package_tools]\nyaml_tools = yaml_tools.tools.listing:list_package_tools\n",
            ),
        ],
    );
}

#[test]
fn the_types_a_tool_package_s_yaml_declares_make_connections_and_numbers() {
    let (home, dir, packages) = setup(
        r#"inputs:
  name: {type: string}
outputs:
  looked: {reference: '${a.output}'}
  strong: {reference: '${b.output}'}
  asked: {reference: '${c.output}'}
nodes:
- name: a
  type: python
  source: {type: package, tool: yaml_tools.tools.lookup.lookup}
  inputs: {conn: greetings, key: '${inputs.name}', times: '3', mode: plain, extra: ''}
- name: b
  type: python
  source: {type: package, tool: yaml_tools.strong}
  inputs: {conn: greetings, name: '${inputs.name}'}
- name: c
  type: python
  source: {type: package, tool: yaml_tools.client}
  inputs: {conn: greetings, prefix: 'Q:', retries: '2', question: '${inputs.name}'}
"#,
    );
    write_yaml_package(packages.path());
    for isolation in ["thread", "process"] {
        assert_eq!(
            tested_in(&home, &dir, &packages, isolation, "Di"),
            json!({
                // `times: '3'` arrives as the int 3; `extra`, left empty where the editor hides
                // it, is no input, so the function's own default applies (the YAML's default is
                // for the editor, as in promptflow).
                "looked": "CustomConnection Howdy Di 3 plain unset",
                "strong": "GreetingConnection Howdy Di",
                "asked": "Q: Howdy Di 2",
            }),
            "isolation {isolation}"
        );
    }
}

#[test]
fn a_connection_of_a_type_the_tool_s_yaml_does_not_declare_is_a_load_error() {
    let (home, dir, packages) = setup(
        "inputs:\n  name: {type: string}\noutputs:\n  a: {reference: '${a.output}'}\n  c: {reference: '${c.output}'}\nnodes:\n- name: a\n  type: python\n  source: {type: package, tool: yaml_tools.tools.lookup.lookup}\n  inputs: {conn: azure, key: '${inputs.name}'}\n- name: c\n  type: python\n  source: {type: package, tool: yaml_tools.client}\n  inputs: {conn: azure, prefix: x, question: '${inputs.name}'}\n",
    );
    write_yaml_package(packages.path());
    add_connection(
        home.path(),
        "azure",
        "name: azure\ntype: azure_open_ai\napi_key: k\napi_base: https://x.invalid\n",
    );
    refused_by(
        sluice(home.path()).env("PYTHONPATH", packages.path()),
        dir.path(),
        &[
            "node `a`, input `conn`",
            "takes CustomConnection, but connection `azure` is of type azure_open_ai",
            "tool load failed in `c`",
            "init input `conn`",
            "takes CustomConnection or OpenAIConnection, but connection `azure` is of type azure_open_ai",
        ],
    );
}
