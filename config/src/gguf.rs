//! `sluice model import`: writes a GGUF that llama.cpp loads from a BERT-family sentence-transformers
//! folder (`config.json`, `model.safetensors`, `vocab.txt` or `tokenizer.json`, `1_Pooling/config.json`),
//! without Python: the safetensors are read directly, 2-D weights stored as f16, norms and biases as f32,
//! and the WordPiece vocabulary written in llama.cpp's form (a word-start token carries a leading `▁`,
//! a `##` continuation loses its `##`).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use serde_json::Value as Json;

const ALIGN: u64 = 32;

/// A metadata value.
enum Kv {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

/// GGUF's numbers for the types of metadata values.
const GGUF_U32: u32 = 4;
const GGUF_I32: u32 = 5;
const GGUF_F32: u32 = 6;
const GGUF_BOOL: u32 = 7;
const GGUF_STRING: u32 = 8;
const GGUF_ARRAY: u32 = 9;

impl Kv {
    /// The GGUF type of the value.
    fn type_id(&self) -> u32 {
        match self {
            Kv::U32(_) => GGUF_U32,
            Kv::F32(_) => GGUF_F32,
            Kv::Bool(_) => GGUF_BOOL,
            Kv::Str(_) => GGUF_STRING,
            Kv::Strs(_) | Kv::I32s(_) => GGUF_ARRAY,
        }
    }
}

/// A tensor ready to write.
struct Tensor {
    name: String,
    /// ggml order: the fastest-varying dimension first.
    dims: Vec<u64>,
    f16: bool,
    data: Vec<u8>,
}

/// What an import produced.
#[derive(Debug)]
pub struct Imported {
    pub tensors: usize,
    pub vocab: usize,
    pub embedding_length: u64,
    pub pooling: &'static str,
    /// What the sentence-transformers configuration cuts inputs to, when it says.
    pub max_seq_length: Option<u32>,
}

fn err(m: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m.into())
}

fn read_json(path: &Path) -> io::Result<Json> {
    let text = fs::read_to_string(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| err(format!("{}: {e}", path.display())))
}

/// The vocabulary in id order, from `vocab.txt` or `tokenizer.json`.
fn vocab(dir: &Path) -> io::Result<Vec<String>> {
    let txt = dir.join("vocab.txt");
    if txt.is_file() {
        return Ok(fs::read_to_string(txt)?
            .lines()
            .map(str::to_owned)
            .collect());
    }
    let tok = read_json(&dir.join("tokenizer.json"))?;
    if tok["model"]["type"] != "WordPiece" {
        return Err(err(
            "tokenizer.json is not a WordPiece tokenizer; only BERT-family models can be imported",
        ));
    }
    let map = tok["model"]["vocab"]
        .as_object()
        .ok_or_else(|| err("tokenizer.json has no model.vocab"))?;
    let mut by_id: Vec<(u64, &String)> = map
        .iter()
        .filter_map(|(t, id)| id.as_u64().map(|id| (id, t)))
        .collect();
    by_id.sort();
    Ok(by_id.into_iter().map(|(_, t)| t.clone()).collect())
}

/// HF BERT tensor names to llama.cpp's.
fn gguf_name(name: &str) -> Option<String> {
    let name = name
        .strip_prefix("bert.")
        .or_else(|| name.strip_prefix("model."))
        .unwrap_or(name);
    let fixed = match name {
        "embeddings.word_embeddings.weight" => Some("token_embd.weight"),
        "embeddings.position_embeddings.weight" => Some("position_embd.weight"),
        "embeddings.token_type_embeddings.weight" => Some("token_types.weight"),
        "embeddings.LayerNorm.weight" => Some("token_embd_norm.weight"),
        "embeddings.LayerNorm.bias" => Some("token_embd_norm.bias"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_owned());
    }
    let rest = name.strip_prefix("encoder.layer.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let target = match module {
        "attention.self.query" => "attn_q",
        "attention.self.key" => "attn_k",
        "attention.self.value" => "attn_v",
        "attention.output.dense" => "attn_output",
        "attention.output.LayerNorm" => "attn_output_norm",
        "intermediate.dense" => "ffn_up",
        "output.dense" => "ffn_down",
        "output.LayerNorm" => "layer_output_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{target}.{kind}"))
}

