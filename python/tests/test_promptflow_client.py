"""Notebooks written for promptflow: `from promptflow.client import PFClient, load_flow` without
promptflow installed, with promptflow's argument names and return shapes."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

from conftest import FLOWS


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_promptflow_resolves_to_the_stand_in_when_it_is_not_installed():
    import importlib.util

    import promptflow
    from promptflow.client import PFClient, load_flow

    assert promptflow.__version__.endswith("+sluice")
    assert PFClient.__module__ == "sluice._client"
    assert callable(load_flow)
    # The tool API tools import comes from the same stand-in.
    from promptflow.core import tool  # noqa: F401
    from promptflow.connections import CustomConnection  # noqa: F401

    assert importlib.util.find_spec("promptflow") is not None


def test_load_flow_returns_a_callable_flow():
    from promptflow.client import load_flow

    flow = load_flow(source=str(FLOWS / "hello"))
    assert flow(name="Ada", count=1)["greeting"] == "Hello Ada, here are 1 thoughts on THE SEA:; thought 1!"


def test_pf_test_run_details_metrics_and_runs(tmp_path):
    pd = pytest.importorskip("pandas")
    from promptflow.client import PFClient

    pf = PFClient()
    assert pf.test(flow=str(FLOWS / "hello"), inputs={"name": "Ada"})["words"] == 15
    data = write_jsonl(tmp_path / "d.jsonl", [{"q": "Ada", "a": "Ada"}, {"q": "Bob", "a": "Rob"}])
    base = pf.run(flow=str(FLOWS / "hello"), data=str(data), column_mapping={"name": "${data.q}"})
    assert base.status == "Completed"
    assert base.flow.endswith("hello") and base.column_mapping == {"name": "${data.q}"}
    details = pf.get_details(base)
    assert isinstance(details, pd.DataFrame)
    assert {"inputs.name", "inputs.line_number", "outputs.greeting", "outputs.words"} <= set(details.columns)
    assert list(details["inputs.line_number"]) == [0, 1]
    evaluation = pf.run(
        flow=str(FLOWS / "eval_accuracy"),
        data=str(data),
        run=base,
        column_mapping={"groundtruth": "${data.a}", "prediction": "${run.inputs.name}"},
        name="pf_eval",
    )
    assert evaluation.name == "pf_eval" and evaluation.run == base.name
    assert pf.get_metrics(evaluation) == {"accuracy": 0.5}
    assert pf.get_metrics("pf_eval") == {"accuracy": 0.5}
    assert pf.runs.get("pf_eval").status == "Completed"
    assert "pf_eval" in [r.name for r in pf.runs.list(max_results=100)]
    assert list(pf.runs.get_details("pf_eval")["outputs.grade"]) == ["Correct", "Incorrect"]
    html = tmp_path / "r.html"
    pf.visualize([base, evaluation], html_path=str(html))
    assert "pf_eval" in html.read_text()


def test_variant_selection_as_promptflow_spells_it(tmp_path):
    from promptflow.client import PFClient

    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "Great!"}])
    run = PFClient().run(
        flow=str(FLOWS / "classify"), data=str(data), variant="${classify.variant_1}",
        column_mapping={"text": "${data.text}"},
    )
    assert run.variant == "${classify.variant_1}"
    assert run.status == "Completed"


def test_an_installed_promptflow_wins_over_the_stand_in(tmp_path):
    fake = tmp_path / "site" / "promptflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("REAL = True\n")
    # Enough of promptflow's tool API for the flow's tool to import.
    (fake / "core.py").write_text("from sluice import tool\n")
    code = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, %r)
        import promptflow, sluice
        flow = sluice.load_flow(%r)
        flow(name="x")
        import promptflow as again
        print(getattr(again, "REAL", False), getattr(again, "__version__", ""))
        """
    ) % (str(tmp_path / "site"), str(FLOWS / "hello"))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.split() == ["True"]


