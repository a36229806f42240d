from promptflow.core import tool


@tool
def parse(raw: str) -> int:
    """The judge's verdict: 1 for yes, 0 for no, -1 when it said neither."""
    word = raw.strip().lower()
    if word.startswith("yes"):
        return 1
    if word.startswith("no"):
        return 0
    return -1
