from promptflow.core import tool


@tool
def format_greeting(prompt: str, suffix: str = ".") -> dict:
    """Joins the prompt's lines into one sentence and counts its words."""
    text = "; ".join(line.strip("- ") for line in prompt.strip().splitlines()) + suffix
    return {"text": text, "words": len(text.split())}
