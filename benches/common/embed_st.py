"""sentence-transformers' side of benches/compare_embeddings.sh: embeds the texts of a JSON Lines file
(one JSON string per line) with the model folder given, on N torch threads, writes the normalised
vectors as JSON and prints its timing as one JSON line on standard error.

    python embed_st.py MODEL_DIR TEXTS.jsonl THREADS OUT.json
"""
import json
import sys
import time

started = time.perf_counter()
import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

model_dir, texts_path, threads, out_path = sys.argv[1:5]
torch.set_num_threads(int(threads))
model = SentenceTransformer(model_dir, device="cpu")
loaded = time.perf_counter() - started
texts = [json.loads(line) for line in open(texts_path) if line.strip()]
limit = model.max_seq_length
tokens = sum(min(len(ids), limit) for ids in model.tokenizer(texts)["input_ids"])
began = time.perf_counter()
vectors = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
secs = time.perf_counter() - began
with open(out_path, "w") as f:
    json.dump(vectors.tolist(), f)
print(json.dumps({
    "texts": len(texts), "tokens": tokens, "load_seconds": loaded, "embed_seconds": secs,
    "texts_per_second": len(texts) / secs, "tokens_per_second": tokens / secs,
    "max_seq_length": limit, "threads": torch.get_num_threads(),
}), file=sys.stderr)
