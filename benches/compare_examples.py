"""promptflow's own example flows, `pf flow test` vs `sluice flow test`, side by side (driven by
benches/compare_examples.sh, which extracts the examples and finds both runners).

One deterministic fake OpenAI-compatible server on loopback answers both runners: chat completions
(whole and streamed), completions and embeddings, under OpenAI's paths (`/v1/...`) and Azure
OpenAI's (`/openai/deployments/<name>/...`). Each answer is derived from a hash of the request's
messages / prompt / input, so the same request gets the same answer whichever runner sent it. Every
request is recorded with its path, body and the runner that sent it (each runner's connections carry
their own API key: `pf-key` or `sluice-key`).

For each example the same inputs (a JSON file) and, for a flex flow's class entry, the same `__init__`
arguments go to both runners, each in a new process, one flow at a time; then the outputs and the
request bodies are compared (see NORMALISED below for what is normalised first).

    python3 benches/compare_examples.py --examples DIR --work DIR --pf PF --sluice SLUICE [--only SUBSTR]
"""

import argparse
import base64
import collections
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import_yaml_error = None
try:
    import yaml  # noqa: F401
except ImportError as e:
    import_yaml_error = e

NORMALISED = """\
- the example's folder: each runner gets its own copy of examples/, so the copy's path in an output or a
  request is replaced by <examples>;
- request bodies are compared as JSON (key order ignored), as a multiset per flow (the order in which
  a flow's concurrent nodes call the server is ignored); when they differ, they are compared again with
  fields whose value is the API's own default left out (n=1, stream=false, temperature=1, top_p=1,
  zero penalties, empty logit_bias/user, null stop/max_tokens), and a difference only there is named
  as such (the outcome stays `requests differ`); headers are not compared;
- outputs: nothing else; each runner's .promptflow/flow.output.json (else the last JSON object on
  its stdout) is compared as JSON."""

KEYRING_BACKEND = '''import json, os
from keyring.backend import KeyringBackend

class FileKeyring(KeyringBackend):
    priority = 1
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "keyring.json")

    def _load(self):
        try:
            return json.load(open(self.path))
        except (OSError, ValueError):
            return {}

    def get_password(self, service, username):
        return self._load().get(service + "/" + username)

    def set_password(self, service, username, password):
        d = self._load()
        d[service + "/" + username] = password
        json.dump(d, open(self.path, "w"))

    def delete_password(self, service, username):
        d = self._load()
        d.pop(service + "/" + username, None)
        json.dump(d, open(self.path, "w"))
'''

# Examples whose output is random by design: a difference there is named as such.
RANDOM = {
    "flows/standard/conditional-flow-for-if-else": "content_safety_check.py returns random.choice([True, False]), "
                                                   "which picks the branch",
}

SECTIONS = ["flows/standard", "flows/chat", "flows/evaluation", "flex-flows", "prompty"]


# --------------------------------------------------------------------------------------------------
# The fake server


def _digest(value):
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _text_of(body):
    """The request's prompt as one text: chat messages' contents, or the completion prompt."""
    if "messages" in body:
        parts = []
        for m in body.get("messages") or []:
            c = m.get("content")
            if isinstance(c, list):
                c = " ".join(p.get("text", "") for p in c if isinstance(p, dict))
            parts.append(str(c or ""))
        return "\n".join(parts)
    p = body.get("prompt")
    return p if isinstance(p, str) else json.dumps(p)


def answer_for(body):
    """A deterministic answer: a JSON object when the request asks for JSON (`response_format`
    json_object, or "json" in the prompt), a 1-5 score when the prompt asks for a score or rating,
    else a sentence naming the hash of the prompt."""
    text = _text_of(body)
    h = _digest(body.get("messages") if "messages" in body else body.get("prompt"))
    low = text.lower()
    score = int(h[:8], 16) % 5 + 1
    fmt = body.get("response_format")
    if (isinstance(fmt, dict) and fmt.get("type") == "json_object") or "json" in low:
        # The keys the examples' JSON prompts ask for (scores, apology, name/answer, a question).
        return json.dumps({"score": score, "explanation": "Fake explanation %s." % h[:12],
                           "reason": "Fake reason %s." % h[:12], "answer": "Fake answer %s." % h[:12],
                           "apology": score % 2, "name": "Fake name %s" % h[:6],
                           "question": "Fake question %s?" % h[:12]})
    if re.search(r"\b(score|rating|rate)\b", low):
        return str(score)
    return "Fake answer %s." % h[:12]


