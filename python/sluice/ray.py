"""Batch runs spread over a Ray cluster: ``sluice.ray.run(flow, data, num_workers=N)``.

Each of N Ray tasks runs one shard of the data (line numbers ``i, i+N, ...``) as a run of its own
(``<name>_shard<i>``) on a Ray worker process; then the shards are merged into one run, as ``sluice run
merge`` does: their completed lines carried over, aggregation nodes and metrics computed once over all
lines. The result is an ordinary run in the run store (``sluice run list``, ``sluice.get_run``). Ray
keeps its worker processes between tasks, so a second call starts its shards at once.

``data`` is a file or folder path, or a ``ray.data.Dataset``, which is first written, in the dataset's
order, to ``$SLUICE_HOME/ray/<name>/data.jsonl`` (one JSON object per row).

A worker process that dies (killed, out of memory, a tool that crashes the interpreter) makes Ray run
its task again, up to ``max_retries`` times, and the shard continues from the partial shard run as a
run of its own (``<name>_shard<i>_r1``, ``_r2``, ...): the lines it completed are carried over, the
lines that were running when it died run again one at a time, and the merge takes each shard's last
run, so every line is in the merged run exactly once. A call that stopped as a whole (the driver
killed, retries spent) continues with ``sluice.ray.run(flow, data, resume=NAME, num_workers=N)``:
shards that completed are kept, the others continue where they stopped, and the merge runs again.

The workers write their shard runs to the same ``$SLUICE_HOME`` as the caller, so on a cluster of
several machines that folder (and the flow and data paths) must be shared storage, and a dead worker's
shard run is recognized as dead only on the machine that ran it; it is tested on one machine (one or
two Ray nodes). Needs ``pip install ray`` (``ray[data]`` for Datasets).
"""

from __future__ import annotations

import datetime
import decimal
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from sluice import _api, _native

__all__ = ["run"]


def _attempts(shard_name: str) -> List[str]:
    """The runs of one shard that exist, oldest first: ``NAME``, then its continuations ``NAME_r1``,
    ``NAME_r2``, ..."""
    runs = _api.home() / "runs"
    found: List[str] = []
    while True:
        candidate = shard_name if not found else "%s_r%d" % (shard_name, len(found))
        if not (runs / candidate / "run.json").is_file():
            return found
        found.append(candidate)


