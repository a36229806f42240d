from promptflow.core import tool


@tool
def count(question: str) -> int:
    return len(question.split())
