from promptflow.core import tool


@tool
def triple_plus_one(number: int) -> int:
    return 3 * number + 1
