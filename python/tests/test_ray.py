"""`sluice.ray.run`: one run's shards as Ray tasks on a local cluster, merged into one run; a shard
whose worker process was killed continued from where it stopped; a run stopped as a whole resumed; a
Ray Dataset as the data. Skipped where Ray is not installed (the package does not depend on it)."""

import json
import subprocess
import sys
import time

import pytest

import sluice
from conftest import FLOWS

ray = pytest.importorskip("ray")

LINES = 1000

# A flow of one Python tool that dies the way a killed process does (`os._exit`) on one line, once: the
# first time its marker file is absent. An aggregation node computes metrics over all lines.
FLOW = """\
inputs:
  x:
    type: int
outputs:
  y:
    type: int
    reference: ${work.output}
nodes:
- name: work
  type: python
  source:
    type: code
    path: work.py
  inputs:
    x: ${inputs.x}
- name: total
  type: python
  source:
    type: code
    path: total.py
  inputs:
    ys: ${work.output}
  aggregation: true
"""

WORK = """\
import os
import time

from sluice import tool

HERE = os.path.dirname(os.path.abspath(__file__))


@tool
def work(x: int) -> int:
    # A test names the line that kills its process (in `kill_line`); it does so once, leaving a marker.
    kill = os.path.join(HERE, "kill_line")
    marker = os.path.join(HERE, "kill_marker")
    if os.path.exists(kill) and x == int(open(kill).read()) and not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(0.05)
        os._exit(1)
    time.sleep(0.002)
    return x * x
"""

TOTAL = """\
from sluice import log_metric, tool


@tool
def total(ys: list) -> dict:
    log_metric("lines", len(ys))
    log_metric("sum", sum(ys))
    return {"lines": len(ys)}
"""


@pytest.fixture(scope="module", autouse=True)
def local_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def squares(tmp_path):
    """The test flow and LINES lines of data (x = 0 .. LINES-1)."""
    flow = tmp_path / "squares"
    flow.mkdir()
    (flow / "flow.dag.yaml").write_text(FLOW)
    (flow / "work.py").write_text(WORK)
    (flow / "total.py").write_text(TOTAL)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"x": i}) + "\n" for i in range(LINES)))
    return flow, data


def expected_metrics():
    return {"lines": LINES, "sum": sum(i * i for i in range(LINES))}


def assert_every_line_once(run):
    details = run.details()
    assert [d["line_number"] for d in details] == list(range(LINES))
    assert all(d["status"] == "Completed" for d in details)
    outputs = run.outputs()
    assert [(o["line_number"], o["y"]) for o in outputs] == [(i, i * i) for i in range(LINES)]
    assert run.metrics == expected_metrics()


def test_a_run_spread_over_workers_is_one_merged_run_with_its_evaluation(tmp_path):
    import sluice.ray

    names = ["n%d" % i for i in range(10)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"who": n, "answer": n if i % 2 else "x"}) + "\n" for i, n in enumerate(names)))
    run = sluice.ray.run(
        FLOWS / "hello", data, column_mapping={"name": "${data.who}"}, num_workers=2, name="on_ray"
    )
    assert run.name == "on_ray" and run.status == "Completed"
    outputs = run.outputs()
    assert [o["line_number"] for o in outputs] == list(range(10))
    assert [o["greeting"].split(",")[0] for o in outputs] == ["Hello %s" % n for n in names]
    # Each worker ran one shard as a run of its own.
    assert [len(sluice.get_run("on_ray_shard%d" % i).outputs()) for i in range(2)] == [5, 5]
    evaluation = sluice.ray.run(
        FLOWS / "eval_accuracy",
        data,
        run=run,
        column_mapping={"groundtruth": "${data.answer}", "prediction": "${run.inputs.name}"},
        num_workers=2,
    )
    assert evaluation.status == "Completed"
    # The aggregation ran once, over all ten lines.
    assert evaluation.metrics == {"accuracy": 0.5}
    # A name in the store is refused rather than continued by accident.
    with pytest.raises(sluice.RunError, match="resume="):
        sluice.ray.run(FLOWS / "hello", data, column_mapping={"name": "${data.who}"}, name="on_ray")


def test_a_thousand_lines_on_two_workers_equal_a_local_run(squares):
    import sluice.ray

    flow, data = squares
    local = sluice.run(flow, data, name="squares_local")
    spread = sluice.ray.run(flow, data, num_workers=2, name="squares_ray")
    assert local.status == spread.status == "Completed"
    assert_every_line_once(local)
    assert_every_line_once(spread)
    assert spread.outputs() == local.outputs()
    assert spread.metrics == local.metrics
    assert spread.record["properties"]["system_metrics"]["completed_lines"] == LINES


