from typing import List

from promptflow.core import log_metric, tool


@tool
def aggregate(retrieval: List[dict], supported: List[int], overlap: List[float]) -> dict:
    """Hit rate, MRR and word overlap over all lines; the judged groundedness over the lines the
    judge answered yes or no."""
    n = len(retrieval)
    judged = [s for s in supported if s >= 0]
    result = {
        "hit_rate": round(sum(r["hit"] for r in retrieval) / n, 4) if n else 0.0,
        "mrr": round(sum(r["reciprocal_rank"] for r in retrieval) / n, 4) if n else 0.0,
        "groundedness": round(sum(judged) / len(judged), 4) if judged else 0.0,
        "judged": len(judged),
        "answer_overlap": round(sum(overlap) / n, 4) if n else 0.0,
    }
    for k, v in result.items():
        log_metric(k, v)
    return result
