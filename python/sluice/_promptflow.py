"""Sluice's stand-in for the parts of ``promptflow`` that flow tools import.

Sluice installs these as ``promptflow``, ``promptflow.core``, ``promptflow.connections``,
``promptflow.entities``, ``promptflow.tracing``, ``promptflow.contracts.*`` and
``promptflow.tools.common`` (unless ``SLUICE_USE_PROMPTFLOW=1`` asks for an installed promptflow), so
tools written for promptflow run unchanged without it.

Connections follow promptflow's API: ``.name``, ``.type``, ``.configs``, ``.secrets``, item access to
any key, ``dict(conn)``, and the typed attributes of each connection class (``api_key``,
``api_base``, ...). Their ``repr`` never shows a secret.
"""

import dataclasses
import importlib.machinery
import re
import sys
import types
from typing import Any, Dict, Optional, Tuple

_SCRUBBED = "******"


# ---------------------------------------------------------------------------------------------------
# Connections.


class _Connection:
    """A named set of ``configs`` and ``secrets``."""

    TYPE = ""

    def __init__(
        self,
        name: Optional[str] = None,
        module: str = "promptflow.connections",
        configs: Optional[Dict[str, Any]] = None,
        secrets: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "type", self.TYPE)
        object.__setattr__(self, "class_name", "%sConnection" % self.TYPE)
        object.__setattr__(self, "module", module)
        object.__setattr__(self, "configs", dict(configs or {}))
        object.__setattr__(self, "secrets", dict(secrets or {}))
        object.__setattr__(self, "expiry_time", kwargs.get("expiry_time"))

    def keys(self):
        return list(self.configs) + list(self.secrets)

    def __getitem__(self, item):
        if item in self.secrets:
            return self.secrets[item]
        if item in self.configs:
            return self.configs[item]
        raise KeyError("Key %r not found in connection %r." % (item, self.name))

    def __contains__(self, item):
        return item in self.secrets or item in self.configs

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return len(self.configs) + len(self.secrets)

    def __repr__(self):
        shown = dict(self.configs)
        shown.update({k: _SCRUBBED for k in self.secrets})
        return "%s(name=%r, %s)" % (type(self).__name__, self.name, shown)

    __str__ = __repr__


class _StrongTypeConnection(_Connection):
    """A connection of a known type: ``CONFIGS`` names the configs read and written as attributes
    (``conn.api_base``), ``api_key`` is its secret."""

    CONFIGS: Tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        for key in cls.__dict__.get("CONFIGS", ()):
            default = "key" if key == "auth_mode" else None
            setattr(cls, key, _config_property(key, default))

    @property
    def api_key(self):
        return self.secrets.get("api_key")

    @api_key.setter
    def api_key(self, value):
        self.secrets["api_key"] = value


def _config_property(key, default=None):
    def get(self):
        return self.configs.get(key, default)

    def set(self, value):
        self.configs[key] = value

    return property(get, set)


class AzureOpenAIConnection(_StrongTypeConnection):
    CONFIGS = ("api_base", "api_type", "api_version", "auth_mode")
    TYPE = "AzureOpenAI"

    def __init__(
        self,
        api_base: str,
        api_key: Optional[str] = None,
        api_type: str = "azure",
        api_version: str = "2024-02-01",
        auth_mode: str = "key",
        **kwargs: Any,
    ):
        configs = {"api_base": api_base, "api_type": api_type, "api_version": api_version, "auth_mode": auth_mode}
        secrets = {"api_key": api_key} if auth_mode == "key" else {}
        super().__init__(configs=configs, secrets=secrets, **kwargs)


class OpenAIConnection(_StrongTypeConnection):
    CONFIGS = ("organization", "base_url")
    TYPE = "OpenAI"

    def __init__(self, api_key: str, organization: Optional[str] = None, base_url: Optional[str] = None, **kwargs):
        if base_url in ("", "_"):
            base_url = None
        super().__init__(configs={"organization": organization, "base_url": base_url}, secrets={"api_key": api_key}, **kwargs)

    # Sluice's (and most OpenAI-compatible servers') name for the endpoint.
    api_base = _config_property("base_url")


class ServerlessConnection(_StrongTypeConnection):
    CONFIGS = ("api_base",)
    TYPE = "Serverless"

    def __init__(self, api_key: str, api_base: str, **kwargs: Any):
        super().__init__(configs={"api_base": api_base}, secrets={"api_key": api_key}, **kwargs)


