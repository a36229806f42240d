"""`sluice.load_flow`: calling a flow, async calls, and errors that say where."""

import asyncio
import os
import textwrap
import time

import pytest

import sluice
from conftest import FLOWS


def test_a_loaded_flow_is_called_with_keyword_inputs():
    flow = sluice.load_flow(FLOWS / "hello")
    assert flow.name == "hello"
    assert list(flow.inputs) == ["name", "topic", "count"]
    assert flow.outputs == ["greeting", "words"]
    out = flow(name="Ada", topic="rivers", count=2)
    assert out == {"greeting": "Hello Ada, here are 2 thoughts on RIVERS:; thought 1; thought 2!", "words": 12}
    # Defaults fill what is not given, as `sluice flow test` does.
    assert flow()["greeting"].startswith("Hello World")


def test_a_call_leaves_the_working_directory_as_it_was(tmp_path):
    before = os.getcwd()
    sluice.load_flow(FLOWS / "hello")(name="Ada")
    assert os.getcwd() == before


def test_acall_runs_lines_concurrently():
    flow = sluice.load_flow(FLOWS / "hello")

    async def main():
        return await asyncio.gather(*(flow.acall(name="n%d" % i) for i in range(8)))

    results = asyncio.run(main())
    assert [r["greeting"].split(",")[0] for r in results] == ["Hello n%d" % i for i in range(8)]


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_a_broken_flow_raises_at_load_with_every_problem_and_its_location(tmp_path):
    flow_file = write(
        tmp_path / "broken" / "flow.dag.yaml",
        """
        inputs:
          text: {type: string}
        outputs:
          out: {type: string, reference: "${second.output}"}
        nodes:
        - name: first
          type: python
          source: {type: code, path: tool.py}
          inputs:
            text: ${inputs.nope}
        - name: second
          type: python
          source: {type: code, path: tool.py}
          inputs:
            text: ${missing_node.output}
        """,
    )
    write(
        tmp_path / "broken" / "tool.py",
        """
        from sluice import tool

        @tool
        def echo(text: str) -> str:
            return text
        """,
    )
    with pytest.raises(sluice.FlowLoadError) as caught:
        sluice.load_flow(flow_file.parent)
    err = caught.value
    assert len(err.problems) == 2, err.problems
    by_node = {p.node: p for p in err.problems}
    assert set(by_node) == {"first", "second"}
    assert by_node["first"].line == 10 and by_node["second"].line == 15
    assert all(p.file and p.file.endswith("flow.dag.yaml") for p in err.problems)
    assert "nope" in str(err) and "missing_node" in str(err)
    assert (err.node, err.line) == ("first", 10)


def test_a_tool_that_cannot_import_is_a_load_error_naming_its_file(tmp_path):
    write(
        tmp_path / "f" / "flow.dag.yaml",
        """
        inputs: {x: {type: string}}
        outputs: {y: {type: string, reference: "${t.output}"}}
        nodes:
        - name: t
          type: python
          source: {type: code, path: t.py}
          inputs: {x: "${inputs.x}"}
        """,
    )
    write(tmp_path / "f" / "t.py", "import no_such_module_anywhere\n")
    with pytest.raises(sluice.FlowLoadError) as caught:
        sluice.load_flow(tmp_path / "f")
    assert "no_such_module_anywhere" in str(caught.value)
    assert caught.value.node == "t"


def test_a_failing_tool_raises_with_its_node_file_line_and_traceback(tmp_path):
    write(
        tmp_path / "f" / "flow.dag.yaml",
        """
        inputs: {x: {type: int}}
        outputs: {y: {type: int, reference: "${divide.output}"}}
        nodes:
        - name: divide
          type: python
          source: {type: code, path: divide.py}
          inputs: {x: "${inputs.x}"}
        """,
    )
    write(
        tmp_path / "f" / "divide.py",
        """
        from promptflow.core import tool


        @tool
        def divide(x: int) -> int:
            return 10 // x
        """,
    )
    flow = sluice.load_flow(tmp_path / "f")
    assert flow(x=5) == {"y": 2}
    with pytest.raises(sluice.FlowRunError) as caught:
        flow(x=0)
    err = caught.value
    assert err.node == "divide"
    assert err.error_type == "ZeroDivisionError"
    assert err.filename.endswith("divide.py") and err.line == 6
    assert "ZeroDivisionError" in err.traceback
    assert "divide" in str(err)


