from promptflow.core import log_metric, tool


@tool
def accuracy(scores: list) -> float:
    value = sum(scores) / len(scores) if scores else 0.0
    log_metric("accuracy", value)
    return value
