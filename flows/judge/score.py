from typing import List

from promptflow.core import log_metric, tool


@tool
def score(verdicts: List[str]) -> dict:
    """Logs the share of answers the judge accepted, and how often it gave no clear verdict."""
    total = len(verdicts)
    matches = sum(1 for v in verdicts if v == "match")
    unclear = sum(1 for v in verdicts if v == "unclear")
    result = {
        "judge_score": round(matches / total, 4) if total else 0.0,
        "unclear_rate": round(unclear / total, 4) if total else 0.0,
    }
    for name, value in result.items():
        log_metric(name, value)
    return result
