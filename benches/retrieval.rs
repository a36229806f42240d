//! Retrieval, measured in one process:
//!
//! 1. **Indexing throughput**: chunks per second of `sluice index build` (read, chunk, embed, write)
//!    against the raw throughput of the embedding model on the same chunk texts, same threads and
//!    batching. Corpus: flows/rag/corpus, copied COPIES times under distinct names.
//! 2. **Query latency**, p50 and p99 over QUERIES searches for the 5 nearest chunks, on SIZES chunks of
//!    synthetic 384-dimensional unit vectors (clustered like embeddings): the embedded store searched
//!    exactly (sqlite-vec), the same through the HNSW graph, and a Chroma server's collection when
//!    `SLUICE_CHROMA_URL` is set (scripts/setup.sh's `sluice_start_chroma` starts one). The time to
//!    embed a query with the model is printed once, apart.
//!
//! Usage: `cargo bench --bench retrieval -- [SIZES] [QUERIES] [COPIES]`, defaults `10000,100000 200 4`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use sluice_nodes::llm::embed::LocalEmbedder;
use sluice_nodes::llm::store;
use sluice_nodes::retrieval::ann::synthetic_vectors;
use sluice_nodes::retrieval::document::{self, Chunking};
use sluice_nodes::retrieval::filter::Filter;
use sluice_nodes::retrieval::index::{BuildOptions, DEFAULT_ANN_THRESHOLD, Index, Ranking};

const DIMS: usize = 384;

/// The 50th and 99th percentiles of `times`, in ms.
fn p50_p99(mut times: Vec<Duration>) -> (f64, f64) {
    times.sort();
    let ms = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3;
    (ms(0.5), ms(0.99))
}

/// p50 and p99 in ms, and the seconds of a first query that warms caches, connections and what the
/// index keeps in memory.
async fn latencies(index: &mut Index, queries: &[Vec<f32>]) -> (f64, f64, f64) {
    let none = Filter::default();
    let t = Instant::now();
    index
        .query_vector(queries[0].clone(), 5, &none)
        .await
        .unwrap();
    let first = t.elapsed().as_secs_f64();
    let mut times = Vec::with_capacity(queries.len());
    for q in queries {
        let t = Instant::now();
        let hits = index.query_vector(q.clone(), 5, &none).await.unwrap();
        times.push(t.elapsed());
        assert_eq!(hits.len(), 5);
    }
    let (p50, p99) = p50_p99(times);
    (p50, p99, first)
}

