//! Flex flows (`flow.flex.yaml`): function and class entries run on the embedded interpreter with
//! `flow test`, `flow validate` and `run create` (batch, eval, resume), their outputs shaped as
//! promptflow shapes them (dict keys, `output`, dataclasses, joined generators), `__aggregate__` as
//! run metrics, errors in promptflow's shape, and flows written like promptflow's own
//! examples/flex-flows (chat-basic, eval-code-quality) against a fake OpenAI server.

use std::path::Path;

use serde_json::{Value as Json, json};

use crate::common::{
    add_connection, ran, read_jsonl, refused, run_create, serve, sluice, tested, write_files,
};
use crate::fake::{FakeServer, ok_body};

/// A function entry: typed and defaulted parameters, an environment variable from the YAML.
const GREET: &[(&str, &str)] = &[
    (
        "flow.flex.yaml",
        "entry: greet:hello\nenvironment_variables:\n  GREETING: Hi\nsample:\n  inputs:\n    name: Sample\n",
    ),
    (
        "greet.py",
        r#"import os
from promptflow.tracing import trace


@trace
def hello(name: str, times: int = 1, tags: list = None):
    return {"text": " ".join([os.environ["GREETING"] + " " + name] * times), "tags": tags}
"#,
    ),
];

/// A class entry made with `init`, returning a dataclass, with `__aggregate__`.
const SCORER: &[(&str, &str)] = &[
    (
        "flow.flex.yaml",
        "entry: scorer:Scorer\nsample:\n  inputs: {answer: '4', truth: '4'}\n  init: {bonus: 1}\n",
    ),
    (
        "scorer.py",
        r#"from dataclasses import dataclass


@dataclass
class Score:
    score: int
    match: bool


class Scorer:
    def __init__(self, bonus: int, label: str = "s"):
        self.bonus = bonus

    def __call__(self, answer: str, truth: str) -> Score:
        if answer == "boom":
            raise ValueError("cannot score boom")
        return Score(score=int(answer == truth) + self.bonus, match=answer == truth)

    def __aggregate__(self, line_results):
        # Dicts arrive with attribute access, as in promptflow.
        return {"accuracy": sum(r.match for r in line_results) / len(line_results), "lines": len(line_results)}
"#,
    ),
    (
        "data.jsonl",
        "{\"answer\": \"1\", \"truth\": \"1\"}\n{\"answer\": \"2\", \"truth\": \"3\"}\n{\"answer\": \"boom\", \"truth\": \"3\"}\n",
    ),
];

/// A function returning a number, or text for negative numbers.
const DOUBLE: (&str, &str) = (
    "calc.py",
    "def double(x: int, label: str = 'n'):\n    return x * 2 if x >= 0 else f'{label}{x}'\n",
);

/// A generator of words.
const SAY: (&str, &str) = (
    "words.py",
    "def say(text: str, n: int = 2):\n    for w in text.split()[:n]:\n        yield w + ' '\n",
);

fn flow_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), files);
    dir
}

/// `sluice flow test --flow FLOW ARGS`, run to its end.
fn test_run(home: &Path, flow: &Path, args: &[&str]) -> crate::common::Ran {
    ran(sluice(home)
        .args(["flow", "test", "--flow"])
        .arg(flow)
        .args(args))
}

/// A flow folder of `flow.flex.yaml` (`entry: ENTRY`), the entry's module `(file, code)` and
/// `data.jsonl`.
fn flex_flow(entry: &str, (file, code): (&str, &str), data: &str) -> tempfile::TempDir {
    flow_dir(&[
        ("flow.flex.yaml", &format!("entry: {entry}\n")),
        (file, code),
        ("data.jsonl", data),
    ])
}

