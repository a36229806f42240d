"""Sluice's side of the embedded interpreter: loading tools, calling them, describing results.

This module is compiled into the `sluice` binary and runs inside its embedded CPython. Rust calls the
functions below; user tools never see it.
"""

import collections.abc
import contextvars
import dataclasses
import enum
import importlib.util
import inspect
import os
import re
import sys
import threading
import traceback
import types
import typing

_HERE = __file__
_loop = None
_loop_lock = threading.Lock()
_modules = {}


# ---------------------------------------------------------------------------------------------------
# Start-up: the `sluice` module and, when promptflow is not installed, a small `promptflow` stand-in.


def install(sluice_source, promptflow_source, virtual_env, hosted=False):
    if hosted:
        _install_hosted()
        return
    if virtual_env:
        _add_virtualenv(virtual_env)
    # The stand-in is always Sluice's own copy, so its connection classes match what Rust hands over.
    compat = types.ModuleType("sluice._promptflow")
    compat.__file__ = "<sluice/_promptflow.py>"
    exec(compile(promptflow_source, "sluice/_promptflow.py", "exec"), compat.__dict__)
    try:
        import sluice  # noqa: F401  (the user's installed package wins)
    except ImportError:
        module = types.ModuleType("sluice")
        module.__file__ = "<sluice>"
        sys.modules["sluice"] = module
        sys.modules["sluice._promptflow"] = compat
        exec(compile(sluice_source, "sluice/__init__.py", "exec"), module.__dict__)
    sys.modules["sluice"]._promptflow = compat
    sys.modules["sluice._promptflow"] = compat
    if not (_wants_real_promptflow() and importlib.util.find_spec("promptflow") is not None):
        compat.install(sys.modules["sluice"])
    # Tools' prints must not mix with the flow's JSON output on stdout.
    sys.stdout = sys.stderr


def _install_hosted():
    """Inside the user's own interpreter (the installed `sluice` package): its modules are the ones
    the program already imported, and an installed promptflow is left alone."""
    import sluice
    import sluice._promptflow as compat

    if "promptflow" in sys.modules:
        return
    for finder in sys.meta_path:
        if getattr(finder, "_sluice_stand_in", False) or not hasattr(finder, "find_spec"):
            continue
        try:
            if finder.find_spec("promptflow", None) is not None:
                return
        except Exception:  # a broken finder is not ours to fix
            continue
    compat.install(sluice)


def _wants_real_promptflow():
    """`SLUICE_USE_PROMPTFLOW=1` lets an installed promptflow serve `import promptflow`."""
    return os.environ.get("SLUICE_USE_PROMPTFLOW", "").strip().lower() in ("1", "true", "yes", "on")


def _add_virtualenv(root):
    import site

    version = "python%d.%d" % sys.version_info[:2]
    for sub in ("lib/%s/site-packages" % version, "Lib/site-packages"):
        path = os.path.join(root, sub)
        if os.path.isdir(path) and path not in sys.path:
            site.addsitedir(path)


# ---------------------------------------------------------------------------------------------------
# Loading a tool file.


class LoadError(Exception):
    """A tool file that cannot be used; the message says why and what to do."""


def _is_tool(obj):
    return callable(obj) and any(
        hasattr(obj, marker) for marker in ("__sluice_tool__", "__tool", "_ToolInvoker__tool")
    )


def _is_provider(cls):
    return inspect.isclass(cls) and any(base.__name__ == "ToolProvider" for base in cls.__mro__[1:])


def _import_file(path, flow_dir):
    path = os.path.abspath(path)
    if path in _modules:
        return _modules[path]
    if flow_dir not in sys.path:
        sys.path.insert(0, flow_dir)
    own_dir = os.path.dirname(path)
    if own_dir not in sys.path:  # a tool brought in by additional_includes imports its siblings
        sys.path.append(own_dir)
    stem = os.path.splitext(os.path.basename(path))[0]
    name = stem if stem.isidentifier() and stem not in sys.modules else "__sluice_tool_%d__" % len(_modules)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    _modules[path] = module
    return module


