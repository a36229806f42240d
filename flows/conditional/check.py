from promptflow.core import tool


@tool
def check(number: int) -> str:
    return "even" if number % 2 == 0 else "odd"
