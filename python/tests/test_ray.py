"""`sluice.ray.run`: one run's shards on Ray actors of a local cluster, merged into one run. Skipped
where Ray is not installed (the package does not depend on it)."""

import json

import pytest

import sluice
from conftest import FLOWS

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def local_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_a_run_spread_over_actors_is_one_merged_run_with_its_evaluation(tmp_path):
    import sluice.ray

    names = ["n%d" % i for i in range(10)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"who": n, "answer": n if i % 2 else "x"}) + "\n" for i, n in enumerate(names)))
    run = sluice.ray.run(
        FLOWS / "hello", data, column_mapping={"name": "${data.who}"}, num_actors=2, name="on_ray"
    )
    assert run.name == "on_ray" and run.status == "Completed"
    outputs = run.outputs()
    assert [o["line_number"] for o in outputs] == list(range(10))
    assert [o["greeting"].split(",")[0] for o in outputs] == ["Hello %s" % n for n in names]
    # Each actor ran one shard as a run of its own.
    assert [len(sluice.get_run("on_ray_shard%d" % i).outputs()) for i in range(2)] == [5, 5]
    evaluation = sluice.ray.run(
        FLOWS / "eval_accuracy",
        data,
        run=run,
        column_mapping={"groundtruth": "${data.answer}", "prediction": "${run.inputs.name}"},
        num_actors=2,
    )
    assert evaluation.status == "Completed"
    # The aggregation ran once, over all ten lines.
    assert evaluation.metrics == {"accuracy": 0.5}
