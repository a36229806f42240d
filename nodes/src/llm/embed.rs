//! Local embeddings: an embedding GGUF (e.g. one written by `sluice model import`) loaded once and
//! served by its own thread. BERT-family files run on Sluice's own encoder ([`super::bert`]), others on
//! a llama.cpp context; llama.cpp's vocabulary tokenizes for both. Texts from all callers waiting at
//! that moment are encoded together, one sequence each, pooled as the GGUF says (mean or CLS), and
//! L2-normalised.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, mpsc};

use llama_cpp_2::LlamaContextLoadError;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;
use sluice_config::gguf::{GgufFile, GgufHead};
use sluice_engine::spawn::run_blocking;

use super::bert::BertEncoder;
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

/// What the GGUF says of the model's size.
struct ModelShape {
    dims: usize,
    /// Positions the model was trained with.
    trained: usize,
    /// `max_seq_length` recorded at import.
    recorded: Option<usize>,
}

/// Encoder threads: `SLUICE_EMBED_THREADS`, else all cores.
fn threads() -> usize {
    var::<usize>("SLUICE_EMBED_THREADS")
        .filter(|&n| n > 0)
        .map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |t| t.min(256),
        )
}

/// The model's own input length (`max_seq_length` from its sentence-transformers configuration,
/// recorded at import; else its trained context), unless `SLUICE_EMBED_MAX_SEQ` asks for another (at
/// most the trained context); `SLUICE_EMBED_BATCH` sets the tokens per encoder call.
fn layout_for(shape: &ModelShape, threads: usize, native: bool) -> EmbedLayout {
    let trained = shape.trained.max(2);
    let recorded = shape.recorded;
    let env = |k: &str| var::<usize>(k).filter(|&n| n > 0);
    let max_seq = env("SLUICE_EMBED_MAX_SEQ")
        .or(recorded)
        .unwrap_or(trained)
        .clamp(2, trained);
    let batch_tokens = env("SLUICE_EMBED_BATCH")
        .map_or(DEFAULT_BATCH_TOKENS as usize, |b| b.min(1 << 16))
        .max(max_seq) as u32;
    EmbedLayout {
        max_seq,
        batch_tokens,
        threads: threads as i32,
        encoder: if native { "sluice-bert" } else { "llama.cpp" },
    }
}

/// Turns groups of token sequences into pooled vectors (not yet normalised), one per sequence.
trait TextEncoder {
    fn encode(&mut self, seqs: &[&[i32]]) -> Result<Vec<Vec<f32>>, String>;
}

impl TextEncoder for BertEncoder {
    fn encode(&mut self, seqs: &[&[i32]]) -> Result<Vec<Vec<f32>>, String> {
        BertEncoder::encode(self, seqs).map_err(|e| format!("could not embed: {e}"))
    }
}

/// llama.cpp's graph for the model, in a context of its own.
struct LlamaEncoder<'m> {
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
}

impl<'m> LlamaEncoder<'m> {
    fn new(
        model: &'m LlamaModel,
        backend: &LlamaBackend,
        batch_tokens: u32,
        threads: i32,
    ) -> Result<Self, LlamaContextLoadError> {
        let params = LlamaContextParams::default()
            .with_embeddings(true)
            .with_n_ctx(NonZeroU32::new(batch_tokens))
            .with_n_batch(batch_tokens)
            .with_n_ubatch(batch_tokens)
            .with_n_seq_max(MAX_SEQS)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        Ok(LlamaEncoder {
            ctx: model.new_context(backend, params)?,
            batch: LlamaBatch::new(batch_tokens as usize, 1),
        })
    }
}

