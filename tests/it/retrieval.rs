//! `sluice index` and `retrieval` nodes on the real embedding model (all-MiniLM-L6-v2, converted by
//! `sluice model pull minilm`): the right document comes first, rebuilds embed only what changed, and a
//! flow retrieves from an index.

use crate::common;

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
        common::sluice(self.home.path())
    }

    fn json(&self, args: &[&str]) -> Json {
        common::json(self.home.path(), args)
    }

    /// Writes `yaml` as the flow in `dir` and returns what `flow test` with `inputs` prints.
    fn flow_test(&self, dir: &Path, yaml: &str, inputs: &[&str]) -> Json {
        std::fs::write(dir.join("flow.dag.yaml"), yaml).unwrap();
        let mut args = vec!["flow", "test", "--flow", dir.to_str().unwrap(), "--inputs"];
        args.extend(inputs);
        self.json(&args)
    }

    /// Writes `yaml` as the flow in `dir` and checks that loading it fails (exit 2) saying `needle`.
    fn load_error(&self, dir: &Path, yaml: &str, needle: &str) {
        std::fs::write(dir.join("flow.dag.yaml"), yaml).unwrap();
        crate::common::refused(self.home.path(), dir, &[needle]);
    }

    /// `sluice index query kb TEXT ARGS`: the hits.
    fn query(&self, text: &str, args: &[&str]) -> Json {
        let mut all = vec!["index", "query", "kb", text];
        all.extend(args);
        self.json(&all)
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
    let hits = env.query("steam locomotives", &["-k", "1"]);
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
    let hits = env.query("fuzzy bumblebees", &["-k", "5"]);
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
    let yaml = "inputs:\n  question: {type: string}\noutputs:\n  hits: {reference: '${search.output}'}\nnodes:\n- name: search\n  type: retrieval\n  inputs:\n    index: kb\n    query: ${inputs.question}\n    top_k: 2\n";
    let v = env.flow_test(flow.path(), yaml, &["question=Where do honey bees live?"]);
    let hits = v["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 2);
    assert!(source(&hits[0]).ends_with("bees.md"), "{v}");
    assert!(hits[0]["score"].as_f64().unwrap() > hits[1]["score"].as_f64().unwrap());
    assert_eq!(hits[0]["metadata"]["heading"], "Bees");
    // A missing index is found when the flow loads.
    let missing = yaml.replace("index: kb", "index: nope");
    env.load_error(flow.path(), &missing, "index `nope`");
}

/// Flows written for promptflow's embedding and vector lookup tools run on Sluice's kinds unchanged
/// (but for the index, which is a Sluice index name).
#[test]
fn promptflow_vector_tools_map_to_sluice_kinds() {
    let env = Env::new();
    env.build();
    let flow = tempfile::tempdir().unwrap();
    let yaml = r#"inputs:
  question: {type: string}
outputs:
  vector: {reference: '${embed.output}'}
  by_vector: {reference: '${by_vector.output}'}
  faiss: {reference: '${faiss.output}'}
  lookup: {reference: '${lookup.output}'}
  many: {reference: '${many.output}'}
nodes:
- name: embed
  type: python
  source: {type: package, tool: promptflow.tools.embedding.embedding}
  inputs:
    connection: local
    deployment_name: minilm
    input: ${inputs.question}
- name: by_vector
  type: python
  source: {type: package, tool: promptflow_vectordb.tool.vector_index_lookup.VectorIndexLookup.search}
  inputs: {path: kb, query: '${embed.output}', top_k: 2}
- name: faiss
  type: python
  source: {type: package, tool: promptflow_vectordb.tool.faiss_index_lookup.FaissIndexLookup.search}
  inputs: {path: kb, vector: '${embed.output}', top_k: 1}
- name: lookup
  type: python
  source: {type: package, tool: promptflow_vectordb.tool.common_index_lookup.search}
  inputs: {mlindex_content: kb, queries: '${inputs.question}', query_type: Hybrid (vector + keyword), top_k: 2}
- name: many
  type: python
  source: {type: package, tool: promptflow_vectordb.tool.common_index_lookup.search}
  inputs: {mlindex_content: kb, queries: ["steam locomotives", "lava and ash"], query_type: Vector, top_k: 1}
"#;
    let v = env.flow_test(flow.path(), yaml, &["question=Where do honey bees live?"]);
    assert_eq!(v["vector"].as_array().unwrap().len(), 384);
    for node in ["by_vector", "faiss", "lookup"] {
        let top = v[node][0]["source"].as_str().unwrap();
        assert!(top.ends_with("bees.md"), "{node}: {v}");
    }
    assert_eq!(v["by_vector"].as_array().unwrap().len(), 2);
    // The vector lookup scores like the text query it came from.
    let by_text = env.query("Where do honey bees live?", &["-k", "1"]);
    let (a, b) = (
        v["faiss"][0]["score"].as_f64().unwrap(),
        by_text[0]["score"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    let many = v["many"].as_array().unwrap();
    assert!(source(&many[0][0]).ends_with("trains.html"), "{v}");
    assert!(source(&many[1][0]).ends_with("volcanoes.txt"), "{v}");

    // An Azure ML index description is not a Sluice index: the load error says what to do.
    env.load_error(
        flow.path(),
        &yaml.replace(
            "mlindex_content: kb, queries: '${",
            "mlindex_content: \"azureml://subscriptions/x/index\", queries: '${",
        ),
        "sluice index build",
    );
}

/// Where a hit came from.
fn source(hit: &Json) -> &str {
    hit["source"].as_str().unwrap()
}

/// A one-page PDF with `text` in Helvetica (offsets in the cross-reference table computed here).
fn pdf(text: &str) -> Vec<u8> {
    let content = format!("BT /F1 12 Tf 72 720 Td ({text}) Tj ET");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>".to_owned(),
        format!("<< /Length {} >>\nstream\n{content}\nendstream", content.len()),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_owned(),
    ];
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend(format!("{} 0 obj\n{o}\nendobj\n", i + 1).bytes());
    }
    let xref = out.len();
    out.extend(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).bytes());
    for o in offsets {
        out.extend(format!("{o:010} 00000 n \n").bytes());
    }
    out.extend(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .bytes(),
    );
    out
}