def _type_name(annotation, default):
    empty = inspect.Parameter.empty
    if annotation is empty or annotation is None:
        if default is empty or default is None:
            return "object"
        annotation = type(default)
    if isinstance(annotation, str):
        return {"int": "int", "float": "double", "bool": "bool", "str": "string", "list": "list"}.get(
            annotation, "object"
        )
    origin = typing.get_origin(annotation)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _type_name(args[0], empty)
        if args and all(_is_connection(a) for a in args):
            return "connection"
        return "object"
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "int"
    if annotation is float:
        return "double"
    if annotation is str:
        return "string"
    if annotation is list:
        return "list"
    if inspect.isclass(annotation):
        name = annotation.__name__
        special = {"PromptTemplate": "prompt_template", "Secret": "secret", "FilePath": "file_path", "Image": "image"}
        if name in special:
            return special[name]
        if issubclass(annotation, enum.Enum):
            return "string"
        if _is_connection(annotation):
            return "connection"
    return "object"


def _is_connection(cls):
    return inspect.isclass(cls) and any(c.__name__.endswith("Connection") for c in cls.__mro__)


def _coerce(value, type_name, name):
    """promptflow's ValueType.parse for a literal (§3.2), used for ToolProvider init inputs."""
    if value is None or value == "":
        return value
    try:
        if type_name == "int":
            return int(value)
        if type_name == "double":
            return float(value)
        if type_name == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise ValueError(value)
        if type_name == "string":
            return str(value)
    except (TypeError, ValueError):
        raise LoadError("init input `%s` of value %r does not match the expected type '%s'" % (name, value, type_name))
    return value


def set_environment(variables):
    """Applies the flow's environment_variables to os.environ, as promptflow does before running."""
    os.environ.update(variables)


def _describe(func):
    params = []
    connections = {}
    kwargs = False
    for p in inspect.signature(func).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            kwargs = True
            continue
        if p.kind is p.VAR_POSITIONAL:
            continue
        has_default = p.default is not inspect.Parameter.empty
        type_name = _type_name(p.annotation, p.default)
        params.append((p.name, type_name, has_default))
        if type_name == "connection":
            connections[p.name] = p.annotation
    return params, kwargs, connections


def load_tool(path, flow_dir, literals, references, stored_connections=None, package=None, prompt=None):
    """Imports a tool file (or, with `package`, a package tool by its id) and finds its one tool.
    Returns a dict describing it.

    `stored_connections` maps the connection names among `literals` to (type, configs, secrets), for
    `ToolProvider.__init__` parameters annotated with a connection class. `prompt`, a template's text,
    is bound to the tool's `PromptTemplate` parameter (a `package_with_prompt` node).
    """
    if package is not None:
        # As promptflow: a tool an installed package lists is loaded from its metadata (module,
        # class and function), and its inputs' declared types apply; any other id is an import path.
        meta = _listed_package_tool(package)
        if meta is not None:
            func, cls, method = _import_package_tool(_listed_path(package, meta), flow_dir)
        else:
            try:
                func, cls, method = _import_package_tool(package, flow_dir)
            except LoadError:
                _warn_unread_listings()
                if package.startswith("promptflow."):
                    # Not one Sluice maps onto its own kinds, and the stand-in does not have it.
                    raise LoadError(
                        "package tool `%s` is one of promptflow's own tools, which Sluice does not run; "
                        "set SLUICE_USE_PROMPTFLOW=1 to run tools with an installed promptflow" % package
                    )
                raise
        declared = (meta or {}).get("inputs")
        return _tool_info(
            func, cls, method, literals, references, stored_connections, prompt, package, declared
        )
    module = _import_file(path, flow_dir)
    functions = [
        (name, obj)
        for name, obj in vars(module).items()
        if inspect.isfunction(obj) and _is_tool(obj) and getattr(obj, "__module__", None) == module.__name__
    ]
    providers = []
    for name, cls in vars(module).items():
        if _is_provider(cls) and getattr(cls, "__module__", None) == module.__name__:
            methods = [m for m, f in vars(cls).items() if inspect.isfunction(f) and _is_tool(f)]
            providers.extend((cls, m) for m in methods)
    found = [f"{n}()" for n, _ in functions] + [f"{c.__name__}.{m}()" for c, m in providers]
    if not found:
        raise LoadError(
            "no tool found in %s: mark one function with @tool (from promptflow.core import tool, "
            "or from sluice import tool)" % os.path.basename(path)
        )
    if len(found) > 1:
        raise LoadError(
            "%s defines %d tools (%s); a tool file must define exactly one"
            % (os.path.basename(path), len(found), ", ".join(found))
        )
    if functions:
        return _tool_info(functions[0][1], None, None, literals, references, stored_connections, None, None)
    cls, method = providers[0]
    return _tool_info(None, cls, method, literals, references, stored_connections, None, None)


