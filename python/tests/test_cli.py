"""The `sluice` command the wheel installs: the same CLI, run by this interpreter."""

import json
import os
import subprocess
import sys

from conftest import FLOWS


def run(*args, **kwargs):
    # Away from the source tree, whose `python/sluice` would shadow the installed package.
    kwargs.setdefault("cwd", "/")
    return subprocess.run(list(args), capture_output=True, text=True, **kwargs)


def test_the_console_script_runs_the_cli(sluice_cmd):
    out = run(sluice_cmd, "--version")
    assert out.returncode == 0 and out.stdout.startswith("sluice ")
    out = run(sluice_cmd, "flow", "test", "--flow", str(FLOWS / "hello"), "--inputs", "name=Ada")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["greeting"].startswith("Hello Ada")


def test_exit_statuses_are_the_binarys(sluice_cmd, tmp_path):
    assert run(sluice_cmd, "no-such-command").returncode == 2
    assert run(sluice_cmd, "flow", "validate", "--flow", str(tmp_path)).returncode == 2


def test_python_dash_m_sluice_and_tool_prints_stay_off_stdout(tmp_path):
    flow = tmp_path / "f"
    flow.mkdir()
    (flow / "flow.dag.yaml").write_text(
        "inputs: {x: {type: string}}\n"
        "outputs: {y: {type: string, reference: '${t.output}'}}\n"
        "nodes:\n- name: t\n  type: python\n  source: {type: code, path: t.py}\n  inputs: {x: '${inputs.x}'}\n"
    )
    (flow / "t.py").write_text(
        "from sluice import tool\n\n@tool\ndef t(x: str) -> str:\n    print('noise')\n    return x * 2\n"
    )
    out = run(sys.executable, "-m", "sluice", "flow", "test", "--flow", str(flow), "--inputs", "x=ab")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"y": "abab"}
    assert "noise" in out.stderr


def test_isolated_tools_run_in_workers_of_this_interpreter(sluice_cmd, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"name": "Ada"}\n{"name": "Bob"}\n')
    out = run(
        sluice_cmd, "-q", "run", "create", "--flow", str(FLOWS / "hello"), "--data", str(data),
        "--isolation", "process", "--workers", "1",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "Completed"


def _best_x86_level():
    """The widest x86-64 level this CPU has, from /proc/cpuinfo: 'avx512', 'avx2' or 'base'."""
    try:
        flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split()
    except (OSError, StopIteration):
        return None
    if "avx512f" in flags:
        return "avx512"
    return "avx2" if "avx2" in flags else "base"


def test_llama_cpp_runs_from_the_package_on_the_cpu_variant_for_this_cpu(sluice_cmd):
    out = run(sluice_cmd, "model", "info", "default")
    assert out.returncode == 0, out.stderr
    cpu = json.loads(out.stdout)["details"]["cpu_backend"]
    # The variant is the one the wheel ships beside its extension, not one from the build folder.
    installed = run(sys.executable, "-c", "import sluice, os; print(os.path.dirname(sluice.__file__))")
    package = installed.stdout.strip()
    assert os.path.dirname(cpu["path"]) == package, cpu
    assert os.path.basename(cpu["path"]) == "libggml-cpu-%s.so" % cpu["variant"]
    level = _best_x86_level()
    if level == "avx512":
        assert cpu["variant"] in AVX512_VARIANTS, cpu
    elif level == "avx2":
        assert cpu["variant"] in ("haswell", "alderlake"), cpu


AVX512_VARIANTS = ("skylakex", "cannonlake", "cascadelake", "icelake", "cooperlake", "zen4", "sapphirerapids")
