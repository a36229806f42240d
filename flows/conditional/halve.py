from promptflow.core import tool


@tool
def halve(number: int) -> int:
    return number // 2
