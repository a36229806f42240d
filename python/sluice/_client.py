"""promptflow's notebook client (``promptflow.client``) on Sluice's engine.

When promptflow is not installed, ``from promptflow.client import PFClient, load_flow`` resolves here
(see ``_sluice_shim``), so notebooks written for promptflow run unchanged: the methods take
promptflow's argument names and return promptflow's shapes (a dict of outputs from ``test``, a run
entity from ``run``, a DataFrame with ``inputs.x`` / ``outputs.y`` columns from ``get_details``).
Runs go to Sluice's run store, which ``sluice run list`` reads.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from sluice import _api

__all__ = ["PFClient", "load_flow", "Run"]


def load_flow(source: Union[str, "os.PathLike[str]"], **kwargs: Any) -> _api.Flow:
    """promptflow's ``load_flow``: a callable flow, ``flow(**inputs)`` returns its outputs."""
    return _api.load_flow(source, variant=kwargs.get("variant"), connections=kwargs.get("connections"))


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


class PFClient:
    """promptflow's local client: test a flow, run it over a dataset, read runs back."""

    def __init__(self, **_kwargs: Any) -> None:
        self.runs = RunOperations()

    def test(
        self,
        flow: Union[str, "os.PathLike[str]"],
        inputs: Optional[Mapping[str, Any]] = None,
        variant: Optional[str] = None,
        node: Optional[str] = None,
        environment_variables: Optional[Mapping[str, str]] = None,
        **_kwargs: Any,
    ) -> Dict[str, Any]:
        """Runs one line and returns the flow's outputs (``pf.test(flow=..., inputs=...)``)."""
        if node is not None:
            raise NotImplementedError("testing one node is `sluice flow test --node` for now")
        for key, value in (environment_variables or {}).items():
            os.environ[key] = value
        return _api.load_flow(flow, variant=variant)(**dict(inputs or {}))

    def run(
        self,
        flow: Optional[Union[str, "os.PathLike[str]"]] = None,
        data: Optional[Union[str, "os.PathLike[str]"]] = None,
        run: Optional[Union[_api.Run, str]] = None,
        column_mapping: Optional[Mapping[str, str]] = None,
        variant: Optional[str] = None,
        connections: Optional[Mapping[str, Mapping[str, str]]] = None,
        environment_variables: Optional[Mapping[str, str]] = None,
        name: Optional[str] = None,
        display_name: Optional[str] = None,
        tags: Optional[Mapping[str, str]] = None,
        **kwargs: Any,
    ) -> Run:
        """A batch run (or, with ``run=``, an evaluation run), as ``pf.run``; it has finished when
        this returns."""
        if flow is None:
            raise ValueError("pf.run needs flow=")
        if connections:
            raise NotImplementedError("per-run connections: set them in the flow, or use sluice.load_flow")
        for key, value in (environment_variables or {}).items():
            os.environ[key] = value
        return _pf_run(
            _api.run(
                flow,
                data,
                column_mapping=column_mapping,
                run=run,
                variant=variant,
                name=name,
                display_name=display_name,
                tags=tags,
                max_concurrency=int(kwargs.get("max_concurrency", 16)),
            )
        )

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