class SerpConnection(_StrongTypeConnection):
    TYPE = "Serp"

    def __init__(self, api_key: str, **kwargs: Any):
        super().__init__(secrets={"api_key": api_key}, **kwargs)


class _EmbeddingStoreConnection(_StrongTypeConnection):
    CONFIGS = ("api_base",)

    def __init__(self, api_key: str, api_base: str, **kwargs: Any):
        kwargs.setdefault("module", "promptflow_vectordb.connections")
        super().__init__(configs={"api_base": api_base}, secrets={"api_key": api_key}, **kwargs)


class QdrantConnection(_EmbeddingStoreConnection):
    TYPE = "Qdrant"


class WeaviateConnection(_EmbeddingStoreConnection):
    TYPE = "Weaviate"


class CognitiveSearchConnection(_StrongTypeConnection):
    CONFIGS = ("api_base", "api_version")
    TYPE = "CognitiveSearch"

    def __init__(self, api_key: str, api_base: str, api_version: str = "2023-11-01", **kwargs: Any):
        super().__init__(configs={"api_base": api_base, "api_version": api_version}, secrets={"api_key": api_key}, **kwargs)


class AzureContentSafetyConnection(_StrongTypeConnection):
    CONFIGS = ("endpoint", "api_version", "api_type")
    TYPE = "AzureContentSafety"

    def __init__(
        self, api_key: str, endpoint: str, api_version: str = "2023-10-01", api_type: str = "Content Safety", **kwargs
    ):
        configs = {"endpoint": endpoint, "api_version": api_version, "api_type": api_type}
        super().__init__(configs=configs, secrets={"api_key": api_key}, **kwargs)


class FormRecognizerConnection(AzureContentSafetyConnection):
    TYPE = "FormRecognizer"

    def __init__(
        self, api_key: str, endpoint: str, api_version: str = "2023-07-31", api_type: str = "Form Recognizer", **kwargs
    ):
        super().__init__(api_key=api_key, endpoint=endpoint, api_version=api_version, api_type=api_type, **kwargs)


class AzureAIServicesConnection(_StrongTypeConnection):
    CONFIGS = ("endpoint", "auth_mode")
    TYPE = "AzureAIServices"

    def __init__(self, endpoint: str, api_key: Optional[str] = None, auth_mode: str = "key", **kwargs: Any):
        secrets = {"api_key": api_key} if auth_mode == "key" else {}
        super().__init__(configs={"endpoint": endpoint, "auth_mode": auth_mode}, secrets=secrets, **kwargs)


class CustomConnection(_Connection):
    """Free-form ``configs`` and ``secrets``; each key is also an attribute."""

    TYPE = "Custom"

    def __init__(self, secrets: Optional[Dict[str, Any]] = None, configs: Optional[Dict[str, Any]] = None, **kwargs):
        super().__init__(secrets=secrets, configs=configs, **kwargs)

    def __getattr__(self, item):
        if item in ("secrets", "configs") or item.startswith("__"):
            raise AttributeError(item)
        if item in self.secrets:
            return self.secrets[item]
        if item in self.configs:
            return self.configs[item]
        raise AttributeError("%r has no key %r" % (self.name, item))

    def is_secret(self, item):
        return item in self.secrets

    def _convert_to_custom_strong_type(self, module=None, to_class=None):
        cls = getattr(module, to_class) if isinstance(to_class, str) else to_class
        return cls(configs=self.configs, secrets=self.secrets, name=self.name)


class CustomStrongTypeConnection(_Connection):
    """Base of a custom connection with typed keys: ``api_key: Secret`` is a secret, any other
    annotated name a config."""

    TYPE = "Custom"

    def __init__(self, secrets: Optional[Dict[str, Any]] = None, configs: Optional[Dict[str, Any]] = None, **kwargs):
        super().__init__(secrets=secrets, configs=configs, **kwargs)
        object.__setattr__(self, "module", kwargs.get("module", type(self).__module__))
        object.__setattr__(self, "custom_type", kwargs.get("custom_type") or type(self).__name__)

    @classmethod
    def _annotations(cls):
        found = {}
        for klass in reversed(cls.__mro__):
            found.update(getattr(klass, "__annotations__", {}) if klass.__module__ != __name__ else {})
        return found

    def __getattribute__(self, item):
        if not item.startswith("_"):
            annotations = type(self)._annotations()
            if item in annotations:
                store = "secrets" if _is_secret_type(annotations[item]) else "configs"
                values = object.__getattribute__(self, store)
                if item in values:
                    return values[item]
        return object.__getattribute__(self, item)

    def __setattr__(self, key, value):
        annotations = type(self)._annotations()
        if key in annotations:
            store = "secrets" if _is_secret_type(annotations[key]) else "configs"
            object.__getattribute__(self, store)[key] = value
            return
        object.__setattr__(self, key, value)


