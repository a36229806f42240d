"""A fake OpenAI-compatible server on loopback for tests: it answers ``/chat/completions`` (OpenAI's
path, under any prefix such as ``/v1``) and Azure OpenAI's
``/openai/deployments/<deployment>/chat/completions`` with a fixed completion, and records each
request's path and JSON body."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAI:
    """``with FakeOpenAI(reply) as server:`` serves on ``server.url``; ``reply(body)`` gives the
    assistant's text for a request body; ``server.requests`` lists ``(path, body)``, ``server.keys``
    the API key each request carried (``api-key`` or the bearer token)."""

    def __init__(self, reply):
        self.reply = reply
        self.requests = []
        self.keys = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                path = self.path.split("?", 1)[0]
                if not path.endswith("/chat/completions"):
                    self._send(404, {"error": {"message": "no route %s" % path}})
                    return
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    self._send(400, {"error": {"message": "the body is not JSON"}})
                    return
                with fake._lock:
                    fake.requests.append((self.path, body))
                    bearer = (self.headers.get("Authorization") or "").replace("Bearer ", "", 1)
                    fake.keys.append(self.headers.get("api-key") or bearer)
                text = fake.reply(body)
                if body.get("stream"):
                    self._stream(body, text)
                    return
                self._send(200, _completion(body, text))

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, body, text):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
                    chunk = {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": body.get("model") or "fake",
                        "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                    }
                    self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.write(b"data: [DONE]\n\n")
                self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def bodies(self):
        with self._lock:
            return [body for _, body in self.requests]

    def paths(self):
        with self._lock:
            return [path for path, _ in self.requests]


def _completion(body, text):
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model") or "fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
