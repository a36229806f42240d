from promptflow.core import tool


@tool
def grade(groundtruth: str, prediction: str) -> str:
    """Correct when the prediction matches the ground truth, ignoring case and surrounding space."""
    return "Correct" if groundtruth.strip().lower() == prediction.strip().lower() else "Incorrect"