def _import_package_tool(tool_id, flow_dir):
    """Finds a package tool by its id, `module.function` or `module.Class.method`: (function, None,
    None) or (None, class, method)."""
    if flow_dir not in sys.path:
        sys.path.insert(0, flow_dir)
    parts = tool_id.split(".")
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        raise LoadError(
            "package tool `%s` is not a tool id; write `module.function` or `module.Class.method`" % tool_id
        )
    missing = None
    for split in (len(parts) - 1, len(parts) - 2):
        if split < 1:
            break
        module_name = ".".join(parts[:split])
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
                missing = e.name
                continue
            raise
        target = module
        for attr in parts[split:]:
            target = getattr(target, attr, None)
            if target is None:
                raise LoadError(
                    "module `%s` (%s) has no `%s`, so package tool `%s` is not found; check the tool id, "
                    "or upgrade the package that provides it"
                    % (module_name, getattr(module, "__file__", "?"), ".".join(parts[split:]), tool_id)
                )
        if split == len(parts) - 1:
            if not callable(target) or inspect.isclass(target):
                raise LoadError("package tool `%s` is not a function" % tool_id)
            return target, None, None
        cls = getattr(module, parts[-2])
        if not inspect.isclass(cls):
            raise LoadError("package tool `%s`: `%s` is not a class" % (tool_id, parts[-2]))
        return None, cls, parts[-1]
    raise LoadError(
        "package tool `%s`: module `%s` cannot be imported by the tools' Python (prefix %s); `pip install` "
        "the package that provides it into that Python, or activate the virtualenv that has it"
        % (tool_id, missing, sys.prefix)
    )


_listing = None
_listing_failures = []


def _package_listing():
    """The tools installed packages list under their `package_tools` entry points, by id and by
    `deprecated_tools` alias: {id: (metadata, entry point name)}. Read once per process; an entry
    point that fails is remembered, and reported when a tool is not found."""
    global _listing
    if _listing is not None:
        return _listing
    from importlib import metadata

    try:
        points = metadata.entry_points(group="package_tools")
    except TypeError:  # Python < 3.10
        points = metadata.entry_points().get("package_tools", [])
    listing = {}
    for point in points:
        try:
            tools = point.load()()
        except Exception as e:  # noqa: BLE001 - one broken package does not hide the others' tools
            _listing_failures.append(
                "the package_tools entry point `%s` failed: (%s) %s" % (point.name, type(e).__name__, e)
            )
            continue
        if not isinstance(tools, dict):
            continue
        for key, meta in tools.items():
            if not isinstance(meta, dict):
                continue
            listing.setdefault(key, (meta, point.name))
            for old in meta.get("deprecated_tools") or []:
                listing.setdefault(old, (meta, point.name))
    _listing = listing
    return listing


def _warn_unread_listings():
    for failure in _listing_failures:
        sys.stderr.write("warning: %s\n" % failure)
    del _listing_failures[:]


def _listed_package_tool(tool_id):
    """The metadata of a tool an installed package lists, by its id or a `deprecated_tools` alias, as
    promptflow finds package tools; None if none lists it."""
    found = _package_listing().get(tool_id)
    return None if found is None else dict(found[0], _entry_point=found[1])


