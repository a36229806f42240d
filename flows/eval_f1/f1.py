import re
import string
from collections import Counter

from promptflow.core import tool

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> list:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    text = _ARTICLES.sub(" ", text)
    return text.split()


@tool
def f1(answer: str, reference: str) -> dict:
    """Token-overlap F1 and exact match of one answer against its reference."""
    got, want = normalize(answer), normalize(reference)
    exact = int(got == want)
    common = Counter(got) & Counter(want)
    overlap = sum(common.values())
    if not got or not want:
        return {"f1": float(got == want), "exact_match": exact}
    if overlap == 0:
        return {"f1": 0.0, "exact_match": exact}
    precision = overlap / len(got)
    recall = overlap / len(want)
    return {"f1": round(2 * precision * recall / (precision + recall), 4), "exact_match": exact}
