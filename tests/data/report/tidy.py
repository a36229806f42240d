from promptflow.core import tool


@tool
def tidy(answer: str, country: str) -> str:
    if country == "Atlantis":
        raise ValueError(f"cannot check an answer about {country}: it is not on any map")
    return answer.strip()
