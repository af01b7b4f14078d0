"""A small Hugging Face Hub on 127.0.0.1 for tests: it answers the calls `huggingface_hub` makes to create a
repo and commit files (whoami, repos/create, validate-yaml, preupload, commit) and keeps what arrives.

    server = HubServer(token="hf_test...").start()
    monkeypatch.setenv("HF_ENDPOINT", server.url); monkeypatch.setenv("HF_TOKEN", server.token)
    ...                       # the real huggingface_hub client uploads
    server.repos["user/name"] # {path: bytes} of every committed file
    server.bodies             # raw request bodies (to check no secret travelled), server.stop()

Every file is answered "regular" at preupload, so it arrives base64 inside the NDJSON commit (no LFS).
A request without `Authorization: Bearer <token>` gets 401. In a test module,
`from hub_server import hub_server_fixture  # noqa: F401` provides the fixture `hub_server`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

USER = "tester"
_REPO_CALL = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<call>preupload|commit)/(?P<rev>[^/?]+)")


class HubServer:
    def __init__(self, token: str = "hf_localtesttoken0123456789") -> None:
        self.token = token
        self.repos: dict[str, dict[str, bytes]] = {}
        self.requests: list[tuple[str, str]] = []
        self.bodies: list[bytes] = []
        self.created: list[dict] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> HubServer:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                return self.headers.get("Authorization") == f"Bearer {hub.token}"

            def _body(self) -> bytes:
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.bodies.append(data)
                return data

            def do_GET(self) -> None:
                hub.requests.append(("GET", self.path))
                if not self._authorized():
                    return self._send(401, {"error": "Invalid credentials in Authorization header"})
                if self.path.startswith("/api/whoami-v2"):
                    return self._send(200, {"type": "user", "name": USER, "orgs": []})
                self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                hub.requests.append(("POST", self.path))
                body = self._body()
                if not self._authorized():
                    return self._send(401, {"error": "Invalid credentials in Authorization header"})
                if self.path.startswith("/api/repos/create"):
                    payload = json.loads(body)
                    repo = f"{payload.get('organization') or USER}/{payload['name']}"
                    hub.created.append(payload)
                    hub.repos.setdefault(repo, {})
                    return self._send(200, {"url": f"{hub.url}/{repo}", "name": repo})
                if self.path.startswith("/api/validate-yaml"):
                    return self._send(200, {"errors": [], "warnings": []})
                m = _REPO_CALL.match(self.path)
                if m is None or m["repo"] not in hub.repos:
                    return self._send(404, {"error": f"Repository not found: {self.path}"})
                if m["call"] == "preupload":
                    files = json.loads(body)["files"]
                    answer = [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                    ]
                    return self._send(200, {"files": answer})
                stored = hub.repos[m["repo"]]
                for line in body.splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        value = item["value"]
                        stored[value["path"]] = base64.b64decode(value["content"])
                    elif item["key"] != "header":
                        return self._send(400, {"error": f"unsupported commit item {item['key']}"})
                oid = hashlib.sha1(body).hexdigest()
                self._send(200, {"commitUrl": f"{hub.url}/{m['repo']}/commit/{oid}", "commitOid": oid})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture(name="hub_server")
def hub_server_fixture(monkeypatch) -> Iterator[HubServer]:
    """A started HubServer, with HF_ENDPOINT and HF_TOKEN pointing at it and offline mode off."""
    import huggingface_hub.constants

    server = HubServer().start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", server.token)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    try:
        yield server
    finally:
        server.stop()
