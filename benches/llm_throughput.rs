//! Batched LLM throughput, measured side by side in one process on Gemma 3 270M (the model of the
//! figures in the README; `sluice model pull gemma3-270m`):
//!
//! 1. **raw**: llama.cpp's own batched loop, driven directly through llama-cpp-2: every prompt is
//!    evaluated, then all sequences decode together, one token each per `llama_decode`, greedy.
//! 2. **sluice**: a one-`llm`-node flow run as a batch of the same N lines at concurrency N, through the
//!    engine, the node and the continuous-batching decode loop.
//! 3. **sequential**: the same flow one line at a time (on fewer lines; tokens/s is what is compared).
//!
//! Both batched runs use the same threads (`SLUICE_LLM_THREADS`, default: all cores), batch size and
//! context. Usage: `cargo bench --bench llm_throughput -- [LINES] [TOKENS]` (default 64 lines × 64 tokens).
//! Prints one table and the ratios.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use sluice_engine::Flow;
use sluice_nodes::llm::local::llama_cpp_2::llama_batch::LlamaBatch;
use sluice_nodes::llm::local::llama_cpp_2::model::LlamaModel;
use sluice_nodes::llm::local::llama_cpp_2::model::params::LlamaModelParams;
use sluice_nodes::llm::local::llama_cpp_2::token::LlamaToken;
use sluice_nodes::llm::local::{LocalConfig, llama_backend};
use sluice_nodes::llm::store;

const SUBJECTS: &[&str] = &[
    "rivers",
    "bridges",
    "owls",
    "volcanoes",
    "tea",
    "glass",
    "maps",
    "bees",
    "clocks",
    "salt",
    "kites",
    "moss",
    "trains",
    "wool",
    "comets",
    "bread",
];

fn prompt(i: usize) -> String {
    format!(
        "Here is a short essay about {} (number {i}), written for a school magazine.\n\n",
        SUBJECTS[i % SUBJECTS.len()]
    )
}

struct Measured {
    tokens: u64,
    seconds: f64,
    decode_seconds: Option<f64>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.tokens as f64 / self.seconds
    }
}

fn raw_loop(path: &Path, config: &LocalConfig, lines: usize, max_new: usize) -> Measured {
    let backend = llama_backend().expect("llama.cpp backend");
    let model = LlamaModel::load_from_file(
        backend,
        path,
        &LlamaModelParams::default().with_n_gpu_layers(config.gpu_layers),
    )
    .expect("model loads");
    let params = config.context_params();
    let mut ctx = model.new_context(backend, params).expect("context");
    let vocab = model.vocab();
    let n_vocab = model.n_vocab() as usize;
    let prompts: Vec<Vec<LlamaToken>> = (0..lines)
        .map(|i| vocab.tokenize(prompt(i).as_bytes(), true, false))
        .collect();
    let mut batch = LlamaBatch::new(config.n_batch as usize, 1);
    let argmax = |logits: &[f32]| {
        let mut best = 0;
        for (i, v) in logits.iter().take(n_vocab).enumerate() {
            if *v > logits[best] {
                best = i;
            }
        }
        LlamaToken(best as i32)
    };
    let started = Instant::now();
    // Prefill: pack prompts into batches of n_batch tokens; keep each prompt's last logits.
    let mut next: Vec<LlamaToken> = vec![LlamaToken(0); lines];
    let mut pos: Vec<i32> = vec![0; lines];
    let mut pending: Vec<(usize, usize)> = Vec::new(); // (sequence, index in batch)
    for (s, p) in prompts.iter().enumerate() {
        if batch.n_tokens() as usize + p.len() > config.n_batch as usize {
            ctx.decode(&mut batch).expect("prefill decode");
            for (seq, idx) in pending.drain(..) {
                next[seq] = argmax(ctx.get_logits_ith(idx as i32));
            }
            batch.clear();
        }
        for (k, t) in p.iter().enumerate() {
            let last = k + 1 == p.len();
            batch.add(*t, k as i32, &[s as i32], last).expect("room");
        }
        pending.push((s, batch.n_tokens() as usize - 1));
        pos[s] = p.len() as i32;
    }
    ctx.decode(&mut batch).expect("prefill decode");
    for (seq, idx) in pending.drain(..) {
        next[seq] = argmax(ctx.get_logits_ith(idx as i32));
    }
    let decode_start = Instant::now();
    let mut generated = lines as u64; // the token sampled from each prompt's logits
    for _ in 1..max_new {
        batch.clear();
        for s in 0..lines {
            batch.add(next[s], pos[s], &[s as i32], true).expect("room");
            pos[s] += 1;
        }
        ctx.decode(&mut batch).expect("decode");
        for (s, tok) in next.iter_mut().enumerate() {
            *tok = argmax(ctx.get_logits_ith(s as i32));
        }
        generated += lines as u64;
    }
    Measured {
        tokens: generated,
        seconds: started.elapsed().as_secs_f64(),
        decode_seconds: Some(decode_start.elapsed().as_secs_f64()),
    }
}