def test_tools_import_the_users_modules_and_run_in_this_interpreter(tmp_path, monkeypatch):
    # A module of the program's own, found on its sys.path, not in the flow folder.
    write(tmp_path / "lib" / "user_helpers.py", "PREFIX = '>> '\ncalls = []\n")
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    import user_helpers

    write(
        tmp_path / "f" / "flow.dag.yaml",
        """
        inputs: {x: {type: string}}
        outputs: {y: {type: string, reference: "${t.output}"}}
        nodes:
        - name: t
          type: python
          source: {type: code, path: t.py}
          inputs: {x: "${inputs.x}"}
        """,
    )
    write(
        tmp_path / "f" / "t.py",
        """
        from sluice import tool
        import user_helpers
        from local_helper import shout

        @tool
        def t(x: str) -> str:
            user_helpers.calls.append(x)
            return user_helpers.PREFIX + shout(x)
        """,
    )
    write(tmp_path / "f" / "local_helper.py", "def shout(s):\n    return s.upper()\n")
    flow = sluice.load_flow(tmp_path / "f")
    assert flow(x="hi") == {"y": ">> HI"}
    # The same module object: the tool ran in this interpreter.
    assert user_helpers.calls == ["hi"]
    # The installed package is the one tools see, not a second copy.
    import sys

    assert sys.modules["sluice"] is sluice


def test_variants_and_connections_are_chosen_at_load():
    with pytest.raises(sluice.FlowLoadError):
        sluice.load_flow(FLOWS / "classify", variant="${classify.variant_9}")
    with pytest.raises(sluice.FlowLoadError) as caught:
        sluice.load_flow(FLOWS / "hello", connections={"no_node": {"connection": "x"}})
    assert "no_node" in str(caught.value)


def test_an_llm_flow_runs_on_the_local_model_without_holding_the_gil():
    import threading

    flow = sluice.load_flow(FLOWS / "classify")
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
        out = flow(text="I loved every minute of it.")
        elapsed = time.perf_counter() - started
    finally:
        stop.set()
        t.join()
    assert isinstance(out["label"], str)
    # The counter thread ran throughout the call (it sleeps 1 ms per step).
    assert count > elapsed * 1000 * 0.3, (count, elapsed)


def test_stream_returns_streamed_outputs_as_iterators(tmp_path):
    write(
        tmp_path / "f" / "flow.dag.yaml",
        """
        inputs: {n: {type: int}}
        outputs:
          words: {type: string, reference: "${count.output}"}
          n: {type: int, reference: "${inputs.n}"}
        nodes:
        - name: count
          type: python
          source: {type: code, path: count.py}
          inputs: {n: "${inputs.n}"}
        """,
    )
    write(
        tmp_path / "f" / "count.py",
        """
        from sluice import tool

        @tool
        def count(n: int):
            for i in range(n):
                yield "w%d " % i
        """,
    )
    flow = sluice.load_flow(tmp_path / "f")
    out = flow.stream(n=3)
    assert out["n"] == 3
    assert not isinstance(out["words"], str)
    assert list(out["words"]) == ["w0 ", "w1 ", "w2 "]
    # Called plainly, the stream is joined.
    assert flow(n=3) == {"words": "w0 w1 w2 ", "n": 3}


def test_an_llm_answer_streams_from_the_local_model():
    flow = sluice.load_flow(FLOWS / "chat")
    question = "What is the capital of France?"
    chunks = list(flow.stream(question=question)["answer"])
    assert len(chunks) > 1
    assert "".join(chunks) == flow(question=question)["answer"]
