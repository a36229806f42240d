//! Where an index keeps its vectors: [`VectorStore`], with the index's own file ([`LocalStore`]:
//! sqlite-vec, an in-memory flat copy for exact scans, an HNSW graph above a threshold) and a Chroma
//! server ([`super::chroma::Chroma`]). The chunks' text, metadata and FTS5 table stay in the
//! index's SQLite file whatever the store; a store is given that connection with each call.
//!
//! Writes follow one rule for every store: the chunks go into SQLite in a transaction, then the store
//! gets their vectors, and only then is the file recorded as indexed; removal goes the other way.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value as Json};

use super::ann::{self, Ann};
use super::document::Chunk;
use super::filter::Filter;
use super::index::{DEFAULT_ANN_THRESHOLD, Hit, Phase, Ranking, count, generation, meta};

pub use super::error::StoreError;

/// One file's chunks as the store gets them: their SQLite ids, vectors and what they say.
#[derive(Debug)]
pub struct FileChunks<'a> {
    pub model: &'a str,
    pub key: &'a str,
    pub ids: &'a [i64],
    pub chunks: &'a [Chunk],
    pub vectors: &'a [Vec<f32>],
    pub metadata: &'a Map<String, Json>,
}

/// A search as the store gets it.
#[derive(Debug)]
pub struct Search<'a> {
    /// The query vector, unit length.
    pub q: &'a [f32],
    /// The query's text, for BM25 when `hybrid`.
    pub text: Option<&'a str>,
    pub k: usize,
    pub hybrid: bool,
    pub filter: &'a Filter,
}

/// A ranking of the chunks' vectors: the `k` chunks in `allowed` (all when `None`) nearest to `q`,
/// found the way `how` says.
#[derive(Clone, Copy, Debug)]
pub struct Nearest<'a> {
    pub how: Ranking,
    /// The query vector, unit length.
    pub q: &'a [f32],
    pub k: usize,
    pub allowed: Option<&'a HashSet<i64>>,
}

/// A place for an index's vectors. `db` is the index's SQLite connection (the chunks and the meta
/// table); the store may keep its own tables there.
#[async_trait]
pub trait VectorStore: Send + Sync + Debug {
    /// Prepares a new index for vectors of `dims` numbers.
    fn create(&mut self, db: &Connection, dims: usize) -> Result<(), StoreError>;

