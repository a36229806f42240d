import time
from promptflow.core import tool

@tool
def up(text: str, wait: float) -> str:
    time.sleep(wait)
    return text.upper()
