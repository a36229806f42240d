"""promptflow's notebook client (``promptflow.client``) on Sluice's engine.

When promptflow is not installed, ``from promptflow.client import PFClient, load_flow`` resolves here
(see ``_sluice_shim``), so notebooks written for promptflow run unchanged: the methods take
promptflow's argument names and return promptflow's shapes (a dict of outputs from ``test``, a run
entity from ``run``, a DataFrame with ``inputs.x`` / ``outputs.y`` columns from ``get_details``).
Runs go to Sluice's run store, which ``sluice run list`` reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Union

from sluice import _api
from sluice._promptflow import FlowContext

__all__ = ["PFClient", "load_flow", "Run"]


def load_flow(source: Union[str, "os.PathLike[str]"], **kwargs: Any) -> "ContextFlow":
    """promptflow's ``load_flow``: a callable flow, ``flow(**inputs)`` returns its outputs; set
    ``flow.context`` (a ``FlowContext``) to change its connections, variant, node inputs or
    streaming."""
    return ContextFlow(source, variant=kwargs.get("variant"), connections=kwargs.get("connections"))


class ContextFlow(_api.Flow):
    """A flow called as its ``context`` (promptflow's ``FlowContext``) says."""

    def __init__(
        self,
        source: Union[str, "os.PathLike[str]"],
        *,
        variant: Optional[str] = None,
        connections: Optional[Mapping[str, Mapping[str, Any]]] = None,
    ):
        super().__init__(source, variant=variant, connections=connections)
        self.context = FlowContext()
        self._flows: Dict[Any, _api.Flow] = {}

    def __call__(self, **inputs: Any) -> Dict[str, Any]:
        return self._in_context()._call(inputs, bool(self.context.streaming))

    def stream(self, **inputs: Any) -> Dict[str, Any]:
        return self._in_context()._call(inputs, True)

    def _in_context(self) -> _api.Flow:
        context = self.context
        variant = context.variant or self.variant
        # Connection objects are handed to the engine and named; the settings are all text then.
        own: Dict[str, Dict[str, str]] = {
            node: {key: _api._setting(node, key, value) for key, value in values.items()}
            for node, values in self.connections.items()
        }
        settings = {node: dict(values) for node, values in own.items()}
        for node, values in (context.connections or {}).items():
            for key, value in values.items():
                settings.setdefault(node, {})[key] = _api._setting(node, key, value)
        for path, value in (context.overrides or {}).items():
            parts = str(path).split(".")
            if len(parts) == 4 and parts[0] == "nodes" and parts[2] == "inputs":
                node, key = parts[1], parts[3]
            elif len(parts) == 3 and parts[0] == "nodes":
                node, key = parts[1], parts[2]
            else:
                raise ValueError("override %r is not `nodes.<node>.inputs.<input>`" % path)
            settings.setdefault(node, {})[key] = value if isinstance(value, str) else json.dumps(value)
        if variant == self.variant and settings == own:
            return self
        key = (variant, json.dumps(settings, sort_keys=True))
        if key not in self._flows:
            self._flows[key] = _api.Flow(self.source, variant=variant, connections=settings)
            self._flows[key].timeout = self.timeout
        return self._flows[key]


class Run(_api.Run):
    """A run, with the attributes of promptflow's ``Run`` entity."""

    @property
    def flow(self) -> Optional[str]:
        return self.properties.get("flow_path")

    @property
    def data(self) -> Optional[str]:
        return self.record.get("data")

    @property
    def column_mapping(self) -> Dict[str, Any]:
        return self.properties.get("column_mapping") or {}

    @property
    def run(self) -> Optional[str]:
        return self.properties.get("run")

    @property
    def variant(self) -> Optional[str]:
        variants = self.properties.get("node_variant") or {}
        return next(("${%s.%s}" % kv for kv in variants.items()), None)

    @property
    def tags(self) -> Dict[str, str]:
        return self.record.get("tags") or {}

    @property
    def description(self) -> Optional[str]:
        return self.record.get("description")

    @property
    def created_on(self) -> Optional[str]:
        return self.record.get("created_on")

    @property
    def _output_path(self) -> str:
        return str(self.dir)

    def _to_dict(self) -> Dict[str, Any]:
        return dict(self.record)


def _name(run: Union[_api.Run, str]) -> str:
    return run.name if isinstance(run, _api.Run) else str(run)


def _pf_run(run: _api.Run) -> Run:
    return Run(run.record)


def _details(run: Union[_api.Run, str], max_results: int = 100, all_results: bool = False) -> Any:
    frame = _api.get_run(_name(run)).to_pandas()
    return frame if all_results or max_results is None else frame.head(max_results)


@contextlib.contextmanager
def _flow_source(flow: Any) -> Iterator[Any]:
    """The flow to run: a path or a loaded flow as they are; a function (promptflow's ``pf.run(flow=
    my_function)``) as a flex flow file naming it as the entry, for the run's length.

    As promptflow does, the file sits in the current folder (the flow's folder: its snapshot, and
    where relative paths open) when the function's module is a file there, else in a new temporary
    folder. Its name is Sluice's own, so a ``flow.flex.yaml`` already there is left alone."""
    if isinstance(flow, (str, os.PathLike, _api.Flow)) or not callable(flow):
        yield flow
        return
    module = getattr(flow, "__module__", None)
    qualname = getattr(flow, "__qualname__", None) or getattr(flow, "__name__", None)
    if not module or not qualname or "<" in qualname or "." in qualname:
        raise ValueError(
            "pf.run(flow=...) takes a module-level function or class; %r is not one" % (flow,)
        )
    if module == "__main__" and not hasattr(sys.modules.get("__main__"), qualname):
        raise ValueError("function %s is not reachable from the __main__ module" % qualname)
    entry = "%s:%s" % (module, qualname)
    code = os.getcwd()
    file = getattr(sys.modules.get(module), "__file__", None)
    local = bool(file) and os.path.abspath(file).startswith(os.path.join(os.path.abspath(code), ""))
    temp = None if local else tempfile.mkdtemp(prefix="%s_" % qualname)
    folder = code if local else temp
    fd, path = tempfile.mkstemp(prefix=".sluice-%s-" % qualname, suffix=".flex.yaml", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("name: %s\nentry: %s\n" % (json.dumps(qualname), json.dumps(entry)))
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        if temp:
            with contextlib.suppress(OSError):
                os.rmdir(temp)
            # The run put the folder on sys.path; it is gone now.
            sys.path[:] = [p for p in sys.path if p != temp]


def _print_summary(run: Run) -> None:
    """What promptflow prints for a streamed run: the run's log, then a summary."""
    try:
        print((run.dir / "logs.txt").read_text(encoding="utf-8", errors="replace").rstrip("\n"))
    except OSError:
        pass
    record = run.record
    print("======= Run Summary =======\n")
    print('Run name: "%s"' % run.name)
    print('Run status: "%s"' % run.status)
    metrics = run.properties.get("system_metrics") or {}
    if record.get("created_on"):
        print('Start time: "%s"' % record["created_on"])
    if metrics.get("duration") is not None:
        print('Duration: "%.3fs"' % metrics["duration"])
    if metrics.get("total_lines") is not None:
        print('Lines: %s completed, %s failed, of %s' % (
            metrics.get("completed_lines", 0), metrics.get("failed_lines", 0), metrics["total_lines"]))
    print('Output path: "%s"' % run._output_path)


class RunOperations:
    """``pf.runs``: the run store."""

    def get(self, name: Union[_api.Run, str]) -> Run:
        return _pf_run(_api.get_run(_name(name)))

    def list(self, max_results: Optional[int] = 50, **_kwargs: Any) -> List[Run]:
        return [_pf_run(r) for r in _api.list_runs(max_results)]

    def get_details(
        self, name: Union[_api.Run, str], max_results: int = 100, all_results: bool = False
    ) -> Any:
        return _details(name, max_results, all_results)

    def get_metrics(self, name: Union[_api.Run, str]) -> Dict[str, Any]:
        return _api.get_run(_name(name)).metrics

    def visualize(self, runs: Union[_api.Run, str, Sequence[Union[_api.Run, str]]], **kwargs: Any) -> None:
        _visualize(runs, kwargs.get("html_path"))

    def stream(self, run: Union[_api.Run, str], **_kwargs: Any) -> Run:
        return self.get(run)


def _visualize(runs: Any, html_path: Optional[str]) -> None:
    if isinstance(runs, (str, _api.Run)):
        runs = [runs]
    path = _api.visualize(list(runs), html_path, open_browser=html_path is None)
    print("The HTML file is generated at %r." % str(path))


def _test_command(
    flow: Union[str, "os.PathLike[str]"],
    inputs: Dict[str, Any],
    variant: Optional[str],
    node: Optional[str],
    init: Optional[Mapping[str, Any]],
) -> Any:
    """``sluice flow test`` in this process: one node (``--node``), or a flex flow with ``--init``."""
    with tempfile.TemporaryDirectory(prefix="sluice-test-") as d:
        inputs_file = os.path.join(d, "inputs.json")
        with open(inputs_file, "w", encoding="utf-8") as f:
            json.dump(inputs, f)
        argv = ["sluice", "-q", "flow", "test", "--flow", os.path.abspath(os.fspath(flow)), "--inputs", inputs_file]
        if node:
            argv += ["--node", node]
        if variant:
            argv += ["--variant", variant]
        if init:
            argv += ["--init", _api._init_json(init)]
        code, out = _api._captured_stdout(argv)
    if code != 0:
        what = "node `%s`" % node if node else "the flow"
        raise _api.FlowRunError("testing %s failed (exit status %d); the error is on stderr" % (what, code), node, {})
    try:
        return json.loads(out)
    except ValueError:
        # Text is printed as it is.
        return out[:-1] if out.endswith("\n") else out


class ConnectionNotFoundError(_api.SluiceError, KeyError):
    """No stored connection of that name."""


class _Kept:
    """A connection object with its secrets replaced (a masked one by the stored value)."""

    def __init__(self, connection: Any, secrets: Dict[str, Any]):
        self.type = getattr(connection, "type", "")
        self.configs = dict(connection.configs)
        self.secrets = secrets


class ConnectionOperations:
    """``pf.connections``: Sluice's connection store (``sluice connection``), with promptflow's
    connection objects. Secrets come back as ``******`` unless ``with_secrets=True``."""

    def get(self, name: str, with_secrets: bool = False, **_kwargs: Any) -> Any:
        from sluice import _promptflow

        path = _api.home() / "connections" / ("%s.json" % name)
        try:
            with path.open(encoding="utf-8") as f:
                stored = json.load(f)
        except FileNotFoundError:
            raise ConnectionNotFoundError("connection %r is not found in %s" % (name, path.parent)) from None
        kind = str(stored.get("type", "")).replace("-", "_").lower()
        by_type = {v: k for k, v in _api._CONNECTION_TYPES.items()}
        by_type.update(openai="OpenAI", azure_openai="AzureOpenAI")
        cls = getattr(_promptflow, "%sConnection" % by_type.get(kind, "Custom"))
        secrets = dict(stored.get("secrets") or {})
        if not with_secrets:
            secrets = {k: _promptflow._SCRUBBED for k in secrets}
        connection = cls.__new__(cls)
        _promptflow._Connection.__init__(
            connection, name=stored.get("name", name), configs=stored.get("configs") or {}, secrets=secrets
        )
        return connection

    def list(self, max_results: Optional[int] = None, all_results: bool = False, **_kwargs: Any) -> List[Any]:
        folder = _api.home() / "connections"
        names = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
        if max_results and not all_results:
            names = names[:max_results]
        return [self.get(n) for n in names]

    def create_or_update(self, connection: Any, **_kwargs: Any) -> Any:
        """Stores ``connection`` (``sluice connection create``) and returns it as stored, secrets
        masked. A secret given as ``******`` keeps the stored value, as in promptflow."""
        name = getattr(connection, "name", None)
        if not name:
            raise ValueError("a connection needs a name to be stored")
        secrets = {k: v for k, v in dict(connection.secrets).items() if v is not None}
        if any(v == "******" for v in secrets.values()):
            try:
                old = self.get(name, with_secrets=True).secrets
            except ConnectionNotFoundError:
                old = {}
            secrets = {k: old.get(k, v) if v == "******" else v for k, v in secrets.items()}
        spec = _api._connection_spec(_Kept(connection, secrets), name)
        with tempfile.TemporaryDirectory(prefix="sluice-connection-") as d:
            path = os.path.join(d, "connection.yaml")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(spec, f)  # JSON is YAML
            code, _ = _api._captured_stdout(["sluice", "-q", "connection", "create", "--file", path])
        if code != 0:
            raise _api.SluiceError("could not store connection %r; the error is on stderr" % name)
        return self.get(name)

    def delete(self, name: str, **_kwargs: Any) -> None:
        code, _ = _api._captured_stdout(["sluice", "-q", "connection", "delete", "--name", name])
        if code != 0:
            raise ConnectionNotFoundError("connection %r is not found" % name)


class PFClient:
    """promptflow's local client: test a flow, run it over a dataset, read runs back."""

    def __init__(self, **_kwargs: Any) -> None:
        self.runs = RunOperations()
        self.connections = ConnectionOperations()

    def test(
        self,
        flow: Union[str, "os.PathLike[str]"],
        inputs: Optional[Mapping[str, Any]] = None,
        variant: Optional[str] = None,
        node: Optional[str] = None,
        environment_variables: Optional[Mapping[str, str]] = None,
        **_kwargs: Any,
    ) -> Dict[str, Any]:
        """Runs one line and returns the flow's outputs (``pf.test(flow=..., inputs=...)``); with
        ``node=``, runs only that node (its inputs given by name in ``inputs``) and returns its output;
        ``init=`` gives a flex flow's class entry its ``__init__`` arguments."""
        for key, value in (environment_variables or {}).items():
            os.environ[key] = value
        init = _kwargs.get("init")
        if node is None and not init:
            return _api.load_flow(flow, variant=variant)(**dict(inputs or {}))
        return _test_command(flow, dict(inputs or {}), variant, node, init)

    def run(
        self,
        flow: Optional[Union[str, "os.PathLike[str]", Callable[..., Any]]] = None,
        data: Optional[Union[str, "os.PathLike[str]"]] = None,
        run: Optional[Union[_api.Run, str]] = None,
        column_mapping: Optional[Mapping[str, str]] = None,
        variant: Optional[str] = None,
        connections: Optional[Mapping[str, Mapping[str, Any]]] = None,
        environment_variables: Optional[Mapping[str, str]] = None,
        name: Optional[str] = None,
        display_name: Optional[str] = None,
        tags: Optional[Mapping[str, str]] = None,
        init: Optional[Mapping[str, Any]] = None,
        stream: bool = False,
        **kwargs: Any,
    ) -> Run:
        """A batch run (or, with ``run=``, an evaluation run), as ``pf.run``; it has finished when
        this returns.

        ``flow`` is a flow folder or file, or (as promptflow allows) a Python function, which runs as
        a flex flow with it as the entry. ``init`` gives a flex flow's class entry its ``__init__``
        arguments (model configurations as objects or dicts); ``connections`` sets nodes' connections
        (``{"node": {"connection": "name" or a connection object, "deployment_name": "..."}}``);
        ``stream=True`` prints the run's log and a summary when it has finished."""
        if flow is None:
            raise ValueError("pf.run needs flow=")
        for key, value in (environment_variables or {}).items():
            os.environ[key] = value
        max_concurrency = int(kwargs.get("max_concurrency", 16))
        with _flow_source(flow) as source:
            record = _api.run(
                source,
                data,
                column_mapping=column_mapping,
                run=run,
                variant=variant,
                name=name,
                display_name=display_name,
                tags=tags,
                max_concurrency=max_concurrency,
                connections=connections,
                init=init,
            )
        result = _pf_run(record)
        if stream:
            _print_summary(result)
        return result

    def stream(self, run: Union[_api.Run, str], **_kwargs: Any) -> Run:
        return self.runs.get(run)

    def get_details(
        self, run: Union[_api.Run, str], max_results: int = 100, all_results: bool = False
    ) -> Any:
        """The lines as a DataFrame: ``inputs.<input>``, ``inputs.line_number``, ``outputs.<output>``."""
        return _details(run, max_results, all_results)

    def get_metrics(self, run: Union[_api.Run, str]) -> Dict[str, Any]:
        return self.runs.get_metrics(run)

    def visualize(self, runs: Any, html_path: Optional[str] = None) -> None:
        _visualize(runs, html_path)