def test_prompty_imports_from_promptflow_core_before_any_flow_loads(tmp_path):
    """promptflow's examples import `Prompty` from `promptflow.core._flow` (or `promptflow.core`) at
    the top of a module; the engine adds it when its Python side starts, which a fresh program has
    not done yet."""
    from fake_openai import FakeOpenAI

    (tmp_path / "ask.prompty").write_text(
        textwrap.dedent(
            """
            ---
            model:
              api: chat
              configuration: {type: azure_openai, azure_deployment: d1}
              parameters: {temperature: 0.2}
            inputs: {question: {type: string}}
            ---
            system:
            Answer briefly.

            user:
            {{question}}
            """
        ).lstrip()
    )
    code = textwrap.dedent(
        """
        import os
        from promptflow.core._flow import Prompty
        from promptflow.core import AzureOpenAIModelConfiguration, Prompty as Same
        import sluice
        assert Prompty is Same is sluice.Prompty
        config = AzureOpenAIModelConfiguration(
            azure_deployment="d2", azure_endpoint=os.environ["ENDPOINT"], api_key="k", api_version="2024-02-01"
        )
        print(Prompty.load(source="ask.prompty", model={"configuration": config})(question="Why?"))
        """
    )
    with FakeOpenAI(lambda body: "Because.") as server:
        env = dict(os.environ, ENDPOINT=server.url)
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, capture_output=True, text=True
        ).stdout
        assert out.strip() == "Because."
        (path, body), = server.requests
    assert path.startswith("/openai/deployments/d2/chat/completions")
    assert body["temperature"] == 0.2
    assert body["messages"][-1] == {"role": "user", "content": "Why?"}


def write_module(folder, name, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ("%s.py" % name)).write_text(textwrap.dedent(text).lstrip())
    sys.path.insert(0, str(folder))
    import importlib

    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))


def test_pf_run_takes_a_function_as_the_flow(tmp_path, monkeypatch):
    """`pf.run(flow=my_function, ...)`: the function is the entry of a flex flow, in the current
    folder when its module is a file there, as promptflow does; a flow.flex.yaml there is left
    alone."""
    from promptflow.client import PFClient

    code = tmp_path / "code"
    greet = write_module(
        code,
        "nb_greeter",
        """
        from typing import TypedDict

        class Result(TypedDict):
            output: str

        def greet(text: str, punctuation: str = "!") -> Result:
            with open("suffix.txt") as f:  # relative to the flow's folder
                return Result(output="Hello %s%s %s" % (text, punctuation, f.read().strip()))
        """,
    ).greet
    (code / "suffix.txt").write_text(":)\n")
    (code / "flow.flex.yaml").write_text("entry: other:thing\n")
    data = write_jsonl(tmp_path / "d.jsonl", [{"name": "Ada"}, {"name": "Bob"}])
    monkeypatch.chdir(code)
    pf = PFClient()
    run = pf.run(flow=greet, data=str(data), column_mapping={"text": "${data.name}"})
    assert run.status == "Completed"
    assert run.name.startswith("greet_")
    details = pf.get_details(run)
    assert list(details["outputs.output"]) == ["Hello Ada! :)", "Hello Bob! :)"]
    assert list(details["inputs.text"]) == ["Ada", "Bob"]
    assert sorted(p.name for p in code.iterdir() if not p.name.startswith("__")) == [
        "flow.flex.yaml", "nb_greeter.py", "suffix.txt",
    ]
    assert (code / "flow.flex.yaml").read_text() == "entry: other:thing\n"


def test_pf_run_takes_a_function_from_elsewhere_in_a_temporary_folder(tmp_path, monkeypatch):
    from promptflow.client import PFClient

    shout = write_module(tmp_path / "lib", "nb_shouter", "def shout(text: str) -> str:\n    return text.upper()\n").shout
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}])
    run = PFClient().run(flow=shout, data=str(data))
    assert run.status == "Completed"
    assert list(PFClient().get_details(run)["outputs.output"]) == ["A"]
    assert list(elsewhere.iterdir()) == []
    assert all(os.path.exists(p) for p in sys.path if p.startswith(tempfile.gettempdir() + os.sep + "shout_"))


