from typing import List

from promptflow.core import tool


@tool
def prepare(hits: List[dict], passages: int = 2, max_words: int = 90) -> dict:
    """The passages the model reads (the best `passages` hits, cut to `max_words` words, without
    their Markdown heading marks), the prompt's context as one text, and every retrieved file name
    in rank order, each once (what the evaluation scores retrieval on)."""
    chosen = []
    for hit in hits[:passages]:
        words = [w for w in hit["text"].split() if not w.startswith("#")]
        text = " ".join(words[:max_words])
        chosen.append({"file": hit["metadata"].get("file", hit["source"]), "text": text})
    context = "\n".join(f"[{p['file']}] {p['text']}" for p in chosen)
    sources = []
    for h in hits:
        name = h["metadata"].get("file", h["source"])
        if name not in sources:
            sources.append(name)
    return {"passages": chosen, "context": context, "sources": sources}
