"""Writes minilm_reference.json: all-MiniLM-L6-v2 sentence embeddings computed independently of
llama.cpp, with NumPy (a plain BERT forward pass over the safetensors weights) and Hugging Face's
`tokenizers` (WordPiece from tokenizer.json), mean-pooled and L2-normalised as sentence-transformers
does. Run once, by hand, where numpy and tokenizers are installed:

    python3 tests/data/make_minilm_reference.py /path/to/all-MiniLM-L6-v2-folder
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "Sluice runs promptflow flows with a local model.",
    "Résumé writing tips: keep it short, concrete and honest!",
    # Over 256 tokens: sentence-transformers reads the first 256 (its max_seq_length), and the
    # second half, on another subject, must not change the vector.
    " ".join(
        f"In kitchen number {i}, the cook slices onions, stirs the soup and bakes fresh bread for the guests."
        for i in range(14)
    )
    + " "
    + " ".join(
        f"Telescope {i} tracks distant galaxies, measures the light of dying stars and maps dark matter."
        for i in range(14)
    ),
]


def load_safetensors(path):
    raw = Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        dtype = {"F32": np.float32, "F16": np.float16, "I64": np.int64}[info["dtype"]]
        out[name] = np.frombuffer(data[a:b], dtype=dtype).reshape(info["shape"]).astype(np.float64)
    return out


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu(x):
    from math import erf, sqrt

    return 0.5 * x * (1.0 + np.vectorize(lambda v: erf(v / sqrt(2.0)))(x))


def embed(weights, config, ids):
    eps = config["layer_norm_eps"]
    heads = config["num_attention_heads"]
    w = lambda k: weights[k]
    x = w("embeddings.word_embeddings.weight")[ids]
    x = x + w("embeddings.position_embeddings.weight")[: len(ids)]
    x = x + w("embeddings.token_type_embeddings.weight")[0]
    x = layer_norm(x, w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"), eps)
    d = x.shape[1] // heads
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        lin = lambda h, name: h @ w(p + name + ".weight").T + w(p + name + ".bias")
        q = lin(x, "attention.self.query").reshape(len(ids), heads, d).transpose(1, 0, 2)
        k = lin(x, "attention.self.key").reshape(len(ids), heads, d).transpose(1, 0, 2)
        v = lin(x, "attention.self.value").reshape(len(ids), heads, d).transpose(1, 0, 2)
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(d)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        ctx = (scores @ v).transpose(1, 0, 2).reshape(len(ids), heads * d)
        x = layer_norm(x + lin(ctx, "attention.output.dense"), w(p + "attention.output.LayerNorm.weight"), w(p + "attention.output.LayerNorm.bias"), eps)
        h = gelu(lin(x, "intermediate.dense"))
        x = layer_norm(x + lin(h, "output.dense"), w(p + "output.LayerNorm.weight"), w(p + "output.LayerNorm.bias"), eps)
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


def main():
    folder = Path(sys.argv[1])
    config = json.loads((folder / "config.json").read_text())
    weights = load_safetensors(folder / "model.safetensors")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_padding()  # the file pads to 128; sentence-transformers pools only the real tokens
    # Cut as sentence-transformers cuts: to max_seq_length tokens, the end token kept.
    st_config = json.loads((folder / "sentence_bert_config.json").read_text())
    tok.enable_truncation(max_length=st_config["max_seq_length"])
    rows = []
    for text in TEXTS:
        ids = tok.encode(text).ids
        rows.append({"text": text, "token_ids": ids, "embedding": [round(float(v), 6) for v in embed(weights, config, np.array(ids))]})
    out = Path(__file__).with_name("minilm_reference.json")
    out.write_text(json.dumps({"model": "sentence-transformers/all-MiniLM-L6-v2", "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
