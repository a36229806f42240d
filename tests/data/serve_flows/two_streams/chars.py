from promptflow.core import tool

@tool
def chars(text: str):
    yield from text