fn flow_dir(max_new: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.jinja2"), "{{ text }}").unwrap();
    std::fs::write(
        dir.path().join("flow.dag.yaml"),
        format!("inputs:\n  text: {{type: string}}\noutputs:\n  out: {{reference: '${{gen.output}}'}}\nnodes:\n- name: gen\n  type: llm\n  api: completion\n  source: {{type: code, path: p.jinja2}}\n  inputs:\n    model: gemma3-270m\n    temperature: 0\n    max_tokens: {max_new}\n    text: ${{inputs.text}}\n"),
    )
    .unwrap();
    dir
}

fn through_sluice(flow: &Arc<Flow>, lines: usize, concurrency: usize) -> Measured {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut tokens = 0u64;
    let (summary, seconds) = common::run_lines(
        &rt,
        flow.clone(),
        lines,
        concurrency,
        "text",
        prompt,
        |line| {
            tokens += line.node_runs[0]
                .system_metrics
                .tokens
                .completion_tokens
                .unwrap_or(0);
        },
    );
    assert_eq!(summary.failed_lines, 0, "lines failed");
    Measured {
        tokens,
        seconds,
        decode_seconds: None,
    }
}

fn main() {
    let args = common::number_args();
    let lines = args.first().copied().unwrap_or(64);
    let max_new = args.get(1).copied().unwrap_or(64);
    let (_, path) =
        store::resolve_model("gemma3-270m", Path::new("."), store::ModelUse::Completion)
            .unwrap_or_else(|e| {
                eprintln!(
                    "Gemma 3 270M is not installed ({}): run `sluice model pull gemma3-270m`",
                    e.help
                );
                std::process::exit(2)
            });
    // Both batched runs: one sequence per line, room for every prompt and answer.
    let env = LocalConfig::from_env();
    let config = LocalConfig {
        parallel: lines as u32,
        seq_ctx: (max_new + 48) as u32,
        n_ctx: ((lines * (max_new + 48)) as u32).max(2048),
        default_max_tokens: max_new as u32,
        ..env
    };
    LocalConfig::set_process_default(config.clone());
    eprintln!(
        "model {} | {lines} lines x {max_new} tokens | threads {} | n_batch {} | kv cells {} (shared: {})",
        path.display(),
        config.threads,
        config.n_batch,
        config.kv_cells(),
        config.unified_kv
    );

    let raw = raw_loop(&path, &config, lines, max_new);
    let dir = flow_dir(max_new);
    let flow = common::load_flow(dir.path());
    // Warm-up: loads the model once (not timed), then the measured batch.
    through_sluice(&flow, 1, 1);
    let sluice = through_sluice(&flow, lines, lines);
    let seq_lines = (lines / 8).clamp(2, 8);
    let sequential = through_sluice(&flow, seq_lines, 1);

    println!("| run | lines | generated tokens | seconds | tokens/s |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| llama.cpp batched loop (raw, incl. prompts) | {lines} | {} | {:.2} | {:.1} |",
        raw.tokens,
        raw.seconds,
        raw.rate()
    );
    if let Some(d) = raw.decode_seconds {
        println!(
            "| llama.cpp batched loop (raw, decode only) | {lines} | {} | {:.2} | {:.1} |",
            raw.tokens - lines as u64,
            d,
            (raw.tokens - lines as u64) as f64 / d
        );
    }
    println!(
        "| sluice batch run, concurrency {lines} | {lines} | {} | {:.2} | {:.1} |",
        sluice.tokens,
        sluice.seconds,
        sluice.rate()
    );
    println!(
        "| sluice, one line at a time | {seq_lines} | {} | {:.2} | {:.1} |",
        sequential.tokens,
        sequential.seconds,
        sequential.rate()
    );
    println!();
    println!(
        "sluice / raw llama.cpp batched: {:.2}",
        sluice.rate() / raw.rate()
    );
    println!(
        "sluice batched / sluice sequential: {:.2}",
        sluice.rate() / sequential.rate()
    );
}
