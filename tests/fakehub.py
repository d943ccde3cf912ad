"""A fake Hugging Face hub on loopback that speaks the wire format huggingface_hub uses (plain HTTP, no Xet).

Serves repos from directories: model info (`/api/models/{repo}[/revision/{rev}]`, with `siblings` and
`sha`), the tree listing (`/api/models/{repo}/tree/{rev}`), and files (`/{repo}/resolve/{rev}/{path}`, HEAD
and GET, with X-Repo-Commit, ETag / X-Linked-Etag, X-Linked-Size and Range requests answered 206). Modes: a
gated repo (401 without the right bearer token, 403 with a wrong one, `X-Error-Code: GatedRepo` as the hub
sends), a file cut off once mid-body, a file failing once with 500, and a log of every request.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_MIN_BYTES = 1024  # files this size and up are served as LFS files (X-Linked-Etag = sha256), as on the hub


@dataclass(frozen=True)
class Logged:
    """One request the hub answered."""

    method: str
    path: str  # the URL path, unquoted, without the query
    range: str | None
    authorization: str | None
    status: int


@dataclass
class FakeRepo:
    repo_id: str
    root: Path
    sha: str
    gated: bool = False

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file())


@dataclass
class FakeHub:
    """The hub's state: repos, modes, and the request log. Start it with `serve()` (a context manager)."""

    token: str = "hf_fake_valid_token"
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    interrupt_once: dict[str, int] = field(default_factory=dict)  # "repo/path" -> bytes sent before the cut
    fail_once: set[str] = field(default_factory=set)  # "repo/path" answered 500 once
    log: list[Logged] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_repo(self, repo_id: str, root: Path, *, gated: bool = False) -> FakeRepo:
        """Serve the files under root as repo_id at one commit (its sha derived from the file names)."""
        digest = hashlib.sha1(repo_id.encode())
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(root)).encode())
        repo = FakeRepo(repo_id, root, digest.hexdigest(), gated)
        self.repos[repo_id] = repo
        return repo

    def fetched(self, method: str = "GET") -> list[str]:
        """The paths of the file requests (resolve URLs) made with `method`, in order."""
        return [e.path for e in self.log if e.method == method and "/resolve/" in e.path]

    def fetched_files(self, repo_id: str) -> set[str]:
        """The repo files whose bytes were fetched (GET)."""
        prefix = f"/{repo_id}/resolve/"
        return {p[len(prefix) :].split("/", 1)[1] for p in self.fetched() if p.startswith(prefix)}

    def serve(self) -> _Running:
        return _Running(self)


