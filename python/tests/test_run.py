"""`sluice.run`: batch and evaluation runs into the same run store as the `sluice` command."""

import json
import signal
import subprocess
import sys
import threading
import time

import pytest

import sluice
from conftest import FLOWS


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_batch_run_records_outputs_in_line_order(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"who": "Ada"}, {"who": "Bob"}, {"who": "Cy"}])
    run = sluice.run(FLOWS / "hello", data=data, column_mapping={"name": "${data.who}"}, name="py_hello")
    assert run.name == "py_hello"
    assert run.status == "Completed"
    outputs = run.outputs()
    assert [o["line_number"] for o in outputs] == [0, 1, 2]
    assert [o["greeting"].split(",")[0] for o in outputs] == ["Hello Ada", "Hello Bob", "Hello Cy"]
    assert [i["name"] for i in run.inputs()] == ["Ada", "Bob", "Cy"]
    assert [d["status"] for d in run.details()] == ["Completed"] * 3
    frame = run.to_pandas()
    assert list(frame["inputs.name"]) == ["Ada", "Bob", "Cy"]
    assert list(frame["outputs.words"]) == [15, 15, 15]
    assert sluice.get_run("py_hello").status == "Completed"


def test_a_run_as_an_arrow_table(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    data = write_jsonl(tmp_path / "d.jsonl", [{"who": "Ada"}, {"who": "Bob"}])
    run = sluice.run(FLOWS / "hello", data=data, column_mapping={"name": "${data.who}"})
    table = run.to_arrow()
    assert isinstance(table, pyarrow.Table)
    assert table.num_rows == 2
    assert table.column("inputs.name").to_pylist() == ["Ada", "Bob"]
    assert table.column("inputs.line_number").to_pylist() == [0, 1]
    assert table.column("outputs.greeting").to_pylist()[0].startswith("Hello Ada")


def test_python_runs_and_cli_runs_share_one_store(tmp_path, sluice_cmd):
    data = write_jsonl(tmp_path / "d.jsonl", [{"name": "Ada"}])
    loaded = sluice.load_flow(FLOWS / "hello")
    sluice.run(loaded, data=data, name="from_python")
    listed = json.loads(subprocess.run([sluice_cmd, "run", "list"], check=True, capture_output=True).stdout)
    assert "from_python" in [r["name"] for r in listed]
    subprocess.run(
        [sluice_cmd, "-q", "run", "create", "--flow", str(FLOWS / "hello"), "--data", str(data), "--name", "from_cli"],
        check=True,
        capture_output=True,
    )
    run = sluice.get_run("from_cli")
    assert run.status == "Completed" and run.outputs()[0]["words"] == 15
    assert {"from_python", "from_cli"} <= {r.name for r in sluice.list_runs()}


def test_an_evaluation_run_reads_the_earlier_runs_outputs(tmp_path):
    rows = [{"answer": "Paris", "guess": "paris"}, {"answer": "Rome", "guess": "Milan"}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    base = sluice.run(
        FLOWS / "hello", data=data, column_mapping={"name": "${data.guess}"}, name="guesses"
    )
    # The greeting holds the guess; grade it against the answer through ${run.outputs.*}.
    evaluation = sluice.run(
        FLOWS / "eval_accuracy",
        data=data,
        run=base,
        column_mapping={"groundtruth": "${data.answer}", "prediction": "${run.inputs.name}"},
        name="graded",
    )
    assert evaluation.status == "Completed"
    assert [o["grade"] for o in evaluation.outputs()] == ["Correct", "Incorrect"]
    assert evaluation.metrics == {"accuracy": 0.5}
    assert evaluation.record["properties"]["run"] == "guesses"
    outputs = sluice.run(
        FLOWS / "eval_accuracy",
        data=data,
        run="guesses",
        column_mapping={"groundtruth": "${data.answer}", "prediction": "${run.outputs.greeting}"},
    ).outputs()
    assert [o["grade"] for o in outputs] == ["Incorrect", "Incorrect"]


def test_a_run_that_cannot_start_raises(tmp_path):
    with pytest.raises(sluice.RunError, match="nope"):
        sluice.run(FLOWS / "hello", data=tmp_path / "nope.jsonl")
    data = write_jsonl(tmp_path / "d.jsonl", [{"name": "Ada"}])
    with pytest.raises(sluice.RunError, match="missing"):
        sluice.run(FLOWS / "hello", data=data, column_mapping={"name": "${data.missing}"})


def test_failed_lines_do_not_raise_and_are_recorded(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"count": 1}, {"count": "many"}])
    run = sluice.run(FLOWS / "hello", data=data, column_mapping={"count": "${data.count}"})
    statuses = [d["status"] for d in run.details()]
    assert statuses == ["Completed", "Failed"]
    assert run.status in ("Completed", "Failed")


def test_visualize_writes_the_cli_report(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"name": "Ada"}])
    run = sluice.run(FLOWS / "hello", data=data)
    path = run.visualize(tmp_path / "report.html")
    text = path.read_text()
    assert "<html" in text.lower() and run.name in text