/// Chunks per second of the embedder alone, batched as the index build batches.
async fn raw_throughput(embedder: &LocalEmbedder, texts: &[String]) -> f64 {
    let t = Instant::now();
    let batches: Vec<Vec<String>> = texts.chunks(64).map(<[_]>::to_vec).collect();
    let mut stream = futures::stream::iter(batches)
        .map(|b| embedder.embed(b))
        .buffered(4);
    while let Some(b) = stream.next().await {
        b.unwrap();
    }
    texts.len() as f64 / t.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let sizes: Vec<usize> = args
        .first()
        .map_or("10000,100000", String::as_str)
        .split(',')
        .map(|s| s.parse().expect("SIZES: comma-separated counts"))
        .collect();
    let n_queries: usize = args.get(1).map_or(200, |s| s.parse().expect("QUERIES"));
    let copies: usize = args.get(2).map_or(4, |s| s.parse().expect("COPIES"));

    let home = tempfile::tempdir().unwrap();
    let models = store::models_dir();
    // SAFETY: no other thread runs yet.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("SLUICE_MODELS_DIR", models);
        std::env::set_var("SLUICE_HOME", home.path());
    }
    let (name, path) = store::resolve_model(
        "minilm",
        std::path::Path::new("."),
        store::ModelUse::Embedding,
    )
    .expect("the embedding model: run `sluice model pull minilm`");
    let embedder = LocalEmbedder::get(&name, &path).await.unwrap();

    // 1. Indexing throughput.
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("flows/rag/corpus");
    let docs = tempfile::tempdir().unwrap();
    for copy in 0..copies {
        for e in std::fs::read_dir(&corpus).unwrap().flatten() {
            let to = docs
                .path()
                .join(format!("{copy}-{}", e.file_name().to_string_lossy()));
            std::fs::copy(e.path(), to).unwrap();
        }
    }
    let chunking = Chunking {
        size: 200,
        overlap: 40,
    };
    let mut files = Vec::new();
    document::collect(docs.path(), &mut files);
    let texts: Vec<String> = files
        .iter()
        .flat_map(|f| {
            let d = document::read(f).unwrap();
            document::chunk_text_weighted(&d.text, chunking, &|ws| embedder.token_counts(ws))
                .into_iter()
                .map(|c| c.text)
        })
        .collect();
    embedder.embed(texts[..8].to_vec()).await.unwrap();
    let raw_before = raw_throughput(&embedder, &texts).await;
    let mut index = Index::open(&home.path().join("indexes/bench.sqlite")).unwrap();
    let t = Instant::now();
    let report = index
        .build(
            &[docs.path().to_path_buf()],
            &BuildOptions {
                model: name.clone(),
                chunking,
                store: None,
                ann_threshold: DEFAULT_ANN_THRESHOLD,
            },
            &mut |_, _, _| {},
        )
        .await
        .unwrap();
    let indexed = report.chunks_embedded as f64 / t.elapsed().as_secs_f64();
    assert_eq!(report.chunks_embedded, texts.len());
    let raw_after = raw_throughput(&embedder, &texts).await;
    let raw = raw_before.max(raw_after);
    println!(
        "indexing: {} chunks; raw embedding {raw_before:.1} then {raw_after:.1} chunks/s, index build {indexed:.1} chunks/s, ratio to the faster raw {:.3}",
        texts.len(),
        indexed / raw
    );

    // 2. Query latency.
    let mut times = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        embedder
            .embed(vec![format!("how do I resume run number {i}?")])
            .await
            .unwrap();
        times.push(t.elapsed());
    }
    let (p50, p99) = p50_p99(times);
    println!("embedding one query: p50 {p50:.2} ms, p99 {p99:.2} ms");
    let queries = synthetic_vectors(n_queries, DIMS, 7);
    let chroma = std::env::var("SLUICE_CHROMA_URL").ok();
    println!("| chunks | store | p50 ms | p99 ms | load s |");
    println!("|---:|---|---:|---:|---:|");
    for &n in &sizes {
        let vectors = synthetic_vectors(n, DIMS, 42);
        let mut index = Index::open(&home.path().join(format!("indexes/s{n}.sqlite"))).unwrap();
        index.set_model(&name, DIMS).unwrap();
        let t = Instant::now();
        index.put_synthetic(&vectors).await.unwrap();
        let load = t.elapsed().as_secs_f64();
        let mut times = Vec::with_capacity(queries.len());
        for q in &queries {
            let t = Instant::now();
            assert_eq!(index.rank(Ranking::SqliteVec, q, 5, None).unwrap().len(), 5);
            times.push(t.elapsed());
        }
        let (p50, p99) = p50_p99(times);
        println!("| {n} | sqlite-vec KNN (vec0, search only) | {p50:.2} | {p99:.2} | {load:.1} |");
        let (p50, p99, first) = latencies(&mut index, &queries).await;
        println!(
            "| {n} | exact, vectors in memory (the default below the threshold) | {p50:.2} | {p99:.2} | {first:.1} (first query) |"
        );
        let t = Instant::now();
        index.build_ann_now().unwrap();
        let load = t.elapsed().as_secs_f64();
        let (p50, p99, _) = latencies(&mut index, &queries).await;
        println!("| {n} | HNSW | {p50:.2} | {p99:.2} | {load:.1} (graph) |");
        if let Some(url) = &chroma {
            let hostport = url.trim_start_matches("http://").trim_end_matches('/');
            let mut index = Index::open(&home.path().join(format!("indexes/c{n}.sqlite"))).unwrap();
            let store = format!(
                "chroma://{hostport}/sluice-bench-{n}-{}",
                std::process::id()
            );
            index.set_store(Some(&store)).unwrap();
            index.set_model(&name, DIMS).unwrap();
            let t = Instant::now();
            index.put_synthetic(&vectors).await.unwrap();
            let load = t.elapsed().as_secs_f64();
            let (p50, p99, _) = latencies(&mut index, &queries).await;
            println!("| {n} | Chroma (HTTP) | {p50:.2} | {p99:.2} | {load:.1} |");
            index.drop_store().await.unwrap();
        }
    }
    if chroma.is_none() {
        println!("(Chroma: set SLUICE_CHROMA_URL to include it)");
    }
}