class _Running:
    def __init__(self, hub: FakeHub) -> None:
        self.hub = hub
        handler = type("Handler", (_Handler,), {"hub": hub})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        hub.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="fakehub", daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self.hub

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _git_blob_sha(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _entry(repo: FakeRepo, path: str) -> dict[str, Any]:
    """A file as the tree API lists it (`oid` is the git blob id; `lfs` for large files)."""
    file = repo.root / path
    size = file.stat().st_size
    entry: dict[str, Any] = {"type": "file", "oid": _git_blob_sha(file), "size": size, "path": path}
    if size >= LFS_MIN_BYTES:
        entry["lfs"] = {"oid": _sha256(file), "size": size, "pointerSize": 134}
    return entry


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # the request log replaces stderr noise
        pass

    # Dispatch ------------------------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, *, head: bool) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        query = parse_qs(url.query)
        self._status = 0
        self._logged = False
        try:
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
                self._model_info(m.group(1), m.group(2), blobs="blobs" in query)
            elif m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path):
                recursive = query.get("recursive", ["false"])[0].lower() == "true"
                self._tree(m.group(1), m.group(2), m.group(3) or "", recursive=recursive)
            elif m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                self._resolve(m.group(1), m.group(2), m.group(3), head=head)
            else:
                self._error(404, "Not Found", None)
        finally:
            if not self._logged:
                self._log()

    def _log(self) -> None:
        """Record the request; before the response goes out, so a client that has it finds it logged."""
        self._logged = True
        with self.hub.lock:
            self.hub.log.append(
                Logged(
                    self.command,
                    unquote(urlsplit(self.path).path),
                    self.headers.get("Range"),
                    self.headers.get("Authorization"),
                    self._status,
                )
            )

    # Responses -----------------------------------------------------------------------------------------

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"", *, head: bool = False) -> None:
        self._status = status
        self._log()
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(body)))
        headers.setdefault("Date", formatdate(usegmt=True))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, data: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        self._send(200, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, body)

    def _error(self, status: int, message: str, code: str | None, *, head: bool = False) -> None:
        headers = {"Content-Type": "application/json; charset=utf-8", "X-Error-Message": message}
        if code is not None:
            headers["X-Error-Code"] = code
        self._send(status, headers, json.dumps({"error": message}).encode(), head=head)

    def _repo(self, repo_id: str, *, head: bool = False, files: bool = False) -> FakeRepo | None:
        """The repo, or None after answering 404 / the gated 401-403 (for its files only, as on the hub)."""
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(
                401,
                "Repository not found",
                "RepoNotFound",
                head=head,
            )
            return None
        if files and repo.gated:
            auth = self.headers.get("Authorization")
            if auth is None:
                self._error(
                    401,
                    f"Access to model {repo_id} is restricted. You must have access to it and be "
                    "authenticated to access it. Please log in.",
                    "GatedRepo",
                    head=head,
                )
                return None
            if auth != f"Bearer {self.hub.token}":
                self._error(
                    403,
                    f"Access to model {repo_id} is restricted and you are not in the authorized list. Visit "
                    f"https://huggingface.co/{repo_id} to ask for access.",
                    "GatedRepo",
                    head=head,
                )
                return None
        return repo

    def _model_info(self, repo_id: str, revision: str | None, *, blobs: bool) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if revision not in (None, "main", repo.sha):
            self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return
        siblings = []
        for path in repo.files():
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                entry = _entry(repo, path)
                sibling.update({"size": entry["size"], "blobId": entry["oid"]})
                if "lfs" in entry:
                    lfs = entry["lfs"]
                    sibling["lfs"] = {"size": lfs["size"], "sha256": lfs["oid"], "pointerSize": 134}
            siblings.append(sibling)
        self._json(
            {
                "_id": repo.sha[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": repo.sha,
                "lastModified": "2026-01-01T00:00:00.000Z",
                "private": False,
                "gated": "manual" if repo.gated else False,
                "disabled": False,
                "library_name": "diffusers",
                "tags": ["diffusers", "safetensors"],
                "siblings": siblings,
            }
        )

    def _tree(self, repo_id: str, revision: str, under: str, *, recursive: bool) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if revision not in ("main", repo.sha):
            self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return
        prefix = f"{under.rstrip('/')}/" if under else ""
        entries: list[dict[str, Any]] = []
        folders: set[str] = set()
        for path in repo.files():
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                if depth > 1 and not recursive:
                    break
                folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entries.append(_entry(repo, path))
        dirs: list[dict[str, Any]] = [
            {"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f}
            for f in sorted(folders)
        ]
        self._json(dirs + entries)

    def _resolve(self, repo_id: str, revision: str, path: str, *, head: bool) -> None:
        repo = self._repo(repo_id, head=head, files=True)
        if repo is None:
            return
        if revision not in ("main", repo.sha):
            self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound", head=head)
            return
        file = repo.root / path
        if not file.is_file():
            self._error(404, f"Entry not found: {path}", "EntryNotFound", head=head)
            return
        key = f"{repo_id}/{path}"
        entry = _entry(repo, path)
        size = entry["size"]
        headers = {
            "X-Repo-Commit": repo.sha,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "ETag": f'"{entry["oid"]}"',
        }
        if "lfs" in entry:
            headers["X-Linked-Etag"] = f'"{entry["lfs"]["oid"]}"'
            headers["X-Linked-Size"] = str(size)
        if head:
            self._send(200, {**headers, "Content-Length": str(size)}, head=True)
            return
        with self.hub.lock:
            fail = key in self.hub.fail_once
            self.hub.fail_once.discard(key)
            cut = self.hub.interrupt_once.pop(key, None)
        if fail:
            self._error(500, "Internal Error - We're working hard to fix this as soon as possible!", None)
            return
        data = file.read_bytes()
        start, status = 0, 200
        if (ranged := self.headers.get("Range")) and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", ranged)):
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else size - 1
            if start >= size:
                self._send(416, {**headers, "Content-Range": f"bytes */{size}"})
                return
            data = data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{start + len(data) - 1}/{size}"
            status = 206
        if cut is None:
            self._send(status, headers, data)
            return
        # Promise the whole body, send part of it, and drop the connection: the client sees a short read.
        self._status = status
        self._log()
        self.send_response(status)
        for k, v in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data[:cut])
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


# Repos laid out like the real ones, with small dummy weights (a download never loads them) -----------------

_COMPONENTS = ("audio_vae", "connectors", "vae", "vocoder", "latent_upsampler")
_TEXT_ENCODERS = {
    "2.0": {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"]},
    "2.3": {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"]},
    "2.5": {"model_type": "gemma4_unified", "architectures": ["Gemma4UnifiedForConditionalGeneration"]},
}


def _config(generation: str, component: str) -> dict[str, Any]:
    from kinema.engines.tiny import real_config

    return real_config(generation, component)


def _blob(path: Path, size: int, seed: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    chunk = hashlib.sha256(seed.encode()).digest()
    path.write_bytes((chunk * (size // len(chunk) + 1))[:size])


def _sharded(folder: Path, stem: str, shards: int, size: int) -> None:
    names = [f"{stem}-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]
    for name in names:
        _blob(folder / name, size, str(folder / name))
    weight_map = {f"layer.{i}.weight": names[i] for i in range(shards)}
    index = {"metadata": {"total_size": size * shards}, "weight_map": weight_map}
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index))


def write_dummy_repo(generation: str, target: Path, *, transformer_bytes: int = 48_000) -> Path:
    """A repo with the real layout and configs of a generation's diffusers weights, and dummy weight files.

    LTX-2.5 (Lightricks/LTX-2.5-Diffusers): distilled transformer/, full transformer_full/, diffusion_decoder/
    (not a pipeline component), duration_head/, latent_upsampler/ and the distilled LoRA at the root.
    LTX-2 (Lightricks/LTX-2): the dev transformer/, original-format checkpoints and the LoRA at the root.
    """
    from kinema.engines.tiny import LORA_NAMES

    target.mkdir(parents=True)
    index = {
        "_class_name": "LTX2Pipeline",
        "_diffusers_version": "0.42.1",
        **_config(generation, "model_index"),
    }
    (target / "model_index.json").write_text(json.dumps(index))
    (target / "README.md").write_text(f"# LTX-{generation} (fake hub copy)\n")
    (target / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    (target / "scheduler").mkdir()
    (target / "scheduler" / "scheduler_config.json").write_text(json.dumps(_config(generation, "scheduler")))
    transformers = ["transformer", "transformer_full"] if generation == "2.5" else ["transformer"]
    for name in transformers:
        (target / name).mkdir()
        (target / name / "config.json").write_text(json.dumps(_config(generation, "transformer")))
        _sharded(target / name, "diffusion_pytorch_model", 2, transformer_bytes // 2)
    components = [*_COMPONENTS, *(("duration_head",) if generation == "2.5" else ())]
    for name in components:
        (target / name).mkdir()
        (target / name / "config.json").write_text(json.dumps(_config(generation, name)))
        _blob(target / name / "diffusion_pytorch_model.safetensors", 4_000, f"{generation}/{name}")
    if generation == "2.5":
        (target / "diffusion_decoder").mkdir()
        (target / "diffusion_decoder" / "config.json").write_text(
            '{"_class_name": "LTX2VideoDiffusionDecoderModel"}'
        )
        _blob(target / "diffusion_decoder" / "diffusion_pytorch_model.safetensors", 8_000, "decoder")
    (target / "text_encoder").mkdir()
    (target / "text_encoder" / "config.json").write_text(json.dumps(_TEXT_ENCODERS[generation]))
    _sharded(target / "text_encoder", "model", 2, 6_000)
    (target / "tokenizer").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (target / "tokenizer" / name).write_text(json.dumps({"name": name}))
    _blob(target / LORA_NAMES[generation], 5_000, "lora")
    if generation == "2.0":
        for name in (
            "ltx-2-19b-dev.safetensors",
            "ltx-2-19b-distilled.safetensors",
            "ltx-2-spatial-upscaler-x2-1.0.safetensors",
        ):
            _blob(target / name, 7_000, name)
    return target


def point_hub_client_at(url: str, monkeypatch: Any, token_path: Path) -> None:
    """Aim this process's huggingface_hub at the fake hub: it reads HF_ENDPOINT into constants at import."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(token_path))  # never the user's stored token
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)


def hub_env(url: str, base: dict[str, str], token_path: Path) -> dict[str, str]:
    """Environment for a CLI subprocess that talks to the fake hub."""
    env = {k: v for k, v in base.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(
        {
            "HF_ENDPOINT": url,
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_XET": "1",
            "HF_TOKEN_PATH": str(token_path),
        }
    )
    return env
