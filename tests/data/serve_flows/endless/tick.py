import time

from promptflow.core import tool


@tool
def tick(marker: str):
    n = 0
    try:
        while True:
            with open(marker, "a") as f:
                f.write(f"tick {n}\n")
            yield f"{n} "
            n += 1
            time.sleep(0.05)
    finally:
        with open(marker, "a") as f:
            f.write("closed\n")
