from promptflow.contracts.multimedia import Image
from promptflow.core import tool


@tool
def describe(pic: Image) -> dict:
    """What a tool sees of an image input: promptflow's Image, a bytes subclass."""
    return {
        "type": type(pic).__name__,
        "is_bytes": isinstance(pic, bytes),
        "mime": pic._mime_type,
        "size": len(pic),
        "str": str(pic),
        "source_url": pic.source_url,
        "data_uri": pic.to_base64(with_type=True)[:30],
    }
