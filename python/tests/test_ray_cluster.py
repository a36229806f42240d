"""`sluice.ray.run` on a Ray cluster of two nodes (two raylets on this machine, `ray.cluster_utils`):
the shards' tasks are spread over both nodes and the merged run is the same as a local run."""

import json

import pytest

import sluice
from conftest import FLOWS

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")


@pytest.fixture(scope="module")
def two_nodes():
    cluster = cluster_utils.Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_the_shards_run_on_both_nodes(two_nodes, tmp_path):
    import sluice.ray

    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"who": "n%d" % i}) + "\n" for i in range(40)))
    mapping = {"name": "${data.who}"}
    local = sluice.run(FLOWS / "hello", data, column_mapping=mapping, name="two_nodes_local")
    run = sluice.ray.run(FLOWS / "hello", data, column_mapping=mapping, num_workers=2, name="two_nodes")
    assert run.status == "Completed"
    assert run.outputs() == local.outputs()
    # Each shard records the node that ran it; they were spread over both.
    nodes = {sluice.get_run("two_nodes_shard%d" % i).record["tags"]["ray_node"] for i in range(2)}
    assert nodes == {n["NodeID"] for n in ray.nodes() if n["Alive"]}
