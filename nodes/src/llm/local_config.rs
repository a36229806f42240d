//! How a local model's context is sized and run: plain settings that need no llama.cpp, so the code
//! that sets them (`sluice model serve`, benchmarks) builds with or without the `local-llm` feature.

use std::sync::OnceLock;

/// How a local model's context is sized and run.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LocalConfig {
    /// Sequences decoded together (requests in flight at once).
    pub parallel: u32,
    /// The most tokens (prompt + completion) one request can use.
    pub seq_ctx: u32,
    /// One KV cache shared by all sequences (the default) rather than one per sequence
    /// (`SLUICE_LLM_KV=split`). Shared cells make prefix reuse free and suit short answers (measured on
    /// 2 cores: 200 classification lines 5.5 s shared vs 8.6 s split; 16 sequences x 64 tokens 138 vs
    /// 112 tok/s), but every token attends over all cells, so at high concurrency split wins (64
    /// sequences x 64 tokens: 141 vs 68 tok/s).
    pub unified_kv: bool,
    /// KV cache cells shared by all sequences, in unified mode.
    pub n_ctx: u32,
    /// Tokens per decode call; also the largest prompt chunk evaluated at once.
    pub n_batch: u32,
    /// CPU threads for decoding.
    pub threads: i32,
    /// Layers offloaded to the GPU (0 on a CPU build).
    pub gpu_layers: u32,
    /// Generation cap when a request sets no `max_tokens`.
    pub default_max_tokens: u32,
}

impl Default for LocalConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as i32;
        LocalConfig {
            parallel: 16,
            seq_ctx: 1024,
            unified_kv: true,
            n_ctx: 8192,
            n_batch: 512,
            threads: cores.clamp(1, 8),
            gpu_layers: if cfg!(any(feature = "cuda", feature = "gpu-dl")) {
                u32::MAX
            } else {
                0
            },
            default_max_tokens: 512,
        }
    }
}

impl LocalConfig {
    /// KV cells allocated: one stream of `seq_ctx` per sequence, or `n_ctx` shared.
    pub fn kv_cells(&self) -> u32 {
        if self.unified_kv {
            self.n_ctx
        } else {
            self.parallel * self.seq_ctx
        }
    }

    /// The defaults, overridden by `SLUICE_LLM_PARALLEL`, `SLUICE_LLM_SEQ_CTX`, `SLUICE_LLM_KV`,
    /// `SLUICE_LLM_CTX`, `SLUICE_LLM_BATCH`,
    /// `SLUICE_LLM_THREADS`, `SLUICE_LLM_GPU_LAYERS` and `SLUICE_LLM_MAX_TOKENS`.
    pub fn from_env() -> Self {
        let d = LocalConfig::default();
        LocalConfig {
            parallel: var("SLUICE_LLM_PARALLEL")
                .unwrap_or(d.parallel)
                .clamp(1, 256),
            seq_ctx: var("SLUICE_LLM_SEQ_CTX").unwrap_or(d.seq_ctx).max(64),
            unified_kv: !std::env::var("SLUICE_LLM_KV")
                .is_ok_and(|v| v.eq_ignore_ascii_case("split")),
            n_ctx: var("SLUICE_LLM_CTX").unwrap_or(d.n_ctx).max(256),
            n_batch: var("SLUICE_LLM_BATCH").unwrap_or(d.n_batch).clamp(32, 8192),
            threads: var("SLUICE_LLM_THREADS").unwrap_or(d.threads).max(1),
            gpu_layers: var("SLUICE_LLM_GPU_LAYERS").unwrap_or(d.gpu_layers),
            default_max_tokens: var("SLUICE_LLM_MAX_TOKENS").unwrap_or(d.default_max_tokens),
        }
    }
}

static CONFIGURED: OnceLock<LocalConfig> = OnceLock::new();

impl LocalConfig {
    /// Sets the configuration local models use in this process (instead of the environment's);
    /// false when one was already set.
    pub fn set_process_default(config: LocalConfig) -> bool {
        CONFIGURED.set(config).is_ok()
    }

    /// The process default if one was set, else [`LocalConfig::from_env`].
    pub fn current() -> LocalConfig {
        CONFIGURED
            .get()
            .cloned()
            .unwrap_or_else(LocalConfig::from_env)
    }
}

/// An environment variable read as a `T`; `None` when it is unset or does not parse.
pub(crate) fn var<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}
