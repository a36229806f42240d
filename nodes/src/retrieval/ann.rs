//! Approximate nearest neighbours (HNSW, the `instant-distance` crate) for indexes above a size
//! threshold, kept beside the index file and tied to the index's generation.

use std::io::{Read, Write};
use std::path::Path;

use instant_distance::{Builder, HnswMap, Point, Search};
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"SLHNSW01";

/// How many neighbours a search keeps (HNSW's `ef`); asking for more than this searches exactly.
pub const EF_SEARCH: usize = 256;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Unit(Vec<f32>);

impl Point for Unit {
    fn distance(&self, other: &Self) -> f32 {
        1.0 - dot(&self.0, &other.0)
    }
}

/// The dot product of two vectors; for unit vectors, their cosine.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight running sums let the compiler keep them in vector registers.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// An HNSW graph over unit vectors, mapping to chunk ids.
#[derive(Serialize, Deserialize)]
pub struct Ann {
    map: HnswMap<Unit, i64>,
}

impl std::fmt::Debug for Ann {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ann")
            .field("points", &self.map.values.len())
            .finish()
    }
}

impl Ann {
    /// Builds the graph (all cores).
    pub fn build(items: Vec<(i64, Vec<f32>)>) -> Ann {
        let (ids, points): (Vec<i64>, Vec<Unit>) =
            items.into_iter().map(|(id, v)| (id, Unit(v))).unzip();
        let map = Builder::default()
            .ef_construction(200)
            .ef_search(EF_SEARCH)
            .seed(0x5eed)
            .build(points, ids);
        Ann { map }
    }

    pub fn len(&self) -> usize {
        self.map.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.values.is_empty()
    }

    /// Up to `k` (at most [`EF_SEARCH`]) nearest chunk ids with their cosine similarity.
    pub fn search(&self, q: &[f32], k: usize) -> Vec<(i64, f64)> {
        let mut search = Search::default();
        let q = Unit(q.to_vec());
        self.map
            .search(&q, &mut search)
            .take(k)
            .map(|item| (*item.value, f64::from(1.0 - item.distance)))
            .collect()
    }

    /// Writes the graph with the index generation it was built from.
    pub fn save(&self, path: &Path, generation: u64) -> std::io::Result<()> {
        let tmp = path.with_extension("hnsw.tmp");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        f.write_all(MAGIC)?;
        f.write_all(&generation.to_le_bytes())?;
        bincode::serialize_into(&mut f, self).map_err(std::io::Error::other)?;
        f.into_inner()
            .map_err(std::io::IntoInnerError::into_error)?
            .sync_all()?;
        std::fs::rename(&tmp, path)
    }

    /// Reads a graph written by [`Ann::save`]: `None` when it is missing or from another generation.
    pub fn load(path: &Path, generation: u64) -> Option<Ann> {
        let mut f = std::io::BufReader::new(std::fs::File::open(path).ok()?);
        let mut head = [0u8; 16];
        f.read_exact(&mut head).ok()?;
        if &head[..8] != MAGIC || head[8..] != generation.to_le_bytes() {
            return None;
        }
        bincode::deserialize_from(f).ok()
    }
}

/// `n` unit vectors around 200 random centres, like embeddings of texts on a few hundred topics;
/// deterministic for a seed (recall tests and benchmarks).
pub fn synthetic_vectors(n: usize, dims: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut state = seed.max(1);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f32 / (1u64 << 53) as f32 - 0.5
    };
    let centres: Vec<Vec<f32>> = (0..200)
        .map(|_| (0..dims).map(|_| next()).collect())
        .collect();
    (0..n)
        .map(|i| {
            let c = &centres[i * 7919 % centres.len()];
            let mut v: Vec<f32> = c.iter().map(|x| x + 0.6 * next()).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            v
        })
        .collect()
}
