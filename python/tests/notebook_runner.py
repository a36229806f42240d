"""Runs a Jupyter notebook's code cells in order, in one namespace, as a kernel would, and writes what
they produced as JSON: ``python notebook_runner.py NOTEBOOK RESULT_JSON``.

It needs neither Jupyter nor IPython. The notebook's folder is the working directory and comes first
on ``sys.path`` (as in a kernel started there). Only IPython magics are left out: a cell opening with
a cell magic (``%%capture`` around ``%pip install``) is skipped whole, and line magics (``%pip``,
``%load_ext``, ``%autoreload``) are dropped from their cells; every other line runs as written, and
anything else written for IPython fails the run. A cell whose last statement is an expression has that
value recorded, as a notebook shows it.

The result: ``cells`` (per code cell: ``index``, ``skipped``, ``dropped`` (the magic lines left out),
``value`` (the last expression, made JSON), ``stdout``, and ``exception`` for a cell that raised) and
``error`` (the traceback of the cell that failed, which stops the run, as "Run All" does). With
``--keep-going`` a failed cell does not stop the run; ``failed`` lists the tracebacks.
"""

import ast
import contextlib
import io
import json
import os
import sys
import traceback
import types

LINE_MAGICS = ("%pip", "%load_ext", "%autoreload", "%matplotlib", "%env")
CELL_MAGICS = ("%%capture",)


def plain(value):
    """A cell's value as JSON: DataFrames as their columns and rows, runs as their name and status."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # a pandas DataFrame
        return {
            "type": "DataFrame",
            "columns": [str(c) for c in value.columns],
            "rows": json.loads(value.to_json(orient="records")),
        }
    if hasattr(value, "status") and hasattr(value, "name"):  # a run
        return {"type": type(value).__name__, "name": value.name, "status": value.status}
    return {"type": type(value).__name__, "repr": repr(value)}


def split_magics(source):
    """The code to run and the magic lines left out; None for the code of a cell-magic cell."""
    lines = source.splitlines()
    first = next((line.strip() for line in lines if line.strip()), "")
    if first.startswith("%%"):
        if not first.startswith(CELL_MAGICS):
            raise ValueError("cell magic %r is not one the runner may skip" % first)
        return None, lines
    code, dropped = [], []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith(("%", "!")):
            if not stripped.startswith(LINE_MAGICS):
                raise ValueError("IPython line %r is not one the runner may skip" % stripped)
            dropped.append(line)
        else:
            code.append(line)
    return "\n".join(code), dropped


def run_cell(code, namespace, name):
    tree = ast.parse(code, name)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, name, "exec"), namespace)
    if last is not None:
        return eval(compile(last, name, "eval"), namespace)
    return None


def main(notebook, result_path, keep_going=False):
    with open(notebook, encoding="utf-8") as f:
        nb = json.load(f)
    folder = os.path.dirname(os.path.abspath(notebook))
    os.chdir(folder)
    sys.path.insert(0, folder)
    # As in IPython, the cells run in a `__main__` module of their own, with no `__file__`: functions
    # defined in a cell belong to `__main__` and are found there.
    main_module = types.ModuleType("__main__")
    main_module.__builtins__ = __builtins__
    sys.modules["__main__"] = main_module
    namespace = main_module.__dict__
    result = {"cells": [], "error": None}
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        code, dropped = split_magics(source)
        record = {"index": index, "skipped": code is None, "dropped": dropped, "value": None, "stdout": ""}
        result["cells"].append(record)
        if code is None:
            continue
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                value = run_cell(code, namespace, "<cell %d>" % index)
            record["value"] = plain(value)
        except BaseException as e:
            failure = "cell %d:\n%s\n%s" % (index, source, traceback.format_exc())
            record["exception"] = "%s: %s" % (type(e).__name__, e)
            if not keep_going:
                result["error"] = failure
                break
            result.setdefault("failed", []).append(failure)
        finally:
            record["stdout"] = out.getvalue()
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], keep_going="--keep-going" in sys.argv[3:])
