//! One index = one SQLite file in `$SLUICE_HOME/indexes/<name>.sqlite`: the catalog (files and their
//! content hashes, chunks with text and metadata, FTS5 for BM25) and, for the embedded store, the
//! vectors in a sqlite-vec `vec0` table. An index may keep its vectors in a Chroma server instead.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use futures::StreamExt;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::{Map, Value as Json};

use super::ann::{self, Ann};
use super::chroma::Chroma;
use super::document::{self, Chunk, Chunking};
use super::filter::Filter;
use crate::llm::embed::LocalEmbedder;
use crate::llm::store::{self, sha256_file};

const SCHEMA_VERSION: &str = "2";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, sha256 TEXT NOT NULL, chunks INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    heading TEXT,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_path ON chunks(path);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(text, content='chunks', content_rowid='id', tokenize='porter unicode61');
";

/// Every write moves the index to a new generation, in the same transaction; what is kept in memory
/// (vectors, metadata, the HNSW graph) belongs to one generation.
const BUMP_GENERATION: &str = "INSERT INTO meta (key, value) VALUES ('generation', '1') \
     ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1";

/// Indexes with at least this many chunks get an HNSW graph unless told otherwise. Measured on 2
/// cores with 384 dimensions (`benches/retrieval.rs`): the in-memory exact scan takes 0.54 ms at 10,000
/// chunks (HNSW 0.86 ms) and 5.9 ms at 100,000 (HNSW 1.4 ms, after a 109 s graph build), so the graph
/// pays off from about here.
pub const DEFAULT_ANN_THRESHOLD: usize = 50_000;

/// Chunks embedded per request to the embedder, and requests in flight.
const EMBED_BATCH: usize = 64;
const EMBED_IN_FLIGHT: usize = 4;
/// Chunks written per transaction (a build interrupted between groups keeps the groups before).
const GROUP_CHUNKS: usize = 1024;

/// Where indexes live.
pub fn indexes_dir() -> PathBuf {
    store::sluice_home().join("indexes")
}

/// The file of an index by name.
pub fn index_path(name: &str) -> Result<PathBuf, String> {
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!(
            "`{name}` is not a valid index name (letters, digits, `_`, `-`, `.`)"
        ));
    }
    Ok(indexes_dir().join(format!("{name}.sqlite")))
}

/// How a build goes.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    pub model: String,
    pub chunking: Chunking,
    /// `chroma://HOST:PORT/COLLECTION` to keep the vectors in a Chroma server; `None` keeps them in
    /// the index file (or wherever the first build put them).
    pub store: Option<String>,
    /// Chunk count from which an HNSW graph is built (embedded store only).
    pub ann_threshold: usize,
}

/// Where a build is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading and chunking files (done, total files).
    Reading,
    /// Embedding and writing chunks (done, total chunks).
    Embedding,
    /// Building the HNSW graph (0 or 1 of 1).
    Graph,
}

/// A file that could not be indexed; the others are.
#[derive(Debug, Serialize)]
pub struct FileError {
    pub path: String,
    pub error: String,
}

/// A file read and chunked, waiting for its vectors.
struct Pending {
    key: String,
    digest: String,
    chunks: Vec<Chunk>,
    metadata: Map<String, Json>,
}

/// What a build did.
#[derive(Debug, Default, Serialize)]
pub struct BuildReport {
    pub files_embedded: usize,
    pub files_unchanged: usize,
    pub files_removed: usize,
    pub files_failed: Vec<FileError>,
    pub chunks_embedded: usize,
    pub chunks_total: usize,
    /// Whether queries use an HNSW graph.
    pub ann: bool,
}

/// A search hit.
#[derive(Clone, Debug, Serialize)]
pub struct Hit {
    pub text: String,
    pub source: String,
    pub score: f64,
    pub start: usize,
    pub end: usize,
    pub heading: Option<String>,
    pub metadata: Map<String, Json>,
}

/// An open index.
#[derive(Debug)]
pub struct Index {
    db: Connection,
    path: PathBuf,
    chroma: Option<Chroma>,
    /// The HNSW graph and the generation it was loaded for.
    ann: Option<(u64, Option<Arc<Ann>>)>,
    /// The vectors in memory for exact scans, and the generation they were read at.
    flat: Option<(u64, Arc<Flat>)>,
    /// The chunks' metadata for filters, and the generation it was read at.
    metas: Option<(u64, Arc<Metas>)>,
    /// The embedding model, once loaded.
    embedder: Option<Arc<LocalEmbedder>>,
}

/// Chunk ids with an index into the distinct metadata maps.
#[derive(Debug, Default)]
struct Metas {
    ids: Vec<i64>,
    which: Vec<u32>,
    maps: Vec<Map<String, Json>>,
}

/// Up to this many chunks, exact search scans the vectors in memory (read once per generation from
/// sqlite-vec: 150 MB at 100,000 chunks of 384 dimensions); above it, sqlite-vec scans its table.
const FLAT_MAX: usize = 250_000;

/// Vectors in one contiguous block, for exact scans.
#[derive(Debug)]
struct Flat {
    ids: Vec<i64>,
    data: Vec<f32>,
    dims: usize,
}