def test_a_worker_killed_mid_shard_is_replaced_and_its_shard_continues(squares):
    import sluice.ray

    flow, data = squares
    # Line 501 is in shard 1 of 2; the worker running it dies after it has finished some lines.
    (flow / "kill_line").write_text("501")
    run = sluice.ray.run(flow, data, num_workers=2, max_concurrency=8, name="killed")
    assert (flow / "kill_marker").exists(), "the tool did not kill its worker"
    assert run.status == "Completed"
    assert_every_line_once(run)
    # Shard 1 died once: its first run stopped part way, and its continuation carried those lines over.
    first = sluice.get_run("killed_shard1")
    assert first.status == "Failed"
    done_before = len([d for d in first.details() if d["status"] == "Completed"])
    assert 0 < done_before < LINES // 2
    again = sluice.get_run("killed_shard1_r1")
    assert again.record["properties"]["resume_from"] == "killed_shard1"
    assert again.record["properties"]["system_metrics"]["carried_over_lines"] == done_before
    assert len(again.details()) == LINES // 2
    assert sluice.get_run("killed_shard0").status == "Completed"
    assert not (sluice.home() / "runs" / "killed_shard0_r1").exists()


def test_a_shard_out_of_retries_raises_and_the_run_resumes(squares):
    import sluice.ray

    flow, data = squares
    (flow / "kill_line").write_text("100")
    with pytest.raises(sluice.RunError, match="resume='no_retries'"):
        sluice.ray.run(flow, data, num_workers=2, max_retries=0, name="no_retries")
    run = sluice.ray.run(flow, data, num_workers=2, resume="no_retries")
    assert run.status == "Completed"
    assert_every_line_once(run)
    assert sluice.get_run("no_retries_shard0_r1").record["properties"]["resume_from"] == "no_retries_shard0"


def test_a_stopped_run_is_resumed_by_name(squares, tmp_path):
    import sluice.ray

    flow, data = squares
    # A shard run that stopped as a whole would: its process killed part way (here a plain process of
    # its own running shard 0 of 2, so that Ray does not run it again).
    script = tmp_path / "shard.py"
    script.write_text(
        "import sluice, sys\n"
        "sluice.run(sys.argv[1], sys.argv[2], name='stopped_shard0', shard='0/2', max_concurrency=4)\n"
    )
    (flow / "kill_line").write_text("250")
    proc = subprocess.run([sys.executable, str(script), str(flow), str(data)])
    assert proc.returncode == 1  # the tool's os._exit(1)
    assert sluice.get_run("stopped_shard0").status == "Running"  # as its dead process left it
    with pytest.raises(sluice.RunError, match="2 workers"):
        sluice.ray.run(flow, data, num_workers=3, resume="stopped")
    # And a merge whose process died too: its record says running, with the dead process as owner.
    merge = sluice.home() / "runs" / "stopped"
    merge.mkdir()
    record = dict(sluice.get_run("stopped_shard0").record, name="stopped")
    (merge / "run.json").write_text(json.dumps(record))
    run = sluice.ray.run(flow, data, num_workers=2, resume="stopped")
    assert run.status == "Completed"
    assert_every_line_once(run)
    assert sluice.get_run("stopped_shard0_r1").record["properties"]["resume_from"] == "stopped_shard0"
    # Resuming a finished run returns it as it is.
    assert sluice.ray.run(flow, data, num_workers=2, resume="stopped").record == run.record


def test_a_ray_dataset_is_the_data_in_its_order(squares):
    import sluice.ray

    pytest.importorskip("pyarrow")  # Ray Data's
    flow, _ = squares
    def slow_now_and_then(row):
        # Some blocks take longer, which Ray Data would let overtake each other without preserve_order.
        if row["id"] % 100 < 5:
            time.sleep(0.02)
        return {"x": row["id"]}

    dataset = ray.data.range(LINES, override_num_blocks=7).map(slow_now_and_then)
    # `num_actors` names the workers too.
    run = sluice.ray.run(flow, dataset, num_actors=2, name="from_dataset")
    assert run.status == "Completed"
    assert_every_line_once(run)
    written = sluice.home() / "ray" / "from_dataset" / "data.jsonl"
    assert [json.loads(line)["x"] for line in written.read_text().splitlines()] == list(range(LINES))
    assert run.record["data"] == str(written)
    shards = [sluice.get_run("from_dataset_shard%d" % i) for i in range(2)]
    assert [len(s.outputs()) for s in shards] == [LINES // 2, LINES - LINES // 2]
