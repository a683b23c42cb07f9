"""A local stand-in for the Hugging Face Hub's download protocol, serving the tiny bundle under the catalogue's names.

What ``huggingface_hub`` (2.x) asks of a Hub when it downloads one file (``hf_hub_download``):

* ``HEAD {endpoint}/{repo_id}/resolve/{revision}/{filename}``, redirects not followed: the answer carries
  ``X-Repo-Commit`` (the commit the revision resolves to), ``ETag`` (the git blob sha1 of a small file) and, for LFS
  files, ``X-Linked-Etag`` (the file's sha256) and ``X-Linked-Size``; errors carry ``X-Error-Code``
  (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``);
* ``GET`` on the same URL (at the resolved commit) for the bytes.

No other API is called for a single file. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".pth", ".bin", ".ckpt")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's object id


@dataclass
class FakeHub:
    """Repositories ``{repo_id: {commit: {filename: bytes}}}`` with ``refs`` ``{repo_id: {name: commit}}``."""

    repos: dict[str, dict[str, dict[str, bytes]]] = field(default_factory=dict)
    refs: dict[str, dict[str, str]] = field(default_factory=dict)
    corrupt_once: set[tuple[str, str]] = field(default_factory=set)  # (repo_id, filename): next GET flips a byte
    requests: list[tuple[str, str]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def add(self, repo_id: str, commit: str, files: dict[str, bytes], ref: str | None = "main") -> None:
        self.repos.setdefault(repo_id, {})[commit] = files
        if ref:
            self.refs.setdefault(repo_id, {})[ref] = commit

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):  # noqa: N802
                hub._answer(self, body=False)

            def do_GET(self):  # noqa: N802
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def _error(self, handler, code: str, status: int = 404) -> None:
        handler.send_response(status)
        handler.send_header("X-Error-Code", code)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        self.requests.append((handler.command, handler.path))
        parts = handler.path.split("?")[0].lstrip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(handler, "RepoNotFound")
        repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        if repo_id not in self.repos:
            return self._error(handler, "RepoNotFound", 401)
        commit = self.refs.get(repo_id, {}).get(revision, revision)
        if commit not in self.repos[repo_id]:
            return self._error(handler, "RevisionNotFound")
        data = self.repos[repo_id][commit].get(filename)
        if data is None:
            return self._error(handler, "EntryNotFound")
        handler.send_response(200)
        handler.send_header("X-Repo-Commit", commit)
        if filename.endswith(LFS_SUFFIXES):
            sha256 = hashlib.sha256(data).hexdigest()
            handler.send_header("ETag", f'"{sha256}"')
            handler.send_header("X-Linked-Etag", f'"{sha256}"')
            handler.send_header("X-Linked-Size", str(len(data)))
        else:
            handler.send_header("ETag", f'"{git_blob_sha1(data)}"')
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if body:
            if (repo_id, filename) in self.corrupt_once:
                self.corrupt_once.discard((repo_id, filename))
                middle = len(data) // 2
                data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
            handler.wfile.write(data)


def tiny_hub(entries, tiny: Path, commit_of=lambda repo_id: hashlib.sha1(repo_id.encode()).hexdigest()) -> FakeHub:
    """A hub holding every catalogue entry's tiny file (``tiny/<target>``) at one commit per repository."""
    hub = FakeHub()
    files: dict[str, dict[str, bytes]] = {}
    for entry in entries:
        files.setdefault(entry.repo_id, {})[entry.filename] = (tiny / entry.target).read_bytes()
    for repo_id, repo_files in files.items():
        hub.add(repo_id, commit_of(repo_id), repo_files)
    return hub


def catalogue_override(entries, tiny: Path, path: Path) -> Path:
    """A ``SEESR_CATALOG_OVERRIDE`` file giving every entry the sha256 and size of its tiny file."""
    import json

    files = {}
    for entry in entries:
        data = (tiny / entry.target).read_bytes()
        files[f"{entry.repo_id}/{entry.filename}"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    path.write_text(json.dumps({"files": files}))
    return path


def use_hub(monkeypatch, hub: FakeHub) -> None:
    """Point the process at ``hub`` (HF_ENDPOINT), online for it only: any other connection fails the test.

    ``HF_HUB_OFFLINE`` is unset and huggingface_hub's copy of it (read at import) is patched; monkeypatch restores
    both."""
    import socket

    import huggingface_hub.constants

    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    allowed = hub.server.server_address[:2]
    real_connect, real_create = socket.socket.connect, socket.create_connection

    def connect(self, address):
        if tuple(address[:2]) != tuple(allowed):
            raise AssertionError(f"network access attempted: {address}")
        return real_connect(self, address)

    def create_connection(address, *args, **kwargs):
        if tuple(address[:2]) != tuple(allowed):
            raise AssertionError(f"network access attempted: {address}")
        return real_create(address, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", create_connection)