impl TextEncoder for LlamaEncoder<'_> {
    fn encode(&mut self, seqs: &[&[i32]]) -> Result<Vec<Vec<f32>>, String> {
        self.batch.clear();
        for (seq, toks) in seqs.iter().enumerate() {
            let toks: Vec<LlamaToken> = toks.iter().map(|&t| LlamaToken(t)).collect();
            self.batch
                .add_sequence(&toks, seq as i32, true)
                .map_err(|e| format!("batch: {e}"))?;
        }
        self.ctx.clear_kv_cache();
        // llama.cpp runs an encoder-only model's batch through encode() itself.
        self.ctx
            .decode(&mut self.batch)
            .map_err(|e| format!("llama.cpp could not embed: {e}"))?;
        (0..seqs.len())
            .map(|seq| {
                self.ctx
                    .embeddings_seq_ith(seq as i32)
                    .map(<[f32]>::to_vec)
                    .map_err(|e| {
                        format!("no pooled embedding ({e:?}); is this an embedding model?")
                    })
            })
            .collect()
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
        let cannot = |e: &dyn fmt::Display| {
            LlmError::user(
                "LocalModelError",
                format!("could not load {}: {e}", path.display()),
            )
        };
        // BERT-family files run on Sluice's own encoder unless SLUICE_EMBED_ENCODER=llama.cpp asks
        // otherwise; llama.cpp then only tokenizes. Anything else runs on llama.cpp, unless
        // SLUICE_EMBED_ENCODER=sluice-bert insists (then the reason is the error).
        let threads = threads();
        let asked = var::<String>("SLUICE_EMBED_ENCODER");
        let native = match asked.as_deref() {
            Some("llama.cpp") => None,
            // Whether the encoder can take the file is told from its header first: a file it
            // cannot take (another architecture, quantised weights) is not read whole before
            // llama.cpp maps it. Asked for by name, the encoder reads it and says why not.
            None if !BertEncoder::may_run(&GgufHead::read(&path).map_err(|e| cannot(&e))?) => {
                tracing::debug!(model = %name, "llama.cpp encodes this model (not a BERT file of f32/f16 weights)");
                None
            }
            None | Some("sluice-bert") => {
                let g = GgufFile::read(&path).map_err(|e| cannot(&e))?;
                match BertEncoder::load(&g, threads) {
                    Ok(enc) => {
                        let int = |k: &str| g.meta_int(k).and_then(|n| usize::try_from(n).ok());
                        let shape = ModelShape {
                            dims: enc.dims(),
                            trained: int("bert.context_length").unwrap_or(enc.positions()),
                            recorded: int(sluice_config::gguf::MAX_SEQ_LENGTH_KEY),
                        };
                        Some((enc, shape))
                    }
                    Err(e) if asked.is_some() => {
                        return Err(cannot(&format!(
                            "SLUICE_EMBED_ENCODER=sluice-bert cannot run it: {e}"
                        )));
                    }
                    Err(e) => {
                        tracing::debug!(model = %name, "llama.cpp encodes this model: {e}");
                        None
                    }
                }
            }
            Some(other) => {
                return Err(LlmError::user(
                    "LocalModelError",
                    format!("SLUICE_EMBED_ENCODER is {other:?}; use sluice-bert or llama.cpp"),
                ));
            }
        };
        let params = LlamaModelParams::default().with_vocab_only(native.is_some());
        let model = LlamaModel::load_from_file(backend, &path, &params).map_err(|e| cannot(&e))?;
        let model = Arc::new(model);
        let shared = Arc::clone(&model);
        let (native, shape) = match native {
            Some((enc, shape)) => (Some(enc), shape),
            None => (
                None,
                ModelShape {
                    dims: model.n_embd() as usize,
                    trained: model.n_ctx_train() as usize,
                    recorded: model
                        .meta_val_str(sluice_config::gguf::MAX_SEQ_LENGTH_KEY)
                        .ok()
                        .and_then(|v| v.trim().parse::<usize>().ok()),
                },
            ),
        };
        let dims = shape.dims;
        let layout = layout_for(&shape, threads, native.is_some());
        tracing::debug!(model = %name, ?layout, "embedding layout");
        let EmbedLayout {
            max_seq,
            batch_tokens,
            ..
        } = layout;
        let (jobs, rx) = mpsc::channel::<(Vec<String>, Reply)>();
        start_worker(format!("sluice-embed-{name}"), move |ready_tx| {
            let mut encoder: Box<dyn TextEncoder + '_> = match native {
                Some(enc) => Box::new(enc),
                None => match LlamaEncoder::new(&model, backend, batch_tokens, threads as i32) {
                    Ok(enc) => Box::new(enc),
                    Err(e) => {
                        let _ = ready_tx.send(Err(SetupError::EmbeddingContext(e)));
                        return;
                    }
                },
            };
            let _ = ready_tx.send(Ok(()));
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
                let texts: Vec<&String> = jobs.iter().flat_map(|(t, _)| t.iter()).collect();
                let mut out = Vec::with_capacity(texts.len());
                let mut failure = None;
                let tokenized: Vec<_> = texts
                    .iter()
                    .map(|t| {
                        let mut toks: Vec<i32> = model
                            .vocab()
                            .tokenize(t.as_bytes(), true, false)
                            .into_iter()
                            .map(|t| t.0)
                            .collect();
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
                while start < tokenized.len() {
                    // As many texts as fit one call.
                    let mut end = start;
                    let mut used = 0;
                    while end < tokenized.len()
                        && end - start < MAX_SEQS as usize
                        && used + tokenized[end].len() <= batch_tokens as usize
                    {
                        used += tokenized[end].len();
                        end += 1;
                    }
                    let group: Vec<&[i32]> =
                        tokenized[start..end].iter().map(Vec::as_slice).collect();
                    match encoder.encode(&group) {
                        Ok(vectors) => out.extend(vectors.iter().map(|v| normalize(v))),
                        Err(e) => {
                            failure = Some(e);
                            break;
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
