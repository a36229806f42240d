"""promptflow's own tutorial notebooks, run unchanged on Sluice with promptflow not installed.

The notebooks and the files they use are copies from promptflow's repository (MIT license; see
``data/notebooks/README.md``). Each runs in a fresh interpreter (``notebook_runner.py``: every code
cell in order, in one namespace, leaving out only IPython magics such as ``%pip install``) in a copy
of its folder, against a fake OpenAI-compatible server on loopback that Azure OpenAI's environment
variables point at. The tests check what the cells gave, the runs they made and the requests the
server received.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE / "data" / "notebooks"

for module in ("openai", "dotenv", "jinja2", "pandas"):
    pytest.importorskip(module, reason="the notebooks need %s (scripts/setup.sh installs it)" % module)

HELLO = 'print("Hello, world!")'
CODE_QUALITY = {"correctness": 4, "readability": 5, "explanation": "Correct and short."}
SCORE = {"score": "5", "explanation": "The answer matches."}


def reply(body):
    """The fake model: JSON for the evaluators' prompts, a program for anything else."""
    text = json.dumps(body.get("messages"))
    if "evaluate the code based on correctness" in text:
        return json.dumps(CODE_QUALITY)
    if "evaluate a score for the answer" in text:
        return json.dumps(SCORE)
    if "classify a given url" in text:
        # Right for the app store page only.
        url = body["messages"][-1]["content"].split("URL: ")[-1].split("\n")[0]
        return json.dumps({"category": "App" if "play.google.com" in url else "None", "evidence": "Url"})
    return HELLO


