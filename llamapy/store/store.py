"""The local model store: models by name, as Ollama keeps them.

Layout under `$LLAMAPY_MODELS` (default: the user's data folder, e.g. ~/.local/share/llamapy/models):
- `blobs/sha256-<hex>`: content-addressed files (the GGUF, the template, system text, parameters, ...), each
  verified against its name when it comes in, so a GGUF used by several names is stored once;
- `manifests/<host>/<namespace>/<model>/<tag>`: one small JSON manifest per name (Ollama's form: a config
  and a list of layers, each a media type, a digest and a size). `llama3` is `local/library/llama3:latest`,
  `user/model:tag` is `local/user/model:tag`, `hf.co/user/repo:Q4_K_M` keeps its host.
Changes happen under an exclusive lock on `.lock` (fcntl.flock) and every file is written by an atomic
rename, so two processes creating and removing at once never leave the store half-written.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..errors import LlamapyError
from ..util.fileio import atomic_write
from ..util.jsonio import load_json_bounded

MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
MEDIA_MESSAGES = "application/vnd.ollama.image.messages"
MEDIA_LICENSE = "application/vnd.ollama.image.license"
MEDIA_ADAPTER = "application/vnd.ollama.image.adapter"
MEDIA_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"

DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG = "local", "library", "latest"
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}(:[0-9]{1,5})?")
CHUNK = 1 << 20

ProgressFn = Callable[[int, int], None]  # (bytes done so far, total bytes)


def models_dir() -> str:
    """The store's folder: $LLAMAPY_MODELS, else the user's data folder (platformdirs when installed,
    else $XDG_DATA_HOME or ~/.local/share) + llamapy/models."""
    env = os.environ.get("LLAMAPY_MODELS")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    try:
        import platformdirs
        return os.path.join(platformdirs.user_data_dir("llamapy", appauthor=False), "models")
    except ImportError:
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        return os.path.join(base, "llamapy", "models")


# -- names ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    def __str__(self) -> str:
        """The short form Ollama shows: the default host and namespace left out."""
        parts = [self.host, self.namespace, self.model]
        if self.host == DEFAULT_HOST:
            parts = parts[1:] if self.namespace != DEFAULT_NAMESPACE else parts[2:]
        return "/".join(parts) + ":" + self.tag

    @property
    def parts(self) -> tuple[str, str, str, str]:
        return self.host, self.namespace, self.model, self.tag


def parse_name(text: str) -> ModelName:
    """`[host/][namespace/]model[:tag]` checked against Ollama's rules; LlamapyError if it is not a name."""
    name = text.strip()
    why = None
    base, tag = name, DEFAULT_TAG
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        base, tag = name[:colon], name[colon + 1:]
    parts = base.split("/")
    if not name or ".." in name or "\\" in name:
        why = "no '..' or backslashes"
    elif len(parts) > 3:
        why = "at most host/namespace/model"
    elif not _TAG.fullmatch(tag):
        why = "the tag is letters, digits, '_', '-' and '.', at most 80"
    elif any(not p for p in parts):
        why = "an empty part"
    else:
        host_ok = len(parts) < 3 or _HOST.fullmatch(parts[0])
        if not host_ok or not all(_PART.fullmatch(p) for p in parts[-2:] if p):
            why = "letters, digits, '_', '-' and '.', starting with a letter or digit"
    if why:
        raise LlamapyError(f"'{text}' is not a valid model name ({why}); e.g. llama3, user/model:tag")
    if len(parts) == 3:
        return ModelName(parts[0], parts[1], parts[2], tag)
    if len(parts) == 2:
        return ModelName(DEFAULT_HOST, parts[0], parts[1], tag)
    return ModelName(DEFAULT_HOST, DEFAULT_NAMESPACE, parts[0], tag)


def is_name(text: str) -> bool:
    try:
        parse_name(text)
    except LlamapyError:
        return False
    return True