def _listed_path(tool_id, meta):
    """The import path (`module.function` or `module.Class.function`) a listed tool's metadata gives."""
    if not meta.get("module") or not meta.get("function"):
        raise LoadError(
            "package tool `%s`, listed by the package_tools entry point `%s`, has no `module` or "
            "`function` in its metadata" % (tool_id, meta["_entry_point"])
        )
    parts = [meta["module"], meta.get("class_name"), meta["function"]]
    return ".".join(p for p in parts if p)


# The value types a tool's metadata may declare, which convert literal inputs as the tool's
# annotations would.
_DECLARED_VALUE_TYPES = ("string", "int", "double", "bool", "list", "object")


def _declared_input(declared, name, module_name, tool_id):
    """What a listed tool's metadata declares for input `name`: (type name, connection annotation or
    None), as promptflow reads it (the first of `type`; a connection type makes the input a
    connection of any of the types listed, or of the `custom_type` class in the tool's module); None
    where it declares nothing that converts a value."""
    spec = declared.get(name) if isinstance(declared, dict) else None
    if not isinstance(spec, dict):
        return None
    listed = spec.get("type")
    if isinstance(listed, str):
        listed = [listed]
    if not listed or not isinstance(listed, list):
        return None
    first = str(listed[0])
    if first.endswith("Connection"):
        custom = spec.get("custom_type")
        if custom:
            module = sys.modules.get(module_name)
            names, where = list(custom), "module `%s`" % module_name
        else:
            module = importlib.import_module("promptflow.connections")
            names, where = [str(t) for t in listed], "promptflow.connections"
        classes = [getattr(module, n, None) for n in names]
        missing = [n for n, c in zip(names, classes) if not _is_connection(c)]
        if missing:
            raise LoadError(
                "package tool `%s`: input `%s` is declared a %s, which %s does not have"
                % (tool_id, name, " or ".join(missing), where)
            )
        return "connection", classes[0] if len(classes) == 1 else typing.Union[tuple(classes)]
    if first.lower() in _DECLARED_VALUE_TYPES:
        return first.lower(), None
    return None


def _bind_prompt(func, prompt, tool_id):
    """`func` with its `PromptTemplate` parameter set to the template text, as promptflow calls a
    `package_with_prompt` tool; returns the function and that parameter's name."""
    names = [
        p.name
        for p in inspect.signature(func).parameters.values()
        if _type_name(p.annotation, p.default) == "prompt_template"
    ]
    if not names:
        raise LoadError(
            "package tool `%s` takes no prompt template: a `package_with_prompt` tool needs a parameter "
            "annotated with PromptTemplate (from promptflow.contracts.types import PromptTemplate)" % tool_id
        )
    template = sys.modules["sluice"].PromptTemplate(prompt)

    def call(**kwargs):
        kwargs[names[0]] = template
        return func(**kwargs)

    return call, names[0]


