from promptflow.contracts.multimedia import Image
from promptflow.core import tool


@tool
def mirror(pic: Image) -> Image:
    """Returns a new image of the same bytes, which the flow output serialises."""
    return Image(bytes(pic), mime_type="image/png")
