from typing import List

from promptflow.core import tool


@tool
def cosine(u: List[float], v: List[float]) -> float:
    """The vectors are unit length, so their dot product is the cosine."""
    return round(sum(x * y for x, y in zip(u, v)), 4)
