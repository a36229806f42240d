//! `sluice-nodes`: the node kinds Sluice ships, and [`builtin_registry`] that registers them.
//!
//! - [`prompt::PromptKind`] (`type: prompt`): renders a Jinja template.
//! - [`llm::LlmKind`] (`type: llm`): a chat or completion call, on the in-process llama.cpp model or an
//!   OpenAI-compatible server.
//! - [`llm::embedding_node::EmbeddingKind`] (`type: embedding`): text to vectors, local or over HTTP.
//! - [`retrieval::node::RetrievalKind`] (`type: retrieval`): search an index built by `sluice index`.
//! - `python::PythonKind` (`type: python`, feature `python`): calls a `@tool` function in an embedded CPython,
//!   from a file in the flow folder or an installed package (`source.type: package`).
//! - `python::CustomLlmKind` (`type: custom_llm`, feature `python`): an installed package tool given the
//!   node's prompt template (`source.type: package_with_prompt`).
//! - `python::FlexKind` (feature `python`): runs a flex flow's entry function or class.
//!
//! Local models run in-process on llama.cpp with the `local-llm` feature (on by default); without it,
//! `llm` and `embedding` nodes need an OpenAI-compatible connection, and a flow that names a local
//! model is refused when it loads. [`llm::protocol`] holds the OpenAI parameters' rules, shared by the
//! `llm` node, the HTTP backend and `sluice model serve`.
//!
//! ```
//! let registry = sluice_nodes::builtin_registry();
//! assert!(registry.get("prompt").is_some());
//! ```

pub mod llm;
pub mod prompt;
#[cfg(feature = "python")]
pub mod python;
pub mod retrieval;
pub mod template;

use sluice_engine::{NodeRegistry, PackageTool};

/// A registry with every built-in node kind.
pub fn builtin_registry() -> NodeRegistry {
    let mut registry = NodeRegistry::new();
    registry.register(prompt::PromptKind);
    registry.register(llm::LlmKind);
    registry.register(llm::embedding_node::EmbeddingKind);
    registry.register(retrieval::node::RetrievalKind);
    #[cfg(feature = "python")]
    registry.register(python::PythonKind);
    #[cfg(feature = "python")]
    registry.register(python::FlexKind);
    #[cfg(feature = "python")]
    registry.register(python::CustomLlmKind);
    // promptflow's LLM tool (`custom_llm` with a prompt template): an `llm` node, whose `api` input
    // says chat or completion.
    registry.register_package_tool(
        "promptflow.tools.llm.llm",
        PackageTool {
            kind: "llm",
            renames: &[],
        },
    );
    // promptflow's own tools for embeddings and vector search, run by Sluice's kinds.
    registry.register_package_tool(
        "promptflow.tools.embedding.embedding",
        PackageTool {
            kind: "embedding",
            renames: &[],
        },
    );
    // promptflow's GPT-4V chat tools (`custom_llm` nodes), run by the `llm` kind on the node's
    // OpenAI or Azure OpenAI connection.
    for tool in llm::VISION_TOOLS {
        registry.register_package_tool(
            tool,
            PackageTool {
                kind: "llm",
                renames: &[],
            },
        );
    }
    for (tool, renames) in [
        (
            "promptflow_vectordb.tool.vector_index_lookup.VectorIndexLookup.search",
            &[("path", "index")][..],
        ),
        (
            "promptflow_vectordb.tool.faiss_index_lookup.FaissIndexLookup.search",
            &[("path", "index"), ("vector", "query")][..],
        ),
        (
            "promptflow_vectordb.tool.common_index_lookup.search",
            &[("mlindex_content", "index"), ("queries", "query")][..],
        ),
    ] {
        registry.register_package_tool(
            tool,
            PackageTool {
                kind: "retrieval",
                renames,
            },
        );
    }
    registry
}

/// An error and its sources on one line (`what: why: deeper why`), for messages that travel as text
/// (a build error, an error code's message).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