/// Reads the tensors of a `.safetensors` file (F32, F16 or BF16), mapped to llama.cpp names.
fn tensors(path: &Path) -> io::Result<Vec<Tensor>> {
    let bytes = fs::read(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    if bytes.len() < 8 {
        return Err(err("model.safetensors is too short"));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: Json = serde_json::from_slice(
        bytes
            .get(8..8 + n)
            .ok_or_else(|| err("bad safetensors header"))?,
    )
    .map_err(|e| err(format!("safetensors header: {e}")))?;
    let data = &bytes[8 + n..];
    let mut out = Vec::new();
    for (name, info) in header.as_object().into_iter().flatten() {
        if name == "__metadata__" {
            continue;
        }
        let Some(gguf) = gguf_name(name) else {
            continue; // position_ids, the pooler: not used by llama.cpp's BERT
        };
        let dtype = info["dtype"].as_str().unwrap_or("");
        let shape: Vec<u64> = info["shape"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Json::as_u64)
            .collect();
        let off = &info["data_offsets"];
        let (a, b) = (
            off[0].as_u64().unwrap_or(0) as usize,
            off[1].as_u64().unwrap_or(0) as usize,
        );
        let raw = data
            .get(a..b)
            .ok_or_else(|| err(format!("{name}: data out of range")))?;
        let values: Vec<f32> = match dtype {
            "F32" => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
                .collect(),
            "F16" => raw
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes(c.try_into().expect("2")).to_f32())
                .collect(),
            "BF16" => raw
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes(c.try_into().expect("2")).to_f32())
                .collect(),
            other => return Err(err(format!("{name}: unsupported dtype {other}"))),
        };
        // Matrices multiplied by activations can be f16; tables that are added (positions, token
        // types) and norms stay f32, as llama.cpp's CPU add needs matching types.
        let f16 =
            shape.len() == 2 && gguf != "position_embd.weight" && gguf != "token_types.weight";
        let data = if f16 {
            values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect()
        } else {
            values.iter().flat_map(|v| v.to_le_bytes()).collect()
        };
        out.push(Tensor {
            name: gguf,
            dims: shape.iter().rev().copied().collect(),
            f16,
            data,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The GGUF key holding the longest input, in tokens with the start and end tokens, that the model's
/// sentence-transformers configuration reads (`max_seq_length`); longer texts are cut to it, as
/// sentence-transformers cuts them.
pub const MAX_SEQ_LENGTH_KEY: &str = "sentence_transformers.max_seq_length";

/// `max_seq_length` from the folder's `sentence_bert_config.json`, if it has one.
fn max_seq_length(dir: &Path) -> io::Result<Option<u32>> {
    let path = dir.join("sentence_bert_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    match &read_json(&path)?["max_seq_length"] {
        Json::Null => Ok(None),
        v => v
            .as_u64()
            .filter(|&n| n > 0 && n <= u64::from(u32::MAX))
            .map(|n| Some(n as u32))
            .ok_or_else(|| {
                err(format!(
                    "{}: max_seq_length is {v}, not a positive whole number",
                    path.display()
                ))
            }),
    }
}

/// Converts a sentence-transformers BERT folder into a GGUF file at `out`.
pub fn import_bert(dir: &Path, name: &str, out: &Path) -> io::Result<Imported> {
    let config = read_json(&dir.join("config.json"))?;
    if config["model_type"] != "bert" {
        return Err(err(format!(
            "{}: model_type is {}, only `bert` models can be imported",
            dir.join("config.json").display(),
            config["model_type"]
        )));
    }
    let num = |k: &str| -> io::Result<u64> {
        config[k]
            .as_u64()
            .ok_or_else(|| err(format!("config.json has no `{k}`")))
    };
    let pooling_cfg = read_json(&dir.join("1_Pooling/config.json")).unwrap_or(Json::Null);
    let (pooling, pooling_id) = if pooling_cfg["pooling_mode_cls_token"] == true {
        ("cls", 2)
    } else {
        ("mean", 1)
    };
    let tokens = vocab(dir)?;
    let mut types = Vec::with_capacity(tokens.len());
    let gguf_tokens: Vec<String> = tokens
        .iter()
        .map(|t| {
            if t.starts_with('[') && t.ends_with(']') {
                types.push(if t == "[UNK]" { 2 } else { 3 });
                t.clone()
            } else if let Some(rest) = t.strip_prefix("##") {
                types.push(1);
                rest.to_owned()
            } else {
                types.push(1);
                format!("\u{2581}{t}")
            }
        })
        .collect();
    let tensors = tensors(&dir.join("model.safetensors"))?;
    if !tensors.iter().any(|t| t.name == "token_embd.weight") {
        return Err(err(
            "model.safetensors has no embeddings.word_embeddings.weight",
        ));
    }
    let eps = config["layer_norm_eps"].as_f64().unwrap_or(1e-12) as f32;
    let context = num("max_position_embeddings")?;
    let max_seq = max_seq_length(dir)?;
    if let Some(m) = max_seq
        && u64::from(m) > context
    {
        return Err(err(format!(
            "{}: max_seq_length {m} is more than the model's {context} positions",
            dir.join("sentence_bert_config.json").display()
        )));
    }
    let mut meta: Vec<(&str, Kv)> = vec![
        ("general.architecture", Kv::Str("bert".into())),
        ("general.name", Kv::Str(name.to_owned())),
        ("general.file_type", Kv::U32(1)),
        ("bert.context_length", Kv::U32(context as u32)),
        ("bert.embedding_length", Kv::U32(num("hidden_size")? as u32)),
        (
            "bert.feed_forward_length",
            Kv::U32(num("intermediate_size")? as u32),
        ),
        (
            "bert.block_count",
            Kv::U32(num("num_hidden_layers")? as u32),
        ),
        (
            "bert.attention.head_count",
            Kv::U32(num("num_attention_heads")? as u32),
        ),
        ("bert.attention.layer_norm_epsilon", Kv::F32(eps)),
        ("bert.attention.causal", Kv::Bool(false)),
        ("bert.pooling_type", Kv::U32(pooling_id)),
        ("tokenizer.ggml.model", Kv::Str("bert".into())),
        ("tokenizer.ggml.tokens", Kv::Strs(gguf_tokens)),
        ("tokenizer.ggml.token_type", Kv::I32s(types)),
        (
            "tokenizer.ggml.token_type_count",
            Kv::U32(config["type_vocab_size"].as_u64().unwrap_or(2) as u32),
        ),
    ];
    if let Some(m) = max_seq {
        meta.push((MAX_SEQ_LENGTH_KEY, Kv::U32(m)));
    }
    write_gguf(out, &meta, &tensors)?;
    Ok(Imported {
        tensors: tensors.len(),
        vocab: tokens.len(),
        embedding_length: num("hidden_size")?,
        pooling,
        max_seq_length: max_seq,
    })
}

fn put_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

/// The start of an array value after its type: the type of its items and how many there are.
fn put_array_head(head: &mut Vec<u8>, item_type: u32, len: usize) {
    head.extend_from_slice(&item_type.to_le_bytes());
    head.extend_from_slice(&(len as u64).to_le_bytes());
}

fn write_gguf(path: &Path, meta: &[(&str, Kv)], tensors: &[Tensor]) -> io::Result<()> {
    let tmp = path.with_extension("gguf.partial");
    let mut w = BufWriter::new(fs::File::create(&tmp)?);
    let mut pos: u64 = 0;
    let mut head = Vec::new();
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    for (key, value) in meta {
        put_str(&mut head, key)?;
        head.extend_from_slice(&value.type_id().to_le_bytes());
        match value {
            Kv::U32(v) => head.extend_from_slice(&v.to_le_bytes()),
            Kv::F32(v) => head.extend_from_slice(&v.to_le_bytes()),
            Kv::Bool(v) => head.push(u8::from(*v)),
            Kv::Str(s) => put_str(&mut head, s)?,
            Kv::Strs(items) => {
                put_array_head(&mut head, GGUF_STRING, items.len());
                for s in items {
                    put_str(&mut head, s)?;
                }
            }
            Kv::I32s(items) => {
                put_array_head(&mut head, GGUF_I32, items.len());
                for v in items {
                    head.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    let mut offset = 0u64;
    let mut offsets = BTreeMap::new();
    for t in tensors {
        put_str(&mut head, &t.name)?;
        head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            head.extend_from_slice(&d.to_le_bytes());
        }
        head.extend_from_slice(&(if t.f16 { 1u32 } else { 0u32 }).to_le_bytes());
        head.extend_from_slice(&offset.to_le_bytes());
        offsets.insert(t.name.clone(), offset);
        offset = (offset + t.data.len() as u64).div_ceil(ALIGN) * ALIGN;
    }
    w.write_all(&head)?;
    pos += head.len() as u64;
    let pad = pos.div_ceil(ALIGN) * ALIGN - pos;
    w.write_all(&vec![0u8; pad as usize])?;
    for t in tensors {
        w.write_all(&t.data)?;
        let len = t.data.len() as u64;
        let pad = len.div_ceil(ALIGN) * ALIGN - len;
        w.write_all(&vec![0u8; pad as usize])?;
    }
    w.flush()?;
    w.get_ref().sync_all()?;
    drop(w);
    fs::rename(tmp, path)
}

/// A GGUF file read back: its scalar and string metadata, and its tensors' places. Only the tensor
/// types `sluice model import` writes (f32 and f16) can be read as numbers; other types are listed
/// with their ggml type so a caller can tell and fall back.
#[derive(Debug)]
pub struct GgufFile {
    bytes: Vec<u8>,
    meta: BTreeMap<String, MetaValue>,
    tensors: BTreeMap<String, TensorInfo>,
}

/// A metadata value kept by [`GgufFile`]: numbers, booleans and strings (arrays are skipped).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
}

/// Where a tensor lies and what it is.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// ggml order: the fastest-varying dimension first.
    pub dims: Vec<u64>,
    /// ggml's type number (0 f32, 1 f16, others quantised).
    pub ggml_type: u32,
    /// From the start of the file.
    offset: usize,
}

/// A cursor over a GGUF header.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> io::Result<&[u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| err(format!("GGUF header ends early at byte {}", self.pos)))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn len(&mut self) -> io::Result<usize> {
        let n = self.u64()?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.bytes.len())
            .ok_or_else(|| err(format!("GGUF length {n} at byte {} is too large", self.pos)))
    }
    fn string(&mut self) -> io::Result<String> {
        let n = self.len()?;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| err(format!("GGUF string before byte {} is not UTF-8", self.pos)))
    }
    /// One value of `ty`; `None` for arrays, which are skipped.
    fn value(&mut self, ty: u32) -> io::Result<Option<MetaValue>> {
        let b = |r: &mut Self, n| r.take(n).map(<[u8]>::to_vec);
        Ok(Some(match ty {
            0 => MetaValue::Int(i64::from(b(self, 1)?[0])),
            1 => MetaValue::Int(i64::from(b(self, 1)?[0] as i8)),
            2 => MetaValue::Int(i64::from(u16::from_le_bytes(
                b(self, 2)?.try_into().expect("2"),
            ))),
            3 => MetaValue::Int(i64::from(i16::from_le_bytes(
                b(self, 2)?.try_into().expect("2"),
            ))),
            GGUF_U32 => MetaValue::Int(i64::from(self.u32()?)),
            GGUF_I32 => MetaValue::Int(i64::from(self.u32()? as i32)),
            GGUF_F32 => MetaValue::Float(f64::from(f32::from_bits(self.u32()?))),
            GGUF_BOOL => MetaValue::Bool(b(self, 1)?[0] != 0),
            GGUF_STRING => MetaValue::Str(self.string()?),
            GGUF_ARRAY => {
                let item = self.u32()?;
                let n = self.len()?;
                for _ in 0..n {
                    self.value(item)?;
                }
                return Ok(None);
            }
            10 => MetaValue::Int(self.u64()? as i64),
            11 => MetaValue::Int(self.u64()? as i64),
            12 => MetaValue::Float(f64::from_bits(self.u64()?)),
            other => return Err(err(format!("GGUF value type {other} is unknown"))),
        }))
    }
}

/// A GGUF header as parsed: metadata, and each tensor's name, dimensions, type and offset from the
/// start of the data.
struct Head {
    meta: BTreeMap<String, MetaValue>,
    infos: Vec<(String, Vec<u64>, u32, u64)>,
    data_start: usize,
}

impl Head {
    fn parse(bytes: &[u8]) -> io::Result<Head> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take(4)? != b"GGUF" {
            return Err(err("not a GGUF file"));
        }
        let version = r.u32()?;
        if version < 2 {
            return Err(err(format!("GGUF version {version} is too old")));
        }
        let n_tensors = r.len()?;
        let n_meta = r.len()?;
        let mut meta = BTreeMap::new();
        for _ in 0..n_meta {
            let key = r.string()?;
            let ty = r.u32()?;
            if let Some(v) = r.value(ty)? {
                meta.insert(key, v);
            }
        }
        let align = match meta.get("general.alignment") {
            Some(MetaValue::Int(a)) if *a > 0 => *a as usize,
            _ => ALIGN as usize,
        };
        let mut infos = Vec::with_capacity(n_tensors.min(1 << 16));
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()? as usize;
            if n_dims > 4 {
                return Err(err(format!("tensor {name} has {n_dims} dimensions")));
            }
            let dims = (0..n_dims)
                .map(|_| r.u64())
                .collect::<io::Result<Vec<_>>>()?;
            let ggml_type = r.u32()?;
            let offset = r.u64()?;
            infos.push((name, dims, ggml_type, offset));
        }
        Ok(Head {
            meta,
            infos,
            data_start: r.pos.div_ceil(align) * align,
        })
    }
}