def test_pf_run_gives_a_class_entry_its_init(tmp_path, capfd):
    """`pf.run(flow=..., init={"model_config": AzureOpenAIModelConfiguration(...)})`, as promptflow's
    flex flow notebooks evaluate a run."""
    from promptflow.client import PFClient
    from promptflow.core import AzureOpenAIModelConfiguration

    flow = tmp_path / "judge"
    flow.mkdir()
    (flow / "judge.py").write_text(
        textwrap.dedent(
            """
            from promptflow.core import AzureOpenAIModelConfiguration

            class Judge:
                def __init__(self, model_config: AzureOpenAIModelConfiguration, strict: bool = False):
                    self.config = model_config
                    self.strict = strict

                def __call__(self, answer: str) -> dict:
                    print("judging", answer)
                    return {"deployment": self.config.azure_deployment, "long": len(answer) > 3,
                            "strict": self.strict}

                def __aggregate__(self, line_results: list) -> dict:
                    return {"long_share": sum(r["long"] for r in line_results) / len(line_results)}
            """
        ).lstrip()
    )
    (flow / "flow.flex.yaml").write_text("entry: judge:Judge\n")
    data = write_jsonl(tmp_path / "d.jsonl", [{"answer": "yes"}, {"answer": "certainly"}])
    config = AzureOpenAIModelConfiguration(
        azure_deployment="gpt-x", azure_endpoint="http://127.0.0.1:9", api_key="secret-key"
    )
    pf = PFClient()
    before = os.getcwd()
    run = pf.run(flow=str(flow / "flow.flex.yaml"), data=str(data), init={"model_config": config, "strict": True},
                 name="judged_with_init")
    assert run.name == "judged_with_init" and run.status == "Completed"
    # The caller's folder is kept, and the entry's prints reach the program's output.
    assert os.getcwd() == before
    assert "judging certainly" in capfd.readouterr().out
    details = pf.get_details(run)
    assert list(details["outputs.deployment"]) == ["gpt-x", "gpt-x"]
    assert list(details["outputs.strict"]) == [True, True]
    assert pf.get_metrics(run) == {"long_share": 0.5}
    assert "secret-key" not in (run.dir / "run.json").read_text()


def test_pf_run_with_stream_prints_the_log_and_a_summary(tmp_path, capsys):
    from promptflow.client import PFClient

    data = write_jsonl(tmp_path / "d.jsonl", [{"name": "Ada"}])
    run = PFClient().run(flow=str(FLOWS / "hello"), data=str(data), stream=True)
    out = capsys.readouterr().out
    assert "Run Summary" in out
    assert 'Run name: "%s"' % run.name in out
    assert 'Run status: "Completed"' in out
    assert "Completed: 1 completed, 0 failed" in out


def test_visualize_says_where_the_report_is_once(tmp_path, capfd):
    from promptflow.client import PFClient

    data = write_jsonl(tmp_path / "d.jsonl", [{"name": "Ada"}])
    pf = PFClient()
    run = pf.run(flow=str(FLOWS / "hello"), data=str(data))
    capfd.readouterr()
    html = tmp_path / "report.html"
    pf.visualize(run, html_path=str(html))
    out = capfd.readouterr().out
    assert out.count(str(html)) == 1, out
    assert run.name in html.read_text()