def _is_secret_type(annotation):
    return getattr(annotation, "__name__", annotation) == "Secret"


CONNECTION_CLASSES = [
    AzureOpenAIConnection,
    OpenAIConnection,
    ServerlessConnection,
    SerpConnection,
    QdrantConnection,
    WeaviateConnection,
    CognitiveSearchConnection,
    AzureContentSafetyConnection,
    FormRecognizerConnection,
    AzureAIServicesConnection,
    CustomConnection,
    CustomStrongTypeConnection,
]


# ---------------------------------------------------------------------------------------------------
# Model configurations, multimedia, tracing.


class _ModelConfiguration:
    def __repr__(self):
        shown = {k: (_SCRUBBED if k == "api_key" and v else v) for k, v in vars(self).items()}
        return "%s(%s)" % (type(self).__name__, ", ".join("%s=%r" % kv for kv in shown.items()))


def _model_configuration(first: str, *optional: str) -> type:
    """A dataclass of model settings: `first` is required, the rest and ``connection`` default to
    None."""
    fields = [(first, str)] + [(f, Optional[str], None) for f in optional + ("connection",)]
    return dataclasses.make_dataclass("_" + first, fields, bases=(_ModelConfiguration,), repr=False)


class AzureOpenAIModelConfiguration(_model_configuration("azure_deployment", "azure_endpoint", "api_version", "api_key")):
    @classmethod
    def from_connection(cls, connection, azure_deployment: str):
        return cls(azure_deployment, connection.api_base, connection.api_version, connection.api_key)


class OpenAIModelConfiguration(_model_configuration("model", "base_url", "api_key", "organization")):
    @classmethod
    def from_connection(cls, connection, model: str):
        return cls(model, connection.base_url, connection.api_key, connection.organization)


_IMAGE_SIGNATURES = (
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (8, b"WEBP", "image/webp"),
    (0, b"BM", "image/bmp"),
    (0, b"II*\x00", "image/tiff"),
    (0, b"MM\x00*", "image/tiff"),
    (0, b"\x00\x00\x01\x00", "image/x-icon"),
)


def _guess_image_type(value):
    for at, signature, mime in _IMAGE_SIGNATURES:
        if value[at : at + len(signature)] == signature:
            return mime
    return None


class PFBytes(bytes):
    """Bytes with a MIME type and, where they came from one, the source URL."""

    def __new__(cls, value: bytes, *args: Any, **kwargs: Any):
        return super().__new__(cls, value)

    def __init__(self, value: bytes, mime_type: str, source_url: Optional[str] = None):
        import hashlib

        super().__init__()
        self._hash = hashlib.sha1(value).hexdigest()[:8]
        self._mime_type = mime_type.lower()
        self._source_url = source_url

    @property
    def source_url(self):
        return self._source_url

    def to_base64(self, with_type: bool = False):
        import base64

        encoded = base64.b64encode(self).decode("utf-8")
        return "data:%s;base64,%s" % (self._mime_type, encoded) if with_type else encoded


class Image(PFBytes):
    """An image, as promptflow's ``promptflow.contracts.multimedia.Image``: ``str()`` is
    ``Image(<hash>)``, the placeholder a chat prompt turns into an image part."""

    def __init__(self, value: bytes, mime_type: Optional[str] = None, source_url: Optional[str] = None):
        if mime_type is None:
            mime_type = _guess_image_type(value) or "image/*"
        super().__init__(value, mime_type, source_url)

    def __str__(self):
        return "Image(%s)" % self._hash

    def __repr__(self):
        return "Image(%s)" % self._hash

    def serialize(self, encoder=None):
        return str(self) if encoder is None else encoder(self)


