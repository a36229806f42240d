//! `sluice index` and `retrieval` nodes on the real embedding model (all-MiniLM-L6-v2, converted by
//! `sluice model pull minilm`): the right document comes first, rebuilds embed only what changed, and a
//! flow retrieves from an index.

use std::path::Path;

use assert_cmd::Command;
use serde_json::Value as Json;

struct Env {
    home: tempfile::TempDir,
    docs: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let docs = tempfile::tempdir().unwrap();
        for (name, text) in [
            (
                "bees.md",
                "# Bees\n\nHoney bees live in hives and make honey from the nectar of flowers. A colony has one queen.\n",
            ),
            (
                "volcanoes.txt",
                "Volcanoes erupt when molten rock, called magma, rises through the crust and escapes as lava and ash.\n",
            ),
            (
                "trains.html",
                "<html><body><h1>Trains</h1><p>Steam locomotives pulled the first passenger trains along iron rails.</p><script>var x = 1;</script></body></html>",
            ),
        ] {
            std::fs::write(docs.path().join(name), text).unwrap();
        }
        Env {
            home: tempfile::tempdir().unwrap(),
            docs,
        }
    }

    fn sluice(&self) -> Command {
        let mut c = Command::cargo_bin("sluice").unwrap();
        c.env("SLUICE_HOME", self.home.path())
            .env("SLUICE_MODELS_DIR", sluice_nodes::llm::store::models_dir());
        c
    }

    fn json(&self, args: &[&str]) -> Json {
        let out = self.sluice().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn build(&self) -> Json {
        let docs = self.docs.path().to_str().unwrap().to_owned();
        self.json(&["index", "build", "--source", &docs, "--out", "kb"])
    }
}

#[test]
fn the_right_document_comes_first_and_rebuilds_are_incremental() {
    let env = Env::new();
    let report = env.build();
    assert_eq!(report["report"]["files_embedded"], 3);
    assert_eq!(report["info"]["dims"], 384);
    for (question, want) in [
        ("Where do honey bees live?", "bees.md"),
        ("What comes out of an erupting mountain?", "volcanoes.txt"),
        ("What pulled early passenger trains?", "trains.html"),
    ] {
        for hybrid in [false, true] {
            let mut args = vec!["index", "query", "kb", question, "-k", "3"];
            if hybrid {
                args.push("--hybrid");
            }
            let hits = env.json(&args);
            let top = hits[0]["source"].as_str().unwrap();
            assert!(top.ends_with(want), "{question} (hybrid {hybrid}): {hits}");
        }
    }
    // HTML is indexed as text: no tags, no script.
    let hits = env.json(&["index", "query", "kb", "steam locomotives", "-k", "1"]);
    let text = hits[0]["text"].as_str().unwrap();
    assert!(
        text.contains("Steam locomotives") && !text.contains('<') && !text.contains("var x"),
        "{text}"
    );

    // Only the changed file is embedded again; a deleted file leaves the index.
    std::fs::write(
        env.docs.path().join("bees.md"),
        "# Bees\n\nBumblebees are fuzzy and can sting more than once.\n",
    )
    .unwrap();
    std::fs::remove_file(env.docs.path().join("trains.html")).unwrap();
    let report = env.build();
    assert_eq!(report["report"]["files_embedded"], 1);
    assert_eq!(report["report"]["files_unchanged"], 1);
    assert_eq!(report["report"]["files_removed"], 1);
    let hits = env.json(&["index", "query", "kb", "fuzzy bumblebees", "-k", "5"]);
    assert!(hits[0]["text"].as_str().unwrap().contains("Bumblebees"));
    assert!(
        hits.as_array()
            .unwrap()
            .iter()
            .all(|h| !h["source"].as_str().unwrap().ends_with("trains.html"))
    );
    assert_eq!(env.json(&["index", "list"]), serde_json::json!(["kb"]));
    assert_eq!(env.json(&["index", "info", "kb"])["files"], 2);
}

#[test]
fn a_flow_retrieves_from_an_index() {
    let env = Env::new();
    env.build();
    let flow = tempfile::tempdir().unwrap();
    std::fs::write(
        flow.path().join("flow.dag.yaml"),
        "inputs:\n  question: {type: string}\noutputs:\n  hits: {reference: '${search.output}'}\nnodes:\n- name: search\n  type: retrieval\n  inputs:\n    index: kb\n    query: ${inputs.question}\n    top_k: 2\n",
    )
    .unwrap();
    let v = env.json(&[
        "flow",
        "test",
        "--inputs",
        "question=Where do honey bees live?",
        "--flow",
        flow.path().to_str().unwrap(),
    ]);
    let hits = v["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 2);
    assert!(
        hits[0]["source"].as_str().unwrap().ends_with("bees.md"),
        "{v}"
    );
    assert!(hits[0]["score"].as_f64().unwrap() > hits[1]["score"].as_f64().unwrap());
    assert_eq!(hits[0]["metadata"]["heading"], "Bees");
    // A missing index is found when the flow loads.
    let yaml = std::fs::read_to_string(flow.path().join("flow.dag.yaml")).unwrap();
    std::fs::write(
        flow.path().join("flow.dag.yaml"),
        yaml.replace("index: kb", "index: nope"),
    )
    .unwrap();
    env.sluice()
        .args(["flow", "validate", "--flow"])
        .arg(flow.path())
        .assert()
        .code(2)
        .stderr(predicates::str::contains("index `nope`"));
    let _ = Path::new(".");
}