def test_load_flow_context_overrides_variant_connections_and_streaming(tmp_path):
    """`f.context = FlowContext(...)`, as promptflow's flow-as-function tutorial sets it."""
    from promptflow.client import load_flow
    from promptflow.entities import FlowContext

    f = load_flow(source=str(FLOWS / "hello"))
    assert f(name="Ada", count=1)["greeting"].startswith("Hello Ada")
    # A node takes the override instead of the flow input it references.
    f.context = FlowContext(overrides={"nodes.greeting_prompt.inputs.name": "Bob"})
    assert f(name="unknown", count=1)["greeting"].startswith("Hello Bob")
    f.context.overrides = {"nodes.format_greeting.inputs.suffix": "?"}
    assert f(name="Ada", count=1)["greeting"].endswith("?")
    assert f.stream(name="Ada", count=1)["greeting"].endswith("?")
    f.context = FlowContext()
    assert f(name="Ada", count=1)["greeting"].endswith("!")
    with pytest.raises(ValueError, match="nodes.<node>.inputs.<input>"):
        f.context = FlowContext(overrides={"inputs.name": "x"})
        f(name="Ada")

    # Streaming: a generator tool's output comes back as an iterator.
    flow_dir = tmp_path / "count"
    flow_dir.mkdir()
    (flow_dir / "flow.dag.yaml").write_text(
        textwrap.dedent(
            """
            inputs: {n: {type: int}}
            outputs: {words: {type: string, reference: "${count.output}"}}
            nodes:
            - {name: count, type: python, source: {type: code, path: count.py}, inputs: {n: "${inputs.n}"}}
            """
        )
    )
    (flow_dir / "count.py").write_text(
        "from promptflow.core import tool\n\n@tool\ndef count(n: int):\n"
        "    for i in range(n):\n        yield 'w%d ' % i\n"
    )
    counting = load_flow(source=str(flow_dir))
    assert counting(n=2) == {"words": "w0 w1 "}
    counting.context.streaming = True
    words = counting(n=2)["words"]
    assert not isinstance(words, str) and list(words) == ["w0 ", "w1 "]

    # A variant chosen in the context.
    variants = tmp_path / "variants"
    variants.mkdir()
    (variants / "flow.dag.yaml").write_text(
        textwrap.dedent(
            """
            inputs: {name: {type: string}}
            outputs: {text: {type: string, reference: "${greet.output}"}}
            nodes:
            - {name: greet, use_variants: true}
            node_variants:
              greet:
                default_variant_id: variant_0
                variants:
                  variant_0: {node: {type: prompt, source: {type: code, path: a.jinja2}, inputs: {name: "${inputs.name}"}}}
                  variant_1: {node: {type: prompt, source: {type: code, path: b.jinja2}, inputs: {name: "${inputs.name}"}}}
            """
        )
    )
    (variants / "a.jinja2").write_text("Hi {{name}}")
    (variants / "b.jinja2").write_text("Bye {{name}}")
    greet = load_flow(source=str(variants))
    assert greet(name="Ada") == {"text": "Hi Ada"}
    greet.context = FlowContext(variant="${greet.variant_1}")
    assert greet(name="Ada") == {"text": "Bye Ada"}


def test_pf_connections_store_and_read_promptflow_connection_objects(tmp_path):
    """`pf.connections`, as promptflow's get-started tutorial uses it: get (secrets masked unless
    asked for), create_or_update, list, delete."""
    from promptflow.client import PFClient
    from promptflow.connections import AzureOpenAIConnection, CustomConnection

    pf = PFClient()
    with pytest.raises(Exception, match="not found"):
        pf.connections.get(name="nb_aoai")
    stored = pf.connections.create_or_update(
        AzureOpenAIConnection(name="nb_aoai", api_key="sekret", api_base="http://127.0.0.1:9", api_version="2024-02-01")
    )
    assert isinstance(stored, AzureOpenAIConnection)
    assert (stored.name, stored.api_base, stored.api_version, stored.api_key) == (
        "nb_aoai", "http://127.0.0.1:9", "2024-02-01", "******",
    )
    assert "sekret" not in repr(stored)
    assert pf.connections.get(name="nb_aoai", with_secrets=True).api_key == "sekret"
    # A masked secret given back keeps the stored one, as in promptflow.
    stored.api_base = "http://127.0.0.1:10"
    pf.connections.create_or_update(stored)
    again = pf.connections.get("nb_aoai", with_secrets=True)
    assert (again.api_base, again.api_key) == ("http://127.0.0.1:10", "sekret")
    custom = pf.connections.create_or_update(CustomConnection(name="nb_custom", secrets={"token": "t"}, configs={"u": "v"}))
    assert isinstance(custom, CustomConnection) and custom.u == "v" and custom.token == "******"
    assert {"nb_aoai", "nb_custom"} <= {c.name for c in pf.connections.list()}
    pf.connections.delete("nb_custom")
    assert "nb_custom" not in {c.name for c in pf.connections.list()}
    # A flow runs on the stored connection by name, as the sluice command does.
    from sluice import home

    assert (home() / "connections" / "nb_aoai.json").stat().st_mode & 0o077 == 0


