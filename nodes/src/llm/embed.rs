//! Embeddings on llama.cpp: an embedding GGUF (e.g. one written by `sluice model import`) loaded once,
//! served by its own thread and context. Texts from all callers waiting at that moment are encoded
//! together, one sequence each, pooled as the GGUF says (mean or CLS), and L2-normalised.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, mpsc};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use sluice_engine::spawn::run_blocking;

use super::local::{SetupError, llama_backend, start_worker};
use super::local_config::var;
pub use super::types::EmbedLayout;
use super::types::LlmError;

/// Tokens encoded per llama.cpp call, unless `SLUICE_EMBED_BATCH` says otherwise (never fewer than the
/// longest input, as an encoder sees a whole text at once). The texts of one call attend to each
/// other through a mask, so a call's attention work grows with the square of its tokens: calls of
/// a few hundred tokens waste little and keep the compute buffers small.
const DEFAULT_BATCH_TOKENS: u32 = 1024;
/// Texts encoded together at most.
const MAX_SEQS: u32 = 64;

/// The model's own input length (`max_seq_length` from its sentence-transformers configuration,
/// recorded at import; else its trained context), unless `SLUICE_EMBED_MAX_SEQ` asks for another (at
/// most the trained context); `SLUICE_EMBED_BATCH` and `SLUICE_EMBED_THREADS` set the rest.
fn layout_for(model: &LlamaModel) -> EmbedLayout {
    let trained = model.n_ctx_train().max(2) as usize;
    let recorded = model
        .meta_val_str(sluice_config::gguf::MAX_SEQ_LENGTH_KEY)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok());
    let env = |k: &str| var::<usize>(k).filter(|&n| n > 0);
    let max_seq = env("SLUICE_EMBED_MAX_SEQ")
        .or(recorded)
        .unwrap_or(trained)
        .clamp(2, trained);
    let batch_tokens = env("SLUICE_EMBED_BATCH")
        .map_or(DEFAULT_BATCH_TOKENS as usize, |b| b.min(1 << 16))
        .max(max_seq) as u32;
    let threads = env("SLUICE_EMBED_THREADS").map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |t| t.min(256),
    ) as i32;
    EmbedLayout {
        max_seq,
        batch_tokens,
        threads,
    }
}

type Reply = mpsc::Sender<Result<Vec<Vec<f32>>, LlmError>>;

/// A loaded embedding model.
pub struct LocalEmbedder {
    name: String,
    dims: usize,
    layout: EmbedLayout,
    /// Shared with the encoding thread; tokenizing needs no context.
    model: Arc<LlamaModel>,
    jobs: Mutex<mpsc::Sender<(Vec<String>, Reply)>>,
}

impl fmt::Debug for LocalEmbedder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalEmbedder")
            .field("name", &self.name)
            .field("dims", &self.dims)
            .finish()
    }
}

type Pool = Mutex<HashMap<PathBuf, Arc<tokio::sync::OnceCell<Arc<LocalEmbedder>>>>>;

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(Default::default)
}

impl LocalEmbedder {
    /// The embedding model at `path`, loaded on first use and shared.
    pub async fn get(name: &str, path: &Path) -> Result<Arc<LocalEmbedder>, LlmError> {
        let cell = pool()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(path.to_path_buf())
            .or_default()
            .clone();
        let (name, path) = (name.to_owned(), path.to_path_buf());
        cell.get_or_try_init(|| async move {
            run_blocking(move || LocalEmbedder::load(name, path).map(Arc::new)).await
        })
        .await
        .cloned()
    }

