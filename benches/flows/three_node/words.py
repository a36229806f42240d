from promptflow.core import tool


@tool
def words(text: str) -> list:
    return text.split()