def run_notebook(tmp_path, notebook, server, keep_going=False, setup=None, fill=None):
    """Runs `notebook` (relative to the copied examples) and returns its cells' records by index;
    `setup(home, env)` prepares the Sluice home first; `fill` ({cell: {old: new}}) fills in the
    placeholders of cells, as their reader is asked to."""
    work = tmp_path / "promptflow"
    shutil.copytree(EXAMPLES, work)
    if fill:
        path = work / notebook
        nb = json.loads(path.read_text(encoding="utf-8"))
        for index, replacements in fill.items():
            source = "".join(nb["cells"][index]["source"])
            for old, new in replacements.items():
                assert old in source, (index, old)
                source = source.replace(old, new)
            nb["cells"][index]["source"] = source
        path.write_text(json.dumps(nb), encoding="utf-8")
    home = tmp_path / "sluice-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_OPENAI_"))}
    env.update(
        AZURE_OPENAI_ENDPOINT=server.url,
        AZURE_OPENAI_API_KEY="fake-azure-key",
        SLUICE_HOME=str(home),
        BROWSER="true",  # `pf.visualize` opens the report; nothing to open it in here
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.pop("SLUICE_NO_PROMPTFLOW_STAND_IN", None)
    if setup is not None:
        setup(home, env)
    result_file = tmp_path / "result.json"
    argv = [sys.executable, str(HERE / "notebook_runner.py"), str(work / notebook), str(result_file)]
    proc = subprocess.run(
        argv + (["--keep-going"] if keep_going else []), env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(result_file.read_text())
    assert result["error"] is None, result["error"] + "\n--- stderr:\n" + proc.stderr[-4000:]
    return {c["index"]: c for c in result["cells"]}, work, home


def frame(cell):
    value = cell["value"]
    assert value and value.get("type") == "DataFrame", value
    return value


def column(value, name):
    return [row[name] for row in value["rows"]]


def test_flex_flow_quickstart(tmp_path):
    """examples/flex-flows/basic/flex-flow-quickstart.ipynb: a traced function calling Azure OpenAI,
    a class evaluator with a prompty and a model configuration, `pf.run` with the function as the flow
    and with the evaluator's flow.flex.yaml and `init=`, details, metrics, visualize."""
    with FakeOpenAI(reply) as server:
        cells, work, home = run_notebook(tmp_path, "examples/flex-flows/basic/flex-flow-quickstart.ipynb", server)
        requests = list(server.requests)

    # Only the install cell and the autoreload lines were left out.
    assert [i for i, c in cells.items() if c["skipped"]] == [3]
    assert [c["dropped"] for c in cells.values() if c["dropped"] and not c["skipped"]] == [
        ["%load_ext autoreload", "%autoreload 2"]
    ]
    # The function, called directly, traced, and through the flow's entry.
    assert cells[8]["value"] == HELLO
    assert cells[10]["value"] == HELLO
    assert cells[13]["value"] == {"output": HELLO}
    # The class evaluator runs its prompty with the notebook's model configuration.
    assert cells[17]["value"] == CODE_QUALITY

    # The batch run of the function over data.jsonl.
    assert 'Run status: "Completed"' in cells[22]["stdout"]
    base = frame(cells[23])
    assert {"inputs.text", "inputs.line_number", "outputs.output"} <= set(base["columns"])
    assert column(base, "inputs.text") == ["Python Hello World!", "C Hello World!", "C# Hello World!"]
    assert column(base, "inputs.line_number") == [0, 1, 2]
    assert column(base, "outputs.output") == [HELLO] * 3

    # The evaluation run of the class entry, given its model configuration with init=.
    assert 'Run status: "Completed"' in cells[26]["stdout"]
    evaluation = frame(cells[27])
    assert {"inputs.code", "outputs.correctness", "outputs.readability", "outputs.explanation"} <= set(
        evaluation["columns"]
    )
    assert column(evaluation, "inputs.code") == [HELLO] * 3
    assert column(evaluation, "outputs.correctness") == [4] * 3
    assert column(evaluation, "outputs.explanation") == [CODE_QUALITY["explanation"]] * 3
    assert json.loads(cells[28]["stdout"]) == {"average_correctness": 4.0, "average_readability": 5.0, "total": 3}
    assert "The HTML file is generated at" in cells[29]["stdout"]
    reports = list((home / "reports").glob("*.html"))
    assert len(reports) == 1

    # Both runs are in the store, completed; the function's temporary flow file is gone.
    runs = sorted(json.loads((d / "run.json").read_text())["status"] for d in (home / "runs").iterdir())
    assert runs == ["Completed", "Completed"]
    basic = work / "examples" / "flex-flows" / "basic"
    assert not [p.name for p in basic.iterdir() if p.name.startswith(".sluice-")]

    # What the server received: 3 direct calls, the evaluator's call, 3 lines of each run.
    assert len(requests) == 10
    for path, body in requests:
        assert path == "/openai/deployments/gpt-4o/chat/completions?api-version=2023-07-01-preview"
        assert body["model"] == "gpt-4o"
    bodies = [body for _, body in requests]
    programs = [b for b in bodies if "correctness" not in json.dumps(b)]
    evaluations = [b for b in bodies if "correctness" in json.dumps(b)]
    assert len(programs) == 6 and len(evaluations) == 4
    prompts = sorted(b["messages"][0]["content"] for b in programs[3:])
    assert prompts == sorted(
        "system: \nWrite a simple %s program.\nOutput code only." % t
        for t in ("Python Hello World!", "C Hello World!", "C# Hello World!")
    )
    assert all(b["max_tokens"] == 120 for b in programs)
    assert all(b["temperature"] == 0.2 for b in evaluations)
    # Cell 17 evaluates cell 13's result, the entry's dict, as promptflow renders it.
    assert "Code: %s\n" % {"output": HELLO} in evaluations[0]["messages"][-1]["content"]
    assert all("Code: %s\n" % HELLO in b["messages"][-1]["content"] for b in evaluations[1:])


def test_prompty_quickstart(tmp_path):
    """examples/prompty/basic/prompty-quickstart.ipynb: `Prompty.load` and a call, a model
    configuration override, an evaluator prompty with a JSON response, `pf.run` of a prompty file and
    an evaluation run, details, visualize."""
    with FakeOpenAI(reply) as server:
        cells, work, home = run_notebook(tmp_path, "examples/prompty/basic/prompty-quickstart.ipynb", server)
        requests = list(server.requests)

    assert [i for i, c in cells.items() if c["skipped"]] == [3, 18]
    assert cells[8]["value"] == HELLO
    assert cells[10]["value"] == HELLO
    assert cells[14]["value"] == HELLO
    assert cells[16]["value"] == SCORE

    assert 'Run status: "Completed"' in cells[20]["stdout"]
    base = frame(cells[21])
    assert column(base, "inputs.question") == [
        "What is capital of France?",
        "What is the meaning of life?",
        "What are the planets in Sun system?",
    ]
    assert column(base, "outputs.output") == [HELLO] * 3

    assert 'Run status: "Completed"' in cells[24]["stdout"]
    evaluation = frame(cells[25])
    assert {"inputs.question", "inputs.answer", "inputs.ground_truth", "outputs.score", "outputs.explanation"} <= set(
        evaluation["columns"]
    )
    assert column(evaluation, "inputs.answer") == [HELLO] * 3
    assert column(evaluation, "inputs.ground_truth")[0] == "Paris"
    assert column(evaluation, "outputs.score") == ["5"] * 3
    assert "The HTML file is generated at" in cells[26]["stdout"]
    assert len(list((home / "reports").glob("*.html"))) == 1

    # 4 direct calls and 3 lines of each run, on the deployment the prompty files name.
    assert len(requests) == 10
    assert all(p.startswith("/openai/deployments/gpt-4o/chat/completions") for p, _ in requests)
    bodies = [b for _, b in requests]
    assert bodies[0]["max_tokens"] == 128 and bodies[0]["temperature"] == 0.2
    assert bodies[0]["messages"][-1] == {"role": "user", "content": "What is the capital of France?"}
    # The override of cell 10 (max_tokens 512) stays with `f` for the traced call too.
    assert bodies[1]["max_tokens"] == 512 and bodies[2]["max_tokens"] == 512
    assert bodies[2]["messages"][-1]["content"] == "What is the capital of Japan?"
    evaluations = [b for b in bodies if "evaluate a score" in json.dumps(b)]
    assert len(evaluations) == 4
    assert all(b["response_format"] == {"type": "json_object"} for b in evaluations)


def test_a_function_defined_in_a_notebook_cell_runs_as_the_flow(tmp_path):
    """`pf.run(flow=f)` with `f` defined in a cell (in IPython's `__main__`, which has no file)."""
    folder = tmp_path / "nb"
    folder.mkdir()
    (folder / "data.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    cells = [
        "from promptflow.client import PFClient\n\npf = PFClient()",
        "def shout(text: str) -> dict:\n    return {'loud': text.upper() + '!'}",
        "run = pf.run(flow=shout, data='data.jsonl', column_mapping={'text': '${data.text}'})\nrun",
        "pf.get_details(run)",
    ]
    notebook = {
        "cells": [{"cell_type": "code", "metadata": {}, "source": c, "outputs": [], "execution_count": None}
                  for c in cells],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 2,
    }
    (folder / "cells.ipynb").write_text(json.dumps(notebook))
    result_file = tmp_path / "result.json"
    env = dict(os.environ, SLUICE_HOME=str(tmp_path / "home"))
    proc = subprocess.run(
        [sys.executable, str(HERE / "notebook_runner.py"), str(folder / "cells.ipynb"), str(result_file)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(result_file.read_text())
    assert result["error"] is None, result["error"]
    run = result["cells"][2]["value"]
    assert run["status"] == "Completed" and run["name"].startswith("shout_")
    details = result["cells"][3]["value"]
    assert [row["outputs.loud"] for row in details["rows"]] == ["A!", "B!"]
    assert sorted(p.name for p in folder.iterdir()) == ["cells.ipynb", "data.jsonl"]


def test_flow_as_function(tmp_path):
    """examples/tutorials/get-started/flow-as-function.ipynb: `load_flow` of a DAG flow called as a
    function, with a connection object given in memory, with a `FlowContext` overriding a node's
    input, and a chat flow streaming its answer.

    Cell 6 holds placeholders (`"<user-input>"`) for the `AzureOpenAIConnection` object cells 7 and 8
    make and give to the flow in memory; they are filled in with the fake server and a key of their
    own. The flows' `open_ai_connection` is stored first, as the tutorial assumes, pointing at the fake
    server with another key. The web page the first flow fetches is out of reach here; its tool
    answers "No available content" then, as written."""
    pytest.importorskip("bs4", reason="the web-classification flow needs beautifulsoup4")
    pytest.importorskip("requests", reason="the web-classification flow needs requests")

    with FakeOpenAI(reply) as server:
        fill = {6: {'api_key = "<user-input>"': 'api_key = "in-memory-key-5150"',
                    'api_base = "<user-input>"': 'api_base = "%s"' % server.url,
                    'api_version = "<user-input>"': 'api_version = "2024-02-01"'}}
        cells, work, home = run_notebook(
            tmp_path, "examples/tutorials/get-started/flow-as-function.ipynb", server,
            setup=store_open_ai_connection, fill=fill,
        )
        requests = list(server.requests)
        keys = list(server.keys)

    # Cell 8's flow call went with the connection object's key, to classify_with_llm only.
    assert keys == ["fake-azure-key", "fake-azure-key", "fake-azure-key", "in-memory-key-5150"] + ["fake-azure-key"] * 3
    assert cells[8]["stdout"].strip().splitlines()[-1] == repr({"category": "None", "evidence": "Url"})
    # The object was not stored, and its key was written nowhere.
    assert sorted(p.name for p in (home / "connections").iterdir()) == ["open_ai_connection.json"]
    assert not [p for p in home.rglob("*") if p.is_file() and b"in-memory-key-5150" in p.read_bytes()]

    # The fake model classifies the YouTube sample as "None" by its URL.
    answer = {"category": "None", "evidence": "Url"}
    assert cells[3]["stdout"].strip().splitlines()[-1] == repr(answer)
    assert cells[10]["stdout"].strip().splitlines()[-1] == repr(answer)
    # The chat flow streamed: its answer was joined from the chunks.
    assert cells[12]["stdout"].strip() == HELLO

    # Cells 3, 8 and 10 each call the two LLM nodes of web-classification; cell 12 the chat node.
    paths = [p for p, _ in requests]
    assert len(paths) == 7
    assert all(p.startswith("/openai/deployments/gpt-35-turbo/chat/completions") for p in paths)
    bodies = [b for _, b in requests]
    summaries = [b for b in bodies if "Please summarize" in json.dumps(b)]
    classifications = [b for b in bodies if "classify" in json.dumps(b).lower() and b not in summaries]
    assert len(summaries) == 3 and len(classifications) == 3
    # Cell 10's override reached the fetching node: it fetched the sample URL (out of reach here, so
    # its tool printed why), not the flow input "unknown" (which classify_with_llm still gets).
    assert "Invalid URL 'unknown'" not in cells[10]["stdout"]
    if "Get url failed" in cells[10]["stdout"]:
        assert "www.youtube.com" in cells[10]["stdout"]
    assert "unknown" in json.dumps(classifications[2]) and "unknown" not in json.dumps(classifications[0])
    chat = bodies[6]
    assert chat["stream"] is True
    assert [m["role"] for m in chat["messages"]] == ["system", "user", "assistant", "user"]
    assert chat["messages"][-1]["content"] == "How are you?"


def store_open_ai_connection(home, env):
    """The `open_ai_connection` promptflow's tutorials expect to exist, on the fake server."""
    spec = home.parent / "open_ai_connection.yaml"
    spec.write_text(
        "name: open_ai_connection\ntype: azure_open_ai\napi_key: ${env:AZURE_OPENAI_API_KEY}\n"
        "api_base: %s\napi_type: azure\n" % env["AZURE_OPENAI_ENDPOINT"]
    )
    proc = subprocess.run([sys.executable, "-m", "sluice", "-q", "connection", "create", "--file", str(spec)],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_get_started_quickstart(tmp_path):
    """examples/tutorials/get-started/quickstart.ipynb, promptflow's first tutorial: `pf.connections`,
    `pf.test` of a flow and of one node, `load_flow`, batch runs of the default variant and of
    variant_1, evaluation runs, details, metrics, visualize.

    Its connection cell uses `open_ai_connection` when it exists (else it stores one made of
    placeholders); it is stored first, pointing at the fake server. The web pages the flow fetches
    are out of reach here; its tool answers "No available content" then, as written."""
    pytest.importorskip("bs4", reason="the web-classification flow needs beautifulsoup4")
    pytest.importorskip("requests", reason="the web-classification flow needs requests")
    with FakeOpenAI(reply) as server:
        cells, work, home = run_notebook(
            tmp_path, "examples/tutorials/get-started/quickstart.ipynb", server, setup=store_open_ai_connection
        )
        requests = list(server.requests)

    assert [i for i, c in cells.items() if c["skipped"] or c["dropped"]] == [3]
    assert "using existing connection" in cells[6]["stdout"]
    assert "open_ai_connection" in cells[6]["stdout"] and "fake-azure-key" not in cells[6]["stdout"]
    assert "Flow result: {'category': 'App', 'evidence': 'Url'}" in cells[11]["stdout"]
    node_result = cells[12]["stdout"].strip().splitlines()[-1]
    assert node_result.startswith("Node result: ")  # the page's text, or "No available content" offline
    assert "Flow function result: {'category': 'App', 'evidence': 'Url'}" in cells[14]["stdout"]

    urls = [
        "https://www.youtube.com/watch?v=kYqRtjDBci8",
        "https://arxiv.org/abs/2307.04767",
        "https://play.google.com/store/apps/details?id=com.twitter.android",
    ]
    for run_cell, details_cell in ((16, 17), (26, 27)):
        assert 'Run status: "Completed"' in cells[run_cell]["stdout"]
        details = frame(cells[details_cell])
        assert column(details, "inputs.url") == urls
        assert column(details, "outputs.category") == ["None", "None", "App"]
    assert "variant_1" in cells[26]["stdout"]
    for details_cell, metrics_cell in ((21, 22), (30, 31)):
        grades = frame(cells[details_cell])
        assert column(grades, "inputs.groundtruth") == ["Channel", "Academic", "App"]
        assert column(grades, "inputs.prediction") == ["None", "None", "App"]
        assert column(grades, "outputs.grade") == ["Incorrect", "Incorrect", "Correct"]
        assert json.loads(cells[metrics_cell]["stdout"]) == {"accuracy": 0.33}
    assert all("The HTML file is generated at" in cells[i]["stdout"] for i in (23, 32))
    assert len(list((home / "reports").glob("*.html"))) == 2

    # Two LLM nodes per line: pf.test, load_flow, and 3 lines of each of the two batch runs.
    bodies = [b for _, b in requests]
    assert len(bodies) == 2 * (1 + 1 + 3 + 3)
    assert all(p.startswith("/openai/deployments/gpt-35-turbo/chat/completions") for p, _ in requests)
    summaries = [b for b in bodies if "Please summarize" in json.dumps(b)]
    assert len(summaries) == 8
    # variant_1 of summarize_text_content: max_tokens 256, temperature 0.3; variant_0: 128 and 0.2.
    assert sorted((b["max_tokens"], b["temperature"]) for b in summaries) == [(128, 0.2)] * 5 + [(256, 0.3)] * 3
