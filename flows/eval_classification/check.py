from promptflow.core import tool


@tool
def check(prediction: str, label: str) -> bool:
    return prediction.strip().lower() == label.strip().lower()
