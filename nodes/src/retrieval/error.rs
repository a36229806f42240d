//! What can go wrong in retrieval: building, opening and searching an index, reading a document, a
//! metadata filter, a Chroma server. Each error says where (fields) and why (its source), and its text
//! says what to do.

use std::path::PathBuf;

use crate::llm::types::LlmError;

/// An index could not be opened, built or searched.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("`{name}` is not a valid index name (letters, digits, `_`, `-`, `.`)")]
    BadName { name: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    #[error(
        "{}: this index was made by an older Sluice: remove it with `sluice index rm` and build it again",
        path.display()
    )]
    OlderFormat {
        path: PathBuf,
        #[source]
        source: Option<rusqlite::Error>,
    },
    #[error("this index was built with the model `{built}`; build another index to use `{asked}`")]
    OtherModel { built: String, asked: String },
    #[error("this index keeps its vectors in {kept}; build another index to use {asked}")]
    OtherStore { kept: String, asked: String },
    #[error("embedding model `{name}` is not installed: {help}")]
    ModelNotInstalled { name: String, help: String },
    #[error(
        "a chunk size of {size} tokens is more than `{model}` reads at once ({limit}); use --chunk-size {limit} or less"
    )]
    ChunkTooLarge {
        size: usize,
        model: String,
        limit: usize,
    },
    #[error("{}: no such file or folder", path.display())]
    NoSuchSource { path: PathBuf },
    #[error("the index is empty: build it first")]
    Empty,
    #[error(
        "the embedding model now gives {got}-dimensional vectors, but this index holds {dims}-dimensional ones: the model file changed; build the index again under another name"
    )]
    ModelChanged { got: usize, dims: usize },
    #[error(
        "the query vector has {got} numbers, but this index holds {dims}-dimensional vectors of the model `{model}`"
    )]
    QueryDims {
        got: usize,
        dims: usize,
        model: String,
    },
    /// The embedding model failed to load or to embed.
    #[error(transparent)]
    Embed(#[from] LlmError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Chroma(#[from] ChromaError),
}

/// A vector store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    #[error(transparent)]
    Chroma(#[from] ChromaError),
    /// The HNSW graph file could not be written.
    #[error("{}: {source}", path.display())]
    Graph {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("hybrid search needs the embedded store; this index keeps its vectors in Chroma")]
    NoHybrid,
    #[error("this index keeps its vectors in Chroma")]
    NotLocal,
}

/// A Chroma server could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ChromaError {
    #[error(
        "`{url}` is not a Chroma store address{}: write chroma://HOST:PORT/COLLECTION (for example chroma://127.0.0.1:8000/docs)",
        option.as_deref().map(|o| format!(" (unknown option `{o}`)")).unwrap_or_default()
    )]
    BadAddress { url: String, option: Option<String> },
    #[error("cannot reach the Chroma server of {url} ({source}); is `chroma run` running?")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("Chroma ({url}) answered {status}: {body}")]
    Refused {
        url: String,
        status: reqwest::StatusCode,
        body: String,
    },
    #[error("Chroma ({url}) gave no {what}: {body}")]
    Malformed {
        url: String,
        what: &'static str,
        body: String,
    },
}

/// A document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("the PDF parser failed on this file")]
    PdfPanicked,
    #[error("not a readable PDF: {0}")]
    Pdf(#[source] pdf_extract::OutputError),
    #[error("not UTF-8 text (byte {byte})")]
    NotUtf8 { byte: usize },
    #[error("front matter: {span}: {message}")]
    FrontMatter { span: String, message: String },
}

/// A metadata filter is not one Sluice can apply.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("a filter is a mapping of metadata keys to values, like {{tags: runs}}; got {got}")]
    NotAMapping { got: String },
    #[error("filter `{key}`: values are strings, numbers or booleans, got {got}")]
    BadValue { key: String, got: String },
    #[error("filter `{key}`: an empty list matches nothing")]
    EmptyList { key: String },
    #[error("`{pair}`: a filter is KEY=VALUE")]
    NotAPair { pair: String },
}