def test_pf_test_runs_one_node_or_a_flex_flow_with_init(tmp_path, capfd):
    from promptflow.client import PFClient

    pf = PFClient()
    before = os.getcwd()
    out = pf.test(flow=str(FLOWS / "hello"), inputs={"prompt": "hi"}, node="format_greeting")
    assert out == {"text": "hi!", "words": 1}
    assert os.getcwd() == before

    flow = tmp_path / "flex"
    flow.mkdir()
    (flow / "entry.py").write_text(
        "class Greeter:\n"
        "    def __init__(self, greeting: str):\n        self.greeting = greeting\n\n"
        "    def __call__(self, name: str) -> str:\n        print('greeting', name)\n"
        "        return '%s %s' % (self.greeting, name)\n"
    )
    (flow / "flow.flex.yaml").write_text("entry: entry:Greeter\n")
    capfd.readouterr()
    assert pf.test(flow=str(flow), inputs={"name": "Ada"}, init={"greeting": "Hej"}) == "Hej Ada"
    assert "greeting Ada" in capfd.readouterr().out
    from sluice import FlowRunError

    with pytest.raises(FlowRunError, match="node `nope`"):
        pf.test(flow=str(FLOWS / "hello"), inputs={}, node="nope")


SECRET = "sk-in-memory-secret-4242"


def connection_flow(tmp_path):
    """A flow whose Python tool takes a custom connection (named `not_stored` in the flow file)."""
    flow = tmp_path / "uses_connection"
    flow.mkdir()
    (flow / "flow.dag.yaml").write_text(
        "inputs:\n  q:\n    type: string\noutputs:\n  out:\n    type: object\n    reference: ${work.output}\n"
        "nodes:\n- name: work\n  type: python\n  source:\n    type: code\n    path: work.py\n"
        "  inputs:\n    q: ${inputs.q}\n    conn: not_stored\n"
    )
    (flow / "work.py").write_text(
        textwrap.dedent(
            """
            from promptflow.connections import CustomConnection
            from promptflow.core import tool

            @tool
            def work(q: str, conn: CustomConnection) -> dict:
                print("calling with", conn.secrets["key"])
                # The key, reversed here, so that the flow's snapshot does not hold it.
                return {"q": q, "base": conn.configs["base"], "key_ok": conn.secrets["key"][::-1] == %r}
            """ % SECRET[::-1]
        ).lstrip()
    )
    return flow


