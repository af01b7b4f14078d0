"""A real OpenAI-compatible chat-completions server on 127.0.0.1 for tests (no mocks of the client).

    server = OpenAIServer(answer=lambda prompt, i: "<answer>\\boxed{1}</answer>").start()
    client = openai.OpenAI(base_url=server.base_url, api_key="test")
    ...
    server.requests      # HTTP requests received (every path, retries included)
    server.stop()

In a test module, `from openai_server import openai_server_fixture  # noqa: F401` provides the fixture
`openai_server`: a started server, stopped after the test; `marked_steps(markers)` gives agent steps whose
prompts carry the markers an `answer` or `fault_for` keys on.

What it answers, per request to POST /v1/chat/completions (also /chat/completions):
1. the next item queued with `script(...)`, if any: a `Fault`, a string (the text of every choice), or a
   list of strings (one per choice; fewer than `n` returns fewer choices, as some servers do);
2. else, if `fault_for(prompt, body)` (settable) returns a Fault, that fault;
3. else `n` choices from `answer(prompt, index)` (default: a well-formed critic answer scoring 1).
`prompt` is the content of the last user message.

Faults: `Fault.rate_limit(retry_after)` (429 + Retry-After / retry-after-ms headers), `Fault.server_error()`
(500), `Fault.hang(seconds)` (sleep before answering: longer than the client timeout makes it time out),
`Fault.malformed()` (200 with a body that is not JSON), `Fault.bad_request()` (400), `Fault.empty()` (200
with no choices). Answers without \\boxed{} are plain answers: script them as text.

`max_choices` caps the choices of every answer (a server that ignores `n`). Counters: `requests`,
`completions`, `faults` (by kind), `bodies` and `headers` of chat requests, `max_in_flight`.

GET /v1/models lists `models`. With `"logprobs": true` in the request, each choice carries one logprob
entry per whitespace-separated word (-0.5 each): enough for a client that reads them.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

GOOD_ANSWER = (
    "<think>The action makes progress.</think>\n<answer>\\boxed{1}</answer>\n<advise>Keep going.</advise>"
)


def marked_steps(markers: list[str], won_last: bool = False) -> list[dict]:
    """Valid agent steps for a judge, one per marker, each prompt carrying its `[marker]` for `answer` or
    `fault_for` to key on; with `won_last`, the last step won (the rules call it good)."""
    return [
        {
            "group": 0,
            "traj": 0,
            "step": i,
            "anchor": f"obs {i}",
            "prompt": f"Task: put a mug in cabinet. Observation {i}. [{m}]",
            "completion": f"<think>x</think><action>go to desk {i}</action>",
            "valid": True,
            "won": won_last and i == len(markers) - 1,
        }
        for i, m in enumerate(markers)
    ]


@dataclass(frozen=True)
class Fault:
    """One injected failure for one request."""

    kind: str  # rate_limit | server_error | hang | malformed | bad_request | empty
    seconds: float = 0.0  # hang: how long; rate_limit: the Retry-After value

    @classmethod
    def rate_limit(cls, retry_after: float = 0.01) -> Fault:
        return cls("rate_limit", retry_after)

    @classmethod
    def server_error(cls) -> Fault:
        return cls("server_error")

    @classmethod
    def hang(cls, seconds: float = 5.0) -> Fault:
        return cls("hang", seconds)

    @classmethod
    def malformed(cls) -> Fault:
        return cls("malformed")

    @classmethod
    def bad_request(cls) -> Fault:
        return cls("bad_request")

    @classmethod
    def empty(cls) -> Fault:
        return cls("empty")


def _words(text: str) -> int:
    return max(1, len(text.split()))


class OpenAIServer:
    """The server: scripted answers, fault injection, request counters. Thread-safe."""

    def __init__(
        self,
        answer: Callable[[str, int], str] | None = None,
        models: tuple[str, ...] = ("judge-model",),
        host: str = "127.0.0.1",
    ) -> None:
        self.answer: Callable[[str, int], str] = answer or (lambda prompt, index: GOOD_ANSWER)
        self.fault_for: Callable[[str, dict], Fault | None] = lambda prompt, body: None
        self.models = models
        self._host = host
        self._lock = threading.Lock()
        self._queue: collections.deque = collections.deque()
        self._release = threading.Event()  # set on stop(): hanging handlers return at once
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.max_choices: int | None = None  # answer at most this many choices (a server ignoring n)
        self.requests = 0  # every HTTP request received
        self.in_flight = 0
        self.max_in_flight = 0  # the most chat requests handled at once
        self.headers: list[dict[str, str]] = []  # request headers, in arrival order
        self.completions = 0  # chat-completion requests answered with choices
        self.faults: collections.Counter[str] = collections.Counter()  # faults served, by kind
        self.bodies: list[dict] = []  # parsed chat-completion request bodies, in arrival order

    # ---- control -----------------------------------------------------------------------------------
    def script(self, *items: Fault | str | list[str]) -> OpenAIServer:
        """Queue what the next requests get, in order (before `fault_for` and `answer`)."""
        with self._lock:
            self._queue.extend(items)
        return self

    def reset_counts(self) -> None:
        with self._lock:
            self.requests = self.completions = 0
            self.faults.clear()
            self.bodies.clear()
            self.headers.clear()
            self.max_in_flight = 0

    @property
    def pending(self) -> int:
        """Scripted items not served yet."""
        with self._lock:
            return len(self._queue)

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        """What to pass as the OpenAI client's base_url."""
        return f"http://{self._host}:{self.port}/v1"

    def start(self) -> OpenAIServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet test output
                pass

            def do_GET(self) -> None:
                server._count()
                if self.path.rstrip("/").endswith("/models"):
                    data = [{"id": m, "object": "model", "owned_by": "test"} for m in server.models]
                    self._send(200, json.dumps({"object": "list", "data": data}).encode())
                else:
                    self._send(404, json.dumps({"error": {"message": "not found"}}).encode())

            def do_POST(self) -> None:
                server._count()
                with server._lock:
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode())
                    return
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    self._send(400, json.dumps({"error": {"message": "request body is not JSON"}}).encode())
                    return
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    status, payload, headers = server._respond(body)
                finally:
                    with server._lock:
                        server.in_flight -= 1
                if status is None:  # the client gave up (hang past its timeout) or the server stops
                    return
                self._send(status, payload, headers)

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._httpd = ThreadingHTTPServer((self._host, 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="openai-test-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- request handling ----------------------------------------------------------------------------
    def _count(self) -> None:
        with self._lock:
            self.requests += 1

    def _respond(self, body: dict) -> tuple[int | None, bytes, dict[str, str]]:
        prompt = _last_user_message(body)
        with self._lock:
            self.bodies.append(body)
            item = self._queue.popleft() if self._queue else None
        if item is None:
            item = self.fault_for(prompt, body)
        if isinstance(item, Fault):
            with self._lock:
                self.faults[item.kind] += 1
            if item.kind != "hang":
                return self._fault(item, body, prompt)
            if self._release.wait(item.seconds):  # hang, then answer as usual (if anyone still listens)
                return None, b"", {}
            item = None
        n = int(body.get("n") or 1)
        if self.max_choices is not None:
            n = min(n, self.max_choices)
        if item is None:
            texts = [self.answer(prompt, i) for i in range(n)]
        elif isinstance(item, str):
            texts = [item] * n
        else:
            texts = list(item)[:n]
        with self._lock:
            self.completions += 1
        return 200, json.dumps(_completion(body, prompt, texts)).encode(), {}

    def _fault(self, fault: Fault, body: dict, prompt: str) -> tuple[int | None, bytes, dict[str, str]]:
        if fault.kind == "rate_limit":
            headers = {"Retry-After": f"{fault.seconds:g}", "retry-after-ms": f"{fault.seconds * 1000:g}"}
            return 429, _error("rate limit reached", "rate_limit_exceeded"), headers
        if fault.kind == "server_error":
            return 500, _error("internal server error", "server_error"), {}
        if fault.kind == "bad_request":
            return 400, _error("bad request", "invalid_request_error"), {}
        if fault.kind == "malformed":
            return 200, b'{"id": "x", "choices": [ {"message": ', {}
        if fault.kind == "empty":
            return 200, json.dumps(_completion(body, prompt, [])).encode(), {}
        raise ValueError(f"unknown fault kind {fault.kind!r}")


def _last_user_message(body: dict) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def _error(message: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": code, "code": code}}).encode()


def _completion(body: dict, prompt: str, texts: list[str]) -> dict:
    choices = []
    for i, text in enumerate(texts):
        choice: dict[str, Any] = {
            "index": i,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
            "logprobs": None,
        }
        if body.get("logprobs"):
            words = text.split()
            choice["logprobs"] = {
                "content": [
                    {"token": w, "logprob": -0.5, "bytes": list(w.encode()), "top_logprobs": []}
                    for w in words
                ]
            }
        choices.append(choice)
    completion_tokens = sum(_words(t) for t in texts)
    prompt_tokens = _words(prompt)
    return {
        "id": f"chatcmpl-test-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "judge-model"),
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


@pytest.fixture(name="openai_server")
def openai_server_fixture() -> Iterator[OpenAIServer]:
    """A started OpenAIServer on an ephemeral 127.0.0.1 port, stopped after the test."""
    server = OpenAIServer().start()
    try:
        yield server
    finally:
        server.stop()
