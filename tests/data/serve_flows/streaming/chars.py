from promptflow.core import tool

@tool
def chars(text: str):
    for ch in text:
        yield ch.upper()
