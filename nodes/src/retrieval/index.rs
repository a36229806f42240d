//! One index = one SQLite file in `$SLUICE_HOME/indexes/<name>.sqlite`: the catalog (files and their
//! content hashes, chunks with text and metadata, FTS5 for BM25) and a [`VectorStore`] for the
//! vectors: the file's own sqlite-vec table ([`LocalStore`]) or a Chroma server.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use futures::StreamExt;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::{Map, Value as Json};

use super::chroma::Chroma;
use super::document::{self, Chunk, Chunking};
pub use super::error::IndexError;
use super::filter::Filter;
use super::store::{
    FileChunks, LocalStore, Nearest, Search, StoreError, VectorStore, search_sqlite_vec,
};
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
pub fn index_path(name: &str) -> Result<PathBuf, IndexError> {
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(IndexError::BadName {
            name: name.to_owned(),
        });
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

/// How [`Index::rank`] ranks chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ranking {
    /// Exact: the in-memory scan, or sqlite-vec above its size (see [`LocalStore::rank`]).
    Exact,
    /// Exact by sqlite-vec alone: its KNN query, or its cosine function over the allowed rows.
    SqliteVec,
    /// What queries use: the HNSW graph when there is one and no filter, else exact.
    Vectors,
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
    /// Where the vectors are: the index file itself, or a Chroma server.
    store: Box<dyn VectorStore>,
    /// The embedding model, once loaded.
    embedder: Option<Arc<LocalEmbedder>>,
}

/// A value from the index's meta table.
pub(super) fn meta(db: &Connection, key: &str) -> Option<String> {
    db.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
        r.get(0)
    })
    .optional()
    .ok()
    .flatten()
}

/// A `SELECT COUNT(*)`.
pub(super) fn count(db: &Connection, sql: &str) -> Result<usize, rusqlite::Error> {
    db.query_row(sql, [], |r| r.get::<_, i64>(0))
        .map(|n| n as usize)
}

