//! A BERT encoder written for sentence embeddings: the forward pass of a BERT-family GGUF (the form
//! `sluice model import` writes, f32 or f16 weights) in Rust, on the `gemm` crate's matrix products.
//!
//! Why not llama.cpp's BERT graph: llama.cpp multiplies f16 weights with a kernel that converts them on
//! every use, and it encodes the texts of one call under a single attention mask, so attention grows
//! with the square of the call's tokens. Here the weights are kept as f32 in the layout the products
//! read, the texts of a call are packed without padding for every matrix product, and each text
//! attends only to itself. Tokenizing stays with llama.cpp's vocabulary, so tokens are unchanged.

use std::fmt;

use gemm::{Parallelism, gemm};
use rayon::prelude::*;
use sluice_config::gguf::GgufFile;

/// Why a GGUF cannot run on this encoder (the caller falls back to llama.cpp).
#[derive(Debug, thiserror::Error)]
pub enum BertLoadError {
    #[error("architecture is {0:?}, not bert")]
    Architecture(Option<String>),
    #[error("metadata {0} is missing or not a positive number")]
    Meta(&'static str),
    #[error("pooling type {0} is neither mean nor CLS")]
    Pooling(i64),
    #[error("tensor {name}: {source}")]
    Tensor {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tensor {name} has {found} numbers, {expected} expected")]
    Shape {
        name: String,
        found: usize,
        expected: usize,
    },
    #[error("could not start the encoder's threads: {0}")]
    Threads(#[from] rayon::ThreadPoolBuildError),
}

/// Why a batch could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("token {token} is outside the vocabulary of {vocab}")]
    Token { token: i32, vocab: usize },
    #[error("a text of {len} tokens is longer than the model's {max} positions")]
    TooLong { len: usize, max: usize },
    #[error("an empty text has no tokens to pool")]
    Empty,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Pooling {
    Mean,
    Cls,
}

/// LayerNorm's scale and shift.
struct Norm {
    w: Vec<f32>,
    b: Vec<f32>,
}

/// A dense layer stored input-major (`[in][out]`), so `x · w` reads it as a plain row-major matrix.
struct Linear {
    w: Vec<f32>,
    b: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

struct Layer {
    /// Query, key and value side by side: one product instead of three.
    qkv: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    up: Linear,
    down: Linear,
    out_norm: Norm,
}

/// A loaded encoder. Weights are f32 (an f16 file is widened at load).
pub struct BertEncoder {
    hidden: usize,
    heads: usize,
    ffn: usize,
    eps: f32,
    pooling: Pooling,
    vocab: usize,
    positions: usize,
    word: Vec<f32>,
    position: Vec<f32>,
    /// Every input is of token type 0.
    token_type: Vec<f32>,
    emb_norm: Norm,
    layers: Vec<Layer>,
    pool: rayon::ThreadPool,
    threads: usize,
}

impl fmt::Debug for BertEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BertEncoder")
            .field("hidden", &self.hidden)
            .field("layers", &self.layers.len())
            .field("heads", &self.heads)
            .field("threads", &self.threads)
            .finish()
    }
}

impl BertEncoder {
    /// Whether a file with this header may run here: a BERT whose tensors are all f32 or f16.
    /// [`BertEncoder::load`] checks the rest (metadata, shapes) and says why not.
    pub fn may_run(head: &sluice_config::gguf::GgufHead) -> bool {
        head.meta_str("general.architecture") == Some("bert")
            && head.tensor_types().all(|(_, ty)| ty <= 1)
    }

    /// The encoder of a BERT GGUF, on `threads` threads.
    pub fn load(g: &GgufFile, threads: usize) -> Result<BertEncoder, BertLoadError> {
        let arch = g.meta_str("general.architecture");
        if arch != Some("bert") {
            return Err(BertLoadError::Architecture(arch.map(str::to_owned)));
        }
        let num = |key: &'static str| -> Result<usize, BertLoadError> {
            g.meta_int(key)
                .filter(|&n| n > 0)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or(BertLoadError::Meta(key))
        };
        let hidden = num("bert.embedding_length")?;
        let heads = num("bert.attention.head_count")?;
        let ffn = num("bert.feed_forward_length")?;
        let blocks = num("bert.block_count")?;
        if hidden % heads != 0 {
            return Err(BertLoadError::Meta("bert.attention.head_count"));
        }
        let eps = match g.meta("bert.attention.layer_norm_epsilon") {
            Some(sluice_config::gguf::MetaValue::Float(e)) if *e > 0.0 => *e as f32,
            _ => return Err(BertLoadError::Meta("bert.attention.layer_norm_epsilon")),
        };
        let pooling = match g.meta_int("bert.pooling_type").unwrap_or(1) {
            1 => Pooling::Mean,
            2 => Pooling::Cls,
            other => return Err(BertLoadError::Pooling(other)),
        };
        let tensor = |name: &str, rows: Option<usize>, cols: usize| {
            let v = g.tensor_f32(name).map_err(|source| BertLoadError::Tensor {
                name: name.to_owned(),
                source,
            })?;
            let whole = rows.map_or(v.len() % cols == 0 && !v.is_empty(), |r| {
                v.len() == r * cols
            });
            if !whole {
                return Err(BertLoadError::Shape {
                    name: name.to_owned(),
                    found: v.len(),
                    expected: rows.unwrap_or(1) * cols,
                });
            }
            Ok(v)
        };
        let norm = |prefix: &str| -> Result<Norm, BertLoadError> {
            Ok(Norm {
                w: tensor(&format!("{prefix}.weight"), Some(1), hidden)?,
                b: tensor(&format!("{prefix}.bias"), Some(1), hidden)?,
            })
        };
        // GGUF keeps a dense layer's weight as `[out][in]`; the products want `[in][out]`.
        let linear = |names: &[String], inputs: usize, outputs: usize| {
            let mut w = vec![0f32; inputs * outputs * names.len()];
            let mut b = Vec::with_capacity(outputs * names.len());
            let width = outputs * names.len();
            for (part, name) in names.iter().enumerate() {
                let m = tensor(&format!("{name}.weight"), Some(outputs), inputs)?;
                for o in 0..outputs {
                    for i in 0..inputs {
                        w[i * width + part * outputs + o] = m[o * inputs + i];
                    }
                }
                b.extend(tensor(&format!("{name}.bias"), Some(1), outputs)?);
            }
            Ok::<_, BertLoadError>(Linear {
                w,
                b,
                inputs,
                outputs: width,
            })
        };
        let word = tensor("token_embd.weight", None, hidden)?;
        let position = tensor("position_embd.weight", None, hidden)?;
        let types = tensor("token_types.weight", None, hidden)?;
        let mut layers = Vec::with_capacity(blocks);
        for l in 0..blocks {
            let p = |t: &str| format!("blk.{l}.{t}");
            layers.push(Layer {
                qkv: linear(&[p("attn_q"), p("attn_k"), p("attn_v")], hidden, hidden)?,
                attn_out: linear(&[p("attn_output")], hidden, hidden)?,
                attn_norm: norm(&p("attn_output_norm"))?,
                up: linear(&[p("ffn_up")], hidden, ffn)?,
                down: linear(&[p("ffn_down")], ffn, hidden)?,
                out_norm: norm(&p("layer_output_norm"))?,
            });
        }
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("sluice-encoder-{i}"))
            .build()?;
        Ok(BertEncoder {
            hidden,
            heads,
            ffn,
            eps,
            pooling,
            vocab: word.len() / hidden,
            positions: position.len() / hidden,
            word,
            position,
            token_type: types[..hidden].to_vec(),
            emb_norm: norm("token_embd_norm")?,
            layers,
            pool,
            threads,
        })
    }