class FlowContext:
    """How a flow from ``load_flow`` is called (``flow.context = FlowContext(...)``): node
    ``connections`` (``{"node": {"connection": "name", "deployment_name": "..."}}``), the ``variant``
    (``"${node.variant_1}"``), node input ``overrides`` (``{"nodes.node.inputs.name": value}``) and
    ``streaming`` (streamed outputs as iterators of text)."""

    def __init__(
        self,
        *,
        connections: Optional[Dict[str, Dict[str, Any]]] = None,
        variant: Optional[str] = None,
        overrides: Optional[Dict[str, Any]] = None,
        streaming: bool = False,
    ):
        self.connections = connections or {}
        self.variant = variant
        self.overrides = overrides or {}
        self.streaming = streaming

    def __repr__(self):
        return "FlowContext(connections=%r, variant=%r, overrides=%r, streaming=%r)" % (
            self.connections, self.variant, self.overrides, self.streaming)


def start_trace(*args: Any, **kwargs: Any) -> None:
    """Accepted for compatibility; Sluice records node runs itself (see ``sluice run show``)."""


# ---------------------------------------------------------------------------------------------------
# promptflow.tools.common: the helpers tools call most.

_ROLE_LINE = re.compile(r"^\s*#?\s*(system|user|assistant|function|tool)\s*:\s*\n", re.IGNORECASE | re.MULTILINE)


def to_bool(value) -> bool:
    return value if isinstance(value, bool) else str(value).lower() == "true"


def render_jinja_template(prompt, trim_blocks=True, keep_trailing_newline=True, **kwargs):
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(trim_blocks=trim_blocks, keep_trailing_newline=keep_trailing_newline)
    return env.from_string(prompt).render(**kwargs)


def parse_chat(chat_str, images=None, valid_roles=None, image_detail="auto"):
    """Splits a rendered chat prompt at its role lines into ``{"role", "content"}`` messages."""
    valid = set(valid_roles or ("system", "user", "assistant", "function", "tool"))
    parts = _ROLE_LINE.split(chat_str)
    if parts[0].strip():
        raise ValueError(
            "The Chat API requires a specific format for prompt definition: a role line such as "
            "'# user:' before the first message."
        )
    messages = []
    for role, content in zip(parts[1::2], parts[2::2]):
        role = role.lower()
        if role not in valid:
            raise ValueError("role %r is not one of %s" % (role, sorted(valid)))
        messages.append({"role": role, "content": content.strip()})
    return messages


def normalize_connection_config(connection):
    """The keyword arguments an ``openai`` client takes for a connection."""
    if isinstance(connection, AzureOpenAIConnection) or type(connection).__name__ == "AzureOpenAIConnection":
        return {
            "api_key": connection.api_key,
            "api_version": connection.api_version,
            "azure_endpoint": connection.api_base,
        }
    return {
        "api_key": connection.api_key,
        "organization": getattr(connection, "organization", None),
        "base_url": getattr(connection, "base_url", None),
    }


def init_azure_openai_client(connection):
    """An ``openai.AzureOpenAI`` client for an Azure OpenAI connection (needs the ``openai`` package)."""
    from openai import AzureOpenAI

    return AzureOpenAI(**normalize_connection_config(connection))


def init_openai_client(connection):
    """An ``openai.OpenAI`` client for an OpenAI connection (needs the ``openai`` package)."""
    from openai import OpenAI

    return OpenAI(**normalize_connection_config(connection))


# ---------------------------------------------------------------------------------------------------
# promptflow.tools.aoai and promptflow.tools.openai: promptflow-tools' chat and completion, sent by
# Sluice's `llm` node, so a tool calling them sends what an `llm` node with the same inputs sends.

# promptflow's connection classes (their ``type``) by the type names Sluice's store uses.
_CONNECTION_TYPES = {
    "AzureOpenAI": "azure_open_ai",
    "OpenAI": "open_ai",
    "Custom": "custom",
    "Serverless": "serverless",
    "Serp": "serp",
    "CognitiveSearch": "cognitive_search",
    "AzureContentSafety": "azure_content_safety",
    "FormRecognizer": "form_recognizer",
    "Qdrant": "qdrant",
    "Weaviate": "weaviate",
    "AzureAIServices": "azure_ai_services",
}


