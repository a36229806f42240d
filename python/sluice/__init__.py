"""Sluice's Python API for tool authors.

Write a tool as a plain function and mark it with ``@tool``; Sluice calls it from a flow's ``python``
node. Inside an aggregation node, ``log_metric`` records a run metric.

    from sluice import tool

    @tool
    def shout(text: str) -> str:
        return text.upper()

Installed as a Python package (``pip install sluice-flow``), the same module is the engine's API::

    import sluice

    flow = sluice.load_flow("flows/hello")
    flow(name="Ada")                      # {"greeting": ..., "words": ...}
    run = sluice.run(flow, data="data.jsonl", column_mapping={"name": "${data.name}"})
    run.outputs()

The same module also backs ``promptflow``'s tool API when promptflow itself is not installed, so
existing tools (``from promptflow.core import tool``) run unchanged.
"""

from __future__ import annotations

import contextvars
import inspect
from typing import Any, Callable, Dict, Optional, TypeVar, overload

__all__ = [
    "tool",
    "log_metric",
    "ToolProvider",
    "trace",
    "CustomConnection",
    "PromptTemplate",
    "Secret",
    "FilePath",
]

F = TypeVar("F", bound=Callable[..., Any])

# The sink that `log_metric` writes to; set by Sluice only while an aggregation node runs.
_metric_sink: contextvars.ContextVar[Optional[Dict[str, Any]]] = contextvars.ContextVar(
    "sluice_metric_sink", default=None
)


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


def tool(func=None, *, name=None, description=None, type=None, input_settings=None,
         streaming_option_parameter=None, **kwargs):
    """Marks a function (or a ``ToolProvider`` method) as the tool of its file.

    Works bare (``@tool``) or with promptflow's options (``@tool(name=..., description=...)``);
    the options are kept as metadata and do not change how the function runs.
    """

    def mark(f):
        f.__sluice_tool__ = {
            "name": name or f.__name__,
            "description": description,
            "type": type,
            "streaming_option_parameter": streaming_option_parameter,
        }
        return f

    if func is not None:
        return mark(func)
    return mark


def log_metric(key: str, value: Any, variant_id: Optional[str] = None) -> None:
    """Records a run metric. Effective only inside an aggregation node (as in promptflow).

    ``variant_id`` is accepted for compatibility; the metric is stored under ``key`` and the last
    value logged for a key wins.
    """
    sink = _metric_sink.get()
    if sink is not None:
        sink[key] = value


log_flow_metric = log_metric


class ToolProvider:
    """Base class for tools that need set-up: ``__init__`` takes the node's literal inputs once,
    then the ``@tool`` method runs per line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


def trace(func: F = None, **_kwargs: Any):
    """Marks a function as traced. Sluice traces node boundaries itself; this is a no-op wrapper."""
    if func is None:
        return lambda f: f
    return func


# The engine API, from the installed package's extension module; imported on first use, so that tools
# importing `sluice` for `@tool` stay cheap (and work inside the `sluice` binary, which has no API).
_API = frozenset(
    (
        "load_flow", "run", "get_run", "merge_runs", "list_runs", "visualize", "home",
        "Flow", "Run", "Problem", "SluiceError", "FlowLoadError", "FlowRunError", "RunError",
    )
)


def __getattr__(name: str) -> Any:
    # The connection classes live with the promptflow stand-in, which Sluice loads with this module.
    if name == "CustomConnection":
        from sluice._promptflow import CustomConnection

        return CustomConnection
    if name == "ray":  # `sluice.ray.run(...)` after a plain `import sluice`
        import importlib

        return importlib.import_module("sluice.ray")
    if name == "Prompty":
        # The engine adds `Prompty` when it starts its Python side, which a program that has not
        # loaded a flow yet has not done.
        try:
            from sluice import _api
        except ImportError as e:
            raise AttributeError(
                "sluice.Prompty needs the sluice-flow Python package (pip install sluice-flow): %s" % e
            ) from None
        _api._start_python()
        if "Prompty" in globals():
            return globals()["Prompty"]
        raise AttributeError("sluice.Prompty is not available: the engine did not add it")
    if name in _API:
        try:
            from sluice import _api
        except ImportError as e:
            raise AttributeError(
                "sluice.%s needs the sluice-flow Python package (pip install sluice-flow): %s" % (name, e)
            ) from None
        return getattr(_api, name)
    raise AttributeError("module 'sluice' has no attribute %r" % name)


class PromptTemplate(str):
    """A Jinja template string passed to a tool."""


class Secret(str):
    """A secret string (never logged)."""


class FilePath(str):
    """A path to a file, relative to the flow folder."""