class FakeServer:
    def __init__(self):
        self.records = []  # (runner, path, body)
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send(404, {"error": {"message": "no GET route %s" % self.path}})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?", 1)[0]
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    self._send(400, {"error": {"message": "the body is not JSON"}})
                    return
                key = self.headers.get("api-key") or (self.headers.get("Authorization") or "").replace("Bearer ", "", 1)
                runner = "pf" if key.startswith("pf-") else "sluice" if key.startswith("sluice-") else "unknown:" + key[:12]
                with fake.lock:
                    fake.records.append((runner, path, body))
                if path.endswith("/chat/completions"):
                    text = answer_for(body)
                    if body.get("stream"):
                        return self._stream_chat(body, text)
                    n = int(body.get("n") or 1)
                    return self._send(200, {
                        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0,
                        "model": body.get("model") or "fake",
                        "choices": [{"index": i, "finish_reason": "stop", "logprobs": None,
                                     "message": {"role": "assistant", "content": text}} for i in range(n)],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                    })
                if path.endswith("/completions"):
                    text = answer_for(body)
                    if body.get("stream"):
                        return self._stream_completion(body, text)
                    return self._send(200, {
                        "id": "cmpl-fake", "object": "text_completion", "created": 0,
                        "model": body.get("model") or "fake",
                        "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                    })
                if path.endswith("/embeddings"):
                    inputs = body.get("input")
                    inputs = inputs if isinstance(inputs, list) else [inputs]
                    data = []
                    for i, item in enumerate(inputs):
                        h = _digest(item)
                        # Multiples of 1/256: exact in float32, so the base64 answer (float32, which
                        # the openai package asks for) and the JSON one carry the same numbers.
                        vec = [((int(h[(j * 2) % 64:(j * 2) % 64 + 2], 16) + j) % 256) / 256.0 - 0.5 for j in range(1536)]
                        if body.get("encoding_format") == "base64":
                            vec = base64.b64encode(struct.pack("<%df" % len(vec), *vec)).decode()
                        data.append({"object": "embedding", "index": i, "embedding": vec})
                    return self._send(200, {"object": "list", "data": data, "model": body.get("model") or "fake",
                                            "usage": {"prompt_tokens": 5, "total_tokens": 5}})
                self._send(404, {"error": {"message": "no route %s" % path}})

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _events(self, chunks):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for chunk in chunks:
                    self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.write(b"data: [DONE]\n\n")
                self.close_connection = True

            def _stream_chat(self, body, text):
                pieces = [text[: len(text) // 2], text[len(text) // 2:]]
                self._events([{
                    "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
                    "model": body.get("model") or "fake",
                    "choices": [{"index": 0, "delta": ({"role": "assistant", "content": p} if i == 0 else {"content": p}),
                                 "finish_reason": None if i == 0 else "stop"}],
                } for i, p in enumerate(pieces)])

            def _stream_completion(self, body, text):
                pieces = [text[: len(text) // 2], text[len(text) // 2:]]
                self._events([{
                    "id": "cmpl-fake", "object": "text_completion", "created": 0, "model": body.get("model") or "fake",
                    "choices": [{"index": 0, "text": p, "finish_reason": None if i == 0 else "stop", "logprobs": None}],
                } for i, p in enumerate(pieces)])

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a client closing its connection early is no news

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def mark(self):
        with self.lock:
            return len(self.records)

    def since(self, mark):
        with self.lock:
            return list(self.records[mark:])


# --------------------------------------------------------------------------------------------------
# Examples, their inputs and init


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def prompty_front(path):
    text = open(path, encoding="utf-8").read()
    m = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, re.S)
    return yaml.safe_load(m.group(1)) if m else {}


def first_jsonl(path):
    """The first record of a .jsonl file (a file holding pretty-printed objects too: the first one)."""
    text = open(path, encoding="utf-8").read()
    for line in text.splitlines():
        if line.strip():
            try:
                return json.loads(line)
            except ValueError:
                break
    return json.JSONDecoder().raw_decode(text.lstrip())[0]


def resolve_sample(value, folder):
    if isinstance(value, str) and value.startswith("${file:"):
        p = os.path.join(folder, value[len("${file:"):-1])
        return first_jsonl(p) if p.endswith(".jsonl") else json.load(open(p, encoding="utf-8"))
    return value


def discover(examples):
    """[(name, kind, flow path relative to examples, note)], in SECTIONS order."""
    found = []
    for section in SECTIONS:
        base = os.path.join(examples, section)
        if not os.path.isdir(base):
            continue
        for d in sorted(os.listdir(base)):
            folder = os.path.join(base, d)
            rel = os.path.join(section, d)
            if not os.path.isdir(folder):
                continue
            if os.path.exists(os.path.join(folder, "flow.dag.yaml")):
                found.append((rel, "dag", rel, None))
            elif os.path.exists(os.path.join(folder, "flow.flex.yaml")):
                found.append((rel, "flex", rel, None))
            else:
                prompties = sorted(f for f in os.listdir(folder) if f.endswith(".prompty"))
                if prompties:
                    for p in prompties:
                        found.append((os.path.join(rel, p), "prompty", os.path.join(rel, p), None))
                else:
                    found.append((rel, "none", rel, "no flow.dag.yaml / flow.flex.yaml / .prompty (%s)"
                                  % ", ".join(sorted(os.listdir(folder)))[:80]))
    return found


def inputs_and_init(examples, kind, rel, defaults_as_inputs=False):
    """The inputs (a dict) and init (a dict or None) both runners get, and where they came from.
    With `defaults_as_inputs`, a DAG flow without data gets its inputs' defaults (as this script reads
    the YAML) written into the inputs file, instead of leaving each runner to read them."""
    path = os.path.join(examples, rel)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    init = None
    if kind == "dag":
        flow = load_yaml(os.path.join(folder, "flow.dag.yaml"))
        declared = flow.get("inputs") or {}
        data = os.path.join(folder, "data.jsonl")
        if os.path.exists(data):
            row = first_jsonl(data) or {}
            picked = {k: v for k, v in row.items() if k in declared}
            return picked, None, "data.jsonl line 1 (declared inputs only)"
        if defaults_as_inputs:
            given = {k: v["default"] for k, v in declared.items() if isinstance(v, dict) and "default" in v}
            return given, None, "the inputs' defaults, given as inputs"
        return {}, None, "the inputs' defaults"
    if kind == "flex":
        flow = load_yaml(os.path.join(folder, "flow.flex.yaml"))
        sample = resolve_sample(flow.get("sample"), folder) or {}
        if os.path.exists(os.path.join(folder, "init.json")):
            init = json.load(open(os.path.join(folder, "init.json"), encoding="utf-8"))
        elif isinstance(sample, dict) and sample.get("init"):
            init = sample["init"]
        if os.path.exists(os.path.join(folder, "sample.json")):
            return json.load(open(os.path.join(folder, "sample.json"), encoding="utf-8")), init, "sample.json"
        if isinstance(sample, dict) and "inputs" in sample:
            return sample["inputs"], init, "flow.flex.yaml sample"
        if os.path.exists(os.path.join(folder, "data.jsonl")):
            return first_jsonl(os.path.join(folder, "data.jsonl")), init, "data.jsonl line 1"
        return {}, init, "none"
    front = prompty_front(path)
    sample = resolve_sample(front.get("sample"), folder)
    if isinstance(sample, dict):
        return sample, None, "the prompty's sample"
    if os.path.exists(os.path.join(folder, "sample.json")):
        return json.load(open(os.path.join(folder, "sample.json"), encoding="utf-8")), None, "sample.json"
    return {}, None, "the inputs' defaults"


# --------------------------------------------------------------------------------------------------
# Connections


def connection_yamls(base, runner):
    key = runner + "-key"
    return {
        "open_ai_connection": {"name": "open_ai_connection", "type": "azure_open_ai", "api_key": key,
                               "api_base": base, "api_type": "azure", "api_version": "2024-06-01"},
        "azure_open_ai_connection": {"name": "azure_open_ai_connection", "type": "azure_open_ai", "api_key": key,
                                     "api_base": base, "api_type": "azure", "api_version": "2024-06-01"},
        "aoai_gpt4v_connection": {"name": "aoai_gpt4v_connection", "type": "azure_open_ai", "api_key": key,
                                  "api_base": base, "api_type": "azure", "api_version": "2024-06-01"},
        "basic_custom_connection": {"name": "basic_custom_connection", "type": "custom",
                                    "configs": {"api_type": "azure", "api_version": "2023-03-15-preview", "api_base": base},
                                    "secrets": {"api_key": key}},
        "custom_connection": {"name": "custom_connection", "type": "custom",
                              "configs": {"api_type": "azure", "api_version": "2023-03-15-preview", "api_base": base,
                                          "azure_endpoint": base},
                              "secrets": {"api_key": key, "openai_api_key": key}},
        "my_llm_connection": {"name": "my_llm_connection", "type": "custom",
                              "configs": {"azure_endpoint": base}, "secrets": {"openai_api_key": key}},
    }


def create_connections(args, base, envs):
    out = {}
    for runner, exe in (("pf", args.pf), ("sluice", args.sluice)):
        folder = os.path.join(args.work, "connections", runner)
        os.makedirs(folder, exist_ok=True)
        for name, spec in connection_yamls(base, runner).items():
            path = os.path.join(folder, name + ".yaml")
            with open(path, "w") as f:
                yaml.safe_dump(spec, f)
            r = subprocess.run([exe, "connection", "create", "--file", path], env=envs[runner],
                               capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                out.setdefault(runner, []).append("%s: %s" % (name, (r.stderr or r.stdout).strip()[-300:]))
    return out


# --------------------------------------------------------------------------------------------------
# Running and comparing


def last_json(text):
    """The last top-level JSON object printed on stdout."""
    dec = json.JSONDecoder()
    best = None
    i = 0
    while True:
        j = text.find("{", i)
        if j < 0:
            break
        try:
            value, end = dec.raw_decode(text, j)
            best = value
            i = end
        except ValueError:
            i = j + 1
    return best


def find_output_file(flow_dir):
    hits = []
    for dirpath, _, files in os.walk(flow_dir):
        if ".promptflow" in dirpath.split(os.sep) and "flow.output.json" in files:
            p = os.path.join(dirpath, "flow.output.json")
            hits.append((os.path.getmtime(p), p))
    return max(hits)[1] if hits else None


def clear_artifacts(flow_dir):
    for dirpath, dirs, _ in os.walk(flow_dir):
        if ".promptflow" in dirs:
            shutil.rmtree(os.path.join(dirpath, ".promptflow"), ignore_errors=True)
            dirs.remove(".promptflow")


def run_one(args, runner, exe, env, root, rel, kind, inputs_file, init_file, server):
    flow = os.path.join(root, rel)
    flow_dir = flow if os.path.isdir(flow) else os.path.dirname(flow)
    clear_artifacts(flow_dir)
    cmd = [exe, "flow", "test", "--flow", flow]
    cmd += ["--input", inputs_file] if runner == "pf" else ["--inputs", inputs_file]
    if init_file:
        cmd += ["--init", init_file]
    mark = server.mark()
    t0 = time.time()
    try:
        r = subprocess.run(cmd, env=env, cwd=flow_dir, capture_output=True, text=True, timeout=args.timeout)
        rc, stdout, stderr = r.returncode, r.stdout, r.stderr
    except subprocess.TimeoutExpired as e:
        rc, stdout, stderr = 124, (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""), "timed out after %ss" % args.timeout
    secs = time.time() - t0
    time.sleep(0.2)
    reqs = server.since(mark)
    output = None
    if rc == 0:
        out_file = find_output_file(flow_dir)
        if out_file:
            try:
                output = json.load(open(out_file, encoding="utf-8"))
            except ValueError:
                output = None
        if output is None:
            output = last_json(stdout)
    log_dir = os.path.join(args.work, "logs", rel.replace("/", "__"))
    os.makedirs(log_dir, exist_ok=True)
    with open(os.path.join(log_dir, runner + ".stdout"), "w") as f:
        f.write(stdout)
    with open(os.path.join(log_dir, runner + ".stderr"), "w") as f:
        f.write(stderr)
    with open(os.path.join(log_dir, runner + ".requests.json"), "w") as f:
        json.dump([{"runner": a, "path": p, "body": b} for a, p, b in reqs], f, indent=1)
    with open(os.path.join(log_dir, runner + ".output.json"), "w") as f:
        json.dump(output, f, indent=1)
    return {"rc": rc, "output": output, "requests": reqs, "stderr": stderr, "stdout": stdout, "secs": secs,
            "cmd": " ".join(cmd)}


def normalise(value, roots):
    if isinstance(value, str):
        for r in roots:
            value = value.replace(r, "<examples>")
        return value
    if isinstance(value, list):
        return [normalise(v, roots) for v in value]
    if isinstance(value, dict):
        return {k: normalise(v, roots) for k, v in value.items()}
    return value


def short(value, n=70):
    s = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return s if len(s) <= n else s[: n - 3] + "..."


def diff_values(a, b, path="", out=None, limit=4):
    """Where two JSON values differ: ['path: pf=... sluice=...']"""
    out = [] if out is None else out
    if len(out) >= limit:
        return out
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            p = path + "." + k if path else k
            if k not in b:
                out.append("%s only in pf (%s)" % (p, short(a[k], 50)))
            elif k not in a:
                out.append("%s only in sluice (%s)" % (p, short(b[k], 50)))
            elif a[k] != b[k]:
                diff_values(a[k], b[k], p, out, limit)
            if len(out) >= limit:
                break
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                diff_values(x, y, "%s[%d]" % (path, i), out, limit)
            if len(out) >= limit:
                break
        return out
    out.append("%s: pf=%s sluice=%s" % (path or "(whole)", short(a), short(b)))
    return out


def last_error_line(text):
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    for l in reversed(lines):
        if re.search(r"error|exception|fail", l, re.I):
            return l[:300]
    return lines[-1][:300] if lines else "(no output)"


# Values the OpenAI API takes when a field is left out; one runner sending them explicitly and the other
# not is the same request.
API_DEFAULTS = {"n": 1, "stream": False, "temperature": 1.0, "top_p": 1.0, "presence_penalty": 0.0,
                "frequency_penalty": 0.0, "logit_bias": {}, "user": "", "stop": None, "max_tokens": None}


def strip_defaults(body):
    return {k: v for k, v in body.items() if not (k in API_DEFAULTS and API_DEFAULTS[k] == v)}


def compare(pf, sl, roots):
    """(outcome, summary lines)"""
    if pf["rc"] != 0:
        return "pf fails (skipped)", ["pf: " + last_error_line(pf["stderr"] + "\n" + pf["stdout"])] + \
            (["sluice: rc=%d %s" % (sl["rc"], last_error_line(sl["stderr"])) if sl["rc"] else "sluice: ran"])
    if sl["rc"] != 0:
        return "sluice fails", ["sluice rc=%d: %s" % (sl["rc"], last_error_line(sl["stderr"] + "\n" + sl["stdout"]))]
    notes = []
    pa = normalise(pf["output"], roots)
    sa = normalise(sl["output"], roots)
    out_same = pa == sa
    if not out_same:
        notes += ["output " + d for d in diff_values(pa, sa)]
    canon = lambda reqs: collections.Counter(json.dumps({"path": p, "body": normalise(b, roots)}, sort_keys=True) for _, p, b in reqs)
    cp, cs = canon(pf["requests"]), canon(sl["requests"])
    other = [r for r, _, _ in pf["requests"] if r != "pf"] + [r for r, _, _ in sl["requests"] if r != "sluice"]
    if other:
        notes.append("requests tagged with another runner's key: %s" % sorted(set(other)))
    req_same = cp == cs
    if not req_same:
        # Would they match if values equal to the API's own defaults were left out?
        dp = canon([(r, p, strip_defaults(b)) for r, p, b in pf["requests"]])
        ds = canon([(r, p, strip_defaults(b)) for r, p, b in sl["requests"]])
        if dp == ds:
            def defaults_sent(reqs):
                return set(k for _, _, b in reqs for k, v in b.items() if k in API_DEFAULTS and API_DEFAULTS[k] == v)
            dpf, dsl = defaults_sent(pf["requests"]), defaults_sent(sl["requests"])
            notes.append("requests differ only in fields set to the API's defaults: pf alone sends %s; sluice alone sends %s"
                         % (", ".join("%s=%s" % (k, json.dumps(API_DEFAULTS[k])) for k in sorted(dpf - dsl)) or "none",
                            ", ".join("%s=%s" % (k, json.dumps(API_DEFAULTS[k])) for k in sorted(dsl - dpf)) or "none"))
        else:
            cp, cs = dp, ds
            notes.append("(compared below with fields set to the API's defaults left out)")
    if not req_same:
        only_pf = sorted((cp - cs).elements())
        only_sl = sorted((cs - cp).elements())
        notes.append("requests: pf sent %d, sluice %d; %d only from pf, %d only from sluice"
                     % (sum(cp.values()), sum(cs.values()), len(only_pf), len(only_sl)))
        for a, b in zip(only_pf, only_sl):
            notes += ["request " + d for d in diff_values(json.loads(a), json.loads(b))]
            break
        if len(only_pf) != len(only_sl):
            for extra in (only_pf[len(only_sl):] or only_sl[len(only_pf):])[:1]:
                notes.append("unpaired request: %s" % short(json.loads(extra), 160))
    else:
        notes.append("%d request(s), same bodies" % sum(cp.values()))
    if out_same and req_same:
        return "match", notes
    if not req_same:
        return "requests differ", notes if out_same else ["(outputs differ too)"] + notes
    return "output differs", notes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--pf", required=True)
    ap.add_argument("--sluice", required=True)
    ap.add_argument("--venv", help="the virtualenv Sluice's Python tools import from (VIRTUAL_ENV)")
    ap.add_argument("--only", action="append", help="run only examples whose path contains this")
    ap.add_argument("--timeout", type=int, default=240)
    ap.add_argument("--json", help="write the results here as JSON")
    ap.add_argument("--site", help="a folder of extra packages both runners' Python tools import (PYTHONPATH)")
    ap.add_argument("--defaults-as-inputs", action="store_true",
                    help="give a DAG flow without data its inputs' defaults as inputs (read here, not by each runner)")
    args = ap.parse_args()
    if import_yaml_error:
        sys.exit("PyYAML is needed: %s" % import_yaml_error)

    server = FakeServer()
    base = server.url
    roots = {}
    for runner in ("pf", "sluice"):
        roots[runner] = os.path.join(args.work, runner, "examples")
        shutil.copytree(args.examples, roots[runner], symlinks=True)
        # flow-with-symlinks' README: run create_symlinks.py first (it links web-classification's files).
        setup = os.path.join(roots[runner], "flows/standard/flow-with-symlinks/create_symlinks.py")
        if os.path.exists(setup):
            subprocess.run([sys.executable, setup], check=False)

    envs = {}
    common = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_OPENAI_", "VIRTUAL_ENV"))}
    if args.site:
        common["PYTHONPATH"] = os.pathsep.join(p for p in (args.site, os.environ.get("PYTHONPATH")) if p)
    common.update({"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
                   "PF_DISABLE_TRACING": "true", "PROMPTFLOW_DISABLE_TRACING": "true",
                   "AZURE_OPENAI_ENDPOINT": base, "AZURE_OPENAI_API_BASE": base, "OPENAI_BASE_URL": base + "/v1",
                   "AZURE_OPENAI_API_VERSION": "2024-06-01"})
    # pf keeps its connections' encryption key in the system keyring, which a headless machine lacks:
    # a file-backed keyring backend in the work folder stands in (PYTHON_KEYRING_BACKEND).
    keyring_dir = os.path.join(args.work, "keyring")
    os.makedirs(keyring_dir, exist_ok=True)
    with open(os.path.join(keyring_dir, "bench_keyring.py"), "w") as f:
        f.write(KEYRING_BACKEND)
    env = dict(common, HOME=os.path.join(args.work, "pf-home"), AZURE_OPENAI_API_KEY="pf-key", OPENAI_API_KEY="pf-key",
               PYTHON_KEYRING_BACKEND="bench_keyring.FileKeyring",
               PYTHONPATH=os.pathsep.join(p for p in (keyring_dir, common.get("PYTHONPATH")) if p))
    os.makedirs(env["HOME"], exist_ok=True)
    envs["pf"] = env
    env = dict(common, SLUICE_HOME=os.path.join(args.work, "sluice-home"), AZURE_OPENAI_API_KEY="sluice-key",
               OPENAI_API_KEY="sluice-key")
    if args.venv:
        env["VIRTUAL_ENV"] = args.venv
    envs["sluice"] = env
    subprocess.run([args.pf, "config", "set", "telemetry.enabled=false"], env=envs["pf"], capture_output=True)
    bad = create_connections(args, base, envs)
    for runner, errs in bad.items():
        for e in errs:
            print("connection create failed (%s): %s" % (runner, e), file=sys.stderr)

    results = []
    examples = discover(args.examples)
    if args.only:
        examples = [e for e in examples if any(o in e[0] for o in args.only)]
    inputs_dir = os.path.join(args.work, "inputs")
    os.makedirs(inputs_dir, exist_ok=True)
    for name, kind, rel, note in examples:
        if kind == "none":
            results.append({"example": name, "outcome": "not a flow", "notes": [note]})
            continue
        try:
            inputs, init, source = inputs_and_init(args.examples, kind, rel, args.defaults_as_inputs)
        except Exception as e:  # an example whose sample cannot be read still runs, on its defaults
            inputs, init, source = {}, None, "the inputs' defaults (reading its sample failed: %s)" % e
        stem = rel.replace("/", "__")
        inputs_file = os.path.join(inputs_dir, stem + ".inputs.jsonl")  # pf's --input takes only .jsonl
        with open(inputs_file, "w") as f:
            f.write(json.dumps(inputs) + "\n")
        init_file = None
        if init is not None:
            init_file = os.path.join(inputs_dir, stem + ".init.json")
            json.dump(init, open(init_file, "w"))
        pf = run_one(args, "pf", args.pf, envs["pf"], roots["pf"], rel, kind, inputs_file, init_file, server)
        sl = run_one(args, "sluice", args.sluice, envs["sluice"], roots["sluice"], rel, kind, inputs_file, init_file, server)
        outcome, notes = compare(pf, sl, [roots["pf"], roots["sluice"]])
        if outcome == "output differs" and name in RANDOM:
            notes.append("this example is random: %s" % RANDOM[name])
        results.append({"example": name, "kind": kind, "inputs_from": source, "outcome": outcome, "notes": notes,
                        "pf_secs": round(pf["secs"], 1), "sluice_secs": round(sl["secs"], 1),
                        "pf_requests": len(pf["requests"]), "sluice_requests": len(sl["requests"])})
        print("%-58s %s" % (name, outcome), flush=True)
        for n in notes:
            print("    " + n, flush=True)

    not_flows = [r["example"] for r in results if r["outcome"] == "not a flow"]
    if not_flows:
        print("\nnot a flow (no flow.dag.yaml, flow.flex.yaml or .prompty; the *-maf folders are ports to "
              "Microsoft Agent Framework): " + ", ".join(not_flows))
    totals = collections.Counter(r["outcome"] for r in results)
    print("\ntotals: " + ", ".join("%s %d" % (k, v) for k, v in sorted(totals.items())))
    print("\nnormalised before comparing:\n" + NORMALISED)
    if args.json:
        json.dump({"server": base, "results": results, "totals": totals}, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