def _connection_spec(connection: Any, name: str) -> Dict[str, Any]:
    """A connection object as the spec ``sluice connection create`` reads."""
    kind = _CONNECTION_TYPES.get(getattr(connection, "type", ""), "custom")
    configs = {k: v for k, v in dict(connection.configs).items() if v is not None}
    secrets = {k: v for k, v in dict(connection.secrets).items() if v is not None}
    if kind == "custom":
        return {"name": name, "type": kind, "configs": configs, "secrets": secrets}
    return dict(configs, name=name, type=kind, **secrets)


def _call_spec(connection) -> str:
    """The spec of ``connection`` as JSON, named after what it holds, so that the engine keeps one
    entry (in this process only) for each distinct connection a tool calls with."""
    import hashlib
    import json

    if isinstance(connection, str) or not all(hasattr(connection, a) for a in ("type", "configs", "secrets")):
        raise TypeError(
            "connection must be a promptflow connection object (AzureOpenAIConnection, OpenAIConnection, ...), "
            "not %s" % type(connection).__name__
        )
    spec = _connection_spec(connection, "")
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]
    base = "".join(c if c.isalnum() or c in "_-" else "_" for c in str(getattr(connection, "name", None) or ""))
    spec["name"] = "%s.tool-%s" % (base or "connection", digest)
    return json.dumps(spec, default=str)


def _call_llm(connection, api, prompt, model_key, model, params, variables):
    """Renders ``prompt`` with ``variables`` and asks the model through Sluice's ``llm`` node;
    parameters left at ``None`` (or an empty ``stop``, ``logit_bias`` or ``user``) are not sent, as
    promptflow-tools leaves them out."""
    import sluice

    inputs = dict(variables)
    if model:
        inputs[model_key] = model
    for key, value in params.items():
        if value is None or (key in ("stop", "logit_bias", "user", "suffix") and not value):
            continue
        inputs[key] = value
    stream = to_bool(inputs.get("stream", False))
    answer = sluice._call_llm(_call_spec(connection), api, str(prompt), inputs, stream)
    if stream:
        # The answer was read to its end; callers that iterate over chunks get it as one.
        return iter([answer] if answer else [])
    return answer


# The request parameters promptflow-tools' chat and completion take; other keyword arguments are the
# template's variables.
_CHAT_PARAMS = frozenset((
    "temperature", "top_p", "n", "stream", "stop", "max_tokens", "presence_penalty", "frequency_penalty",
    "logit_bias", "user", "function_call", "functions", "tool_choice", "tools", "response_format", "seed",
))
_COMPLETION_PARAMS = frozenset((
    "suffix", "max_tokens", "temperature", "top_p", "n", "stream", "logprobs", "echo", "stop",
    "presence_penalty", "frequency_penalty", "best_of", "logit_bias", "user",
))


def _split(names, kwargs):
    """The request's parameters the caller gave and the template's variables. A parameter left out
    is the `llm` node's default, which is promptflow-tools' default."""
    params = {}
    variables = {}
    for key, value in kwargs.items():
        (params if key in names else variables)[key] = value
    return params, variables


class _ToolProvider:
    """promptflow-tools' ``AzureOpenAI(connection)`` / ``OpenAI(connection)``."""

    _model_key = "model"

    def __init__(self, connection):
        self.connection = connection

    def chat(self, prompt, **kwargs):
        model = kwargs.pop(self._model_key, "")
        params, variables = _split(_CHAT_PARAMS, kwargs)
        return _call_llm(self.connection, "chat", prompt, self._model_key, model, params, variables)

    def completion(self, prompt, **kwargs):
        model = kwargs.pop(self._model_key, "")
        params, variables = _split(_COMPLETION_PARAMS, kwargs)
        return _call_llm(self.connection, "completion", prompt, self._model_key, model, params, variables)


class AzureOpenAI(_ToolProvider):
    _model_key = "deployment_name"


class OpenAI(_ToolProvider):
    pass


def _aoai_chat(connection, prompt, deployment_name="", **kwargs):
    return AzureOpenAI(connection).chat(prompt, deployment_name=deployment_name, **kwargs)


def _aoai_completion(connection, prompt, deployment_name="", **kwargs):
    return AzureOpenAI(connection).completion(prompt, deployment_name=deployment_name, **kwargs)


def _openai_chat(connection, prompt, model="", **kwargs):
    return OpenAI(connection).chat(prompt, model=model, **kwargs)


def _openai_completion(connection, prompt, model="text-davinci-003", **kwargs):
    return OpenAI(connection).completion(prompt, model=model, **kwargs)