def test_the_gil_is_released_while_a_batch_runs_on_the_local_model():
    count = 0
    stop = threading.Event()

    def counter():
        nonlocal count
        while not stop.is_set():
            count += 1
            time.sleep(0.001)

    t = threading.Thread(target=counter)
    t.start()
    try:
        started = time.perf_counter()
        run = sluice.run(
            FLOWS / "classify",
            data=FLOWS / "classify" / "data.jsonl",
            column_mapping={"text": "${data.text}"},
            max_concurrency=4,
        )
        elapsed = time.perf_counter() - started
    finally:
        stop.set()
        t.join()
    assert run.status == "Completed"
    assert all(o["label"] in ("positive", "negative", "unknown") for o in run.outputs())
    assert count > elapsed * 1000 * 0.3, (count, elapsed)


def test_a_run_whose_process_died_is_resumed_from_python(tmp_path):
    # A tool that kills its process on line 3, once (a marker file beside it says it has).
    flow = tmp_path / "dies"
    flow.mkdir()
    (flow / "flow.dag.yaml").write_text(
        "inputs:\n  x:\n    type: int\noutputs:\n  y:\n    type: int\n    reference: ${work.output}\n"
        "nodes:\n- name: work\n  type: python\n  source:\n    type: code\n    path: work.py\n"
        "  inputs:\n    x: ${inputs.x}\n"
    )
    (flow / "work.py").write_text(
        "import os\nfrom sluice import tool\n\n"
        "MARKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'marker')\n\n"
        "@tool\ndef work(x: int) -> int:\n"
        "    if x == 3 and not os.path.exists(MARKER):\n"
        "        open(MARKER, 'w').close()\n"
        "        os._exit(1)\n"
        "    return x + 100\n"
    )
    data = write_jsonl(tmp_path / "d.jsonl", [{"x": i} for i in range(8)])
    script = "import sluice, sys; sluice.run(sys.argv[1], sys.argv[2], name='died', max_concurrency=1)"
    died = subprocess.run([sys.executable, "-c", script, str(flow), str(data)])
    assert died.returncode == 1
    assert [d["line_number"] for d in sluice.get_run("died").details()] == [0, 1, 2]
    # Flow, data and the rest come from the run it continues.
    run = sluice.run(resume_from="died", name="died_resumed")
    assert run.status == "Completed"
    assert run.record["properties"]["resume_from"] == "died"
    assert run.record["properties"]["system_metrics"]["carried_over_lines"] == 3
    assert [(o["line_number"], o["y"]) for o in run.outputs()] == [(i, i + 100) for i in range(8)]
    with pytest.raises(sluice.RunError, match="flow"):
        sluice.run(data=data)


def test_ctrl_c_cancels_a_batch_run_which_resumes_with_every_line_once(tmp_path):
    flow = tmp_path / "slow"
    flow.mkdir()
    (flow / "flow.dag.yaml").write_text(
        "inputs:\n  x:\n    type: int\noutputs:\n  y:\n    type: int\n    reference: ${work.output}\n"
        "nodes:\n- name: work\n  type: python\n  source:\n    type: code\n    path: work.py\n"
        "  inputs:\n    x: ${inputs.x}\n"
    )
    (flow / "work.py").write_text(
        "import time\nfrom sluice import tool\n\n@tool\ndef work(x: int) -> int:\n    time.sleep(0.2)\n    return x + 100\n"
    )
    lines = 100
    data = write_jsonl(tmp_path / "d.jsonl", [{"x": i} for i in range(lines)])
    # Python leaves SIGINT alone when it starts ignored (a test run in a background job); a program
    # run from a terminal has this handler.
    script = (
        "import signal, sys, sluice\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "try:\n"
        "    sluice.run(sys.argv[1], sys.argv[2], name='interrupted', max_concurrency=2)\n"
        "except KeyboardInterrupt:\n"
        "    print('KeyboardInterrupt', flush=True)\n"
        "    sys.exit(3)\n"
        "print('finished', flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(flow), str(data)], stdout=subprocess.PIPE, text=True)
    details = sluice.home() / "runs" / "interrupted" / "details.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if details.exists() and details.read_text().count("\n") >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it was interrupted"
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    out, _ = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 5, "the run did not stop promptly"
    assert proc.returncode == 3 and out.strip() == "KeyboardInterrupt", (proc.returncode, out)

    run = sluice.get_run("interrupted")
    assert run.status == "Canceled"
    completed = [d["line_number"] for d in run.details() if d["status"] == "Completed"]
    assert 4 <= len(completed) < lines
    resumed = sluice.run(resume_from="interrupted", name="interrupted_resumed")
    assert resumed.status == "Completed"
    assert resumed.record["properties"]["system_metrics"]["carried_over_lines"] == len(completed)
    assert [(o["line_number"], o["y"]) for o in resumed.outputs()] == [(i, i + 100) for i in range(lines)]
    assert sorted(d["line_number"] for d in resumed.details()) == list(range(lines))
