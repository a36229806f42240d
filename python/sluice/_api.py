"""Sluice's Python API: load a flow and call it, run a dataset through it, read runs back.

Everything here drives the Rust engine in ``sluice._native``. Calls into the engine release the GIL;
the flow's own Python tools run in this interpreter, so they see the program's modules.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
import sys
import tempfile
import webbrowser
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

from sluice import _native
from sluice._promptflow import _CONNECTION_TYPES, _connection_spec  # noqa: F401

__all__ = [
    "SluiceError",
    "FlowLoadError",
    "FlowRunError",
    "RunError",
    "Problem",
    "Flow",
    "Run",
    "load_flow",
    "run",
    "get_run",
    "merge_runs",
    "list_runs",
    "home",
    "visualize",
]

PathLike = Union[str, "os.PathLike[str]"]


class SluiceError(Exception):
    """The base class of Sluice's errors."""


class Problem(NamedTuple):
    """One problem found when a flow loads, and where it is."""

    code: str
    message: str
    node: Optional[str]
    file: Optional[str]
    line: Optional[int]
    column: Optional[int]
    help: Optional[str]

    def __str__(self) -> str:
        where = self.file or "<flow>"
        if self.line:
            where += ":%d:%d" % (self.line, self.column or 0)
        node = " (node `%s`)" % self.node if self.node else ""
        return "%s: %s%s [%s]" % (where, self.message, node, self.code)


class FlowLoadError(SluiceError, ValueError):
    """A flow that does not load. ``problems`` lists every problem found, each with its file, line,
    column and node; ``file``, ``line`` and ``node`` are those of the first."""

    def __init__(self, message: str, problems: Sequence[Problem]):
        super().__init__(message)
        self.problems: List[Problem] = list(problems)
        first = self.problems[0] if self.problems else None
        self.file: Optional[str] = first.file if first else None
        self.line: Optional[int] = first.line if first else None
        self.column: Optional[int] = first.column if first else None
        self.node: Optional[str] = first.node if first else None


class FlowRunError(SluiceError, RuntimeError):
    """A line of a flow that failed. ``node`` is the node that failed; for a Python tool,
    ``filename``, ``line`` and ``traceback`` say where it raised; ``error`` is promptflow's error
    record."""

    def __init__(self, message: str, node: Optional[str], error: Dict[str, Any]):
        super().__init__(message)
        self.node = node
        self.error = error
        tool = _tool_details(error)
        self.error_type: Optional[str] = tool.get("type") or error.get("code")
        self.filename: Optional[str] = tool.get("filename")
        self.line: Optional[int] = tool.get("lineno")
        self.traceback: Optional[str] = tool.get("traceback")


class RunError(SluiceError, RuntimeError):
    """A batch run that could not start (bad data, mapping or name) or could not be recorded."""


def _tool_details(error: Dict[str, Any]) -> Dict[str, Any]:
    for info in error.get("additionalInfo") or []:
        if isinstance(info, dict) and isinstance(info.get("info"), dict):
            return info["info"]
    return {}


def _load_error(e: Exception) -> FlowLoadError:
    message, problems = e.args
    return FlowLoadError(message, [Problem(**p) for p in json.loads(problems)])


def _is_connection(value: Any) -> bool:
    """A promptflow connection object (the stand-in's or promptflow's own)."""
    return not isinstance(value, (str, bytes, Mapping)) and all(
        hasattr(value, a) for a in ("type", "configs", "secrets")
    )


# The names given to connection objects, by their spec (secrets included; this process only).
_kept_connections: Dict[str, str] = {}


def _keep_connection(connection: Any) -> str:
    """Hands a connection object to the engine, in this process only (never the connection store, and
    its secrets masked in what runs write), and returns the name flows refer to it by."""
    key = json.dumps(_connection_spec(connection, ""), sort_keys=True, default=str)
    name = _kept_connections.get(key)
    if name is None:
        base = "".join(c if c.isalnum() or c in "_-" else "_" for c in str(getattr(connection, "name", None) or ""))
        name = "%s.in-memory-%d" % (base or "connection", len(_kept_connections) + 1)
        _native.keep_connection(json.dumps(_connection_spec(connection, name), default=str))
        _kept_connections[key] = name
    return name