/// `sluice run create --name NAME OPTIONS --flow FLOW --data FLOW/data.jsonl`, which must succeed;
/// the run record it printed.
fn batch(home: &Path, name: &str, options: &str, flow: &Path) -> Json {
    let out = ran(&mut run_create(
        home,
        name,
        options,
        flow,
        &flow.join("data.jsonl"),
    ));
    assert!(out.success, "{}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

/// A flow folder of `files`, and what `flow test` prints for it given no inputs (its sample's).
fn with_sample(home: &Path, files: &[(&str, &str)]) -> (tempfile::TempDir, Json) {
    let dir = flow_dir(files);
    let output = tested(home, dir.path(), &[]);
    (dir, output)
}

#[test]
fn a_function_entry_takes_its_inputs_from_its_signature() {
    let home = tempfile::tempdir().unwrap();
    // No inputs: the sample's; the YAML's environment variable reaches the entry.
    let (dir, sample) = with_sample(home.path(), GREET);
    assert_eq!(sample, json!({"text": "Hi Sample", "tags": null}));
    // Text is converted to the annotated type; the file itself names the flow too.
    let file = dir.path().join("flow.flex.yaml");
    assert_eq!(
        tested(
            home.path(),
            &file,
            &["--inputs", "name=Bob", "times=2", "tags=[\"a\"]"]
        ),
        json!({"text": "Hi Bob Hi Bob", "tags": ["a"]})
    );
    let valid = ran(sluice(home.path())
        .args(["flow", "validate", "--flow"])
        .arg(dir.path()));
    assert!(valid.success, "{}", valid.stderr);
    assert!(valid.stderr.contains("3 inputs"), "{}", valid.stderr);
}

#[test]
fn a_value_that_is_not_a_dict_is_the_output_named_output() {
    let home = tempfile::tempdir().unwrap();
    let dir = flex_flow(
        "calc:double",
        DOUBLE,
        "{\"x\": \"4\"}\n{\"x\": 5}\n{\"x\": -1}\n",
    );
    // flow test prints the value as promptflow does: a number as JSON, text as it is.
    let out = test_run(home.path(), dir.path(), &["--inputs", "x=3"]);
    assert_eq!(out.stdout.trim(), "6", "{}", out.stderr);
    let out = test_run(home.path(), dir.path(), &["--inputs", "x=-2"]);
    assert_eq!(out.stdout.trim(), "n-2", "{}", out.stderr);
    let saved: Json = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(".promptflow/flow.output.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved, json!({"output": "n-2"}));
    // A batch run stores `{"output": value}` per line.
    let record = batch(home.path(), "doubles", "", dir.path());
    assert_eq!(record["status"], "Completed");
    let outputs = read_jsonl(&home.path().join("runs/doubles/outputs.jsonl"));
    assert_eq!(
        outputs,
        vec![
            json!({"line_number": 0, "output": 8}),
            json!({"line_number": 1, "output": 10}),
            json!({"line_number": 2, "output": "n-1"}),
        ]
    );
}

#[test]
fn a_class_entry_is_made_with_init_and_aggregates_a_batch_into_metrics() {
    let home = tempfile::tempdir().unwrap();
    // The sample's init and inputs; the dataclass comes back as its dict.
    let (dir, sample) = with_sample(home.path(), SCORER);
    assert_eq!(sample, json!({"score": 2, "match": true}));
    // --init as a JSON object, and as a file.
    assert_eq!(
        tested(
            home.path(),
            dir.path(),
            &[
                "--init",
                "{\"bonus\": 10}",
                "--inputs",
                "answer=1",
                "truth=2"
            ]
        ),
        json!({"score": 10, "match": false})
    );
    // `key=value` gives text; `bonus: int` gets a number, as a flow input would.
    let typed = ["--init", "bonus=10", "--inputs", "answer=2", "truth=2"];
    assert_eq!(
        tested(home.path(), dir.path(), &typed),
        json!({"score": 11, "match": true})
    );
    std::fs::write(dir.path().join("init.json"), "{\"bonus\": 5}").unwrap();
    let init = dir.path().join("init.json");
    let options = format!("--init {}", init.display());
    let record = batch(home.path(), "scored", &options, dir.path());
    // The failed line is left out of the aggregation.
    assert_eq!(record["metrics"], json!({"accuracy": 0.5, "lines": 2}));
    assert_eq!(
        read_jsonl(&home.path().join("runs/scored/outputs.jsonl")),
        vec![
            json!({"line_number": 0, "score": 6, "match": true}),
            json!({"line_number": 1, "score": 5, "match": false}),
        ]
    );
    // The failure in promptflow's shape for flex entries.
    let details = read_jsonl(&home.path().join("runs/scored/details.jsonl"));
    let failed = details
        .iter()
        .find(|d| d["status"] == "Failed")
        .expect("a failed line");
    let error = &failed["error"];
    assert_eq!(
        error["message"],
        "Execution failure in 'Scorer.__call__': (ValueError) cannot score boom"
    );
    assert_eq!(error["innerError"]["code"], "ScriptExecutionError");
    assert_eq!(error["messageParameters"]["func_name"], "Scorer.__call__");
    assert_eq!(
        error["additionalInfo"][0]["type"],
        "FlexFlowExecutionErrorDetails"
    );

    // Resuming takes the run's init: only the failed line runs again, and fails again.
    let out = ran(sluice(home.path()).args([
        "run",
        "create",
        "--resume-from",
        "scored",
        "--name",
        "scored_again",
    ]));
    assert!(out.success, "{}", out.stderr);
    let record: Json = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(record["metrics"], json!({"accuracy": 0.5, "lines": 2}));
    assert_eq!(record["properties"]["init"], json!({"bonus": 5}));

    // A run file's `init:`.
    write_files(
        dir.path(),
        &[(
            "run.yml",
            "flow: .\ndata: data.jsonl\ninit:\n  bonus: 100\ncolumn_mapping:\n  answer: ${data.truth}\n",
        )],
    );
    let out = ran(sluice(home.path())
        .args(["run", "create", "--name", "from_file", "-f"])
        .arg(dir.path().join("run.yml")));
    assert!(out.success, "{}", out.stderr);
    let record: Json = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(record["metrics"], json!({"accuracy": 1.0, "lines": 3}));
    let outputs = read_jsonl(&home.path().join("runs/from_file/outputs.jsonl"));
    assert_eq!(
        outputs[2],
        json!({"line_number": 2, "score": 101, "match": true})
    );
}

#[test]
fn an_eval_run_scores_a_flex_flow_run_and_resume_keeps_its_lines() {
    let home = tempfile::tempdir().unwrap();
    let base = flow_dir(GREET);
    write_files(
        base.path(),
        &[("data.jsonl", "{\"name\": \"Ann\"}\n{\"name\": \"Bo\"}\n")],
    );
    batch(home.path(), "greetings", "", base.path());
    let eval = flow_dir(&[
        ("flow.flex.yaml", "entry: judge:Judge\n"),
        (
            "judge.py",
            r#"class Judge:
    def __call__(self, text: str, expected: str) -> dict:
        return {"exact": text == expected}

    def __aggregate__(self, results):
        return {"exact_rate": sum(r["exact"] for r in results) / len(results)}
"#,
        ),
        (
            "truth.jsonl",
            "{\"name\": \"Ann\", \"want\": \"Hi Ann\"}\n{\"name\": \"Bo\", \"want\": \"Hi Bob\"}\n",
        ),
    ]);
    let out = ran(sluice(home.path())
        .args([
            "run",
            "create",
            "--name",
            "judged",
            "--run",
            "greetings",
            "--data",
        ])
        .arg(eval.path().join("truth.jsonl"))
        .arg("--flow")
        .arg(eval.path())
        .args([
            "--column-mapping",
            "text=${run.outputs.text}",
            "expected=${data.want}",
        ]));
    assert!(out.success, "{}", out.stderr);
    let record: Json = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(record["metrics"], json!({"exact_rate": 0.5}));

    // Resuming a run of a flex flow keeps its lines and runs none again.
    let out = ran(sluice(home.path()).args([
        "run",
        "create",
        "--resume-from",
        "greetings",
        "--name",
        "greetings_again",
    ]));
    assert!(out.success, "{}", out.stderr);
    assert_eq!(
        read_jsonl(&home.path().join("runs/greetings_again/outputs.jsonl")),
        read_jsonl(&home.path().join("runs/greetings/outputs.jsonl"))
    );
}

#[test]
fn a_generator_is_joined_in_a_batch_and_streamed_by_flow_test() {
    let home = tempfile::tempdir().unwrap();
    let data = "{\"text\": \"a b c\"}\n{\"text\": \"x y z\", \"n\": 3}\n";
    let dir = flex_flow("words:say", SAY, data);
    let out = test_run(home.path(), dir.path(), &["--inputs", "text=one two three"]);
    assert_eq!(out.stdout.trim_end(), "one two", "{}", out.stderr);
    let out = test_run(
        home.path(),
        dir.path(),
        &["--stream", "--inputs", "text=one two three"],
    );
    assert!(out.success, "{}", out.stderr);
    assert!(out.stdout.contains("one two"), "{}", out.stdout);
    batch(home.path(), "said", "", dir.path());
    // An input with a default is not taken from a same-named column unless mapped, as in
    // promptflow; mapped, it is.
    assert_eq!(
        read_jsonl(&home.path().join("runs/said/outputs.jsonl")),
        vec![
            json!({"line_number": 0, "output": "a b "}),
            json!({"line_number": 1, "output": "x y "}),
        ]
    );
    batch(
        home.path(),
        "said_mapped",
        "--column-mapping text=${data.text} n=${data.n}",
        dir.path(),
    );
    let outputs = read_jsonl(&home.path().join("runs/said_mapped/outputs.jsonl"));
    assert!(
        outputs.contains(&json!({"line_number": 1, "output": "x y z "})),
        "{outputs:?}"
    );
}

#[test]
fn flex_flow_mistakes_are_refused_with_their_place() {
    let home = tempfile::tempdir().unwrap();
    // A malformed entry, at its line and column.
    let dir = flow_dir(&[("flow.flex.yaml", "# a flow\nentry: not an entry\n")]);
    refused(
        home.path(),
        dir.path(),
        &[
            "InvalidFlexFlowError",
            "flow.flex.yaml:2:8",
            "<module>:<function or class>",
        ],
    );
    // A module that does not exist.
    let dir = flow_dir(&[("flow.flex.yaml", "entry: nowhere:run\n")]);
    refused(
        home.path(),
        dir.path(),
        &["flow.flex.yaml:1:8", "entry module `nowhere` is not found"],
    );
    // A function the module lacks.
    let dir = flow_dir(&[
        ("flow.flex.yaml", "entry: mod:missing\n"),
        ("mod.py", "def present():\n    return 1\n"),
    ]);
    refused(home.path(), dir.path(), &["has no `missing`"]);
    // An unknown top-level field.
    let dir = flow_dir(&[
        ("flow.flex.yaml", "entry: mod:present\nnodes: []\n"),
        ("mod.py", "def present():\n    return 1\n"),
    ]);
    refused(
        home.path(),
        dir.path(),
        &["flow.flex.yaml:2:1", "unknown field `nodes`"],
    );
    // A class without the init it needs, and with one it does not take.
    let scorer = flow_dir(SCORER);
    let yaml = scorer.path().join("flow.flex.yaml");
    std::fs::write(&yaml, "entry: scorer:Scorer\n").unwrap();
    refused(
        home.path(),
        scorer.path(),
        &["Scorer.__init__ needs `bonus`", "--init"],
    );
    let out = test_run(
        home.path(),
        scorer.path(),
        &["--init", "{\"bonus\": 1, \"colour\": \"red\"}"],
    );
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("`colour`") && out.stderr.contains("bonus, label"),
        "{}",
        out.stderr
    );
    // Flex flows have no variants.
    let out = test_run(home.path(), scorer.path(), &["--variant", "${x.v1}"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("a flex flow has no variants"),
        "{}",
        out.stderr
    );
    // An exception in the entry at flow test: the entry named, the traceback shown, exit 1.
    let out = test_run(
        home.path(),
        scorer.path(),
        &["--init", "bonus=1", "--inputs", "answer=boom", "truth=1"],
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("Execution failure in 'Scorer.__call__': (ValueError) cannot score boom")
            && out.stderr.contains("scorer.py\", line"),
        "{}",
        out.stderr
    );
}

/// promptflow's examples/flex-flows/chat-basic and eval-code-quality, in their shape: a class
/// whose `__init__` takes an `AzureOpenAIModelConfiguration` naming a connection, calling a prompty
/// through `Prompty.load(..., model={"configuration": ...})`, the evaluator aggregating its lines.
#[test]
fn flows_like_promptflows_flex_examples_call_the_model_their_init_configures() {
    let home = tempfile::tempdir().unwrap();
    let rec = FakeServer::replying(ok_body(
        "{\"correctness\": 4, \"readability\": 3, \"explanation\": \"fine\"}",
    ));
    add_connection(
        home.path(),
        "aoai",
        &format!(
            "name: aoai\ntype: azure_open_ai\napi_key: k\napi_base: {}\napi_version: 2024-06-01\n",
            rec.base
        ),
    );
    // benches/flows/flex_chat, the flow benches/compare_flex.sh times.
    let chat = tempfile::tempdir().unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/flows/flex_chat");
    for file in ["flow.flex.yaml", "flow.py", "chat.prompty"] {
        std::fs::copy(source.join(file), chat.path().join(file)).unwrap();
    }
    write_files(
        chat.path(),
        &[(
            "init.json",
            "{\"model_config\": {\"connection\": \"aoai\", \"azure_deployment\": \"gpt-4o\"}, \"max_total_token\": 1024}",
        )],
    );
    let init = chat.path().join("init.json");
    let out = test_run(
        home.path(),
        chat.path(),
        &["--init", init.to_str().unwrap()],
    );
    assert!(out.success, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim_end(),
        "{\"correctness\": 4, \"readability\": 3, \"explanation\": \"fine\"}"
    );
    // As promptflow sends it: to the connection's deployment, the prompty's parameters.
    let sent = rec.request_to("/openai/deployments/gpt-4o/chat/completions");
    assert_eq!(sent["temperature"], json!(0.2));
    assert_eq!(sent["max_tokens"], json!(1024));
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is Azure Machine Learning?"}
        ])
    );

    let eval = flow_dir(&[
        ("flow.flex.yaml", "entry: code_quality:CodeEvaluator\n"),
        (
            "code_quality.py",
            r#"import json
from pathlib import Path
from typing import TypedDict

from promptflow.core import AzureOpenAIModelConfiguration
from promptflow.core._flow import Prompty

BASE_DIR = Path(__file__).absolute().parent


class Result(TypedDict):
    correctness: float
    readability: float
    explanation: str


class CodeEvaluator:
    def __init__(self, model_config: AzureOpenAIModelConfiguration):
        self.model_config = model_config

    def __call__(self, code: str) -> Result:
        prompty = Prompty.load(source=BASE_DIR / "eval.prompty", model={"configuration": self.model_config})
        return Result(**json.loads(prompty(code=code)))

    def __aggregate__(self, line_results: list) -> dict:
        total = len(line_results)
        return {
            "average_correctness": sum(int(r["correctness"]) for r in line_results) / total,
            "total": total,
        }
"#,
        ),
        (
            "eval.prompty",
            "---\nname: Evaluate code quality\nmodel:\n  api: chat\n  configuration:\n    type: azure_openai\n    azure_deployment: gpt-4o\n  parameters:\n    temperature: 0.2\ninputs:\n  code:\n    type: string\n---\nsystem:\nRate the code.\nuser:\n{{code}}\n",
        ),
        (
            "init.json",
            "{\"model_config\": {\"connection\": \"aoai\", \"azure_deployment\": \"gpt-4o\"}}",
        ),
        (
            "data.jsonl",
            "{\"code\": \"print(1)\"}\n{\"code\": \"printf(1)\"}\n",
        ),
    ]);
    let options = format!("--init {}", eval.path().join("init.json").display());
    let record = batch(home.path(), "quality", &options, eval.path());
    assert_eq!(
        record["metrics"],
        json!({"average_correctness": 4.0, "total": 2})
    );
    assert_eq!(
        read_jsonl(&home.path().join("runs/quality/outputs.jsonl"))[1],
        json!({"line_number": 1, "correctness": 4, "readability": 3, "explanation": "fine"})
    );
}

#[test]
fn flow_serve_runs_a_class_entry_made_with_pf_flow_init_config() {
    let home = tempfile::tempdir().unwrap();
    let dir = flow_dir(SCORER);
    let served = serve(
        home.path(),
        &[
            "flow",
            "serve",
            "--port",
            "0",
            "--flow",
            dir.path().to_str().unwrap(),
        ],
        &[("PF_FLOW_INIT_CONFIG", "{\"bonus\": 7}")],
    );
    let answer = served.post_json("/score", &json!({"answer": "1", "truth": "2"}));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body: Json = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(body, json!({"score": 7, "match": false}));
}
