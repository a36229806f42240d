from promptflow.core import tool

@tool
def count(text: str) -> int:
    return len(text)