# ---------------------------------------------------------------------------------------------------
# Installing the modules.


def install(sluice):
    """Registers the ``promptflow`` modules in ``sys.modules``, backed by ``sluice``'s tool API."""

    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__file__ = "<sluice promptflow stand-in>"
        m.__path__ = []
        # A spec, so that `importlib.util.find_spec("promptflow")` answers instead of raising.
        m.__spec__ = importlib.machinery.ModuleSpec(name, None, origin=m.__file__, is_package=True)
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    api = dict(
        tool=sluice.tool,
        log_metric=sluice.log_metric,
        log_flow_metric=sluice.log_metric,
        ToolProvider=sluice.ToolProvider,
        trace=sluice.trace,
    )
    conns = {cls.__name__: cls for cls in CONNECTION_CLASSES}
    connections = module("promptflow.connections", **conns)
    entities = module("promptflow.entities", FlowContext=FlowContext, **conns)
    types_mod = module(
        "promptflow.contracts.types",
        PromptTemplate=sluice.PromptTemplate,
        Secret=sluice.Secret,
        FilePath=sluice.FilePath,
    )
    multimedia = module("promptflow.contracts.multimedia", Image=Image, PFBytes=PFBytes)
    contracts = module("promptflow.contracts", types=types_mod, multimedia=multimedia)
    tracing = module("promptflow.tracing", trace=sluice.trace, start_trace=start_trace)
    model_configs = dict(
        AzureOpenAIModelConfiguration=AzureOpenAIModelConfiguration,
        OpenAIModelConfiguration=OpenAIModelConfiguration,
    )
    core = module("promptflow.core", **api, **model_configs, __getattr__=_prompty_from(sluice, "promptflow.core"))
    # `from promptflow.core._flow import Prompty`, as promptflow's own examples write it.
    core._flow = module("promptflow.core._flow", __getattr__=_prompty_from(sluice, "promptflow.core._flow"))
    internal = module("promptflow._internal", **api)
    legacy_tool = module("promptflow._core.tool", **api)
    legacy_core = module("promptflow._core", tool=legacy_tool)
    # Older flows import connection classes from the SDK's entities.
    sdk_entities = module("promptflow._sdk.entities", **conns)
    sdk = module("promptflow._sdk", entities=sdk_entities)
    helpers = (to_bool, render_jinja_template, parse_chat, normalize_connection_config)
    clients = (init_azure_openai_client, init_openai_client)
    common = module("promptflow.tools.common", **{f.__name__: f for f in helpers + clients})
    aoai = module("promptflow.tools.aoai", AzureOpenAI=AzureOpenAI, chat=_aoai_chat, completion=_aoai_completion)
    openai = module("promptflow.tools.openai", OpenAI=OpenAI, chat=_openai_chat, completion=_openai_completion)
    tools = module("promptflow.tools", common=common, aoai=aoai, openai=openai)
    # The notebook API (`PFClient`, `load_flow`) comes with the installed `sluice-flow` package.
    client = module("promptflow.client", __getattr__=_from_client("promptflow.client"))
    module(
        "promptflow",
        __getattr__=_from_client("promptflow"),
        client=client,
        core=core,
        tracing=tracing,
        connections=connections,
        contracts=contracts,
        entities=entities,
        tools=tools,
        _internal=internal,
        _core=legacy_core,
        _sdk=sdk,
        __version__="0.0.0+sluice",
        **api,
    )


def _prompty_from(sluice, where):
    """A module ``__getattr__`` giving ``Prompty``, which the engine adds to ``sluice`` when its
    Python side starts (``sluice.Prompty`` starts it)."""

    def __getattr__(name):
        if name != "Prompty":
            raise AttributeError("module %r has no attribute %r" % (where, name))
        try:
            return sluice.Prompty
        except AttributeError as e:
            raise AttributeError("%s.Prompty: %s" % (where, e)) from None

    return __getattr__


def _from_client(where):
    """A module ``__getattr__`` that finds promptflow's client API in ``sluice._client``."""

    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)
        import importlib

        try:
            client = importlib.import_module("sluice._client")
        except ImportError as e:
            raise AttributeError(
                "%s.%s needs the sluice-flow Python package (pip install sluice-flow): %s" % (where, name, e)
            ) from None
        if name not in client.__all__:
            raise AttributeError("module %r has no attribute %r" % (where, name))
        return getattr(client, name)

    return __getattr__
