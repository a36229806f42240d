//! Retrieval: `sluice index` builds a SQLite file per index (chunks, their embeddings, an FTS5 table for
//! BM25) from text files, and the `retrieval` node searches it (exact vector search, optionally fused
//! with BM25 by reciprocal rank).

pub mod index;
pub mod node;