    /// The size of the vectors.
    pub fn dims(&self) -> usize {
        self.hidden
    }

    /// The longest input the position table allows.
    pub fn positions(&self) -> usize {
        self.positions
    }

    /// The pooled (not yet normalised) vector of each token sequence. The sequences are encoded in
    /// one pass: packed end to end for the dense layers, each attending only to itself.
    pub fn encode(&self, seqs: &[&[i32]]) -> Result<Vec<Vec<f32>>, EncodeError> {
        let h = self.hidden;
        for s in seqs {
            if s.is_empty() {
                return Err(EncodeError::Empty);
            }
            if s.len() > self.positions {
                return Err(EncodeError::TooLong {
                    len: s.len(),
                    max: self.positions,
                });
            }
            if let Some(&token) = s.iter().find(|&&t| t < 0 || t as usize >= self.vocab) {
                return Err(EncodeError::Token {
                    token,
                    vocab: self.vocab,
                });
            }
        }
        let m: usize = seqs.iter().map(|s| s.len()).sum();
        self.pool.install(|| {
            let mut x = vec![0f32; m * h];
            let mut row = 0;
            for s in seqs {
                for (p, &t) in s.iter().enumerate() {
                    let out = &mut x[row * h..(row + 1) * h];
                    let w = &self.word[t as usize * h..][..h];
                    let pe = &self.position[p * h..][..h];
                    for (((o, a), b), c) in out.iter_mut().zip(w).zip(pe).zip(&self.token_type) {
                        *o = a + b + c;
                    }
                    row += 1;
                }
            }
            layer_norm_rows(&mut x, None, &self.emb_norm, h, self.eps);

            let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
            let mut qkv = vec![0f32; m * 3 * h];
            let mut ctx = vec![0f32; m * h];
            let mut tmp = vec![0f32; m * h];
            let mut up = vec![0f32; m * self.ffn];
            for layer in &self.layers {
                self.linear(&x, m, &layer.qkv, &mut qkv);
                self.attention(&qkv, &lens, &mut ctx);
                self.linear(&ctx, m, &layer.attn_out, &mut tmp);
                layer_norm_rows(&mut x, Some(&tmp), &layer.attn_norm, h, self.eps);
                self.linear(&x, m, &layer.up, &mut up);
                up.par_chunks_mut(4096).for_each(gelu);
                self.linear(&up, m, &layer.down, &mut tmp);
                layer_norm_rows(&mut x, Some(&tmp), &layer.out_norm, h, self.eps);
            }

            let mut out = Vec::with_capacity(seqs.len());
            let mut start = 0;
            for len in lens {
                let rows = &x[start * h..(start + len) * h];
                out.push(match self.pooling {
                    Pooling::Cls => rows[..h].to_vec(),
                    Pooling::Mean => {
                        let mut v = vec![0f32; h];
                        for r in rows.chunks_exact(h) {
                            for (a, b) in v.iter_mut().zip(r) {
                                *a += b;
                            }
                        }
                        let n = len as f32;
                        v.iter_mut().for_each(|a| *a /= n);
                        v
                    }
                });
                start += len;
            }
            Ok(out)
        })
    }

