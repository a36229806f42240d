from promptflow.core import tool

SUBJECTS = ["chicken", "potatoes", "bread", "salmon", "carrots", "tofu",
            "Jupiter", "Mars", "Saturn", "the Moon", "Venus"]


@tool
def answer(question: str, careful: bool) -> str:
    subject = next((s for s in SUBJECTS if s in question), "that")
    if not careful and len(question) % 2 == 1:
        subject = "something else"
    return f"Here is what I know about {subject}."
