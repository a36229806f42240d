"""Batch runs spread over a Ray cluster: ``sluice.ray.run(flow, data, num_actors=N)``.

Each of N Ray actors loads the flow once and runs one shard of the data (line numbers ``i, i+N,
...``) as a run of its own; then the shards are merged into one run, as ``sluice run merge`` does:
their completed lines carried over, aggregation nodes and metrics computed once over all lines. The
result is an ordinary run in the run store (``sluice run list``, ``sluice.get_run``).

The actors write their shard runs to the same ``$SLUICE_HOME`` as the caller, so on a cluster of
several machines that folder (and the flow and data paths) must be shared storage; on a local cluster
(``ray.init()``) it just works. Needs ``pip install ray``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Mapping, Optional, Union

from sluice import _api

__all__ = ["run"]


class _ShardWorker:
    """One Ray actor: runs shards in the caller's run store, with the caller's models."""

    def __init__(self, env: Dict[str, str]):
        os.environ.update(env)

    def run_shard(self, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        import sluice

        run = sluice.run(**kwargs)
        return {"name": run.name, "status": run.status}


def run(
    flow: Union[_api.Flow, str, "os.PathLike[str]"],
    data: Union[str, "os.PathLike[str]"],
    *,
    column_mapping: Optional[Mapping[str, str]] = None,
    run: Optional[Union[_api.Run, str]] = None,
    variant: Optional[str] = None,
    name: Optional[str] = None,
    num_actors: int = 2,
    max_concurrency: int = 16,
    line_timeout: Optional[float] = None,
    address: Optional[str] = None,
) -> _api.Run:
    """Runs ``data`` through ``flow`` on ``num_actors`` Ray actors (each with ``max_concurrency``
    lines at once) and returns the merged run. Starts a local Ray cluster when none is connected
    (``address`` names one to join). Arguments are those of ``sluice.run``."""
    try:
        import ray
    except ImportError as e:
        raise ImportError("sluice.ray needs Ray: pip install ray") from e
    if num_actors < 1:
        raise ValueError("num_actors must be at least 1")
    if isinstance(flow, _api.Flow):
        variant = variant or flow.variant
        source = flow.source
    else:
        source = os.path.abspath(os.fspath(flow))
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    if name is None:
        stem = os.path.splitext(os.path.basename(source.rstrip("/")))[0] or "flow"
        name = "%s_ray_%s" % (stem, time.strftime("%Y%m%d_%H%M%S"))
    env = {"SLUICE_HOME": str(_api.home())}
    for key in ("SLUICE_MODELS_DIR",):
        if key in os.environ:
            env[key] = os.environ[key]
    worker = ray.remote(_ShardWorker)
    actors = [worker.remote(env) for _ in range(num_actors)]
    try:
        common = dict(
            flow=source,
            data=os.path.abspath(os.fspath(data)),
            column_mapping=dict(column_mapping or {}),
            run=run.name if isinstance(run, _api.Run) else run,
            variant=variant,
            max_concurrency=max_concurrency,
            line_timeout=line_timeout,
        )
        shards: List[Dict[str, Any]] = ray.get(
            [
                actor.run_shard.remote(
                    dict(common, name="%s_shard%d" % (name, i), shard="%d/%d" % (i, num_actors))
                )
                for i, actor in enumerate(actors)
            ]
        )
    finally:
        for actor in actors:
            ray.kill(actor)
    return _api.merge_runs(name, [s["name"] for s in shards], max_concurrency=max_concurrency)