def _tool_info(func, cls, method, literals, references, stored_connections, prompt, tool_id, declared=None):
    """Describes a tool function, or the method `method` of `cls` made with its `__init__` inputs.
    `declared`, a listed tool's `inputs` metadata, gives the inputs' types where it declares them."""
    consumed = []
    module_name = getattr(cls if func is None else func, "__module__", None)
    if func is None:
        init_kwargs = {}
        for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            if p.name in references:
                raise LoadError(
                    "input `%s` initialises %s and must be a literal, not a reference" % (p.name, cls.__name__)
                )
            value = literals.get(p.name)
            # An empty literal is no input, as for the tool's other inputs.
            if value is not None and value != "":
                type_name, annotation = _type_name(p.annotation, p.default), p.annotation
                found = _declared_input(declared, p.name, module_name, tool_id)
                if found is not None:
                    type_name, annotation = found[0], found[1] or annotation
                if type_name == "connection" and isinstance(value, str):
                    stored = (stored_connections or {}).get(value)
                    if stored is None:
                        raise LoadError("init input `%s`: connection `%s` does not exist" % (p.name, value))
                    try:
                        init_kwargs[p.name] = make_connection(p.name, annotation, value, *stored)
                    except ConnectionTypeError as e:
                        raise LoadError("init input `%s`: %s" % (p.name, e))
                else:
                    init_kwargs[p.name] = _coerce(value, type_name, p.name)
                consumed.append(p.name)
            elif p.name in literals:
                consumed.append(p.name)
            elif p.default is inspect.Parameter.empty:
                raise LoadError("%s needs init input `%s`; set it as a literal node input" % (cls.__name__, p.name))
        func = getattr(cls(**init_kwargs), method)
    params, kwargs, connections = _describe(func)
    for i, (name, type_name, has_default) in enumerate(params):
        found = _declared_input(declared, name, module_name, tool_id)
        if found is None:
            continue
        params[i] = (name, found[0], has_default)
        if found[1] is not None:
            connections[name] = found[1]
        else:
            connections.pop(name, None)
    call = func
    if prompt is not None:
        call, prompt_param = _bind_prompt(func, prompt, tool_id)
        params = [p for p in params if p[0] != prompt_param]
    return {
        "func": call,
        "name": getattr(func, "__qualname__", getattr(func, "__name__", "tool")),
        "params": params,
        "kwargs": kwargs,
        "consumed": consumed,
        "connections": connections,
    }


# ---------------------------------------------------------------------------------------------------
# Flex flow entries.

_flex = {}


def _jsonable(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_jsonable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _jsonable(v) for k, v in value.items())
    return False


def _flex_init_arg(cls, p, value, stored_connections):
    """An `__init__` argument as promptflow passes it: model configurations and connections made
    from their dict or name, text for an int, float or bool parameter converted, other values as
    given."""
    annotation = p.annotation
    name = getattr(annotation, "__name__", "")
    if name in ("AzureOpenAIModelConfiguration", "OpenAIModelConfiguration") and isinstance(value, dict):
        try:
            return annotation(**value)
        except TypeError as e:
            raise LoadError("init argument `%s` of %s is not a valid %s: %s" % (p.name, cls.__name__, name, e))
    if _type_name(annotation, p.default) == "connection" and isinstance(value, str):
        stored = (stored_connections or {}).get(value)
        if stored is None:
            raise LoadError("init argument `%s` of %s: connection `%s` does not exist" % (p.name, cls.__name__, value))
        return make_connection(p.name, annotation, value, *stored)
    type_name = _type_name(annotation, p.default)
    if isinstance(value, str) and type_name in ("int", "double", "bool"):
        # `--init key=value` gives text; a typed parameter gets its type, as flow inputs do.
        return _coerce(value, type_name, p.name)
    return value