def files_holding(root, text):
    return [p for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def test_connection_objects_in_load_flow_and_flow_context(tmp_path, home):
    from promptflow.client import load_flow
    from promptflow.connections import CustomConnection
    from promptflow.entities import FlowContext

    flow = connection_flow(tmp_path)
    conn = CustomConnection(name="mine", secrets={"key": SECRET}, configs={"base": "b1"})
    f = load_flow(str(flow), connections={"work": {"conn": conn}})
    assert f(q="x")["out"] == {"q": "x", "base": "b1", "key_ok": True}
    other = CustomConnection(secrets={"key": "wrong"}, configs={"base": "b2"})
    f.context = FlowContext(connections={"work": {"conn": other}})
    assert f(q="y")["out"] == {"q": "y", "base": "b2", "key_ok": False}
    # Nothing was stored.
    assert not (home / "connections").is_dir() or not list((home / "connections").glob("mine*"))
    with pytest.raises(TypeError, match="connection"):
        load_flow(str(flow), connections={"work": {"conn": object()}})


def test_pf_run_takes_connections_by_name_and_as_objects_without_recording_secrets(tmp_path, home):
    from promptflow.client import PFClient
    from promptflow.connections import CustomConnection

    import sluice

    flow = connection_flow(tmp_path)
    data = write_jsonl(tmp_path / "d.jsonl", [{"q": "a"}, {"q": "b"}])
    pf = PFClient()
    conn = CustomConnection(name="mine", secrets={"key": SECRET}, configs={"base": "obj"})
    run = pf.run(flow=str(flow), data=str(data), connections={"work": {"conn": conn}}, name="conn_object_run")
    assert run.status == "Completed", run.record
    assert [o["out"] for o in run.outputs()] == [{"q": q, "base": "obj", "key_ok": True} for q in "ab"]
    assert not files_holding(home, SECRET)
    # A stored connection, by name.
    pf.connections.create_or_update(CustomConnection(name="stored_one", secrets={"key": "s3"}, configs={"base": "st"}))
    run = pf.run(flow=str(flow), data=str(data), connections={"work": {"conn": "stored_one"}})
    assert [o["out"]["base"] for o in run.outputs()] == ["st", "st"]
    # A loaded flow's connections go with it into a run; the run's own override them.
    loaded = sluice.load_flow(flow, connections={"work": {"conn": conn}})
    run = sluice.run(loaded, data)
    assert [o["out"]["base"] for o in run.outputs()] == ["obj", "obj"]
    run = sluice.run(loaded, data, connections={"work": {"conn": "stored_one"}})
    assert [o["out"]["base"] for o in run.outputs()] == ["st", "st"]
    assert not files_holding(home, SECRET)


def test_pf_run_gives_init_natively_not_through_the_cli(tmp_path, monkeypatch, home):
    from promptflow.client import PFClient

    import sluice
    from sluice import _native

    def no_cli(argv):
        raise AssertionError("the in-process CLI ran: %r" % (argv,))

    monkeypatch.setattr(_native, "cli_main", no_cli)
    flow = tmp_path / "greeter"
    flow.mkdir()
    (flow / "greeter.py").write_text(
        "class Greeter:\n"
        "    def __init__(self, greeting: str, api_key: str = ''):\n"
        "        self.greeting, self.keyed = greeting, bool(api_key)\n"
        "    def __call__(self, name: str) -> dict:\n"
        "        return {'text': '%s %s' % (self.greeting, name), 'keyed': self.keyed}\n"
    )
    (flow / "flow.flex.yaml").write_text("entry: greeter:Greeter\n")
    data = write_jsonl(tmp_path / "d.jsonl", [{"name": "Ada"}, {"name": "Bob"}])
    run = PFClient().run(flow=str(flow), data=str(data), init={"greeting": "Hi", "api_key": "sk-init-777777"},
                         max_concurrency=1)
    assert run.status == "Completed"
    assert [o["text"] for o in run.outputs()] == ["Hi Ada", "Hi Bob"]
    assert [o["keyed"] for o in run.outputs()] == [True, True]
    assert run.record["properties"]["init"]["greeting"] == "Hi"
    assert not files_holding(run.dir, "sk-init-777777")
    # sluice.run takes it too; without it, the class cannot be made.
    assert sluice.run(flow, data, init={"greeting": "Yo"}).outputs()[0]["text"] == "Yo Ada"
    try:
        failed = sluice.run(flow, data).status
    except (sluice.FlowLoadError, sluice.RunError):
        failed = "raised"
    assert failed in ("Failed", "raised")