def _setting(node: str, key: str, value: Any) -> str:
    """One node setting as text: a connection object by the name the engine keeps it under."""
    if _is_connection(value):
        return _keep_connection(value)
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise TypeError(
        "node %r, %s: a connection name, a connection object or text is needed, not %s"
        % (node, key, type(value).__name__)
    )


def _connection_settings(connections: Optional[Mapping[str, Mapping[str, Any]]]) -> List[str]:
    """promptflow's ``{"node": {"connection": "name" or a connection object, "deployment_name":
    "..."}}`` as ``NODE.KEY=VALUE`` settings."""
    settings = []
    for node, values in (connections or {}).items():
        for key, value in values.items():
            settings.append("%s.%s=%s" % (node, key, _setting(node, key, value)))
    return settings


def _init_json(init: Mapping[str, Any]) -> str:
    """A flex flow's ``init`` as JSON: a model configuration (or other dataclass) as its set fields."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                    if getattr(value, f.name) is not None}
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    try:
        return json.dumps(plain(dict(init)))
    except TypeError as e:
        raise TypeError("init= must be JSON values, model configurations or dicts: %s" % e) from None


class Flow:
    """A loaded and checked flow; call it with the flow's inputs as keyword arguments.

    >>> flow = load_flow("flows/hello")
    >>> flow(name="Ada")["greeting"]
    """

    def __init__(
        self,
        source: PathLike,
        *,
        variant: Optional[str] = None,
        connections: Optional[Mapping[str, Mapping[str, Any]]] = None,
    ):
        self.source = os.path.abspath(os.fspath(source))
        self.variant = variant
        self.connections = dict(connections or {})
        try:
            self._native = _native.NativeFlow(self.source, variant, _connection_settings(connections))
        except _native.LoadError as e:
            raise _load_error(e) from None
        info = json.loads(self._native.describe())
        self.name: str = info["name"]
        self.path: str = info["dir"]
        self.inputs: Dict[str, Dict[str, Any]] = info["inputs"]
        self.outputs: List[str] = info["outputs"]
        self._sample: Optional[Dict[str, Any]] = json.loads(info["sample"]) if info["sample"] else None
        # As in promptflow, the flow's environment variables are set when it loads.
        for key, value in info["environment_variables"].items():
            os.environ[key] = value
        self.timeout: Optional[float] = None

    def __repr__(self) -> str:
        return "Flow(%r, inputs=%s, outputs=%s)" % (self.source, list(self.inputs), self.outputs)

    def __call__(self, **inputs: Any) -> Dict[str, Any]:
        """Runs one line and returns the flow's outputs. A failed node raises ``FlowRunError``."""
        return self._call(inputs, False)

    def stream(self, **inputs: Any) -> Dict[str, Any]:
        """Runs one line and returns its outputs at once, with each streamed output (an ``llm``
        node's answer, a generator tool's output) as an iterator of text chunks as they are made."""
        return self._call(inputs, True)

    def _call(self, inputs: Dict[str, Any], stream: bool) -> Dict[str, Any]:
        if not inputs and self._sample:
            inputs = dict(self._sample)
        ok, result = self._native.call(inputs, self.timeout, stream)
        if ok:
            return result
        result = json.loads(result)
        error = result.get("error") or {}
        node = result.get("node")
        message = error.get("message") or "the line failed"
        if node and node not in message:
            message = "node `%s` failed: %s" % (node, message)
        raise FlowRunError(message, node, error)

    async def acall(self, **inputs: Any) -> Dict[str, Any]:
        """Runs one line without blocking the event loop (the engine runs on a worker thread and
        releases the GIL), so lines called with ``asyncio.gather`` overlap."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(self.__call__, **inputs))


def load_flow(
    source: PathLike,
    *,
    variant: Optional[str] = None,
    connections: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> Flow:
    """Loads a flow: a folder with ``flow.dag.yaml`` or ``flow.flex.yaml`` (or one ``.prompty``), or
    the file itself. Every problem is found now (templates, tool imports, references, cycles, types)
    and raised together as ``FlowLoadError``.

    ``variant`` selects node variants (``"${node.variant_1}"``); ``connections`` overrides nodes'
    connections as promptflow's ``{"node": {"connection": "name", "deployment_name": "..."}}``, a
    connection given by name (stored) or as an object (``AzureOpenAIConnection(...)``; kept in this
    process only, its secrets masked in what runs record).
    """
    return Flow(source, variant=variant, connections=connections)


_python_started = False


def _start_python() -> None:
    """Starts the engine's Python side (it adds ``Prompty`` to ``sluice`` and to the ``promptflow``
    stand-in) by loading a one-function flex flow; loading any flow with Python in it does the same."""
    global _python_started
    if _python_started:
        return
    with tempfile.TemporaryDirectory(prefix="sluice-start-") as d:
        name = "_sluice_start_%d" % os.getpid()
        Path(d, name + ".py").write_text("def start():\n    return None\n", encoding="utf-8")
        Path(d, "flow.flex.yaml").write_text("entry: %s:start\n" % name, encoding="utf-8")
        try:
            _native.NativeFlow(d, None, [])
        except _native.LoadError as e:
            raise _load_error(e) from None
        finally:
            # Loading put the folder on sys.path; it is about to go.
            sys.path[:] = [p for p in sys.path if p != d]
    _python_started = True


def home() -> Path:
    """Where Sluice keeps runs, models and connections: ``$SLUICE_HOME``, default ``~/.sluice``."""
    return Path(_native.home())


def _read_jsonl(path: Path) -> Iterator[Dict[str, Any]]:
    try:
        f = path.open(encoding="utf-8")
    except FileNotFoundError:
        return
    with f:
        for text in f:
            text = text.strip()
            if not text:
                continue
            try:
                yield json.loads(text)
            except json.JSONDecodeError:  # a torn last record of a killed writer
                continue


class Run:
    """A batch or evaluation run in the run store (the same one ``sluice run list`` shows)."""

    def __init__(self, record: Dict[str, Any]):
        self._record = record

    @property
    def name(self) -> str:
        return self._record["name"]

    @property
    def status(self) -> str:
        """``Completed``, ``Failed``, ``Canceled`` or ``Running``."""
        return self._record.get("status", "")

    @property
    def record(self) -> Dict[str, Any]:
        """The run's ``run.json``, in promptflow's run record shape."""
        return self._record

    @property
    def dir(self) -> Path:
        """The run's folder."""
        return home() / "runs" / self.name

    @property
    def display_name(self) -> Optional[str]:
        return self._record.get("display_name")

    @property
    def properties(self) -> Dict[str, Any]:
        return self._record.get("properties") or {}

    @property
    def metrics(self) -> Dict[str, Any]:
        """The metrics logged by the flow's aggregation nodes (``metrics.json``)."""
        try:
            with (self.dir / "metrics.json").open(encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def __repr__(self) -> str:
        return "Run(name=%r, status=%r)" % (self.name, self.status)

    def refresh(self) -> "Run":
        """Reads the record again (a run still going in another process)."""
        self._record = get_run(self.name)._record
        return self

    def inputs(self) -> List[Dict[str, Any]]:
        """Each line's inputs, in line order (``line_number`` included)."""
        return list(_read_jsonl(self.dir / "inputs.jsonl"))

    def outputs(self) -> List[Dict[str, Any]]:
        """Each completed line's outputs, in line order (``line_number`` included)."""
        return list(_read_jsonl(self.dir / "outputs.jsonl"))

    def details(self) -> List[Dict[str, Any]]:
        """Each line's full record: status, inputs, outputs, error and node runs."""
        return sorted(
            _read_jsonl(self.dir / "details.jsonl"),
            key=lambda r: r.get("line_number") or 0,
        )

    def _rows(self) -> List[Dict[str, Any]]:
        """A row per line: ``inputs.x`` and ``outputs.y`` columns, as promptflow's details table."""
        outputs = {o.get("line_number"): o for o in self.outputs()}
        rows = []
        for line in self.inputs():
            number = line.get("line_number")
            row = {"inputs.%s" % k: v for k, v in line.items() if k != "line_number"}
            row["inputs.line_number"] = number
            out = outputs.get(number, {})
            row.update({"outputs.%s" % k: v for k, v in out.items() if k != "line_number"})
            rows.append(row)
        return rows

    def to_pandas(self) -> "Any":
        """The lines as a pandas DataFrame with promptflow's ``inputs.x`` / ``outputs.y`` columns.
        Needs pandas."""
        import pandas as pd

        return pd.DataFrame(self._rows())

    def to_arrow(self) -> "Any":
        """The lines as a ``pyarrow.Table`` with the columns of :meth:`to_pandas`. Needs pyarrow."""
        try:
            import pyarrow
        except ImportError as e:
            raise ImportError("Run.to_arrow needs pyarrow: pip install pyarrow") from e
        return pyarrow.Table.from_pylist(self._rows())

    def visualize(self, html_path: Optional[PathLike] = None, *, open_browser: bool = False) -> Path:
        """Writes the HTML report ``sluice run visualize`` makes and returns its path (default
        ``$SLUICE_HOME/reports/<name>.html``); ``open_browser=True`` also opens it."""
        return visualize([self], html_path, open_browser=open_browser)


def _captured_stdout(argv: List[str]) -> Tuple[int, str]:
    """Runs a ``sluice`` command line in this process with what the engine prints on standard output
    (file descriptor 1) captured. Python's own ``print`` (the flow's tools) still reaches the
    program's stdout, and the working directory is the caller's again afterwards."""
    sys.stdout.flush()
    cwd = os.getcwd()
    try:
        on_fd1 = sys.stdout.fileno() == 1
    except (AttributeError, OSError, ValueError):  # a notebook's or a test's stream
        on_fd1 = False
    original = sys.stdout
    with tempfile.TemporaryFile(mode="w+b") as out:
        saved = os.dup(1)
        try:
            if on_fd1:
                encoding = getattr(original, "encoding", None) or "utf-8"
                sys.stdout = open(os.dup(saved), "w", encoding=encoding, buffering=1)
            os.dup2(out.fileno(), 1)
            code = _native.cli_main(argv)
        finally:
            if on_fd1:
                sys.stdout.close()
                sys.stdout = original
            os.dup2(saved, 1)
            os.close(saved)
            try:
                os.chdir(cwd)
            except OSError:
                pass
        out.seek(0)
        return code, out.read().decode("utf-8", "replace")


def visualize(
    runs: Sequence[Union[Run, str]],
    html_path: Optional[PathLike] = None,
    *,
    open_browser: bool = False,
) -> Path:
    """One HTML report of several runs (metrics side by side, a chart per metric, the lines)."""
    names = [r.name if isinstance(r, Run) else str(r) for r in runs]
    path = Path(html_path) if html_path else home() / "reports" / ("%s.html" % "_".join(names))
    argv = ["sluice", "-q", "run", "visualize", *names, "--html-path", os.fspath(path)]
    # The command prints the path; the caller says where the report is in its own way.
    code, _ = _captured_stdout(argv)
    if code != 0:
        raise RunError("cannot write the report of %s" % ", ".join(names))
    if open_browser:
        webbrowser.open(path.resolve().as_uri())
    return path


def run(
    flow: Optional[Union[Flow, PathLike]] = None,
    data: Optional[PathLike] = None,
    *,
    column_mapping: Optional[Mapping[str, str]] = None,
    run: Optional[Union[Run, str]] = None,
    variant: Optional[str] = None,
    name: Optional[str] = None,
    display_name: Optional[str] = None,
    tags: Optional[Mapping[str, str]] = None,
    max_concurrency: int = 16,
    line_timeout: Optional[float] = None,
    shard: Optional[str] = None,
    resume_from: Optional[Union[Run, str]] = None,
    connections: Optional[Mapping[str, Mapping[str, Any]]] = None,
    init: Optional[Mapping[str, Any]] = None,
) -> Run:
    """Runs every line of ``data`` (jsonl, csv, tsv, json, parquet, or a folder of them) through
    ``flow`` and records the run in the run store; returns it when it has finished.

    ``column_mapping`` maps flow inputs to ``${data.col}`` or, for an evaluation run, to
    ``${run.outputs.x}`` / ``${run.inputs.y}`` of the earlier ``run``. A run that cannot start raises
    ``RunError``; failed lines do not raise (see ``Run.status`` and ``Run.details()``). ``shard``
    (``"I/N"``) runs only the lines whose number leaves I when divided by N; ``merge_runs`` joins the
    shards into one run (``sluice.ray.run`` does both on a Ray cluster).

    ``resume_from`` continues an earlier run that stopped (its process killed, a timeout) as a new run
    ``name``, as ``sluice run create --resume-from`` does: its completed lines are carried over, the
    lines that were running when it stopped run again, one at a time, and only missing and failed lines
    run; ``flow``, ``data``, ``run``, ``column_mapping``, ``variant`` and ``shard`` default to its own.

    ``connections`` sets nodes' connections as ``load_flow`` takes them (names or connection objects;
    a loaded ``Flow``'s own come first); ``init`` gives a flex flow's class entry its ``__init__``
    arguments (model configurations as objects or dicts; secret-named values are masked in the run's
    record). Ctrl-C (``KeyboardInterrupt``) stops the run: it is recorded as ``Canceled`` and can be
    continued with ``resume_from``.
    """
    settings: Dict[str, Dict[str, Any]] = {}
    if flow is None:
        if resume_from is None:
            raise RunError("which flow? give `flow` (or `resume_from` to continue an earlier run)")
        source: Optional[str] = None
    elif isinstance(flow, Flow):
        source, variant = flow.source, variant or flow.variant
        for node, values in flow.connections.items():
            settings.setdefault(node, {}).update(values)
    else:
        source = os.path.abspath(os.fspath(flow))
    for node, values in (connections or {}).items():
        settings.setdefault(node, {}).update(values)
    base = run.name if isinstance(run, Run) else run
    mapping = [(k, str(v)) for k, v in (column_mapping or {}).items()]
    init_json = _init_json(init) if init is not None else None
    node_settings = _connection_settings(settings)
    try:
        record = _native.create_run(
            source,
            os.fspath(data) if data is not None else None,
            base,
            mapping,
            variant,
            name,
            display_name,
            [(k, str(v)) for k, v in (tags or {}).items()],
            max_concurrency,
            line_timeout,
            shard,
            resume_from.name if isinstance(resume_from, Run) else resume_from,
            init_json,
            node_settings,
        )
    except _native.LoadError as e:
        raise _load_error(e) from None
    except _native.RunError as e:
        raise RunError(e.args[0]) from None
    return Run(json.loads(record))


def merge_runs(name: str, shards: Sequence[Union[Run, str]], *, max_concurrency: int = 16) -> Run:
    """One run ``name`` of the shard runs of one run: their completed lines are carried over, lines no
    shard completed run now, and aggregation nodes and metrics are computed once over all the lines
    (``sluice run merge``)."""
    try:
        record = _native.merge_runs(name, [r.name if isinstance(r, Run) else r for r in shards], max_concurrency)
    except _native.LoadError as e:
        raise _load_error(e) from None
    except _native.RunError as e:
        raise RunError(e.args[0]) from None
    return Run(json.loads(record))


def get_run(name: str) -> Run:
    """The run called ``name``; ``RunError`` when there is none."""
    try:
        with (home() / "runs" / name / "run.json").open(encoding="utf-8") as f:
            return Run(json.load(f))
    except FileNotFoundError:
        raise RunError("no run named %r in %s" % (name, home() / "runs")) from None


def list_runs(max_results: Optional[int] = 50) -> List[Run]:
    """Runs in the store, newest first."""
    runs = []
    root = home() / "runs"
    for entry in root.iterdir() if root.is_dir() else []:
        try:
            with (entry / "run.json").open(encoding="utf-8") as f:
                runs.append(Run(json.load(f)))
        except (OSError, ValueError):
            continue
    runs.sort(key=lambda r: str(r.record.get("created_on", "")), reverse=True)
    return runs[:max_results] if max_results else runs
