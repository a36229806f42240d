from promptflow.core import tool

SUBJECTS = ["chicken", "potatoes", "bread", "salmon", "carrots", "tofu",
            "Jupiter", "Mars", "Saturn", "the Moon", "Venus"]


@tool
def grade(question: str, answer: str) -> float:
    subject = next((s for s in SUBJECTS if s in question), None)
    return 1.0 if subject and subject in answer else 0.0