    fn load(name: String, path: PathBuf) -> Result<LocalEmbedder, LlmError> {
        let backend = llama_backend()?;
        let model = LlamaModel::load_from_file(backend, &path, &LlamaModelParams::default())
            .map_err(|e| {
                LlmError::user(
                    "LocalModelError",
                    format!("could not load {}: {e}", path.display()),
                )
            })?;
        let model = Arc::new(model);
        let shared = Arc::clone(&model);
        let dims = model.n_embd() as usize;
        let layout = layout_for(&model);
        tracing::debug!(model = %name, ?layout, "embedding layout");
        let EmbedLayout {
            max_seq,
            batch_tokens,
            threads,
        } = layout;
        let (jobs, rx) = mpsc::channel::<(Vec<String>, Reply)>();
        start_worker(format!("sluice-embed-{name}"), move |ready_tx| {
            let params = LlamaContextParams::default()
                .with_embeddings(true)
                .with_n_ctx(NonZeroU32::new(batch_tokens))
                .with_n_batch(batch_tokens)
                .with_n_ubatch(batch_tokens)
                .with_n_seq_max(MAX_SEQS)
                .with_n_threads(threads)
                .with_n_threads_batch(threads);
            let mut ctx = match model.new_context(backend, params) {
                Ok(c) => c,
                Err(e) => {
                    let _ = ready_tx.send(Err(SetupError::EmbeddingContext(e)));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            let mut batch = LlamaBatch::new(batch_tokens as usize, 1);
            while let Ok(first) = rx.recv() {
                // Requests that arrived meanwhile (other lines, other nodes) are encoded together.
                let mut jobs = vec![first];
                let mut queued = jobs[0].0.len();
                while queued < MAX_SEQS as usize {
                    match rx.try_recv() {
                        Ok(job) => {
                            queued += job.0.len();
                            jobs.push(job);
                        }
                        Err(_) => break,
                    }
                }
                let texts: Vec<String> = jobs.iter().flat_map(|(t, _)| t.iter().cloned()).collect();
                let mut out = Vec::with_capacity(texts.len());
                let mut failure = None;
                let tokenized: Vec<_> = texts
                    .iter()
                    .map(|t| {
                        let mut toks = model.vocab().tokenize(t.as_bytes(), true, false);
                        // Longer texts keep their first tokens and the end token, as
                        // sentence-transformers cuts them.
                        if toks.len() > max_seq {
                            let last = toks[toks.len() - 1];
                            toks.truncate(max_seq - 1);
                            toks.push(last);
                        }
                        toks
                    })
                    .collect();
                let mut start = 0;
                while start < tokenized.len() && failure.is_none() {
                    // As many texts as fit one batch.
                    let mut end = start;
                    let mut used = 0;
                    while end < tokenized.len()
                        && end - start < MAX_SEQS as usize
                        && used + tokenized[end].len() <= batch_tokens as usize
                    {
                        used += tokenized[end].len();
                        end += 1;
                    }
                    batch.clear();
                    for (seq, toks) in tokenized[start..end].iter().enumerate() {
                        if let Err(e) = batch.add_sequence(toks, seq as i32, true) {
                            failure = Some(format!("batch: {e}"));
                        }
                    }
                    ctx.clear_kv_cache();
                    // llama.cpp runs an encoder-only model's batch through encode() itself.
                    let done = ctx.decode(&mut batch).map_err(|e| e.to_string());
                    if let Err(e) = done {
                        failure = Some(format!("llama.cpp could not embed: {e}"));
                        break;
                    }
                    for seq in 0..(end - start) {
                        match ctx.embeddings_seq_ith(seq as i32) {
                            Ok(v) => out.push(normalize(v)),
                            Err(e) => {
                                failure = Some(format!(
                                    "no pooled embedding ({e:?}); is this an embedding model?"
                                ));
                                break;
                            }
                        }
                    }
                    start = end;
                }
                let mut vectors = out.into_iter();
                for (texts, reply) in jobs {
                    let _ = reply.send(match &failure {
                        Some(f) => Err(LlmError::system("LocalModelError", f.clone())),
                        None => Ok(vectors.by_ref().take(texts.len()).collect()),
                    });
                }
            }
        })?;
        Ok(LocalEmbedder {
            name,
            dims,
            layout,
            model: shared,
            jobs: Mutex::new(jobs),
        })
    }

    /// Vector size.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// How many tokens the model makes of each text, without the start and end tokens.
    pub fn token_counts(&self, texts: &[&str]) -> Vec<usize> {
        texts
            .iter()
            .map(|t| {
                self.model
                    .vocab()
                    .tokenize(t.as_bytes(), false, false)
                    .len()
            })
            .collect()
    }

    /// The longest text, in tokens with the start and end tokens, that the model reads whole.
    pub fn max_tokens(&self) -> usize {
        self.layout.max_seq
    }

    /// How this model's texts are cut and grouped.
    pub fn layout(&self) -> EmbedLayout {
        self.layout
    }

    /// One L2-normalised vector per text, in order.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, LlmError> {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((texts, tx))
            .map_err(|_| LlmError::system("LocalModelError", "the embedding thread has stopped"))?;
        run_blocking(move || {
            rx.recv().unwrap_or_else(|_| {
                Err(LlmError::system(
                    "LocalModelError",
                    "the embedding thread stopped",
                ))
            })
        })
        .await
    }
}

fn normalize(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter().map(|x| x / norm).collect()
}