def load_flex(module_name, attr, flow_dir, init, init_from, stored_connections=None):
    """Imports a flex flow's entry (`module:function` or `module:Class`, made with `init`) and
    describes what each line calls. The same entry and init give the same instance."""
    key = (module_name, attr, flow_dir, repr(sorted(init.items())))
    if key in _flex:
        return _flex[key]
    if flow_dir not in sys.path:
        sys.path.insert(0, flow_dir)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise LoadError(
                "entry module `%s` is not found: no %s.py in %s and no installed module of that name"
                % (module_name, module_name.replace(".", "/"), flow_dir)
            )
        raise
    target = getattr(module, attr, None)
    if target is None:
        raise LoadError(
            "module `%s` (%s) has no `%s`" % (module_name, getattr(module, "__file__", "?"), attr)
        )
    aggregate = None
    if inspect.isclass(target):
        kwargs = {}
        params = [
            p
            for p in list(inspect.signature(target.__init__).parameters.values())[1:]
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]
        takes_any = any(
            p.kind is p.VAR_KEYWORD for p in inspect.signature(target.__init__).parameters.values()
        )
        names = {p.name for p in params}
        unknown = [k for k in init if k not in names and not takes_any]
        if unknown:
            raise LoadError(
                "%s gives %s, which %s.__init__ does not take (it takes: %s)"
                % (
                    init_from or "the init arguments",
                    ", ".join("`%s`" % k for k in unknown),
                    target.__name__,
                    ", ".join(p.name for p in params) or "nothing",
                )
            )
        for p in params:
            if p.name in init:
                kwargs[p.name] = _flex_init_arg(target, p, init[p.name], stored_connections)
            elif p.default is inspect.Parameter.empty:
                raise LoadError(
                    "%s.__init__ needs `%s`; give it with --init (a JSON object or file), `init:` in the "
                    "run file, or `sample.init` in the flow" % (target.__name__, p.name)
                )
        for k in init:
            if k not in names:
                kwargs[k] = init[k]
        instance = target(**kwargs)
        if not callable(instance):
            raise LoadError("class %s has no __call__ method to run each line" % target.__name__)
        func = instance.__call__
        agg = getattr(instance, "__aggregate__", None)
        if callable(agg):
            aggregate = agg
        name = "%s.__call__" % target.__name__
    else:
        if not callable(target):
            raise LoadError("`%s:%s` is not a function or class" % (module_name, attr))
        if init:
            raise LoadError(
                "`%s:%s` is a function; init arguments (%s) are for class entries"
                % (module_name, attr, ", ".join("`%s`" % k for k in init))
            )
        func = target
        name = getattr(target, "__qualname__", attr)
    params, kwargs_ok, _ = _describe(func)
    defaults = {}
    for p in inspect.signature(func).parameters.values():
        if p.default is not inspect.Parameter.empty and _jsonable(p.default):
            defaults[p.name] = p.default
    info = {
        "func": _flex_call(func),
        "aggregate": _flex_aggregator(aggregate, target.__name__) if aggregate is not None else None,
        "name": name,
        "params": params,
        "kwargs": kwargs_ok,
        "defaults": defaults,
    }
    _flex[key] = info
    return info


class _AttrDict(dict):
    """A line output as `__aggregate__` receives it: a dict whose keys are also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name)


def _flex_output(result):
    """A flex entry's return value as a line output: a dataclass becomes its dict."""
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    return result


def _flex_call(func):
    """What each line calls: the entry, its dataclass result as a dict."""

    def call(**kwargs):
        return _flex_output(func(**kwargs))

    return call


def _flex_aggregator(aggregate, owner):
    """What the aggregation node calls: `__aggregate__` over the line outputs (dicts with attribute
    access too); each key of the dict it returns becomes a run metric. A failure leaves the run
    without metrics and is reported as a warning, as promptflow does."""

    def call(line_results):
        wrapped = [_AttrDict(r) if isinstance(r, dict) else r for r in line_results]
        try:
            result = aggregate(wrapped)
        except Exception as e:  # noqa: BLE001 - a failed aggregation is a warning
            sys.stderr.write(
                "warning: %s.__aggregate__ failed, so the run has no metrics: (%s) %s\n"
                % (owner, type(e).__name__, e)
            )
            return None
        if isinstance(result, dict):
            for k, v in result.items():
                sys.modules["sluice"].log_metric(str(k), v)
        return result

    return call


# ---------------------------------------------------------------------------------------------------
# Connections as tool arguments.


class ConnectionTypeError(Exception):
    """A stored connection whose type the tool's parameter does not take."""


def _connection_classes(annotation):
    origin = typing.get_origin(annotation)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        return [a for a in typing.get_args(annotation) if _is_connection(a)]
    return [annotation] if _is_connection(annotation) else []


def _is_custom_strong_type(cls):
    return any(base.__name__ == "CustomStrongTypeConnection" for base in cls.__mro__[1:])


def _kind_of(cls):
    """The stored connection type a class stands for: AzureOpenAIConnection -> azure_open_ai."""
    if _is_custom_strong_type(cls) or cls.__name__ == "CustomStrongTypeConnection":
        return "custom"
    stem = cls.__name__[: -len("Connection")]
    words = re.findall(r"[A-Z]+(?=[A-Z][a-z]|$)|[A-Z]?[a-z]+|\d+", stem)
    return "_".join(w.lower() for w in words)