    /// `out = x · w + b` for `m` rows.
    fn linear(&self, x: &[f32], m: usize, l: &Linear, out: &mut [f32]) {
        let (k, n) = (l.inputs, l.outputs);
        assert!(x.len() >= m * k && out.len() >= m * n && l.w.len() == k * n);
        if m <= SMALL_CALL_ROWS {
            return linear_few_rows(x, m, l, out, self.threads);
        }
        for r in out[..m * n].chunks_exact_mut(n) {
            r.copy_from_slice(&l.b);
        }
        // SAFETY: the asserts above keep every index the product reads or writes inside `x`, `w`
        // and `out`: `x` is m×k with row stride k, `w` is k×n with row stride n, `out` is m×n with
        // row stride n, all with column stride 1; `out` does not overlap the inputs (it is a
        // separate `&mut`).
        #[allow(unsafe_code)]
        unsafe {
            gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                true,
                x.as_ptr(),
                1,
                k as isize,
                l.w.as_ptr(),
                1,
                n as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                self.parallelism(m),
            );
        }
    }

    fn parallelism(&self, rows: usize) -> Parallelism {
        if self.threads > 1 && rows >= 16 {
            Parallelism::Rayon(self.threads)
        } else {
            Parallelism::None
        }
    }

    /// Self-attention of each sequence over itself, every head, into `ctx` (`m × hidden`).
    fn attention(&self, qkv: &[f32], lens: &[usize], ctx: &mut [f32]) {
        let h = self.hidden;
        let d = h / self.heads;
        let scale = 1.0 / (d as f32).sqrt();
        // One task per sequence, over its own rows of `ctx`.
        let mut parts = Vec::with_capacity(lens.len());
        let (mut rest, mut start) = (ctx, 0);
        for &len in lens {
            let (mine, tail) = rest.split_at_mut(len * h);
            parts.push((start, len, mine));
            rest = tail;
            start += len;
        }
        parts.into_par_iter().for_each(|(start, len, out)| {
            let rows = &qkv[start * 3 * h..(start + len) * 3 * h];
            let mut scores = vec![0f32; len * len];
            for head in 0..self.heads {
                let q = &rows[head * d..];
                let k = &rows[h + head * d..];
                let v = &rows[2 * h + head * d..];
                // SAFETY: q, k and v are read at rows < len with row stride 3h and columns < d
                // from their offsets, all inside `rows` (len × 3h), since head·d + d ≤ h; the
                // scores are len × len; `out` is len × h, written at columns head·d .. head·d + d.
                #[allow(unsafe_code)]
                unsafe {
                    // scores = q · kᵀ · scale
                    gemm(
                        len,
                        len,
                        d,
                        scores.as_mut_ptr(),
                        1,
                        len as isize,
                        false,
                        q.as_ptr(),
                        1,
                        (3 * h) as isize,
                        k.as_ptr(),
                        (3 * h) as isize,
                        1,
                        0.0,
                        scale,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
                for r in scores.chunks_exact_mut(len) {
                    softmax(r);
                }
                #[allow(unsafe_code)]
                unsafe {
                    // out[:, head] = scores · v
                    gemm(
                        len,
                        d,
                        len,
                        out.as_mut_ptr().add(head * d),
                        1,
                        h as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        len as isize,
                        v.as_ptr(),
                        1,
                        (3 * h) as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            }
        });
    }
}

/// Defines `$name`, which runs `$body` compiled for AVX2 (as `$avx`) when the CPU has it, and as
/// built for the baseline otherwise. `$body` must be `#[inline(always)]`, so the AVX2 copy is its own.
macro_rules! with_avx2 {
    ($(#[$doc:meta])* fn $name:ident / $avx:ident ($($arg:ident: $ty:ty),* $(,)?) => $body:ident) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        #[allow(clippy::too_many_arguments)]
        fn $avx($($arg: $ty),*) {
            $body($($arg),*)
        }

        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU was just seen to have AVX2, the one feature `$avx` is built for.
                #[allow(unsafe_code)]
                unsafe {
                    $avx($($arg),*)
                };
                return;
            }
            $body($($arg),*)
        }
    };
}

/// Calls of at most this many tokens (a short query) take [`linear_few_rows`].
const SMALL_CALL_ROWS: usize = 16;

/// `out = x · w + b` for a few rows: each thread streams through its own columns of `w` once,
/// with no packed copy of it, which a product of a few rows would spend most of its time making.
fn linear_few_rows(x: &[f32], m: usize, l: &Linear, out: &mut [f32], threads: usize) {
    let (k, n) = (l.inputs, l.outputs);
    let parts = threads.clamp(1, n.div_ceil(64));
    let width = n.div_ceil(parts);
    let blocks: Vec<Vec<f32>> = (0..parts)
        .into_par_iter()
        .map(|p| {
            let (c0, c1) = (p * width, ((p + 1) * width).min(n));
            let mut acc = vec![0f32; m * (c1 - c0)];
            for r in 0..m {
                acc[r * (c1 - c0)..(r + 1) * (c1 - c0)].copy_from_slice(&l.b[c0..c1]);
            }
            axpy_rows(&x[..m * k], m, k, &l.w, n, c0, c1, &mut acc);
            acc
        })
        .collect();
    for (p, block) in blocks.iter().enumerate() {
        let (c0, c1) = (p * width, ((p + 1) * width).min(n));
        for r in 0..m {
            out[r * n + c0..r * n + c1].copy_from_slice(&block[r * (c1 - c0)..(r + 1) * (c1 - c0)]);
        }
    }
}

with_avx2! {
    /// `acc[r] += Σ_i x[r][i] · w[i][c0..c1]`.
    fn axpy_rows / axpy_rows_avx2(
        x: &[f32], m: usize, k: usize, w: &[f32], n: usize, c0: usize, c1: usize, acc: &mut [f32],
    ) => axpy_rows_body
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn axpy_rows_body(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    c0: usize,
    c1: usize,
    acc: &mut [f32],
) {
    let cols = c1 - c0;
    for i in 0..k {
        let wrow = &w[i * n + c0..i * n + c1];
        for r in 0..m {
            let a = x[r * k + i];
            let dst = &mut acc[r * cols..(r + 1) * cols];
            for (d, v) in dst.iter_mut().zip(wrow) {
                *d += a * v;
            }
        }
    }
}

/// `x = LayerNorm(x + add)` row by row, blocks of rows in parallel.
fn layer_norm_rows(x: &mut [f32], add: Option<&[f32]>, norm: &Norm, h: usize, eps: f32) {
    let rows_per_task = (8192 / h).max(1);
    x.par_chunks_mut(rows_per_task * h)
        .enumerate()
        .for_each(|(i, block)| {
            let add = add.map(|a| &a[i * rows_per_task * h..][..block.len()]);
            layer_norm(block, add, norm, h, eps);
        });
}

with_avx2! {
    fn layer_norm / layer_norm_avx2(
        x: &mut [f32], add: Option<&[f32]>, norm: &Norm, h: usize, eps: f32,
    ) => layer_norm_body
}

/// LayerNorm of whole rows of `x`, after adding `add` (as long as `x`).
#[inline(always)]
fn layer_norm_body(x: &mut [f32], add: Option<&[f32]>, norm: &Norm, h: usize, eps: f32) {
    for (j, row) in x.chunks_exact_mut(h).enumerate() {
        if let Some(add) = add {
            row.iter_mut()
                .zip(&add[j * h..][..h])
                .for_each(|(x, a)| *x += a);
        }
        let mean = sum(row) / h as f32;
        let mut sq = [0f32; 8];
        let mut chunks = row.chunks_exact(8);
        for c in &mut chunks {
            for (a, v) in sq.iter_mut().zip(c) {
                *a += (v - mean) * (v - mean);
            }
        }
        let rest: f32 = chunks
            .remainder()
            .iter()
            .map(|v| (v - mean) * (v - mean))
            .sum();
        let var = (sq.iter().sum::<f32>() + rest) / h as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(&norm.w).zip(&norm.b) {
            *v = (*v - mean) * inv * w + b;
        }
    }
}

/// `e^x` to about 1 ulp over the range that does not overflow, written so the compiler can keep a
/// whole vector of lanes in flight (no branches, no library call).
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    // Round x·log2(e) to the nearest whole number by adding and subtracting 1.5·2²³.
    let k = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    let r = x - k * 0.693_359_4 - k * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((k as i32 + 127) << 23) as u32)
}

/// The error function, to within 2·10⁻⁷ (Abramowitz and Stegun 7.1.26).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152) * t + 1.421_413_8) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    let y = 1.0 - poly * exp(-a * a);
    if x < 0.0 { -y } else { y }
}

