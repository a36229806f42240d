//! Retrieval: `sluice index` reads documents ([`document`]), cuts them into chunks, embeds them, and
//! keeps them in an index ([`index`]): one SQLite file with the chunks and an FTS5 table for BM25, and
//! a vector store ([`store`]): sqlite-vec in the same file with an HNSW graph beside it above a size
//! threshold ([`ann`]), or a Chroma server's collection ([`chroma`]). The `retrieval` node ([`node`])
//! searches it, with metadata filters ([`filter`]) and optional BM25 fusion.

pub mod ann;
pub mod chroma;
pub mod document;
pub mod error;
pub mod filter;
pub mod index;
pub mod node;
pub mod store;
