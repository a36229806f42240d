"""The engine as a Python extension; use the API in ``sluice`` instead."""

from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

__version__: str

class LoadError(Exception): ...
class RunError(Exception): ...

class NativeFlow:
    def __init__(self, path: str, variant: Optional[str], connections: List[str]) -> None: ...
    def describe(self) -> str: ...
    def call(
        self, inputs: Dict[str, Any], timeout: Optional[float] = None, stream: bool = False
    ) -> Tuple[bool, Union[Dict[str, Any], str]]: ...

class OutputStream(Iterator[str]):
    def __iter__(self) -> "OutputStream": ...
    def __next__(self) -> str: ...

def create_run(
    flow: Optional[str],
    data: Optional[str],
    run: Optional[str],
    column_mapping: List[Tuple[str, str]],
    variant: Optional[str],
    name: Optional[str],
    display_name: Optional[str],
    tags: List[Tuple[str, str]],
    max_concurrency: int,
    line_timeout: Optional[float],
    shard: Optional[str] = None,
    resume_from: Optional[str] = None,
    init: Optional[str] = None,
    connections: List[str] = ...,
) -> str: ...
def merge_runs(name: str, from_: List[str], max_concurrency: int, /) -> str: ...
def cli_main(argv: List[str]) -> int: ...
def home() -> str: ...
def keep_connection(spec: str) -> None: ...
