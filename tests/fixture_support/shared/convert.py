from promptflow.core import tool

from shared_helpers import shout


@tool
def convert(text: str) -> str:
    return shout(text)
