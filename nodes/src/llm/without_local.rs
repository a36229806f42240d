//! Stand-ins for [`local`] and [`embed`] in a build without the `local-llm` feature (no llama.cpp): the
//! same names, so callers build either way, and a model that can never be loaded. Flows that need a
//! local model are refused when they load ([`super::require_local_models`]); anything that asks for
//! one later gets [`unavailable`].

use super::types::LlmError;

/// Why no local model can be loaded.
fn unavailable() -> LlmError {
    LlmError::user(
        "LocalModelError",
        "this sluice was built without local models (the `local-llm` feature): use an OpenAI-compatible connection, or build sluice with the `local-llm` feature",
    )
}

pub mod local {
    //! Local models are not built in (see the parent module).

    use std::convert::Infallible;
    use std::path::Path;
    use std::sync::Arc;

    use async_trait::async_trait;

    use crate::llm::types::{Backend, GenParams, LlmError, Prompt, TokenStream};

    pub use crate::llm::local_config::LocalConfig;

    /// Always 0: no model is ever loaded.
    pub fn model_loads() -> usize {
        0
    }

    /// Always 0: no model is ever loaded.
    pub fn model_loads_of(_name: &str) -> usize {
        0
    }

    /// A local model, which this build cannot load: there are no values of this type.
    #[derive(Debug)]
    pub struct LocalModel {
        never: Infallible,
    }

    impl LocalModel {
        /// Fails: this build has no local models.
        pub async fn get(
            _name: &str,
            _path: &Path,
            _config: LocalConfig,
        ) -> Result<Arc<LocalModel>, LlmError> {
            Err(super::unavailable())
        }

        pub fn name(&self) -> &str {
            match self.never {}
        }

        pub fn template_source(&self) -> &str {
            match self.never {}
        }

        pub fn details(&self) -> serde_json::Value {
            match self.never {}
        }
    }

    #[async_trait]
    impl Backend for LocalModel {
        fn describe(&self) -> String {
            match self.never {}
        }

        async fn generate(&self, _: Prompt, _: GenParams) -> Result<TokenStream, LlmError> {
            match self.never {}
        }
    }
}

pub mod embed {
    //! Local embedding models are not built in (see the parent module).

    use std::convert::Infallible;
    use std::path::Path;
    use std::sync::Arc;

    pub use crate::llm::types::EmbedLayout;
    use crate::llm::types::LlmError;

    /// A local embedding model, which this build cannot load: there are no values of this type.
    #[derive(Debug)]
    pub struct LocalEmbedder {
        never: Infallible,
    }

    impl LocalEmbedder {
        /// Fails: this build has no local models.
        pub async fn get(_name: &str, _path: &Path) -> Result<Arc<LocalEmbedder>, LlmError> {
            Err(super::unavailable())
        }

        pub fn dims(&self) -> usize {
            match self.never {}
        }

        pub fn token_counts(&self, _texts: &[&str]) -> Vec<usize> {
            match self.never {}
        }

        pub fn layout(&self) -> EmbedLayout {
            match self.never {}
        }

        pub fn max_tokens(&self) -> usize {
            match self.never {}
        }

        pub async fn embed(&self, _texts: Vec<String>) -> Result<Vec<Vec<f32>>, LlmError> {
            match self.never {}
        }
    }
}
