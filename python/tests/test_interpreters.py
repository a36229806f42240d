"""What every supported CPython (3.9 and later) must do with the one wheel: import the extension, load and
call a flow with a Python tool, run a batch, `PFClient.test`. CI runs this file in the oldest and the
newest supported interpreters too (see `sluice_python_versions` in scripts/setup.sh); it needs nothing
but pytest."""

import json
import sys

import sluice
from conftest import FLOWS
from sluice import _native


def test_the_extension_is_built_for_the_stable_abi():
    # One `_native.abi3.so` serves every CPython >= 3.9; a per-version build would be `cpython-3XY-...`.
    assert _native.__file__.endswith(".abi3.so"), _native.__file__
    assert sys.version_info >= (3, 9)


def test_a_flow_with_a_python_tool_is_called(tmp_path):
    (tmp_path / "flow.dag.yaml").write_text(
        "inputs:\n  x:\n    type: int\noutputs:\n  y:\n    type: object\n    reference: ${work.output}\n"
        "nodes:\n- name: work\n  type: python\n  source:\n    type: code\n    path: work.py\n"
        "  inputs:\n    x: ${inputs.x}\n"
    )
    (tmp_path / "work.py").write_text(
        "import sys\nfrom sluice import tool\n\n"
        "@tool\ndef work(x: int) -> dict:\n"
        "    return {'twice': x * 2, 'python': list(sys.version_info[:2]), 'items': [1.5, None, 'a']}\n"
    )
    out = sluice.load_flow(tmp_path)(x=21)
    assert out["y"] == {"twice": 42, "python": list(sys.version_info[:2]), "items": [1.5, None, "a"]}


def test_a_batch_run_records_every_line(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"who": w}) + "\n" for w in ["Ada", "Bob", "Cy"]))
    run = sluice.run(FLOWS / "hello", data=data, column_mapping={"name": "${data.who}"})
    assert run.status == "Completed"
    assert [o["greeting"].split(",")[0] for o in run.outputs()] == ["Hello Ada", "Hello Bob", "Hello Cy"]


def test_pf_client_test_calls_the_flow():
    from promptflow.client import PFClient

    assert PFClient().test(flow=str(FLOWS / "hello"), inputs={"name": "Ada"})["words"] == 15