def _run_shard(env: Dict[str, str], shard_name: str, shard: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """One Ray task: runs one shard in the caller's run store, with the caller's models, or continues
    its last run when one exists (a retry after the worker running it died, a resumed call); a
    completed one is taken as it is."""
    import ray
    import sluice

    os.environ.update(env)
    attempts = _attempts(shard_name)
    if not attempts:
        node = ray.get_runtime_context().get_node_id()
        done = sluice.run(name=shard_name, shard=shard, tags={"ray_node": node}, **kwargs)
    else:
        last = sluice.get_run(attempts[-1])
        if last.status == "Completed":
            done = last
        else:
            done = sluice.run(
                resume_from=last.name,
                name="%s_r%d" % (shard_name, len(attempts)),
                max_concurrency=kwargs["max_concurrency"],
                line_timeout=kwargs["line_timeout"],
            )
    return {"name": done.name, "status": done.status}


def _json_value(value: Any) -> Any:
    """A value of a Dataset row that ``json`` does not write itself (numpy and Arrow scalars and
    arrays, dates, decimals, bytes)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "as_py"):
        return value.as_py()
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError("a Dataset value of type %s cannot be written as JSON" % type(value).__name__)


def _write_dataset(dataset: Any, path: Path) -> None:
    """Writes the dataset's rows in order as JSON lines (atomically: a temporary file renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.tmp")
    # The dataset runs with the context it was made with, not the current one.
    options = dataset.context.execution_options
    keep = options.preserve_order
    options.preserve_order = True
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for row in dataset.iter_rows():
                f.write(json.dumps(dict(row), default=_json_value, ensure_ascii=False))
                f.write("\n")
    finally:
        options.preserve_order = keep
    os.replace(tmp, path)


def _owner_alive(record: Dict[str, Any]) -> bool:
    pid = (record.get("owner") or {}).get("pid")
    return bool(pid) and os.path.exists("/proc/%d" % pid)


def run(
    flow: Union[_api.Flow, str, "os.PathLike[str]"],
    data: Any,
    *,
    column_mapping: Optional[Mapping[str, str]] = None,
    run: Optional[Union[_api.Run, str]] = None,
    variant: Optional[str] = None,
    name: Optional[str] = None,
    num_workers: int = 2,
    max_concurrency: int = 16,
    line_timeout: Optional[float] = None,
    max_retries: int = 3,
    resume: Optional[str] = None,
    address: Optional[str] = None,
    task_options: Optional[Mapping[str, Any]] = None,
    num_actors: Optional[int] = None,
) -> _api.Run:
    """Runs ``data`` (a path, or a ``ray.data.Dataset``) through ``flow`` as ``num_workers`` shards,
    one Ray task each (each with ``max_concurrency`` lines at once), and returns the merged run. Starts
    a local Ray cluster when none is connected (``address`` names one to join). Other arguments are
    those of ``sluice.run``.

    A shard whose worker process dies runs again, up to ``max_retries`` times, continuing where it
    stopped. ``resume=NAME`` continues an earlier call that stopped (give the same flow, data and
    ``num_workers``); without it, a ``name`` already in the run store is refused.

    The tasks are spread over the cluster's nodes (a ``SPREAD`` placement group of one bundle per
    shard), each asking for 0.01 CPU so that they reserve no core; ``task_options`` are passed to the
    task's ``.options()`` over these (``{"num_cpus": 4}``, ``{"runtime_env": {...}}``); with a
    ``scheduling_strategy``, ``num_gpus``, ``resources`` or ``memory`` among them, Ray places the
    tasks as those say instead.
    """
    try:
        import ray
    except ImportError as e:
        raise ImportError("sluice.ray needs Ray: pip install ray") from e
    if num_actors is not None:
        num_workers = num_actors
    if num_workers < 1:
        raise ValueError("num_workers must be at least 1")
    if max_retries < 0:
        raise ValueError("max_retries must be 0 or more")
    if resume is not None:
        if name is not None and name != resume:
            raise ValueError("resume=%r continues the run %r; leave out name=%r" % (resume, resume, name))
        name = resume
    if isinstance(flow, _api.Flow):
        variant = variant or flow.variant
        source = flow.source
    else:
        source = os.path.abspath(os.fspath(flow))
    if name is None:
        stem = os.path.splitext(os.path.basename(source.rstrip("/")))[0] or "flow"
        name = "%s_ray_%s" % (stem, time.strftime("%Y%m%d_%H%M%S"))
    runs = _api.home() / "runs"
    shard_names = ["%s_shard%d" % (name, i) for i in range(num_workers)]
    merged: Optional[_api.Run] = None
    if resume is None:
        taken = [n for n in [name, *shard_names] if (runs / n).exists()]
        if taken:
            raise _api.RunError(
                "a run named %r is in the run store; sluice.ray.run(..., resume=%r) continues it"
                % (taken[0], name)
            )
    else:
        if (runs / name / "run.json").is_file():
            merged = _api.get_run(name)
            if merged.status == "Completed":
                return merged
            if merged.status == "Running" and _owner_alive(merged.record):
                raise _api.RunError("run %r is still being merged (pid %s)" % (name, merged.record["owner"]["pid"]))
        # Each shard's first run says how many shards there were.
        prefix = name + "_shard"
        for entry in runs.iterdir() if runs.is_dir() else []:
            index = entry.name[len(prefix) :]
            if not (entry.name.startswith(prefix) and index.isdigit() and (entry / "run.json").is_file()):
                continue
            started = str(_api.get_run(entry.name).properties.get("shard"))
            if started != "%s/%d" % (index, num_workers):
                count = started.split("/")[-1]
                raise _api.RunError(
                    "run %r was started with %s workers; resume it with num_workers=%s" % (name, count, count)
                )
    if isinstance(data, (str, os.PathLike)):
        data_path = os.path.abspath(os.fspath(data))
    elif hasattr(data, "iter_rows"):
        target = _api.home() / "ray" / name / "data.jsonl"
        # A resumed call keeps the rows its first call wrote: the shards' lines are numbered by them.
        if resume is None or not target.is_file():
            _write_dataset(data, target)
        data_path = str(target)
    else:
        raise TypeError("data must be a path or a ray.data.Dataset, not %s" % type(data).__name__)
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    env = {"SLUICE_HOME": str(_api.home())}
    for key in ("SLUICE_MODELS_DIR",):
        if key in os.environ:
            env[key] = os.environ[key]
    options: Dict[str, Any] = {
        # A token share of a CPU, so that no core is reserved (the engine mostly waits on models and
        # services) and the tasks can be spread.
        "num_cpus": 0.01,
        **dict(task_options or {}),
        # Run again when the worker running it dies, not when the shard raises.
        "max_retries": max_retries,
        "retry_exceptions": False,
    }
    group = None
    if (options.get("num_cpus") or 0) > 0 and not any(
        k in options for k in ("scheduling_strategy", "num_gpus", "resources", "memory")
    ):
        # One bundle per shard in a SPREAD placement group puts the shards on different nodes where
        # there are several (a task's own SPREAD strategy leaves them where workers are idle).
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        group = placement_group([{"CPU": options["num_cpus"]}] * num_workers, strategy="SPREAD")
        ray.get(group.ready())
    task = ray.remote(_run_shard)
    common = dict(
        flow=source,
        data=data_path,
        column_mapping=dict(column_mapping or {}),
        run=run.name if isinstance(run, _api.Run) else run,
        variant=variant,
        max_concurrency=max_concurrency,
        line_timeout=line_timeout,
    )

    def place(i: int) -> Dict[str, Any]:
        if group is None:
            return options
        return dict(options, scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i))

    refs = [
        task.options(**place(i)).remote(env, shard_names[i], "%d/%d" % (i, num_workers), common)
        for i in range(num_workers)
    ]
    try:
        shards: List[Dict[str, Any]] = ray.get(refs)
    except BaseException as e:
        # The other shards stop too (their finished lines are kept), and only once their processes
        # are gone does this return, so that a resume finds no shard still running.
        for ref in refs:
            ray.cancel(ref, force=True)
        ray.wait(refs, num_returns=len(refs), timeout=60)
        if isinstance(e, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError)):
            raise _api.RunError(
                "a shard's worker died %d times (%s); the shards' finished lines are kept, and "
                "sluice.ray.run(..., resume=%r) continues the run" % (max_retries + 1, e, name)
            ) from None
        raise
    finally:
        if group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(group)
    if merged is not None:
        # An earlier merge that stopped: it is made again from the shards.
        if _native.cli_main(["sluice", "-q", "run", "delete", "-n", name, "-y"]) != 0:
            raise _api.RunError("cannot delete the unfinished merged run %r" % name)
    return _api.merge_runs(name, [s["name"] for s in shards], max_concurrency=max_concurrency)
