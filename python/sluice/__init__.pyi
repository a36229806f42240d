from typing import Any, Callable, Dict, Optional, TypeVar, overload

from sluice._api import (
    Flow as Flow,
    FlowLoadError as FlowLoadError,
    FlowRunError as FlowRunError,
    Problem as Problem,
    Run as Run,
    RunError as RunError,
    SluiceError as SluiceError,
    get_run as get_run,
    home as home,
    list_runs as list_runs,
    load_flow as load_flow,
    merge_runs as merge_runs,
    run as run,
    visualize as visualize,
)
from sluice._promptflow import CustomConnection as CustomConnection

F = TypeVar("F", bound=Callable[..., Any])

@overload
def tool(func: F) -> F: ...
@overload
def tool(
    func: None = None,
    *,
    name: Optional[str] = None,
    description: Optional[str] = None,
    type: Optional[str] = None,
    input_settings: Any = None,
    streaming_option_parameter: Optional[str] = None,
    **kwargs: Any,
) -> Callable[[F], F]: ...
def log_metric(key: str, value: Any, variant_id: Optional[str] = None) -> None: ...

log_flow_metric = log_metric

class ToolProvider:
    def __init__(self, *args: Any, **kwargs: Any) -> None: ...

@overload
def trace(func: F) -> F: ...
@overload
def trace(func: None = None, **kwargs: Any) -> Callable[[F], F]: ...

class PromptTemplate(str): ...
class Secret(str): ...
class FilePath(str): ...

__all__: list[str]
_metric_sink: Any
_API: frozenset[str]
def __getattr__(name: str) -> Any: ...
