from promptflow.core import tool


@tool
def parse(raw: str) -> str:
    """The judge's first word: match, mismatch, or unclear when it said neither."""
    word = raw.strip().lower()
    if word.startswith("yes"):
        return "match"
    if word.startswith("no"):
        return "mismatch"
    return "unclear"