/// A GGUF file's header alone: its metadata and its tensors' names and types, read without the
/// tensor data, so that a caller can tell whether it wants a file (of gigabytes, perhaps) before
/// reading it. The header is read in growing pieces from the start of the file.
#[derive(Debug)]
pub struct GgufHead {
    meta: BTreeMap<String, MetaValue>,
    types: BTreeMap<String, u32>,
}

impl GgufHead {
    /// Reads the header of the file at `path`.
    pub fn read(path: &Path) -> io::Result<GgufHead> {
        Self::read_from(path, 1 << 20)
    }

    /// [`GgufHead::read`], first reading `first` bytes: a header that does not fit is read again
    /// from four times as many, up to the whole file.
    fn read_from(path: &Path, first: usize) -> io::Result<GgufHead> {
        use std::io::Read;
        let named = |e: io::Error| err(format!("{}: {e}", path.display()));
        let file = fs::File::open(path).map_err(named)?;
        let len = usize::try_from(file.metadata().map_err(named)?.len()).unwrap_or(usize::MAX);
        let mut want = first.min(len);
        loop {
            let mut bytes = Vec::with_capacity(want);
            (&file)
                .take(want as u64)
                .read_to_end(&mut bytes)
                .map_err(named)?;
            // Seek back for a longer read.
            let mut again = &file;
            std::io::Seek::seek(&mut again, std::io::SeekFrom::Start(0)).map_err(named)?;
            match Head::parse(&bytes) {
                Ok(head) => {
                    return Ok(GgufHead {
                        meta: head.meta,
                        types: head
                            .infos
                            .into_iter()
                            .map(|(name, _, ty, _)| (name, ty))
                            .collect(),
                    });
                }
                // A header longer than what was read, or a broken one: read more, up to all.
                Err(_) if want < len => want = want.saturating_mul(4).min(len),
                Err(e) => return Err(named(e)),
            }
        }
    }