def make_connection(param, annotation, name, kind, configs, secrets):
    """The object a tool's connection parameter receives for the stored connection `name`."""
    classes = _connection_classes(annotation)
    matching = [c for c in classes if _kind_of(c) == kind]
    if not matching:
        wanted = " or ".join(c.__name__ for c in classes) or "a connection"
        raise ConnectionTypeError(
            "parameter `%s` takes %s, but connection `%s` is of type %s" % (param, wanted, name, kind)
        )
    cls = matching[0]
    if cls.__name__ == "CustomConnection" or _is_custom_strong_type(cls):
        return cls(configs=dict(configs), secrets=dict(secrets), name=name)
    values = dict(configs)
    values.update(secrets)
    if cls.__name__ == "OpenAIConnection" and "api_base" in values:
        values.setdefault("base_url", values.pop("api_base"))
    for reserved in ("name", "module", "configs", "secrets"):
        values.pop(reserved, None)
    sig = inspect.signature(cls.__init__)
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        values = {k: v for k, v in values.items() if k in sig.parameters}
    return cls(name=name, **values)


# ---------------------------------------------------------------------------------------------------
# Calling a tool.


def _event_loop():
    """One asyncio loop for the process, on its own thread: independent async tools overlap on it.
    asyncio is imported only here, when the first async tool runs: it costs every cold start tens of
    milliseconds otherwise."""
    import asyncio

    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run():
                asyncio.set_event_loop(_loop)
                _loop.call_soon(ready.set)
                _loop.run_forever()

            threading.Thread(target=run, name="sluice-asyncio", daemon=True).start()
            ready.wait()
    return _loop


async def _with_sink(coro, sink):
    var = sys.modules["sluice"]._metric_sink
    token = var.set(sink)
    try:
        return await coro
    finally:
        var.reset(token)


def _sync_from_async(agen):
    import asyncio

    loop = _event_loop()
    while True:
        try:
            yield asyncio.run_coroutine_threadsafe(agen.__anext__(), loop).result()
        except StopAsyncIteration:
            return


def invoke(func, kwargs, sink):
    """Calls a tool. Returns (True, result) or (False, error details).

    Each call runs in a context of its own: a context variable a tool sets does not reach the next
    call that runs on the same thread."""
    return contextvars.Context().run(_invoke, func, kwargs, sink)


def _invoke(func, kwargs, sink):
    var = sys.modules["sluice"]._metric_sink
    token = var.set(sink)
    try:
        result = func(**kwargs)
        if inspect.iscoroutine(result):
            import asyncio

            result = asyncio.run_coroutine_threadsafe(_with_sink(result, sink), _event_loop()).result()
        if inspect.isasyncgen(result):
            result = _sync_from_async(result)
        return True, result
    except BaseException as e:  # noqa: BLE001 - every user failure becomes a line failure
        return False, error_details(e)
    finally:
        var.reset(token)


def error_details(exc):
    tb = traceback.TracebackException.from_exception(exc)
    frames = [f for f in tb.stack if f.filename != _HERE]
    tb.stack = traceback.StackSummary.from_list(frames)
    text = "".join(tb.format())
    last = frames[-1] if frames else None
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": text,
        "filename": last.filename if last else None,
        "lineno": last.lineno if last else None,
        "name": last.name if last else None,
    }


# ---------------------------------------------------------------------------------------------------
# Values that are not JSON.


def is_stream(obj):
    return isinstance(obj, collections.abc.Iterator) and not isinstance(obj, (str, bytes, dict, list))


def to_plain(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump()
    return None


_MISSING = object()


def lookup(obj, key):
    if isinstance(key, int):
        try:
            return obj[key]
        except Exception:  # noqa: BLE001
            return _MISSING
    if hasattr(obj, "__getitem__") and not isinstance(obj, (str, bytes)):
        try:
            return obj[key]
        except Exception:  # noqa: BLE001
            pass
    return getattr(obj, key, _MISSING)


def is_missing(obj):
    return obj is _MISSING