impl Flat {
    fn search(&self, q: &[f32], k: usize, allowed: Option<&HashSet<i64>>) -> Vec<(i64, f64)> {
        let mut scored: Vec<(f32, usize)> = self
            .data
            .chunks_exact(self.dims)
            .enumerate()
            .filter(|(i, _)| allowed.is_none_or(|a| a.contains(&self.ids[*i])))
            .map(|(i, v)| (ann::dot(q, v), i))
            .collect();
        let k = k.min(scored.len());
        if k == 0 {
            return Vec::new();
        }
        if k < scored.len() {
            scored.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
            scored.truncate(k);
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        scored
            .into_iter()
            .map(|(s, i)| (self.ids[i], f64::from(s)))
            .collect()
    }
}

fn sqlerr(e: rusqlite::Error) -> String {
    e.to_string()
}

fn blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn unblob(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect()
}

/// sqlite-vec registers itself with every connection opened after this.
fn load_sqlite_vec() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: `sqlite3_vec_init` is the extension's entry point with the signature SQLite expects of
        // an auto extension (db, error message, API routines); the transmute only restores it, since
        // the crate declares it without arguments.
        #[allow(unsafe_code)]
        unsafe {
            rusqlite::ffi::sqlite3_auto_extension(Some(std::mem::transmute::<
                *const (),
                unsafe extern "C" fn(
                    *mut rusqlite::ffi::sqlite3,
                    *mut *mut std::os::raw::c_char,
                    *const rusqlite::ffi::sqlite3_api_routines,
                ) -> i32,
            >(
                sqlite_vec::sqlite3_vec_init as *const (),
            )));
        }
    });
}

