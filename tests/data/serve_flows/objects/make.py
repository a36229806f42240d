from dataclasses import dataclass

from promptflow.core import tool


@dataclass
class Answer:
    text: str
    score: float


class Opaque:
    pass


@tool
def make(kind: str):
    if kind == "dataclass":
        return Answer(text="a dataclass", score=0.5)
    if kind == "opaque":
        return Opaque()
    return {"text": "a dict", "items": [1, 2.5, None, True]}