    /// A string metadata value.
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        match self.meta.get(key)? {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Each tensor's name and ggml type (0 f32, 1 f16, others quantised).
    pub fn tensor_types(&self) -> impl Iterator<Item = (&str, u32)> {
        self.types.iter().map(|(name, ty)| (name.as_str(), *ty))
    }
}

impl GgufFile {
    /// Reads the whole file at `path`.
    pub fn read(path: &Path) -> io::Result<GgufFile> {
        let bytes = fs::read(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        Self::parse(bytes).map_err(|e| err(format!("{}: {e}", path.display())))
    }

    fn parse(bytes: Vec<u8>) -> io::Result<GgufFile> {
        let head = Head::parse(&bytes)?;
        let mut tensors = BTreeMap::new();
        for (name, dims, ggml_type, offset) in head.infos {
            let offset = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(head.data_start))
                .filter(|&o| o <= bytes.len())
                .ok_or_else(|| err(format!("tensor {name} lies outside the file")))?;
            tensors.insert(
                name,
                TensorInfo {
                    dims,
                    ggml_type,
                    offset,
                },
            );
        }
        Ok(GgufFile {
            bytes,
            meta: head.meta,
            tensors,
        })
    }

    /// A metadata value.
    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.meta.get(key)
    }

    /// A whole-number metadata value.
    pub fn meta_int(&self, key: &str) -> Option<i64> {
        match self.meta.get(key)? {
            MetaValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// A string metadata value.
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        match self.meta.get(key)? {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A tensor's place and type.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// A tensor's numbers in ggml order, if it is f32 or f16.
    pub fn tensor_f32(&self, name: &str) -> io::Result<Vec<f32>> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| err(format!("no tensor {name}")))?;
        let count = info
            .dims
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
            .ok_or_else(|| err(format!("tensor {name} is too large")))?;
        let width = match info.ggml_type {
            0 => 4,
            1 => 2,
            t => {
                return Err(err(format!(
                    "tensor {name} has ggml type {t}, not f32 or f16"
                )));
            }
        };
        let raw = count
            .checked_mul(width)
            .and_then(|n| self.bytes.get(info.offset..info.offset.checked_add(n)?))
            .ok_or_else(|| err(format!("tensor {name} runs past the end of the file")))?;
        Ok(if width == 4 {
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
                .collect()
        } else {
            raw.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes(c.try_into().expect("2")).to_f32())
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bert_names_map_to_llama_cpp() {
        assert_eq!(
            gguf_name("embeddings.word_embeddings.weight").as_deref(),
            Some("token_embd.weight")
        );
        assert_eq!(
            gguf_name("encoder.layer.3.attention.output.LayerNorm.bias").as_deref(),
            Some("blk.3.attn_output_norm.bias")
        );
        assert_eq!(
            gguf_name("bert.encoder.layer.0.output.dense.weight").as_deref(),
            Some("blk.0.ffn_down.weight")
        );
        assert_eq!(gguf_name("pooler.dense.weight"), None);
        assert_eq!(gguf_name("embeddings.position_ids"), None);
    }

    #[test]
    fn max_seq_length_comes_from_the_sentence_transformers_config() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(max_seq_length(dir.path()).unwrap(), None);
        let file = dir.path().join("sentence_bert_config.json");
        fs::write(&file, r#"{"max_seq_length": 256, "do_lower_case": false}"#).unwrap();
        assert_eq!(max_seq_length(dir.path()).unwrap(), Some(256));
        fs::write(&file, r#"{"do_lower_case": false}"#).unwrap();
        assert_eq!(max_seq_length(dir.path()).unwrap(), None);
        for bad in [r#"{"max_seq_length": 0}"#, r#"{"max_seq_length": "256"}"#] {
            fs::write(&file, bad).unwrap();
            let e = max_seq_length(dir.path()).unwrap_err().to_string();
            assert!(
                e.contains("max_seq_length") && e.contains("sentence_bert_config.json"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_written_gguf_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let meta = vec![
            ("general.architecture", Kv::Str("bert".into())),
            ("bert.block_count", Kv::U32(6)),
            ("bert.attention.layer_norm_epsilon", Kv::F32(1e-12)),
            ("bert.attention.causal", Kv::Bool(false)),
            (
                "tokenizer.ggml.tokens",
                Kv::Strs(vec!["a".into(), "b".into()]),
            ),
            ("tokenizer.ggml.token_type", Kv::I32s(vec![1, 3])),
        ];
        let values = [1.0f32, -2.5, 0.125, 3.0, 65504.0, -0.0];
        let tensors = vec![
            Tensor {
                name: "half".into(),
                dims: vec![3, 2],
                f16: true,
                data: values
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
            },
            Tensor {
                name: "single".into(),
                dims: vec![5],
                f16: false,
                data: values[..5].iter().flat_map(|v| v.to_le_bytes()).collect(),
            },
        ];
        write_gguf(&path, &meta, &tensors).unwrap();
        let g = GgufFile::read(&path).unwrap();
        assert_eq!(g.meta_str("general.architecture"), Some("bert"));
        assert_eq!(g.meta_int("bert.block_count"), Some(6));
        assert_eq!(
            g.meta("bert.attention.causal"),
            Some(&MetaValue::Bool(false))
        );
        assert!(
            g.meta("tokenizer.ggml.tokens").is_none(),
            "arrays are skipped"
        );
        assert_eq!(g.tensor_f32("half").unwrap(), values);
        assert_eq!(g.tensor_f32("single").unwrap(), &values[..5]);
        assert_eq!(g.tensor_info("half").unwrap().dims, vec![3, 2]);
        assert!(g.tensor_f32("missing").is_err());

        // The header alone, read from a first piece far shorter than it (the vocabulary alone
        // takes more), then from the whole file; the same from a file cut inside the tensor data.
        for first in [16, 1 << 20] {
            let head = GgufHead::read_from(&path, first).unwrap();
            assert_eq!(head.meta_str("general.architecture"), Some("bert"));
            let types: Vec<(&str, u32)> = head.tensor_types().collect();
            assert_eq!(types, vec![("half", 1), ("single", 0)]);
        }

        // A cut file is an error naming it, never a panic (the last cut takes 4 bytes of data: 12
        // of the 16 are the padding after the last tensor).
        let bytes = fs::read(&path).unwrap();
        for cut in [3, 20, 60, bytes.len() - 16] {
            fs::write(&path, &bytes[..cut]).unwrap();
            match GgufFile::read(&path) {
                Err(e) => assert!(e.to_string().contains("t.gguf"), "{e}"),
                Ok(g) => assert!(g.tensor_f32("single").is_err(), "cut at {cut}"),
            }
            if let Err(e) = GgufHead::read_from(&path, 8) {
                assert!(e.to_string().contains("t.gguf"), "{e}");
                assert!(cut < 100, "a header cut at {cut} is whole");
            }
        }
    }
}
