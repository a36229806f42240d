from typing import List

from promptflow.core import log_metric, tool


@tool
def length(answers: List[str]) -> float:
    words = sum(len(a.split()) for a in answers) / len(answers) if answers else 0.0
    log_metric("words_per_answer", round(words, 2))
    return words