impl Index {
    pub fn open(path: &Path) -> Result<Index, String> {
        load_sqlite_vec();
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
        }
        let db = Connection::open(path).map_err(sqlerr)?;
        db.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(sqlerr)?;
        let fresh: bool = db
            .query_row(
                "SELECT COUNT(*) = 0 FROM sqlite_master WHERE name = 'meta'",
                [],
                |r| r.get(0),
            )
            .map_err(sqlerr)?;
        db.execute_batch(SCHEMA).map_err(|e| {
            format!(
                "{}: {e}; this index was made by an older Sluice: remove it with `sluice index rm` and build it again",
                path.display()
            )
        })?;
        let mut index = Index {
            db,
            path: path.to_owned(),
            chroma: None,
            ann: None,
            flat: None,
            metas: None,
            embedder: None,
        };
        if fresh {
            index.set_meta("schema", SCHEMA_VERSION)?;
        } else if index.meta("schema").as_deref() != Some(SCHEMA_VERSION) {
            return Err(format!(
                "{} was made by an older Sluice: remove it with `sluice index rm` and build it again",
                path.display()
            ));
        }
        if let Some(url) = index.meta("store") {
            index.chroma = Some(Chroma::parse(&url)?);
        }
        Ok(index)
    }

    pub fn meta(&self, key: &str) -> Option<String> {
        self.db
            .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()
            .ok()
            .flatten()
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), String> {
        self.db
            .execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                params![key, value],
            )
            .map(drop)
            .map_err(sqlerr)
    }

    fn count(&self, sql: &str) -> Result<usize, String> {
        self.db
            .query_row(sql, [], |r| r.get::<_, i64>(0))
            .map(|n| n as usize)
            .map_err(sqlerr)
    }

    fn generation(&self) -> u64 {
        self.meta("generation")
            .and_then(|g| g.parse().ok())
            .unwrap_or(0)
    }

    fn ann_path(&self) -> PathBuf {
        self.path.with_extension("hnsw")
    }

    /// Files, chunks, the embedding model and the store.
    pub fn info(&self) -> Result<Json, String> {
        Ok(serde_json::json!({
            "model": self.meta("model"),
            "dims": self.meta("dims").and_then(|d| d.parse::<u64>().ok()),
            "files": self.count("SELECT COUNT(*) FROM files")?,
            "chunks": self.count("SELECT COUNT(*) FROM chunks")?,
            "store": self.meta("store").unwrap_or_else(|| "sqlite-vec".into()),
            "ann": self.meta("ann_built").is_some_and(|g| g == self.generation().to_string()),
            "ann_threshold": self.ann_threshold(),
            "generation": self.generation(),
        }))
    }

    fn ann_threshold(&self) -> usize {
        self.meta("ann_threshold")
            .and_then(|t| t.parse().ok())
            .unwrap_or(DEFAULT_ANN_THRESHOLD)
    }

    /// Sets the embedding model and vector size of a new index (creating the vector table); an index
    /// keeps the model it was first built with.
    pub fn set_model(&mut self, model: &str, dims: usize) -> Result<(), String> {
        if let Some(m) = self.meta("model") {
            if m != model {
                return Err(format!(
                    "this index was built with the model `{m}`; build another index to use `{model}`"
                ));
            }
            return Ok(());
        }
        if self.chroma.is_none() {
            self.db
                .execute_batch(&format!(
                    "CREATE VIRTUAL TABLE IF NOT EXISTS chunks_vec USING vec0(embedding float[{dims}] distance_metric=cosine)"
                ))
                .map_err(sqlerr)?;
        }
        self.set_meta("model", model)?;
        self.set_meta("dims", &dims.to_string())
    }

    /// Sets the store of a new index (`chroma://...`); an index keeps the store it was first built with.
    pub fn set_store(&mut self, store: Option<&str>) -> Result<(), String> {
        let current = self.meta("store");
        match (store, current.as_deref()) {
            (None, _) => Ok(()),
            (Some(s), Some(c)) if s == c => Ok(()),
            (Some(s), Some(c)) => Err(format!(
                "this index keeps its vectors in {c}; build another index to use {s}"
            )),
            (Some(s), None) if self.meta("model").is_some() => Err(format!(
                "this index keeps its vectors in its own file; build another index to use {s}"
            )),
            (Some(s), None) => {
                self.chroma = Some(Chroma::parse(s)?);
                self.set_meta("store", s)
            }
        }
    }

    /// Adds or refreshes `sources` (files or folders of .txt/.md/.html/.pdf). Files whose content hash
    /// is unchanged are not embedded again; files that no longer exist, or are no longer in a folder
    /// given, are removed; a file that cannot be read is reported in [`BuildReport::files_failed`]
    /// while the others are indexed.
    pub async fn build(
        &mut self,
        sources: &[PathBuf],
        opts: &BuildOptions,
        progress: &mut (dyn FnMut(Phase, usize, usize) + Send),
    ) -> Result<BuildReport, String> {
        let (name, path) =
            store::resolve_model(&opts.model, Path::new("."), store::ModelUse::Embedding).map_err(
                |e| format!("embedding model `{}` is not installed: {}", e.name, e.help),
            )?;
        if let Some(m) = self.meta("model")
            && m != name
        {
            return Err(format!(
                "this index was built with the model `{m}`; build another index to use `{name}`"
            ));
        }
        self.set_store(opts.store.as_deref())?;
        self.set_meta("ann_threshold", &opts.ann_threshold.to_string())?;
        let embedder = LocalEmbedder::get(&name, &path)
            .await
            .map_err(|e| e.message)?;
        self.set_model(&name, embedder.dims())?;
        self.embedder = Some(Arc::clone(&embedder));
        let absolute = std::path::absolute(&path).unwrap_or(path.clone());
        self.set_meta("model_path", &absolute.display().to_string())?;
        let limit = embedder.max_tokens().saturating_sub(2);
        if opts.chunking.size > limit {
            return Err(format!(
                "a chunk size of {} tokens is more than `{name}` reads at once ({limit}); use --chunk-size {limit} or less",
                opts.chunking.size
            ));
        }

        let mut files = Vec::new();
        for s in sources {
            if !s.exists() {
                return Err(format!("{}: no such file or folder", s.display()));
            }
            document::collect(s, &mut files);
        }
        files.sort();
        files.dedup();
        let known: HashMap<String, String> = {
            let mut stmt = self
                .db
                .prepare("SELECT path, sha256 FROM files")
                .map_err(sqlerr)?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(sqlerr)?
                .collect::<Result<_, _>>()
                .map_err(sqlerr)?
        };
        let mut report = BuildReport::default();
        let current: HashSet<String> = files.iter().map(|f| f.display().to_string()).collect();
        // A known file leaves the index when it no longer exists, or when it lies under a folder given
        // now and was not found there; building from other sources adds to the index.
        let folders: Vec<PathBuf> = sources
            .iter()
            .filter(|s| s.is_dir())
            .map(|s| std::path::absolute(s).unwrap_or_else(|_| s.clone()))
            .collect();
        let gone: Vec<String> = known
            .keys()
            .filter(|k| {
                let p = Path::new(k.as_str());
                !current.contains(*k) && (!p.exists() || folders.iter().any(|f| p.starts_with(f)))
            })
            .cloned()
            .collect();
        for gone in &gone {
            self.remove_file(gone).await?;
            report.files_removed += 1;
        }

        // Read and chunk what changed, then embed everything in large batches.
        let mut todo: Vec<Pending> = Vec::new();
        for (i, file) in files.iter().enumerate() {
            progress(Phase::Reading, i, files.len());
            let key = file.display().to_string();
            let digest = match sha256_file(file) {
                Ok(d) => d,
                Err(e) => {
                    report.files_failed.push(FileError {
                        path: key,
                        error: e.to_string(),
                    });
                    continue;
                }
            };
            if known.get(&key) == Some(&digest) {
                report.files_unchanged += 1;
                continue;
            }
            match document::read(file) {
                Ok(doc) => {
                    let chunks = document::chunk_text_weighted(&doc.text, opts.chunking, &|ws| {
                        embedder.token_counts(ws)
                    });
                    todo.push(Pending {
                        key,
                        digest,
                        chunks,
                        metadata: doc.metadata,
                    });
                }
                Err(error) => report.files_failed.push(FileError { path: key, error }),
            }
        }
        progress(Phase::Reading, files.len(), files.len());
        let total: usize = todo.iter().map(|t| t.chunks.len()).sum();
        let mut done = 0;
        progress(Phase::Embedding, 0, total);
        let mut files_iter = todo.into_iter().peekable();
        while files_iter.peek().is_some() {
            // A group of whole files, about GROUP_CHUNKS chunks.
            let mut group = Vec::new();
            let mut n = 0;
            while let Some(f) = files_iter.next_if(|_| n < GROUP_CHUNKS) {
                n += f.chunks.len();
                group.push(f);
            }
            let texts: Vec<String> = group
                .iter()
                .flat_map(|g| g.chunks.iter().map(|c| c.text.clone()))
                .collect();
            let batches: Vec<Vec<String>> = texts.chunks(EMBED_BATCH).map(<[_]>::to_vec).collect();
            let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(texts.len());
            let mut stream = futures::stream::iter(batches)
                .map(|b| embedder.embed(b))
                .buffered(EMBED_IN_FLIGHT);
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(|e| e.message)?;
                done += batch.len();
                vectors.extend(batch);
                progress(Phase::Embedding, done, total);
            }
            let mut vectors = vectors.into_iter();
            for Pending {
                key,
                digest,
                chunks,
                metadata,
            } in group
            {
                let vs: Vec<Vec<f32>> = vectors.by_ref().take(chunks.len()).collect();
                self.put_file(&key, &digest, &chunks, &vs, &metadata)
                    .await?;
                report.files_embedded += 1;
                report.chunks_embedded += chunks.len();
            }
        }
        report.chunks_total = self.count("SELECT COUNT(*) FROM chunks")?;
        report.ann = self.refresh_ann(progress)?;
        Ok(report)
    }

    /// Writes one file's chunks and vectors, replacing what the index had of it.
    pub async fn put_file(
        &mut self,
        key: &str,
        digest: &str,
        chunks: &[Chunk],
        vectors: &[Vec<f32>],
        metadata: &Map<String, Json>,
    ) -> Result<(), String> {
        assert_eq!(chunks.len(), vectors.len(), "a vector per chunk");
        self.remove_file(key).await?;
        let meta_text = Json::Object(metadata.clone()).to_string();
        let local_vectors = self.chroma.is_none();
        let tx = self.db.transaction().map_err(sqlerr)?;
        let mut ids = Vec::with_capacity(chunks.len());
        {
            let mut put = tx
                .prepare_cached(
                    "INSERT INTO chunks (path, start, end, heading, text, metadata) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(sqlerr)?;
            let mut fts = tx
                .prepare_cached("INSERT INTO chunks_fts (rowid, text) VALUES (?1, ?2)")
                .map_err(sqlerr)?;
            let mut vec = if local_vectors {
                Some(
                    tx.prepare_cached("INSERT INTO chunks_vec (rowid, embedding) VALUES (?1, ?2)")
                        .map_err(sqlerr)?,
                )
            } else {
                None
            };
            for (c, v) in chunks.iter().zip(vectors) {
                put.execute(params![
                    key,
                    c.start as i64,
                    c.end as i64,
                    c.heading,
                    c.text,
                    meta_text
                ])
                .map_err(sqlerr)?;
                let id = tx.last_insert_rowid();
                fts.execute(params![id, c.text]).map_err(sqlerr)?;
                if let Some(vec) = vec.as_mut() {
                    vec.execute(params![id, blob(v)]).map_err(sqlerr)?;
                }
                ids.push(id);
            }
        }
        // With Chroma, the file counts as indexed only once the server has its chunks.
        if local_vectors {
            tx.execute(
                "INSERT OR REPLACE INTO files (path, sha256, chunks) VALUES (?1, ?2, ?3)",
                params![key, digest, chunks.len() as i64],
            )
            .map_err(sqlerr)?;
        }
        tx.execute(BUMP_GENERATION, []).map_err(sqlerr)?;
        tx.commit().map_err(sqlerr)?;
        if let Some(chroma) = &self.chroma {
            let model = self.meta("model").unwrap_or_default();
            let metas: Vec<Map<String, Json>> = chunks
                .iter()
                .map(|c| chroma_metadata(key, c, metadata))
                .collect();
            let texts: Vec<String> = chunks.iter().map(|c| c.text.clone()).collect();
            let sids: Vec<String> = ids.iter().map(i64::to_string).collect();
            chroma
                .upsert(&model, &sids, vectors, &texts, &metas)
                .await?;
            self.db
                .execute(
                    "INSERT OR REPLACE INTO files (path, sha256, chunks) VALUES (?1, ?2, ?3)",
                    params![key, digest, chunks.len() as i64],
                )
                .map_err(sqlerr)?;
        }
        Ok(())
    }

    async fn remove_file(&mut self, path: &str) -> Result<(), String> {
        let ids: Vec<i64> = {
            let mut stmt = self
                .db
                .prepare_cached("SELECT id FROM chunks WHERE path = ?1")
                .map_err(sqlerr)?;
            stmt.query_map(params![path], |r| r.get(0))
                .map_err(sqlerr)?
                .collect::<Result<_, _>>()
                .map_err(sqlerr)?
        };
        if let Some(chroma) = &self.chroma {
            // Forget the file first: if the server fails now, the next build sends the file again.
            self.db
                .execute("DELETE FROM files WHERE path = ?1", params![path])
                .map_err(sqlerr)?;
            let sids: Vec<String> = ids.iter().map(i64::to_string).collect();
            chroma.delete(&sids).await?;
        }
        let tx = self.db.transaction().map_err(sqlerr)?;
        tx.execute(
            "INSERT INTO chunks_fts (chunks_fts, rowid, text) SELECT 'delete', id, text FROM chunks WHERE path = ?1",
            params![path],
        )
        .map_err(sqlerr)?;
        if self.chroma.is_none() && !ids.is_empty() {
            let mut del = tx
                .prepare_cached("DELETE FROM chunks_vec WHERE rowid = ?1")
                .map_err(sqlerr)?;
            for id in &ids {
                del.execute(params![id]).map_err(sqlerr)?;
            }
        }
        tx.execute("DELETE FROM chunks WHERE path = ?1", params![path])
            .map_err(sqlerr)?;
        tx.execute("DELETE FROM files WHERE path = ?1", params![path])
            .map_err(sqlerr)?;
        tx.execute(BUMP_GENERATION, []).map_err(sqlerr)?;
        tx.commit().map_err(sqlerr)
    }

    /// Builds or drops the HNSW graph to match the chunk count and the threshold; whether one is in use.
    fn refresh_ann(
        &mut self,
        progress: &mut (dyn FnMut(Phase, usize, usize) + Send),
    ) -> Result<bool, String> {
        let generation = self.generation();
        let chunks = self.count("SELECT COUNT(*) FROM chunks")?;
        if self.chroma.is_some() || chunks < self.ann_threshold() || chunks == 0 {
            let _ = std::fs::remove_file(self.ann_path());
            self.db
                .execute("DELETE FROM meta WHERE key = 'ann_built'", [])
                .map_err(sqlerr)?;
            self.ann = None;
            return Ok(false);
        }
        if self.meta("ann_built") == Some(generation.to_string()) && self.ann_path().is_file() {
            return Ok(true);
        }
        progress(Phase::Graph, 0, 1);
        self.build_ann_now()?;
        progress(Phase::Graph, 1, 1);
        Ok(true)
    }

    /// Builds the HNSW graph for the current generation now, whatever the threshold.
    pub fn build_ann_now(&mut self) -> Result<(), String> {
        let generation = self.generation();
        let graph = Ann::build(self.all_vectors()?);
        graph.save(&self.ann_path(), generation)?;
        self.set_meta("ann_built", &generation.to_string())?;
        self.ann = Some((generation, Some(Arc::new(graph))));
        Ok(())
    }

    fn all_vectors(&self) -> Result<Vec<(i64, Vec<f32>)>, String> {
        let mut stmt = self
            .db
            .prepare("SELECT rowid, embedding FROM chunks_vec")
            .map_err(sqlerr)?;
        stmt.query_map([], |r| Ok((r.get(0)?, unblob(&r.get::<_, Vec<u8>>(1)?))))
            .map_err(sqlerr)?
            .collect::<Result<_, _>>()
            .map_err(sqlerr)
    }

    /// The HNSW graph for the current generation, loaded once.
    fn ann(&mut self) -> Option<Arc<Ann>> {
        let generation = self.generation();
        if self.meta("ann_built") != Some(generation.to_string()) {
            return None;
        }
        match &self.ann {
            Some((g, graph)) if *g == generation => graph.clone(),
            _ => {
                let graph = Ann::load(&self.ann_path(), generation).map(Arc::new);
                if graph.is_none() {
                    tracing::warn!(index = %self.path.display(), "the HNSW graph is missing or stale; searching exactly");
                }
                self.ann = Some((generation, graph.clone()));
                graph
            }
        }
    }

    /// Stores bare vectors as chunks of synthetic files of 1,000 (`file0`, `file1`, ...): for recall
    /// tests and benchmarks that need no model.
    pub async fn put_synthetic(&mut self, vectors: &[Vec<f32>]) -> Result<(), String> {
        for (f, vs) in vectors.chunks(1000).enumerate() {
            let chunks: Vec<Chunk> = (0..vs.len())
                .map(|i| Chunk {
                    start: i,
                    end: i + 1,
                    heading: None,
                    text: format!("synthetic chunk {f}/{i}"),
                })
                .collect();
            self.put_file(&format!("file{f}"), "-", &chunks, vs, &Map::new())
                .await?;
        }
        Ok(())
    }

    /// Moves the index to a new generation without writing, as any write does: what was kept in
    /// memory or on disk for the old one (vectors, metadata, the HNSW graph) is read again.
    pub fn bump_generation(&self) -> Result<(), String> {
        self.db
            .execute(BUMP_GENERATION, [])
            .map(drop)
            .map_err(sqlerr)
    }

    /// Chunk ids whose metadata passes `filter`.
    fn ids_matching(&mut self, filter: &Filter) -> Result<HashSet<i64>, String> {
        let generation = self.generation();
        let cache = match &self.metas {
            Some((g, c)) if *g == generation => Arc::clone(c),
            _ => {
                let c = Arc::new(self.read_metas()?);
                self.metas = Some((generation, Arc::clone(&c)));
                c
            }
        };
        // Each distinct metadata is tested once.
        let pass: Vec<bool> = cache.maps.iter().map(|m| filter.matches(m)).collect();
        Ok(cache
            .ids
            .iter()
            .zip(&cache.which)
            .filter(|(_, w)| pass[**w as usize])
            .map(|(id, _)| *id)
            .collect())
    }

    /// Every chunk's metadata (with its heading), the distinct ones once.
    fn read_metas(&self) -> Result<Metas, String> {
        let mut stmt = self
            .db
            .prepare_cached("SELECT id, metadata, heading FROM chunks")
            .map_err(sqlerr)?;
        let mut rows = stmt.query([]).map_err(sqlerr)?;
        let mut metas = Metas::default();
        let mut seen: HashMap<(String, Option<String>), u32> = HashMap::new();
        while let Some(r) = rows.next().map_err(sqlerr)? {
            let key: (String, Option<String>) =
                (r.get(1).map_err(sqlerr)?, r.get(2).map_err(sqlerr)?);
            let next = metas.maps.len() as u32;
            let which = *seen.entry(key.clone()).or_insert_with(|| {
                let mut meta: Map<String, Json> = serde_json::from_str(&key.0).unwrap_or_default();
                if let Some(h) = &key.1 {
                    meta.insert("heading".into(), Json::String(h.clone()));
                }
                metas.maps.push(meta);
                next
            });
            metas.ids.push(r.get(0).map_err(sqlerr)?);
            metas.which.push(which);
        }
        Ok(metas)
    }

    /// The vectors in memory for the current generation, when the index is small enough.
    fn flat(&mut self) -> Result<Option<Arc<Flat>>, String> {
        let generation = self.generation();
        if let Some((g, flat)) = &self.flat
            && *g == generation
        {
            return Ok(Some(Arc::clone(flat)));
        }
        if self.count("SELECT COUNT(*) FROM chunks")? > FLAT_MAX {
            return Ok(None);
        }
        let dims: usize = self.meta("dims").and_then(|d| d.parse().ok()).unwrap_or(0);
        let rows = self.all_vectors()?;
        let mut flat = Flat {
            ids: Vec::with_capacity(rows.len()),
            data: Vec::with_capacity(rows.len() * dims),
            dims: dims.max(1),
        };
        for (id, v) in rows {
            if v.len() == dims {
                flat.ids.push(id);
                flat.data.extend(v);
            }
        }
        let flat = Arc::new(flat);
        self.flat = Some((generation, Arc::clone(&flat)));
        Ok(Some(flat))
    }

    /// Exact search over the chunks in `allowed` (all when `None`): ids with cosine similarity, best
    /// first. The vectors are scanned in memory (SIMD dot products) up to [`FLAT_MAX`] chunks, and by
    /// sqlite-vec in its table above that.
    pub fn search_exact(
        &mut self,
        q: &[f32],
        k: usize,
        allowed: Option<&HashSet<i64>>,
    ) -> Result<Vec<(i64, f64)>, String> {
        if k == 0 {
            return Ok(Vec::new());
        }
        if let Some(flat) = self.flat()? {
            return Ok(flat.search(q, k, allowed));
        }
        self.search_sqlite_vec(q, k, allowed)
    }

    /// Exact search by sqlite-vec alone: its KNN query (`vec0 ... MATCH`), or its cosine distance
    /// function over the allowed rows.
    pub fn search_sqlite_vec(
        &self,
        q: &[f32],
        k: usize,
        allowed: Option<&HashSet<i64>>,
    ) -> Result<Vec<(i64, f64)>, String> {
        if allowed.is_none() && k <= 4096 {
            let mut stmt = self
                .db
                .prepare_cached(
                    "SELECT rowid, distance FROM chunks_vec WHERE embedding MATCH ?1 AND k = ?2 ORDER BY distance",
                )
                .map_err(sqlerr)?;
            return stmt
                .query_map(params![blob(q), k as i64], |r| {
                    Ok((r.get::<_, i64>(0)?, 1.0 - r.get::<_, f64>(1)?))
                })
                .map_err(sqlerr)?
                .collect::<Result<_, _>>()
                .map_err(sqlerr);
        }
        let mut stmt = self
            .db
            .prepare_cached("SELECT rowid, vec_distance_cosine(embedding, ?1) FROM chunks_vec")
            .map_err(sqlerr)?;
        let mut rows = stmt.query(params![blob(q)]).map_err(sqlerr)?;
        let mut best: Vec<(i64, f64)> = Vec::new();
        while let Some(r) = rows.next().map_err(sqlerr)? {
            let id: i64 = r.get(0).map_err(sqlerr)?;
            if allowed.is_some_and(|a| !a.contains(&id)) {
                continue;
            }
            best.push((id, 1.0 - r.get::<_, f64>(1).map_err(sqlerr)?));
        }
        best.sort_by(|a, b| b.1.total_cmp(&a.1));
        best.truncate(k);
        Ok(best)
    }

    /// The vector ranking for a query: the HNSW graph when there is one and no filter, else exact.
    pub fn search_vectors(
        &mut self,
        q: &[f32],
        k: usize,
        allowed: Option<&HashSet<i64>>,
    ) -> Result<Vec<(i64, f64)>, String> {
        if allowed.is_none()
            && k <= ann::EF_SEARCH
            && let Some(graph) = self.ann()
        {
            return Ok(graph.search(q, k));
        }
        self.search_exact(q, k, allowed)
    }

    /// The index's embedding model, found and loaded on first use: by its name, or else by the file
    /// the index was built from.
    pub async fn embedder(&mut self) -> Result<Arc<LocalEmbedder>, String> {
        if let Some(e) = &self.embedder {
            return Ok(Arc::clone(e));
        }
        let model = self
            .meta("model")
            .ok_or("the index is empty: build it first")?;
        let (name, path) =
            match store::resolve_model(&model, Path::new("."), store::ModelUse::Embedding) {
                Ok(found) => found,
                Err(e) => match self.meta("model_path").map(PathBuf::from) {
                    Some(p) if p.is_file() => (model.clone(), p),
                    _ => {
                        return Err(format!(
                            "embedding model `{}` is not installed: {}",
                            e.name, e.help
                        ));
                    }
                },
            };
        let embedder = LocalEmbedder::get(&name, &path)
            .await
            .map_err(|e| e.message)?;
        self.embedder = Some(Arc::clone(&embedder));
        Ok(embedder)
    }

    /// The `k` chunks nearest to `query` whose metadata passes `filter`. With `hybrid`, the vector
    /// ranking is fused with BM25 by reciprocal rank (k = 60) and the score is the fused score.
    pub async fn query(
        &mut self,
        query: &str,
        k: usize,
        hybrid: bool,
        filter: &Filter,
    ) -> Result<Vec<Hit>, String> {
        let embedder = self.embedder().await?;
        let q = embedder
            .embed(vec![query.to_owned()])
            .await
            .map_err(|e| e.message)?
            .remove(0);
        self.query_embedded(q, query, k, hybrid, filter).await
    }

    /// [`Index::query`] for a query already embedded by [`Index::embedder`], so that callers can embed
    /// without holding the index (embeddings of concurrent queries are batched by the embedder).
    pub async fn query_embedded(
        &mut self,
        q: Vec<f32>,
        query: &str,
        k: usize,
        hybrid: bool,
        filter: &Filter,
    ) -> Result<Vec<Hit>, String> {
        let dims: usize = self
            .meta("dims")
            .and_then(|d| d.parse().ok())
            .unwrap_or(q.len());
        if q.len() != dims {
            return Err(format!(
                "the embedding model now gives {}-dimensional vectors, but this index holds {dims}-dimensional ones: the model file changed; build the index again under another name",
                q.len()
            ));
        }
        self.search(q, Some(query), k, hybrid, filter).await
    }

    /// The `k` chunks nearest to a vector already embedded by the index's model (normalised here).
    pub async fn query_vector(
        &mut self,
        mut q: Vec<f32>,
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Hit>, String> {
        let dims: usize = self
            .meta("dims")
            .and_then(|d| d.parse().ok())
            .ok_or("the index is empty: build it first")?;
        if q.len() != dims {
            return Err(format!(
                "the query vector has {} numbers, but this index holds {dims}-dimensional vectors of the model `{}`",
                q.len(),
                self.meta("model").unwrap_or_default()
            ));
        }
        let norm = q.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            q.iter_mut().for_each(|x| *x /= norm);
        }
        self.search(q, None, k, false, filter).await
    }

    async fn search(
        &mut self,
        q: Vec<f32>,
        text: Option<&str>,
        k: usize,
        hybrid: bool,
        filter: &Filter,
    ) -> Result<Vec<Hit>, String> {
        if let Some(chroma) = &self.chroma {
            if hybrid {
                return Err("hybrid search needs the embedded store; this index keeps its vectors in Chroma".into());
            }
            let list_keys = self.list_keys()?;
            let hits = chroma.query(&q, k, filter.to_chroma(&list_keys)).await?;
            return Ok(hits.into_iter().map(hit_from_chroma).collect());
        }
        let hybrid = hybrid && text.is_some();
        let allowed = if filter.is_empty() {
            None
        } else {
            Some(self.ids_matching(filter)?)
        };
        let depth = if hybrid { k.max(100) } else { k };
        let ranked = self.search_vectors(&q, depth, allowed.as_ref())?;
        let ranked: Vec<(i64, f64)> = if hybrid {
            let bm25 = self.bm25(text.unwrap_or_default(), allowed.as_ref())?;
            let mut fused: HashMap<i64, f64> = HashMap::new();
            for list in [&ranked, &bm25] {
                for (rank, (id, _)) in list.iter().enumerate() {
                    *fused.entry(*id).or_default() += 1.0 / (60.0 + rank as f64 + 1.0);
                }
            }
            let mut fused: Vec<(i64, f64)> = fused.into_iter().collect();
            fused.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            fused.truncate(k);
            fused
        } else {
            ranked
        };
        let mut hits = Vec::with_capacity(ranked.len());
        for (id, score) in ranked {
            // A chunk removed since a stale HNSW graph was read is skipped, not an error.
            if let Some(hit) = self.hit(id, score)? {
                hits.push(hit);
            }
        }
        Ok(hits)
    }

    /// BM25 ranks from FTS5 over the query's words (stop words left out), at most 200.
    fn bm25(&self, query: &str, allowed: Option<&HashSet<i64>>) -> Result<Vec<(i64, f64)>, String> {
        let terms = bm25_terms(query);
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        // With a filter, every match is read and filtered before the best 200 are kept.
        let sql = if allowed.is_some() {
            "SELECT rowid, bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ?1 ORDER BY bm25(chunks_fts)"
        } else {
            "SELECT rowid, bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ?1 ORDER BY bm25(chunks_fts) LIMIT 200"
        };
        let mut fts = self.db.prepare_cached(sql).map_err(sqlerr)?;
        let rows: Vec<(i64, f64)> = fts
            .query_map(params![terms.join(" OR ")], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(sqlerr)?
            .collect::<Result<_, _>>()
            .map_err(sqlerr)?;
        Ok(rows
            .into_iter()
            .filter(|(id, _)| allowed.is_none_or(|a| a.contains(id)))
            .take(200)
            .collect())
    }

    fn hit(&self, id: i64, score: f64) -> Result<Option<Hit>, String> {
        self.db
            .query_row(
                "SELECT path, start, end, heading, text, metadata FROM chunks WHERE id = ?1",
                params![id],
                |r| {
                    Ok(Hit {
                        source: r.get(0)?,
                        start: r.get::<_, i64>(1)? as usize,
                        end: r.get::<_, i64>(2)? as usize,
                        heading: r.get(3)?,
                        text: r.get(4)?,
                        score,
                        metadata: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
                    })
                },
            )
            .optional()
            .map_err(sqlerr)
    }

    /// Metadata keys that hold lists somewhere in the index (filters on them test membership).
    fn list_keys(&self) -> Result<HashSet<String>, String> {
        let mut stmt = self
            .db
            .prepare_cached("SELECT DISTINCT metadata FROM chunks")
            .map_err(sqlerr)?;
        let metas: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .map_err(sqlerr)?
            .collect::<Result<_, _>>()
            .map_err(sqlerr)?;
        Ok(metas
            .iter()
            .filter_map(|m| serde_json::from_str::<Map<String, Json>>(m).ok())
            .flat_map(|m| m.into_iter().filter(|(_, v)| v.is_array()).map(|(k, _)| k))
            .collect())
    }

    /// Removes the index's vectors from its Chroma collection, if it has one (before `index rm`).
    pub async fn drop_store(&self) -> Result<(), String> {
        match &self.chroma {
            Some(c) => c.drop_collection().await,
            None => Ok(()),
        }
    }

    /// The Chroma collection's size, when the vectors live there.
    pub async fn store_count(&self) -> Result<Option<u64>, String> {
        match &self.chroma {
            Some(c) => c.count().await.map(Some),
            None => Ok(None),
        }
    }
}

/// What Chroma keeps with a chunk: its metadata plus where it is (Chroma has no nulls or empty lists).
fn chroma_metadata(key: &str, c: &Chunk, metadata: &Map<String, Json>) -> Map<String, Json> {
    let mut m: Map<String, Json> = metadata
        .iter()
        .filter(|(_, v)| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    m.insert("sluice:source".into(), Json::String(key.to_owned()));
    m.insert("sluice:start".into(), Json::from(c.start));
    m.insert("sluice:end".into(), Json::from(c.end));
    if let Some(h) = &c.heading {
        m.insert("heading".into(), Json::String(h.clone()));
    }
    m
}

fn hit_from_chroma(h: super::chroma::ChromaHit) -> Hit {
    let mut m = h.metadata;
    let num = |v: Option<Json>| v.and_then(|v| v.as_u64()).unwrap_or(0) as usize;
    let source = m
        .remove("sluice:source")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let start = num(m.remove("sluice:start"));
    let end = num(m.remove("sluice:end"));
    let heading = m
        .remove("heading")
        .and_then(|v| v.as_str().map(str::to_owned));
    Hit {
        text: h.document,
        source,
        score: 1.0 - h.distance,
        start,
        end,
        heading,
        metadata: m,
    }
}

/// Words too common to say anything about a chunk's topic; left out of BM25 queries.
const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from", "how",
    "i", "in", "is", "it", "of", "on", "or", "out", "that", "the", "this", "to", "was", "what",
    "when", "where", "which", "who", "why", "with", "you",
];

/// The most distinct words of a query that BM25 matches on. Each term is one more OR in the FTS5
/// query, and FTS5's cost grows with terms times matches, so a pasted page (or one word 18,000 times)
/// took over a minute; the first 64 distinct words keep any real question whole.
const MAX_QUERY_TERMS: usize = 64;

/// The query's distinct words, lower-cased, stop words and one-letter words left out, quoted for FTS5.
fn bm25_terms(query: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    query
        .split(|c: char| !c.is_alphanumeric())
        .map(str::to_lowercase)
        .filter(|w| w.len() > 1 && !STOPWORDS.contains(&w.as_str()))
        .filter(|w| seen.insert(w.clone()))
        .take(MAX_QUERY_TERMS)
        .map(|w| format!("\"{w}\""))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_terms_are_distinct_and_bounded() {
        let repeated = "honey ".repeat(18_000);
        assert_eq!(bm25_terms(&repeated), ["\"honey\""]);
        let many: String = (0..1000).map(|i| format!("w{i} ")).collect();
        assert_eq!(bm25_terms(&many).len(), MAX_QUERY_TERMS);
        assert_eq!(
            bm25_terms("How do bees make Honey honey?"),
            ["\"bees\"", "\"make\"", "\"honey\""]
        );
    }
}