    /// Stores the vectors of chunks already written to `db`.
    async fn put(&mut self, db: &mut Connection, file: FileChunks<'_>) -> Result<(), StoreError>;

    /// Forgets the vectors of these chunks (still in `db`).
    async fn remove(&mut self, db: &mut Connection, ids: &[i64]) -> Result<(), StoreError>;

    /// The `k` best hits.
    async fn search(&mut self, db: &mut Connection, s: Search<'_>) -> Result<Vec<Hit>, StoreError>;

    /// Brings derived structures (the HNSW graph) up to date after a build; whether queries use one.
    fn refresh(
        &mut self,
        _db: &Connection,
        _progress: &mut (dyn FnMut(Phase, usize, usize) + Send),
    ) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// Deletes what the store keeps outside the index file (before `index rm`).
    async fn drop_all(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The number of vectors the store holds, when it is not the index file.
    async fn count(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// The index file's own store, for recall tests and benchmarks.
    fn as_local(&mut self) -> Option<&mut LocalStore> {
        None
    }
}

/// Up to this many chunks, exact search scans the vectors in memory (read once per generation from
/// sqlite-vec: 150 MB at 100,000 chunks of 384 dimensions); above it, sqlite-vec scans its table.
const FLAT_MAX: usize = 250_000;

/// The vectors in the index file: a sqlite-vec `vec0` table `chunks_vec`, read into memory for exact
/// scans, and an HNSW graph (`NAME.hnsw`) from a chunk count on. What is kept in memory belongs to
/// one generation of the index.
#[derive(Debug)]
pub struct LocalStore {
    /// The HNSW graph's file.
    ann_path: PathBuf,
    /// The HNSW graph and the generation it was loaded for.
    ann: Option<(u64, Option<Arc<Ann>>)>,
    /// The vectors in memory for exact scans, and the generation they were read at.
    flat: Option<(u64, Arc<Flat>)>,
    /// The chunks' metadata for filters, and the generation it was read at.
    metas: Option<(u64, Arc<Metas>)>,
}

/// Chunk ids with an index into the distinct metadata maps.
#[derive(Debug, Default)]
struct Metas {
    ids: Vec<i64>,
    which: Vec<u32>,
    maps: Vec<Map<String, Json>>,
}

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

fn blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn unblob(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect()
}

#[async_trait]
impl VectorStore for LocalStore {
    fn create(&mut self, db: &Connection, dims: usize) -> Result<(), StoreError> {
        db.execute_batch(&format!(
            "CREATE VIRTUAL TABLE IF NOT EXISTS chunks_vec USING vec0(embedding float[{dims}] distance_metric=cosine)"
        ))?;
        Ok(())
    }

    async fn put(&mut self, db: &mut Connection, file: FileChunks<'_>) -> Result<(), StoreError> {
        let tx = db.transaction()?;
        {
            let mut vec =
                tx.prepare_cached("INSERT INTO chunks_vec (rowid, embedding) VALUES (?1, ?2)")?;
            for (id, v) in file.ids.iter().zip(file.vectors) {
                vec.execute(params![id, blob(v)])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    async fn remove(&mut self, db: &mut Connection, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let tx = db.transaction()?;
        {
            let mut del = tx.prepare_cached("DELETE FROM chunks_vec WHERE rowid = ?1")?;
            for id in ids {
                del.execute(params![id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    async fn search(&mut self, db: &mut Connection, s: Search<'_>) -> Result<Vec<Hit>, StoreError> {
        self.search_now(db, s)
    }

    fn refresh(
        &mut self,
        db: &Connection,
        progress: &mut (dyn FnMut(Phase, usize, usize) + Send),
    ) -> Result<bool, StoreError> {
        let generation = generation(db);
        let chunks = count(db, "SELECT COUNT(*) FROM chunks")?;
        let threshold = meta(db, "ann_threshold")
            .and_then(|t| t.parse().ok())
            .unwrap_or(DEFAULT_ANN_THRESHOLD);
        if chunks < threshold || chunks == 0 {
            let _ = std::fs::remove_file(&self.ann_path);
            db.execute("DELETE FROM meta WHERE key = 'ann_built'", [])?;
            self.ann = None;
            return Ok(false);
        }
        if meta(db, "ann_built") == Some(generation.to_string()) && self.ann_path.is_file() {
            return Ok(true);
        }
        progress(Phase::Graph, 0, 1);
        self.build_ann_now(db)?;
        progress(Phase::Graph, 1, 1);
        Ok(true)
    }

    fn as_local(&mut self) -> Option<&mut LocalStore> {
        Some(self)
    }
}

impl LocalStore {
    /// The store of the index file at `index_path`.
    pub fn new(index_path: &std::path::Path) -> LocalStore {
        LocalStore {
            ann_path: index_path.with_extension("hnsw"),
            ann: None,
            flat: None,
            metas: None,
        }
    }

    /// The search itself; it only reads SQLite and memory, so it may run on a blocking thread.
    pub fn search_now(&mut self, db: &Connection, s: Search<'_>) -> Result<Vec<Hit>, StoreError> {
        let hybrid = s.hybrid && s.text.is_some();
        let allowed = if s.filter.is_empty() {
            None
        } else {
            Some(self.ids_matching(db, s.filter)?)
        };
        let depth = if hybrid { s.k.max(100) } else { s.k };
        let ranked = self.rank(
            db,
            Nearest {
                how: Ranking::Vectors,
                q: s.q,
                k: depth,
                allowed: allowed.as_ref(),
            },
        )?;
        let ranked: Vec<(i64, f64)> = if hybrid {
            let bm25 = bm25(db, s.text.unwrap_or_default(), allowed.as_ref())?;
            let mut fused: HashMap<i64, f64> = HashMap::new();
            for list in [&ranked, &bm25] {
                for (rank, (id, _)) in list.iter().enumerate() {
                    *fused.entry(*id).or_default() += 1.0 / (60.0 + rank as f64 + 1.0);
                }
            }
            let mut fused: Vec<(i64, f64)> = fused.into_iter().collect();
            fused.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            fused.truncate(s.k);
            fused
        } else {
            ranked
        };
        let mut hits = Vec::with_capacity(ranked.len());
        for (id, score) in ranked {
            // A chunk removed since a stale HNSW graph was read is skipped, not an error.
            if let Some(hit) = hit(db, id, score)? {
                hits.push(hit);
            }
        }
        Ok(hits)
    }

    /// Builds the HNSW graph for the current generation now, whatever the threshold.
    pub fn build_ann_now(&mut self, db: &Connection) -> Result<(), StoreError> {
        let generation = generation(db);
        let graph = Ann::build(all_vectors(db)?);
        graph
            .save(&self.ann_path, generation)
            .map_err(|source| StoreError::Graph {
                path: self.ann_path.clone(),
                source,
            })?;
        db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('ann_built', ?1)",
            params![generation.to_string()],
        )?;
        self.ann = Some((generation, Some(Arc::new(graph))));
        Ok(())
    }

    /// The HNSW graph for the current generation, loaded once.
    fn ann(&mut self, db: &Connection) -> Option<Arc<Ann>> {
        let generation = generation(db);
        if meta(db, "ann_built") != Some(generation.to_string()) {
            return None;
        }
        match &self.ann {
            Some((g, graph)) if *g == generation => graph.clone(),
            _ => {
                let graph = Ann::load(&self.ann_path, generation).map(Arc::new);
                if graph.is_none() {
                    tracing::warn!(graph = %self.ann_path.display(), "the HNSW graph is missing or stale; searching exactly");
                }
                self.ann = Some((generation, graph.clone()));
                graph
            }
        }
    }

    /// Chunk ids whose metadata passes `filter`.
    fn ids_matching(
        &mut self,
        db: &Connection,
        filter: &Filter,
    ) -> Result<HashSet<i64>, StoreError> {
        let generation = generation(db);
        let cache = match &self.metas {
            Some((g, c)) if *g == generation => Arc::clone(c),
            _ => {
                let c = Arc::new(read_metas(db)?);
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

    /// The vectors in memory for the current generation, when the index is small enough.
    fn flat(&mut self, db: &Connection) -> Result<Option<Arc<Flat>>, StoreError> {
        let generation = generation(db);
        if let Some((g, flat)) = &self.flat
            && *g == generation
        {
            return Ok(Some(Arc::clone(flat)));
        }
        if count(db, "SELECT COUNT(*) FROM chunks")? > FLAT_MAX {
            return Ok(None);
        }
        let dims: usize = meta(db, "dims").and_then(|d| d.parse().ok()).unwrap_or(0);
        let rows = all_vectors(db)?;
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

    /// The ranking `nearest` asks for: ids with cosine similarity, best first.
    /// [`Ranking::Vectors`] uses the HNSW graph when there is one, no filter and `k` is within its
    /// search width, else it is exact. Exact search scans the vectors in memory (SIMD dot products)
    /// up to [`FLAT_MAX`] chunks, and uses sqlite-vec above that.
    pub fn rank(
        &mut self,
        db: &Connection,
        nearest: Nearest<'_>,
    ) -> Result<Vec<(i64, f64)>, StoreError> {
        let Nearest { how, q, k, allowed } = nearest;
        if how == Ranking::SqliteVec {
            return search_sqlite_vec(db, q, k, allowed);
        }
        if how == Ranking::Vectors
            && allowed.is_none()
            && k <= ann::EF_SEARCH
            && let Some(graph) = self.ann(db)
        {
            return Ok(graph.search(q, k));
        }
        if k == 0 {
            return Ok(Vec::new());
        }
        if let Some(flat) = self.flat(db)? {
            return Ok(flat.search(q, k, allowed));
        }
        search_sqlite_vec(db, q, k, allowed)
    }
}

/// Exact search by sqlite-vec alone: its KNN query (`vec0 ... MATCH`), or its cosine distance
/// function over the allowed rows.
pub fn search_sqlite_vec(
    db: &Connection,
    q: &[f32],
    k: usize,
    allowed: Option<&HashSet<i64>>,
) -> Result<Vec<(i64, f64)>, StoreError> {
    if allowed.is_none() && k <= 4096 {
        let mut stmt = db.prepare_cached(
            "SELECT rowid, distance FROM chunks_vec WHERE embedding MATCH ?1 AND k = ?2 ORDER BY distance",
        )?;
        return Ok(stmt
            .query_map(params![blob(q), k as i64], |r| {
                Ok((r.get::<_, i64>(0)?, 1.0 - r.get::<_, f64>(1)?))
            })?
            .collect::<Result<_, _>>()?);
    }
    let mut stmt =
        db.prepare_cached("SELECT rowid, vec_distance_cosine(embedding, ?1) FROM chunks_vec")?;
    let mut rows = stmt.query(params![blob(q)])?;
    let mut best: Vec<(i64, f64)> = Vec::new();
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        if allowed.is_some_and(|a| !a.contains(&id)) {
            continue;
        }
        best.push((id, 1.0 - r.get::<_, f64>(1)?));
    }
    best.sort_by(|a, b| b.1.total_cmp(&a.1));
    best.truncate(k);
    Ok(best)
}

fn all_vectors(db: &Connection) -> Result<Vec<(i64, Vec<f32>)>, StoreError> {
    let mut stmt = db.prepare("SELECT rowid, embedding FROM chunks_vec")?;
    Ok(stmt
        .query_map([], |r| Ok((r.get(0)?, unblob(&r.get::<_, Vec<u8>>(1)?))))?
        .collect::<Result<_, _>>()?)
}

/// Every chunk's metadata (with its heading), the distinct ones once.
fn read_metas(db: &Connection) -> Result<Metas, StoreError> {
    let mut stmt = db.prepare_cached("SELECT id, metadata, heading FROM chunks")?;
    let mut rows = stmt.query([])?;
    let mut metas = Metas::default();
    let mut seen: HashMap<(String, Option<String>), u32> = HashMap::new();
    while let Some(r) = rows.next()? {
        let key: (String, Option<String>) = (r.get(1)?, r.get(2)?);
        let next = metas.maps.len() as u32;
        let which = *seen.entry(key.clone()).or_insert_with(|| {
            let mut meta: Map<String, Json> = serde_json::from_str(&key.0).unwrap_or_default();
            if let Some(h) = &key.1 {
                meta.insert("heading".into(), Json::String(h.clone()));
            }
            metas.maps.push(meta);
            next
        });
        metas.ids.push(r.get(0)?);
        metas.which.push(which);
    }
    Ok(metas)
}

/// BM25 ranks from FTS5 over the query's words (stop words left out), at most 200.
fn bm25(
    db: &Connection,
    query: &str,
    allowed: Option<&HashSet<i64>>,
) -> Result<Vec<(i64, f64)>, StoreError> {
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
    let mut fts = db.prepare_cached(sql)?;
    let rows: Vec<(i64, f64)> = fts
        .query_map(params![terms.join(" OR ")], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows
        .into_iter()
        .filter(|(id, _)| allowed.is_none_or(|a| a.contains(id)))
        .take(200)
        .collect())
}

fn hit(db: &Connection, id: i64, score: f64) -> Result<Option<Hit>, StoreError> {
    Ok(db
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
        .optional()?)
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
