//! llama.cpp's own speed on one model, as llama.cpp's `llama-bench` measures it: prompt processing
//! (one prompt of P tokens decoded in batches of n_batch) and generation (T tokens, one sequence,
//! greedy), each the best of R repetitions, in tokens/s. It names the CPU backend that ran, so
//! `benches/cpu_variants.sh` can run it once per CPU variant (`SLUICE_GGML_BACKENDS_DIR`).
//!
//! Usage: `cargo bench --bench llama_speed -- [MODEL] [P] [T] [R]` (default: the `default` chat model,
//! 256, 64, 3). Prints one JSON object.

use std::path::Path;
use std::time::Instant;

use sluice_nodes::llm::local::llama_cpp_2::context::LlamaContext;
use sluice_nodes::llm::local::llama_cpp_2::llama_batch::LlamaBatch;
use sluice_nodes::llm::local::llama_cpp_2::model::LlamaModel;
use sluice_nodes::llm::local::llama_cpp_2::model::params::LlamaModelParams;
use sluice_nodes::llm::local::llama_cpp_2::token::LlamaToken;
use sluice_nodes::llm::local::{LocalConfig, llama_backend};
use sluice_nodes::llm::store;

const TEXT: &str = "The river runs past the mill, under the old stone bridge and out across the \
                    meadows, where herons wait in the shallows and the light turns silver at dusk. ";

fn argmax(logits: &[f32]) -> LlamaToken {
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] {
            best = i;
        }
    }
    LlamaToken(best as i32)
}

/// Seconds to decode `prompt` from an empty cache, in batches of `n_batch`.
fn prompt_seconds(ctx: &mut LlamaContext, prompt: &[LlamaToken], n_batch: usize) -> f64 {
    ctx.clear_kv_cache();
    let mut batch = LlamaBatch::new(n_batch, 1);
    let started = Instant::now();
    for (c, chunk) in prompt.chunks(n_batch).enumerate() {
        batch.clear();
        for (k, t) in chunk.iter().enumerate() {
            let pos = c * n_batch + k;
            batch
                .add(*t, pos as i32, &[0], pos + 1 == prompt.len())
                .expect("room in the batch");
        }
        ctx.decode(&mut batch).expect("prompt decode");
    }
    started.elapsed().as_secs_f64()
}

/// Seconds to generate `tokens` tokens, greedy, after a one-token prompt.
fn generation_seconds(ctx: &mut LlamaContext, first: LlamaToken, tokens: usize) -> f64 {
    ctx.clear_kv_cache();
    let mut batch = LlamaBatch::new(1, 1);
    let mut next = first;
    let started = Instant::now();
    for pos in 0..tokens {
        batch.clear();
        batch.add(next, pos as i32, &[0], true).expect("room");
        ctx.decode(&mut batch).expect("decode");
        next = argmax(ctx.get_logits_ith(0));
    }
    started.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let name = args.first().map_or("default", String::as_str);
    let number =
        |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (p, t, reps) = (number(1, 256), number(2, 64), number(3, 3).max(1));
    let (_, path) = store::resolve_model(name, Path::new("."), store::ModelUse::Completion)
        .unwrap_or_else(|e| {
            eprintln!("{}", e.help);
            std::process::exit(2)
        });
    let backend = llama_backend().expect("llama.cpp backend");
    let model = LlamaModel::load_from_file(backend, &path, &LlamaModelParams::default())
        .expect("model loads");
    let config = LocalConfig {
        parallel: 1,
        seq_ctx: (p + t + 8) as u32,
        n_ctx: (p + t + 8) as u32,
        ..LocalConfig::from_env()
    };
    let mut ctx = model
        .new_context(backend, config.context_params())
        .expect("context");
    let vocab = model.vocab();
    let mut prompt = Vec::new();
    while prompt.len() < p {
        prompt.extend(vocab.tokenize(TEXT.as_bytes(), prompt.is_empty(), false));
    }
    prompt.truncate(p);
    // One warm-up of each (page-in, first-use allocations), then the best of `reps`.
    let n_batch = config.n_batch as usize;
    prompt_seconds(&mut ctx, &prompt, n_batch);
    generation_seconds(&mut ctx, prompt[0], t.min(8));
    let pp = (0..reps)
        .map(|_| prompt_seconds(&mut ctx, &prompt, n_batch))
        .fold(f64::INFINITY, f64::min);
    let tg = (0..reps)
        .map(|_| generation_seconds(&mut ctx, prompt[0], t))
        .fold(f64::INFINITY, f64::min);
    #[cfg(feature = "cpu-variants")]
    let variant = sluice_nodes::llm::local::cpu_backend()
        .map(|b| b.variant.clone())
        .unwrap_or_default();
    #[cfg(not(feature = "cpu-variants"))]
    let variant = "built-in".to_owned();
    println!(
        "{}",
        serde_json::json!({
            "model": name,
            "cpu_variant": variant,
            "threads": config.threads,
            "n_batch": n_batch,
            "prompt_tokens": p,
            "prompt_tokens_per_second": p as f64 / pp,
            "generated_tokens": t,
            "generation_tokens_per_second": t as f64 / tg,
        })
    );
}