#[test]
fn pdfs_front_matter_filters_and_unreadable_files() {
    let env = Env::new();
    std::fs::write(
        env.docs.path().join("glaciers.pdf"),
        pdf("Glaciers are rivers of ice that carve deep valleys into mountains."),
    )
    .unwrap();
    std::fs::write(
        env.docs.path().join("hives.md"),
        "---\ntitle: Hive care\ntags: [bees, farming]\n---\n# Hive care\n\nBeekeepers inspect the hive every week for the queen and her eggs.\n",
    )
    .unwrap();
    std::fs::write(
        env.docs.path().join("broken.pdf"),
        b"%PDF-1.4 this is not a pdf",
    )
    .unwrap();
    let docs = env.docs.path().to_str().unwrap().to_owned();
    let out = env
        .sluice()
        .args(["index", "build", "--source", &docs, "--out", "kb"])
        .output()
        .unwrap();
    // The broken file fails the command (exit 1) and is named; the others are indexed.
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.pdf"), "{stderr}");
    let report: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["report"]["files_embedded"], 5, "{report}");
    assert!(
        report["report"]["files_failed"][0]["path"]
            .as_str()
            .unwrap()
            .ends_with("broken.pdf")
    );

    // PDF text is found by meaning.
    let hits = env.query("ice flowing through mountain valleys", &["-k", "1"]);
    assert!(source(&hits[0]).ends_with("glaciers.pdf"), "{hits}");
    assert!(hits[0]["text"].as_str().unwrap().contains("rivers of ice"));

    // Front matter is metadata: the filter keeps only matching chunks, whatever the query says.
    let hits = env.query(
        "Where do honey bees live?",
        &["-k", "5", "--filter", "tags=farming"],
    );
    let hits = hits.as_array().unwrap();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert!(source(&hits[0]).ends_with("hives.md"));
    assert_eq!(hits[0]["metadata"]["title"], "Hive care");
    assert_eq!(
        hits[0]["metadata"]["tags"],
        serde_json::json!(["bees", "farming"])
    );
    // Any of several values; the file name is metadata too.
    let hits = env.query(
        "honey",
        &[
            "-k",
            "5",
            "--filter",
            "file=bees.md",
            "--filter",
            "file=trains.html",
            "--hybrid",
        ],
    );
    let files: Vec<&str> = hits
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["metadata"]["file"].as_str().unwrap())
        .collect();
    assert_eq!(files, ["bees.md", "trains.html"], "{hits}");
    env.sluice()
        .args(["index", "query", "kb", "x", "--filter", "nokey"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("KEY=VALUE"));

    // In a flow: a filter from the inputs, and a bad literal filter caught at load.
    let flow = tempfile::tempdir().unwrap();
    let yaml = "inputs:\n  question: {type: string}\n  only: {type: object}\noutputs:\n  hits: {reference: '${search.output}'}\nnodes:\n- name: search\n  type: retrieval\n  inputs:\n    index: kb\n    query: ${inputs.question}\n    top_k: 3\n    filter: ${inputs.only}\n";
    let v = env.flow_test(
        flow.path(),
        yaml,
        &["question=trains", r#"only={"tags": "bees"}"#],
    );
    let hits = v["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 1, "{v}");
    assert_eq!(hits[0]["metadata"]["file"], "hives.md");
    env.load_error(
        flow.path(),
        &yaml.replace("filter: ${inputs.only}", "filter: [1, 2]"),
        "filter",
    );
}

#[test]
fn hnsw_recall_at_10_against_exact_search() {
    use sluice_nodes::retrieval::index::{Index, Ranking};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("synthetic.sqlite");
    let (n, dims) = (20_000, 384);
    let vectors = sluice_nodes::retrieval::ann::synthetic_vectors(n, dims, 42);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut index = Index::open(&path).unwrap();
    index.set_model("synthetic", dims).unwrap();
    rt.block_on(index.put_synthetic(&vectors)).unwrap();
    index.build_ann_now().unwrap();
    // A fresh handle loads the saved graph.
    drop(index);
    let mut index = Index::open(&path).unwrap();
    assert_eq!(index.info().unwrap()["ann"], true);
    let queries = sluice_nodes::retrieval::ann::synthetic_vectors(200, dims, 7);
    let mut found = 0;
    for q in &queries {
        let exact: std::collections::HashSet<i64> = index
            .rank(Ranking::Exact, q, 10, None)
            .unwrap()
            .into_iter()
            .map(|h| h.0)
            .collect();
        let approx = index.rank(Ranking::Vectors, q, 10, None).unwrap();
        assert_eq!(approx.len(), 10);
        found += approx.iter().filter(|h| exact.contains(&h.0)).count();
    }
    let recall = found as f64 / (10 * queries.len()) as f64;
    eprintln!("HNSW recall@10 over {n} vectors: {recall:.4}");
    assert!(recall >= 0.95, "recall@10 {recall}");
    // A change makes the graph stale: searches are exact again until the next build.
    index.bump_generation().unwrap();
    assert_eq!(index.info().unwrap()["ann"], false);
    let q = &queries[0];
    assert_eq!(
        index.rank(Ranking::Vectors, q, 10, None).unwrap(),
        index.rank(Ranking::Exact, q, 10, None).unwrap()
    );
}

/// The same documents in the embedded store and in a Chroma server give the same hits. The server is
/// the one `scripts/test.sh` starts (`SLUICE_CHROMA_URL=http://127.0.0.1:PORT`).
#[test]
fn chroma_and_the_embedded_store_agree() {
    let url = std::env::var("SLUICE_CHROMA_URL").expect(
        "SLUICE_CHROMA_URL is not set: run the tests through scripts/test.sh, which starts a Chroma server (`chroma run`) for them",
    );
    let hostport = url.trim_start_matches("http://").trim_end_matches('/');
    let env = Env::new();
    std::fs::write(
        env.docs.path().join("hives.md"),
        "---\ntags: [bees, farming]\n---\n# Hive care\n\nBeekeepers inspect the hive every week for the queen and her eggs.\n",
    )
    .unwrap();
    let collection = format!("sluice-test-{}", std::process::id());
    let store = format!("chroma://{hostport}/{collection}");
    let docs = env.docs.path().to_str().unwrap().to_owned();
    env.json(&["index", "build", "--source", &docs, "--out", "local"]);
    let report = env.json(&[
        "index", "build", "--source", &docs, "--out", "remote", "--store", &store,
    ]);
    assert_eq!(report["info"]["store"], store.as_str());
    assert_eq!(env.json(&["index", "info", "remote"])["store_chunks"], 4);
    for (question, filter) in [
        ("Where do honey bees live?", None),
        ("What comes out of an erupting mountain?", None),
        ("queen bee", Some("tags=farming")),
        ("trains", Some("file=trains.html")),
    ] {
        let ask = |name: &str| {
            let mut args = vec!["index", "query", name, question, "-k", "4"];
            if let Some(f) = filter {
                args.extend(["--filter", f]);
            }
            env.json(&args)
        };
        let (a, b) = (ask("local"), ask("remote"));
        let key = |v: &Json| -> Vec<(String, String)> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|h| {
                    (
                        h["source"].as_str().unwrap().to_owned(),
                        h["text"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        };
        assert_eq!(key(&a), key(&b), "{question}");
        assert!(!key(&a).is_empty());
        for (x, y) in a.as_array().unwrap().iter().zip(b.as_array().unwrap()) {
            let (x, y) = (x["score"].as_f64().unwrap(), y["score"].as_f64().unwrap());
            assert!((x - y).abs() < 1e-3, "{question}: {x} vs {y}");
        }
    }
    // Incremental on the server too: a changed file replaces its chunks, a deleted one leaves.
    std::fs::remove_file(env.docs.path().join("trains.html")).unwrap();
    let report = env.json(&["index", "build", "--source", &docs, "--out", "remote"]);
    assert_eq!(report["report"]["files_removed"], 1);
    assert_eq!(env.json(&["index", "info", "remote"])["store_chunks"], 3);
    // Hybrid search needs BM25, which only the embedded store has.
    env.sluice()
        .args(["index", "query", "remote", "bees", "--hybrid"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("embedded store"));
    // `index rm` drops the collection.
    env.sluice()
        .args(["index", "rm", "remote"])
        .assert()
        .success();
    let status = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{url}/api/v2/tenants/default_tenant/databases/default_database/collections/{collection}"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&status.stdout), "404");
    // A collection that is already gone (dropped by hand, or never created because the server was
    // down at the first build) does not keep the index from being removed.
    env.json(&[
        "index", "build", "--source", &docs, "--out", "again", "--store", &store,
    ]);
    let dropped = std::process::Command::new("curl")
        .args(["-s", "-X", "DELETE", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{url}/api/v2/tenants/default_tenant/databases/default_database/collections/{collection}"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&dropped.stdout), "200");
    env.sluice()
        .args(["index", "rm", "again"])
        .assert()
        .success();
}

/// An index built from a model file given by path is queried and rebuilt with it; building from
/// some of the files adds them without dropping the others.
#[test]
fn model_paths_and_partial_sources() {
    let env = Env::new();
    let model = sluice_nodes::llm::store::models_dir().join("all-minilm-l6-v2-f16.gguf");
    let model = model.to_str().unwrap();
    let docs = env.docs.path().to_str().unwrap().to_owned();
    env.json(&[
        "index", "build", "--source", &docs, "--out", "kb", "--model", model,
    ]);
    let hits = env.query("Where do honey bees live?", &["-k", "1"]);
    assert!(source(&hits[0]).ends_with("bees.md"), "{hits}");
    std::fs::write(
        env.docs.path().join("owls.md"),
        "# Owls\n\nOwls hunt mice at night.\n",
    )
    .unwrap();
    let owls = env.docs.path().join("owls.md");
    let report = env.json(&[
        "index",
        "build",
        "--source",
        owls.to_str().unwrap(),
        "--out",
        "kb",
        "--model",
        model,
    ]);
    assert_eq!(report["report"]["files_embedded"], 1, "{report}");
    assert_eq!(report["report"]["files_removed"], 0, "{report}");
    assert_eq!(report["info"]["files"], 4, "{report}");
    let hits = env.query("What do owls hunt?", &["-k", "1"]);
    assert!(source(&hits[0]).ends_with("owls.md"), "{hits}");
}

/// One open index serving many queries (as a retrieval node in a batch) sees changes that another
/// writer makes: cached vectors and metadata are tied to the index generation.
#[test]
fn cached_vectors_and_metadata_follow_changes() {
    use sluice_nodes::retrieval::document::Chunk;
    use sluice_nodes::retrieval::filter::Filter;
    use sluice_nodes::retrieval::index::Index;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.sqlite");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let vectors = sluice_nodes::retrieval::ann::synthetic_vectors(4, 8, 3);
    let chunk = |t: &str| Chunk {
        start: 0,
        end: 1,
        heading: None,
        text: t.to_owned(),
    };
    let meta = |topic: &str| {
        serde_json::json!({"topic": topic})
            .as_object()
            .unwrap()
            .clone()
    };
    let mut writer = Index::open(&path).unwrap();
    writer.set_model("synthetic", 8).unwrap();
    rt.block_on(writer.put_file("a", "1", &[chunk("a")], &vectors[..1], &meta("red")))
        .unwrap();
    rt.block_on(writer.put_file("b", "1", &[chunk("b")], &vectors[1..2], &meta("blue")))
        .unwrap();

    let mut reader = Index::open(&path).unwrap();
    let red = Filter::from_pairs(&["topic=red".to_owned()]).unwrap();
    let texts = |reader: &mut Index, f: &Filter| -> Vec<String> {
        rt.block_on(reader.query_vector(vectors[3].clone(), 5, f))
            .unwrap()
            .into_iter()
            .map(|h| h.text)
            .collect()
    };
    assert_eq!(texts(&mut reader, &red), ["a"]);
    assert_eq!(texts(&mut reader, &Filter::default()).len(), 2);
    // Another writer recolours `b` and adds `c`; its writes alone tell the reader's caches.
    rt.block_on(writer.put_file("b", "2", &[chunk("b")], &vectors[1..2], &meta("red")))
        .unwrap();
    rt.block_on(writer.put_file("c", "1", &[chunk("c")], &vectors[2..3], &meta("red")))
        .unwrap();
    let mut seen = texts(&mut reader, &red);
    seen.sort();
    assert_eq!(seen, ["a", "b", "c"]);
    assert_eq!(texts(&mut reader, &Filter::default()).len(), 3);
}