# -- hashing and copying --------------------------------------------------------------------------------
def sha256_file(path: str, progress: ProgressFn | None = None, copy_to=None) -> tuple[str, int]:
    """The file's sha256 (hex) and size; with copy_to (an open binary file), its bytes written there too."""
    h = hashlib.sha256()
    total = os.path.getsize(path)
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            if copy_to is not None:
                copy_to.write(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return h.hexdigest(), done


@dataclass
class Layer:
    media_type: str
    digest: str  # "sha256:<hex>"
    size: int

    def to_json(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass
class StagedBlob:
    """A blob written beside the store's blobs (or already there), waiting to be committed under the lock."""
    digest: str
    size: int
    tmp: str | None  # None: the blob was already in the store
    source: str | None = None  # where to copy it from again if it is removed before commit()
    linked: bool = False  # tmp is a hard link to the user's file (whose mode is left alone)


@dataclass
class ModelEntry:
    name: ModelName
    id: str         # 12 hex digits of the manifest's sha256, as `ollama list`
    size: int       # bytes of every layer
    modified: float
    manifest: dict = field(repr=False, default_factory=dict)


class Store:
    """A model store rooted at `root` (default: models_dir())."""

    def __init__(self, root: str | None = None):
        self.root = os.path.abspath(root or models_dir())
        self.blobs = os.path.join(self.root, "blobs")
        self.manifests = os.path.join(self.root, "manifests")

    # -- the lock -------------------------------------------------------------------------------------
    def ensure(self) -> None:
        try:
            os.makedirs(self.blobs, exist_ok=True)
            os.makedirs(self.manifests, exist_ok=True)
        except OSError as e:
            raise LlamapyError(f"{self.root}: can't create the model store: {e.strerror} "
                               "(set LLAMAPY_MODELS to a writable folder)") from None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the store's exclusive lock (one writer at a time, across processes)."""
        self.ensure()
        fd = os.open(os.path.join(self.root, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                import fcntl
            except ImportError:  # no flock (Windows): one process at a time is up to the user
                fcntl = None
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    # -- blobs ----------------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> str:
        hexd = digest.split(":", 1)[-1]
        if not re.fullmatch(r"[0-9a-f]{64}", hexd):
            raise LlamapyError(f"'{digest}' is not a sha256 digest")
        return os.path.join(self.blobs, f"sha256-{hexd}")

    def new_tmp(self) -> str:
        """A new empty file beside the blobs, for data on its way in (garbage collection leaves it alone)."""
        self.ensure()
        fd, p = tempfile.mkstemp(prefix=".llamapy-", suffix=".part", dir=self.blobs)
        os.close(fd)
        return p

    def stage_file(self, path: str, *, mode: str = "link", progress: ProgressFn | None = None,
                   expect_sha256: str | None = None) -> StagedBlob:
        """Bring a file next to the blobs, hashed (sha256) as it is stored: `mode` "link" hard-links it
        when the file system allows and copies it otherwise, "copy" copies, "move" renames (for files the
        store made itself). A blob already stored is not copied again. Call commit() under the lock."""
        self.ensure()
        if mode == "move" and os.path.dirname(os.path.abspath(path)) != self.blobs:
            raise LlamapyError(f"{path}: only files made in the store can be moved into it")
        if mode == "link":
            tmp = self.new_tmp()
            os.unlink(tmp)
            try:
                os.link(path, tmp)
            except OSError:
                mode = "copy"
            else:
                staged = self._verify_staged(tmp, expect_sha256, progress)
                staged.linked = True
                return staged
        if mode == "copy":
            hexd, size = sha256_file(path, progress)
            self._check(hexd, expect_sha256)
            if os.path.exists(self.blob_path(hexd)):  # stored already: copied again only if it goes meanwhile
                return StagedBlob(f"sha256:{hexd}", size, None, source=path)
            return StagedBlob(f"sha256:{hexd}", size, self._copy_in(path, hexd, progress))
        return self._verify_staged(path, expect_sha256, progress)

    def _copy_in(self, path: str, hexd: str, progress: ProgressFn | None) -> str:
        tmp = self.new_tmp()
        try:
            with open(tmp, "wb") as out:
                got, _ = sha256_file(path, progress, copy_to=out)
                out.flush()
                os.fsync(out.fileno())
            if got != hexd:
                raise LlamapyError(f"{path} changed while it was being copied; run again")
        except BaseException:
            _unlink(tmp)
            raise
        return tmp

    def _check(self, hexd: str, expect: str | None) -> None:
        if expect is not None and hexd != expect.split(":", 1)[-1].lower():
            raise LlamapyError(f"sha256 mismatch: expected {expect.split(':', 1)[-1]}, got {hexd}; nothing stored")

    def _verify_staged(self, tmp: str, expect: str | None, progress: ProgressFn | None) -> StagedBlob:
        try:
            hexd, size = sha256_file(tmp, progress)
            self._check(hexd, expect)
        except BaseException:
            _unlink(tmp)
            raise
        return StagedBlob(f"sha256:{hexd}", size, tmp)

    def stage_bytes(self, data: bytes) -> StagedBlob:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        tmp = self.new_tmp()
        try:
            with open(tmp, "wb") as f:
                f.write(data)
        except BaseException:
            _unlink(tmp)
            raise
        return StagedBlob(digest, len(data), tmp)

    def commit(self, staged: StagedBlob) -> None:
        """Put a staged blob in place (hold the lock)."""
        dst = self.blob_path(staged.digest)
        if staged.tmp is not None:
            if os.path.exists(dst):
                _unlink(staged.tmp)
            else:
                if not staged.linked:
                    os.chmod(staged.tmp, 0o644)  # mkstemp made it 0600
                os.replace(staged.tmp, dst)
            staged.tmp = None
        elif not os.path.exists(dst):
            if staged.source is None:
                raise LlamapyError(f"blob {staged.digest} was removed while this model was being created; run again")
            staged.tmp = self._copy_in(staged.source, staged.digest.split(":", 1)[1], None)
            self.commit(staged)

    def discard(self, staged: StagedBlob) -> None:
        if staged.tmp is not None:
            _unlink(staged.tmp)
            staged.tmp = None

    # -- manifests ------------------------------------------------------------------------------------
    def manifest_path(self, name: ModelName) -> str:
        return os.path.join(self.manifests, *name.parts)

    def write_manifest(self, name: ModelName, config: Layer, layers: list[Layer]) -> None:
        """Write the manifest for `name` (hold the lock; every blob it names must be committed)."""
        for layer in [config, *layers]:
            if not os.path.exists(self.blob_path(layer.digest)):
                raise LlamapyError(f"blob {layer.digest} is missing from the store")
        doc = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "config": config.to_json(),
               "layers": [la.to_json() for la in layers]}
        path = self.manifest_path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_write(path, "w") as f:
            json.dump(doc, f, indent=None, separators=(",", ":"))

    def put_model(self, name: ModelName, config: StagedBlob, layers: list[tuple[str, StagedBlob]]) -> None:
        """Commit the staged blobs and write `name`'s manifest, replacing a model of that name (in any case),
        then remove the blobs nothing uses any more: one step under the lock."""
        with self.lock():
            for b in [config] + [b for _, b in layers]:
                self.commit(b)
            old = self.find(name)
            if old is not None and old != name:
                os.unlink(self.manifest_path(old))
            self.write_manifest(name, Layer(MEDIA_CONFIG, config.digest, config.size),
                                [Layer(mt, b.digest, b.size) for mt, b in layers])
            self.gc_locked()

    def _iter_manifests(self) -> Iterator[tuple[ModelName, str]]:
        if not os.path.isdir(self.manifests):
            return
        for host in sorted(os.listdir(self.manifests)):
            for ns in _subdirs(os.path.join(self.manifests, host)):
                for model in _subdirs(os.path.join(self.manifests, host, ns)):
                    d = os.path.join(self.manifests, host, ns, model)
                    for tag in sorted(os.listdir(d)):
                        p = os.path.join(d, tag)
                        if tag.startswith(".") or not os.path.isfile(p):
                            continue
                        yield ModelName(host, ns, model, tag), p

    def find(self, name: str | ModelName) -> ModelName | None:
        """The stored name for `name` (names match without regard to case, as in Ollama), or None."""
        n = parse_name(name) if isinstance(name, str) else name
        if os.path.isfile(self.manifest_path(n)):
            return n
        want = tuple(p.lower() for p in n.parts)
        for stored, _ in self._iter_manifests():
            if tuple(p.lower() for p in stored.parts) == want:
                return stored
        return None

    def read_manifest(self, name: str | ModelName) -> tuple[ModelName, dict, bytes]:
        """(stored name, manifest, its bytes); LlamapyError if there is no such model."""
        stored = self.find(name)
        if stored is None:
            raise LlamapyError(f"model '{name}' not found (llamapy list shows the models in {self.root})")
        path = self.manifest_path(stored)
        try:
            with open(path, "rb") as f:
                raw = f.read()
            return stored, load_json_bounded(raw), raw
        except (OSError, ValueError) as e:
            raise LlamapyError(f"{path}: unreadable manifest ({e})") from None

    def entries(self) -> list[ModelEntry]:
        """Every model, most recently changed first (as `ollama list`)."""
        out = []
        for n, p in self._iter_manifests():
            try:
                with open(p, "rb") as f:
                    raw = f.read()
                doc = load_json_bounded(raw)
                mtime = os.stat(p).st_mtime
            except (OSError, ValueError):
                continue  # removed meanwhile, or not a manifest
            size = doc.get("config", {}).get("size", 0) + sum(la.get("size", 0) for la in doc.get("layers", []))
            out.append(ModelEntry(n, hashlib.sha256(raw).hexdigest()[:12], size, mtime, doc))
        out.sort(key=lambda e: -e.modified)
        return out

    def layer_paths(self, name: str | ModelName, media_type: str) -> list[str]:
        _, doc, _ = self.read_manifest(name)
        return [self.blob_path(la["digest"]) for la in doc.get("layers", []) if la.get("mediaType") == media_type]

    def model_path(self, name: str | ModelName) -> str:
        """The GGUF blob of a stored model."""
        paths = self.layer_paths(name, MEDIA_MODEL)
        if not paths:
            raise LlamapyError(f"model '{name}' has no GGUF layer")
        if not os.path.isfile(paths[0]):
            raise LlamapyError(f"model '{name}': its GGUF blob {paths[0]} is missing")
        return paths[0]

    # -- verbs ----------------------------------------------------------------------------------------
    def remove(self, name: str) -> ModelName:
        """Delete a model's manifest and every blob no other manifest uses."""
        with self.lock():
            stored = self.find(name)
            if stored is None:
                raise LlamapyError(f"model '{name}' not found")
            os.unlink(self.manifest_path(stored))
            d = os.path.dirname(self.manifest_path(stored))
            for _ in range(3):  # empty model / namespace / host folders
                with contextlib.suppress(OSError):
                    os.rmdir(d)
                d = os.path.dirname(d)
            self.gc_locked()
        return stored

    def copy(self, src: str, dst: str) -> tuple[ModelName, ModelName]:
        """A second name for a stored model (the manifest copied; blobs shared)."""
        dst_name = parse_name(dst)
        with self.lock():
            stored, _, raw = self.read_manifest(src)
            path = self.manifest_path(dst_name)
            existing = self.find(dst_name)
            if existing is not None and existing != dst_name:
                os.unlink(self.manifest_path(existing))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with atomic_write(path, "wb") as f:
                f.write(raw)
        return stored, dst_name

    def gc(self) -> list[str]:
        with self.lock():
            return self.gc_locked()

    def gc_locked(self) -> list[str]:
        """Remove blobs no manifest references (hold the lock). Staged temp files are left alone."""
        used = set()
        for _, p in self._iter_manifests():
            try:
                with open(p, "rb") as f:
                    doc = load_json_bounded(f.read())
            except (OSError, ValueError):
                continue
            for la in [doc.get("config", {}), *doc.get("layers", [])]:
                if "digest" in la:
                    used.add(la["digest"].replace(":", "-"))
        removed = []
        if os.path.isdir(self.blobs):
            for fn in os.listdir(self.blobs):
                if fn.startswith("sha256-") and fn not in used:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self.blobs, fn))
                    removed.append(fn)
        return removed

    def read_text(self, digest: str) -> str:
        with open(self.blob_path(digest), encoding="utf-8") as f:
            return f.read()


def _subdirs(d: str) -> list[str]:
    try:
        return sorted(x for x in os.listdir(d) if not x.startswith(".") and os.path.isdir(os.path.join(d, x)))
    except OSError:
        return []


def _unlink(p: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(p)

