from typing import List

from promptflow.core import tool


@tool
def retrieval(sources: List[str], expected_source: str) -> dict:
    """Whether the labelled source is among the retrieved files, and 1/rank of its first place."""
    names = [s.replace("\\", "/").rsplit("/", 1)[-1] for s in sources]
    if expected_source in names:
        return {"hit": 1, "reciprocal_rank": round(1.0 / (names.index(expected_source) + 1), 4)}
    return {"hit": 0, "reciprocal_rank": 0.0}