/// The index's generation (see [`BUMP_GENERATION`]).
pub(super) fn generation(db: &Connection) -> u64 {
    meta(db, "generation")
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
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
    pub fn open(path: &Path) -> Result<Index, IndexError> {
        load_sqlite_vec();
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|source| IndexError::Io {
                path: d.to_owned(),
                source,
            })?;
        }
        let db = Connection::open(path)?;
        db.busy_timeout(std::time::Duration::from_secs(30))?;
        let fresh: bool = db.query_row(
            "SELECT COUNT(*) = 0 FROM sqlite_master WHERE name = 'meta'",
            [],
            |r| r.get(0),
        )?;
        db.execute_batch(SCHEMA)
            .map_err(|e| IndexError::OlderFormat {
                path: path.to_owned(),
                source: Some(e),
            })?;
        let mut index = Index {
            db,
            store: Box::new(LocalStore::new(path)),
            embedder: None,
        };
        if fresh {
            index.set_meta("schema", SCHEMA_VERSION)?;
        } else if index.meta("schema").as_deref() != Some(SCHEMA_VERSION) {
            return Err(IndexError::OlderFormat {
                path: path.to_owned(),
                source: None,
            });
        }
        if let Some(url) = index.meta("store") {
            index.store = Box::new(Chroma::parse(&url)?);
        }
        Ok(index)
    }

    pub fn meta(&self, key: &str) -> Option<String> {
        meta(&self.db, key)
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), IndexError> {
        self.db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
            params![key, value],
        )?;
        Ok(())
    }

    fn count(&self, sql: &str) -> Result<usize, IndexError> {
        Ok(count(&self.db, sql)?)
    }

    fn generation(&self) -> u64 {
        generation(&self.db)
    }

    /// Files, chunks, the embedding model and the store.
    pub fn info(&self) -> Result<Json, IndexError> {
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
    pub fn set_model(&mut self, model: &str, dims: usize) -> Result<(), IndexError> {
        if let Some(m) = self.meta("model") {
            if m != model {
                return Err(IndexError::OtherModel {
                    built: m,
                    asked: model.to_owned(),
                });
            }
            return Ok(());
        }
        self.store.create(&self.db, dims)?;
        self.set_meta("model", model)?;
        self.set_meta("dims", &dims.to_string())
    }

    /// Sets the store of a new index (`chroma://...`); an index keeps the store it was first built with.
    pub fn set_store(&mut self, store: Option<&str>) -> Result<(), IndexError> {
        let current = self.meta("store");
        match (store, current.as_deref()) {
            (None, _) => Ok(()),
            (Some(s), Some(c)) if s == c => Ok(()),
            (Some(s), Some(c)) => Err(IndexError::OtherStore {
                kept: c.to_owned(),
                asked: s.to_owned(),
            }),
            (Some(s), None) if self.meta("model").is_some() => Err(IndexError::OtherStore {
                kept: "its own file".to_owned(),
                asked: s.to_owned(),
            }),
            (Some(s), None) => {
                self.store = Box::new(Chroma::parse(s)?);
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
    ) -> Result<BuildReport, IndexError> {
        let (name, path) =
            store::resolve_model(&opts.model, Path::new("."), store::ModelUse::Embedding).map_err(
                |e| IndexError::ModelNotInstalled {
                    name: e.name,
                    help: e.help,
                },
            )?;
        if let Some(m) = self.meta("model")
            && m != name
        {
            return Err(IndexError::OtherModel {
                built: m,
                asked: name,
            });
        }
        self.set_store(opts.store.as_deref())?;
        self.set_meta("ann_threshold", &opts.ann_threshold.to_string())?;
        let embedder = LocalEmbedder::get(&name, &path).await?;
        self.set_model(&name, embedder.dims())?;
        self.embedder = Some(Arc::clone(&embedder));
        let absolute = std::path::absolute(&path).unwrap_or(path.clone());
        self.set_meta("model_path", &absolute.display().to_string())?;
        let limit = embedder.max_tokens().saturating_sub(2);
        if opts.chunking.size > limit {
            return Err(IndexError::ChunkTooLarge {
                size: opts.chunking.size,
                model: name,
                limit,
            });
        }

        let mut files = Vec::new();
        for s in sources {
            if !s.exists() {
                return Err(IndexError::NoSuchSource { path: s.clone() });
            }
            document::collect(s, &mut files);
        }
        files.sort();
        files.dedup();
        let known: HashMap<String, String> = {
            let mut stmt = self.db.prepare("SELECT path, sha256 FROM files")?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?
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

        // Two passes keep memory flat whatever the corpus: the first finds what changed and counts
        // its chunks (for progress), the second reads a group of files again and embeds and writes
        // it before reading the next.
        let chunking = opts.chunking;
        let read_and_chunk = |file: &Path| {
            document::read(file).map(|doc| {
                let chunks = document::chunk_text_weighted(&doc.text, chunking, &|ws| {
                    embedder.token_counts(ws)
                });
                (chunks, doc.metadata)
            })
        };
        let mut planned: Vec<(PathBuf, String, usize)> = Vec::new();
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
            match read_and_chunk(file) {
                Ok((chunks, _)) => planned.push((file.clone(), digest, chunks.len())),
                Err(error) => report.files_failed.push(FileError {
                    path: key,
                    error: error.to_string(),
                }),
            }
        }
        progress(Phase::Reading, files.len(), files.len());
        let total: usize = planned.iter().map(|p| p.2).sum();
        let mut done = 0;
        progress(Phase::Embedding, 0, total);
        let mut planned = planned.into_iter().peekable();
        while planned.peek().is_some() {
            // A group of whole files, about GROUP_CHUNKS chunks.
            let mut group = Vec::new();
            let mut n = 0;
            while let Some((file, digest, count)) = planned.next_if(|_| n < GROUP_CHUNKS) {
                n += count;
                let key = file.display().to_string();
                match read_and_chunk(&file) {
                    Ok((chunks, metadata)) => group.push(Pending {
                        key,
                        digest,
                        chunks,
                        metadata,
                    }),
                    // Changed or gone since the first pass: the next build sees it again.
                    Err(error) => report.files_failed.push(FileError {
                        path: key,
                        error: error.to_string(),
                    }),
                }
            }
            let texts: Vec<String> = group
                .iter()
                .flat_map(|g| g.chunks.iter().map(|c| c.text.clone()))
                .collect();
            let batches: Vec<Vec<String>> = texts.chunks(EMBED_BATCH).map(<[_]>::to_vec).collect();
            drop(texts);
            let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(n);
            let mut stream = futures::stream::iter(batches)
                .map(|b| embedder.embed(b))
                .buffered(EMBED_IN_FLIGHT);
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                done += batch.len();
                vectors.extend(batch);
                progress(Phase::Embedding, done.min(total), total);
            }
            drop(stream);
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
        report.ann = self.store.refresh(&self.db, progress)?;
        Ok(report)
    }

    /// Writes one file's chunks and vectors, replacing what the index had of it: the chunks in one
    /// transaction, then the vectors to the store, and only then the file as indexed (so a build
    /// interrupted in between sends the file again).
    pub async fn put_file(
        &mut self,
        key: &str,
        digest: &str,
        chunks: &[Chunk],
        vectors: &[Vec<f32>],
        metadata: &Map<String, Json>,
    ) -> Result<(), IndexError> {
        assert_eq!(chunks.len(), vectors.len(), "a vector per chunk");
        self.remove_file(key).await?;
        let meta_text = Json::Object(metadata.clone()).to_string();
        let tx = self.db.transaction()?;
        let mut ids = Vec::with_capacity(chunks.len());
        {
            let mut put = tx
                .prepare_cached(
                    "INSERT INTO chunks (path, start, end, heading, text, metadata) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                ?;
            let mut fts =
                tx.prepare_cached("INSERT INTO chunks_fts (rowid, text) VALUES (?1, ?2)")?;
            for c in chunks {
                put.execute(params![
                    key,
                    c.start as i64,
                    c.end as i64,
                    c.heading,
                    c.text,
                    meta_text
                ])?;
                let id = tx.last_insert_rowid();
                fts.execute(params![id, c.text])?;
                ids.push(id);
            }
        }
        tx.execute(BUMP_GENERATION, [])?;
        tx.commit()?;
        let model = self.meta("model").unwrap_or_default();
        self.store
            .put(
                &mut self.db,
                FileChunks {
                    model: &model,
                    key,
                    ids: &ids,
                    chunks,
                    vectors,
                    metadata,
                },
            )
            .await?;
        // A new generation once the vectors are in, so that readers in other processes that looked
        // in between read them again.
        let tx = self.db.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO files (path, sha256, chunks) VALUES (?1, ?2, ?3)",
            params![key, digest, chunks.len() as i64],
        )?;
        tx.execute(BUMP_GENERATION, [])?;
        Ok(tx.commit()?)
    }

    /// Forgets a file: first as indexed (if the store fails now, the next build sends the file
    /// again), then its vectors in the store, then its chunks.
    async fn remove_file(&mut self, path: &str) -> Result<(), IndexError> {
        let ids: Vec<i64> = {
            let mut stmt = self
                .db
                .prepare_cached("SELECT id FROM chunks WHERE path = ?1")?;
            stmt.query_map(params![path], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        self.db
            .execute("DELETE FROM files WHERE path = ?1", params![path])?;
        self.store.remove(&mut self.db, &ids).await?;
        let tx = self.db.transaction()?;
        tx.execute(
            "INSERT INTO chunks_fts (chunks_fts, rowid, text) SELECT 'delete', id, text FROM chunks WHERE path = ?1",
            params![path],
        )
        ?;
        tx.execute("DELETE FROM chunks WHERE path = ?1", params![path])?;
        tx.execute(BUMP_GENERATION, [])?;
        Ok(tx.commit()?)
    }

    /// The index file's own store; an index in Chroma has none.
    fn local(&mut self) -> Result<(&Connection, &mut LocalStore), IndexError> {
        match self.store.as_local() {
            Some(l) => Ok((&self.db, l)),
            None => Err(StoreError::NotLocal.into()),
        }
    }

    /// Builds the HNSW graph for the current generation now, whatever the threshold.
    pub fn build_ann_now(&mut self) -> Result<(), IndexError> {
        let (db, local) = self.local()?;
        Ok(local.build_ann_now(db)?)
    }

    /// Stores bare vectors as chunks of synthetic files of 1,000 (`file0`, `file1`, ...): for recall
    /// tests and benchmarks that need no model.
    pub async fn put_synthetic(&mut self, vectors: &[Vec<f32>]) -> Result<(), IndexError> {
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
    pub fn bump_generation(&self) -> Result<(), IndexError> {
        self.db.execute(BUMP_GENERATION, [])?;
        Ok(())
    }

    /// The ids of the `k` chunks in `allowed` (all when `None`) nearest to `q`, with their cosine
    /// similarity, best first, ranked the way `how` says (for recall tests and benchmarks).
    pub fn rank(
        &mut self,
        how: Ranking,
        q: &[f32],
        k: usize,
        allowed: Option<&HashSet<i64>>,
    ) -> Result<Vec<(i64, f64)>, IndexError> {
        if how == Ranking::SqliteVec {
            return Ok(search_sqlite_vec(&self.db, q, k, allowed)?);
        }
        let (db, local) = self.local()?;
        Ok(local.rank(db, Nearest { how, q, k, allowed })?)
    }

    /// The index's embedding model, found and loaded on first use: by its name, or else by the file
    /// the index was built from.
    pub async fn embedder(&mut self) -> Result<Arc<LocalEmbedder>, IndexError> {
        if let Some(e) = &self.embedder {
            return Ok(Arc::clone(e));
        }
        let model = self.meta("model").ok_or(IndexError::Empty)?;
        let (name, path) =
            match store::resolve_model(&model, Path::new("."), store::ModelUse::Embedding) {
                Ok(found) => found,
                Err(e) => match self.meta("model_path").map(PathBuf::from) {
                    Some(p) if p.is_file() => (model.clone(), p),
                    _ => {
                        return Err(IndexError::ModelNotInstalled {
                            name: e.name,
                            help: e.help,
                        });
                    }
                },
            };
        let embedder = LocalEmbedder::get(&name, &path).await?;
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
    ) -> Result<Vec<Hit>, IndexError> {
        let embedder = self.embedder().await?;
        let q = embedder.embed(vec![query.to_owned()]).await?.remove(0);
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
    ) -> Result<Vec<Hit>, IndexError> {
        self.check_query_dims(&q)?;
        let s = Search {
            q: &q,
            text: Some(query),
            k,
            hybrid,
            filter,
        };
        Ok(self.store.search(&mut self.db, s).await?)
    }

    /// Whether the vectors are in the index file, so that [`Index::query_embedded_blocking`] answers.
    pub fn is_local(&mut self) -> bool {
        self.store.as_local().is_some()
    }

    /// A search without a runtime, for an index that keeps its vectors in its own file: it reads
    /// SQLite and memory only, so callers run it on a blocking thread. `q` comes from
    /// [`Index::embedder`] for `text`, or from [`Index::prepare_vector`] with no text. `None` for an
    /// index in Chroma.
    pub fn query_embedded_blocking(
        &mut self,
        s: Search<'_>,
    ) -> Option<Result<Vec<Hit>, IndexError>> {
        if let Err(e) = self.check_query_dims(s.q) {
            return Some(Err(e));
        }
        let local = self.store.as_local()?;
        let s = Search {
            hybrid: s.hybrid && s.text.is_some(),
            ..s
        };
        Some(local.search_now(&self.db, s).map_err(IndexError::from))
    }

    fn check_query_dims(&self, q: &[f32]) -> Result<(), IndexError> {
        let dims: usize = self
            .meta("dims")
            .and_then(|d| d.parse().ok())
            .unwrap_or(q.len());
        if q.len() != dims {
            return Err(IndexError::ModelChanged { got: q.len(), dims });
        }
        Ok(())
    }

    /// The `k` chunks nearest to a vector already embedded by the index's model (normalised here).
    pub async fn query_vector(
        &mut self,
        q: Vec<f32>,
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Hit>, IndexError> {
        let q = self.prepare_vector(q)?;
        let s = Search {
            q: &q,
            text: None,
            k,
            hybrid: false,
            filter,
        };
        Ok(self.store.search(&mut self.db, s).await?)
    }

    /// A query vector given by the caller, checked against the index's vector size and normalised.
    pub fn prepare_vector(&self, mut q: Vec<f32>) -> Result<Vec<f32>, IndexError> {
        let dims: usize = self
            .meta("dims")
            .and_then(|d| d.parse().ok())
            .ok_or(IndexError::Empty)?;
        if q.len() != dims {
            return Err(IndexError::QueryDims {
                got: q.len(),
                dims,
                model: self.meta("model").unwrap_or_default(),
            });
        }
        let norm = q.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            q.iter_mut().for_each(|x| *x /= norm);
        }
        Ok(q)
    }

    /// Removes what the store keeps outside the index file (a Chroma collection) before `index rm`.
    pub async fn drop_store(&self) -> Result<(), IndexError> {
        Ok(self.store.drop_all().await?)
    }

    /// The Chroma collection's size, when the vectors live there.
    pub async fn store_count(&self) -> Result<Option<u64>, IndexError> {
        Ok(self.store.count().await?)
    }
}
