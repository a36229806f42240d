import re

from promptflow.core import tool

STOPWORDS = {
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from", "how", "i",
    "in", "is", "it", "its", "of", "on", "or", "that", "the", "this", "to", "was", "what", "when",
    "where", "which", "who", "why", "with", "you", "your",
}


def words(text: str) -> list:
    return [w for w in re.findall(r"[a-z0-9_.-]+", text.lower()) if w not in STOPWORDS]


@tool
def overlap(answer: str, context: str) -> float:
    """The share of the answer's content words (file names in brackets left out) found in the
    context: a judge-free check of how much of the answer comes from its sources."""
    answer = re.sub(r"\[[^\]]*\]", " ", answer)
    said = words(answer)
    if not said:
        return 0.0
    have = set(words(context))
    return round(sum(1 for w in said if w in have) / len(said), 4)