#[inline(always)]
fn gelu_body(xs: &mut [f32]) {
    for x in xs {
        *x = 0.5 * *x * (1.0 + erf(*x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

with_avx2! {
    /// BERT's GELU, exact (with erf, as `hidden_act: gelu`).
    fn gelu / gelu_avx2(xs: &mut [f32]) => gelu_body
}

/// A sum kept in eight lanes, so the additions need not wait for each other (a plain fold of
/// floats must add in order, one at a time).
#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// The largest value, eight lanes at a time as in [`sum`].
#[inline(always)]
fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(&acc)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

#[inline(always)]
fn softmax_body(row: &mut [f32]) {
    let max = max(row);
    for v in row.iter_mut() {
        *v = exp(*v - max);
    }
    let inv = 1.0 / sum(row);
    row.iter_mut().for_each(|v| *v *= inv);
}

with_avx2! {
    fn softmax / softmax_avx2(row: &mut [f32]) => softmax_body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_are_close_to_the_library_s() {
        let mut worst_exp = 0f64;
        let mut worst_erf = 0f64;
        for i in -2000..=2000 {
            let x = i as f32 / 100.0;
            let want = f64::from(x).exp();
            worst_exp = worst_exp.max(((f64::from(exp(x)) - want) / want).abs());
            let x = i as f32 / 700.0;
            let want = libm_erf(f64::from(x));
            worst_erf = worst_erf.max((f64::from(erf(x)) - want).abs());
        }
        assert!(worst_exp < 4e-7, "exp relative error {worst_exp}");
        assert!(worst_erf < 5e-7, "erf absolute error {worst_erf}");
        assert!(exp(-1000.0) < 1e-37);
        assert!(exp(1000.0).is_finite());
        assert!(erf(4.0) > 0.99999 && erf(-4.0) < -0.99999 && erf(0.0) == 0.0);
    }

    /// erf by its Taylor series (exact enough for |x| ≤ 3 in f64).
    fn libm_erf(x: f64) -> f64 {
        let mut term = x;
        let mut sum = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn a_few_rows_multiply_as_the_definition_says() {
        let (k, n) = (37, 150);
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let l = Linear {
            w: (0..k * n).map(|_| next()).collect(),
            b: (0..n).map(|_| next()).collect(),
            inputs: k,
            outputs: n,
        };
        for (m, threads) in [(1, 1), (3, 2), (16, 3)] {
            let x: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let mut out = vec![f32::NAN; m * n];
            linear_few_rows(&x, m, &l, &mut out, threads);
            for r in 0..m {
                for c in 0..n {
                    let want: f32 =
                        l.b[c] + (0..k).map(|i| x[r * k + i] * l.w[i * n + c]).sum::<f32>();
                    let got = out[r * n + c];
                    assert!(
                        (got - want).abs() < 1e-4,
                        "m {m} row {r} col {c}: {got} against {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn softmax_rows_sum_to_one_and_keep_order() {
        let mut row: Vec<f32> = vec![1.0, 3.0, -2.0, 3.0, 8.0, -100.0, 0.5, 2.0, 7.0, -1.0];
        let want: Vec<f64> = {
            let e: Vec<f64> = row.iter().map(|&x| f64::from(x).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|x| x / s).collect()
        };
        softmax(&mut row);
        for (got, want) in row.iter().zip(&want) {
            assert!(
                (f64::from(*got) - want).abs() < 1e-6,
                "{got} against {want}"
            );
        }
        assert!(row[1] == row[3] && row[4] > row[8] && row[5] >= 0.0);
    }
}
