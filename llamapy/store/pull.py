"""`llamapy pull hf.co/USER/REPO[:QUANT]`: a GGUF from Hugging Face (or a mirror) or ModelScope into the store.

The hub's own file API, over plain HTTP (urllib): the repo's file list with each file's LFS sha256
(`/api/models/{repo}/revision/{rev}?blobs=true` on Hugging Face, `/api/v1/models/{repo}/repo/files` on
ModelScope), then the file (`/{repo}/resolve/{commit}/{file}`) streamed straight into the store's folder and
hashed as it comes. A cut connection is resumed with a Range request (within the pull, and by running the
same pull again: the partial file stays); the file is stored only if its sha256 is the hub's.
`HF_ENDPOINT` (a mirror, e.g. https://hf-mirror.com) and `HF_TOKEN` are honoured, as by huggingface_hub;
`MODELSCOPE_DOMAIN` names another ModelScope host.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from .. import __version__
from ..errors import LlamapyError
from ..util.jsonio import load_json_bounded
from .store import ModelName, ProgressFn, StagedBlob, Store
from .text import one_line

HF_DEFAULT_ENDPOINT = "https://huggingface.co"
MODELSCOPE_DEFAULT_DOMAIN = "www.modelscope.cn"
DEFAULT_QUANT = "Q4_K_M"
CHUNK = 1 << 20
RETRIES = 5
TIMEOUT = 60
_REPO_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
_SPLIT = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)
_HOSTS = {"hf.co": "hf", "huggingface.co": "hf", "www.huggingface.co": "hf",
          "modelscope.cn": "modelscope", "www.modelscope.cn": "modelscope"}


@dataclass(frozen=True)
class PullRef:
    hub: str           # "hf" or "modelscope"
    repo: str          # USER/REPO
    quant: str | None  # the tag given, if any

    def store_name(self) -> str:
        host = "hf.co" if self.hub == "hf" else "modelscope.cn"
        return f"{host}/{self.repo}:{self.quant or 'latest'}"


@dataclass
class RemoteFile:
    path: str
    size: int | None
    sha256: str | None
    url: str

    def __post_init__(self):  # the hub's word, checked: a size is a count, a sha256 is 64 hex digits
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            self.size = None
        if not (isinstance(self.sha256, str) and re.fullmatch(r"[0-9a-fA-F]{64}", self.sha256)):
            self.sha256 = None
        else:
            self.sha256 = self.sha256.lower()


def parse_ref(text: str) -> PullRef:
    """`hf.co/USER/REPO[:QUANT]` (also huggingface.co/..., modelscope.cn/..., with or without https://)."""
    t = text.strip()
    t = re.sub(r"^https?://", "", t)
    host, _, rest = t.partition("/")
    hub = _HOSTS.get(host.lower())
    if hub is None:
        raise LlamapyError(f"'{text}': pull takes hf.co/USER/REPO[:QUANT], huggingface.co/USER/REPO[:QUANT] or "
                           "modelscope.cn/USER/REPO[:QUANT]")
    repo, _, quant = rest.partition(":")
    parts = repo.split("/")
    if len(parts) != 2 or not all(_REPO_PART.fullmatch(p) for p in parts) or ".." in repo:
        raise LlamapyError(f"'{text}': the repository must be USER/REPO (letters, digits, '_', '-', '.')")
    if quant and not re.fullmatch(r"[A-Za-z0-9_.-]{1,80}", quant):
        raise LlamapyError(f"'{text}': '{quant}' is not a quantization tag (e.g. Q4_K_M, Q8_0)")
    return PullRef(hub, repo, quant or None)


def hf_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT).rstrip("/")


def modelscope_endpoint() -> str:
    d = (os.environ.get("MODELSCOPE_DOMAIN") or MODELSCOPE_DEFAULT_DOMAIN).rstrip("/")
    return d if re.match(r"^https?://", d) else "https://" + d


def _token(hub: str) -> str | None:
    if hub == "hf":
        return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    return os.environ.get("MODELSCOPE_API_TOKEN")


def _request(url: str, hub: str, headers: dict | None = None) -> urllib.request.Request:
    req = urllib.request.Request(url, headers={"User-Agent": f"llamapy/{__version__}", **(headers or {})})
    tok = _token(hub)
    if tok:
        req.add_unredirected_header("Authorization", f"Bearer {tok}")  # not sent on to a CDN
    return req


def _http_error(e: urllib.error.HTTPError, what: str, hub: str) -> LlamapyError:
    if e.code in (401, 403):
        var = "HF_TOKEN" if hub == "hf" else "MODELSCOPE_API_TOKEN"
        return LlamapyError(f"{what}: access denied (HTTP {e.code}); a gated or private repository needs {var}")
    if e.code == 404:
        return LlamapyError(f"{what}: not found (HTTP 404)")
    return LlamapyError(f"{what}: HTTP {e.code} {e.reason}")


def _get_json(url: str, hub: str, what: str):
    try:
        with urllib.request.urlopen(_request(url, hub), timeout=TIMEOUT) as r:
            body = r.read(64 << 20)
    except urllib.error.HTTPError as e:
        raise _http_error(e, what, hub) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        hint = " (set HF_ENDPOINT for a mirror)" if hub == "hf" else ""
        raise LlamapyError(f"{what}: can't reach {urllib.parse.urlsplit(url).netloc}: {reason}{hint}") from None
    try:
        return load_json_bounded(body)
    except ValueError:
        raise LlamapyError(f"{what}: the hub's answer is not JSON") from None


def list_files(ref: PullRef) -> list[RemoteFile]:
    """The repository's files with their sizes and sha256 (as the hub lists them)."""
    q = urllib.parse.quote
    if ref.hub == "hf":
        ep = hf_endpoint()
        doc = _get_json(f"{ep}/api/models/{ref.repo}/revision/main?blobs=true", "hf", f"hf.co/{ref.repo}")
        commit = doc.get("sha") or "main"
        out = []
        for s in doc.get("siblings") or []:
            name = s.get("rfilename")
            if not isinstance(name, str):
                continue
            lfs = s.get("lfs") or {}
            out.append(RemoteFile(name, lfs.get("size", s.get("size")), lfs.get("sha256") or lfs.get("oid"),
                                  f"{ep}/{ref.repo}/resolve/{commit}/{q(name)}"))
        return out
    ep = modelscope_endpoint()
    doc = _get_json(f"{ep}/api/v1/models/{ref.repo}/repo/files?Revision=master&Recursive=true", "modelscope",
                    f"modelscope.cn/{ref.repo}")
    if not isinstance(doc, dict) or doc.get("Code", 200) != 200 or not isinstance(doc.get("Data"), dict):
        msg = doc.get("Message") if isinstance(doc, dict) else None
        raise LlamapyError(f"modelscope.cn/{ref.repo}: {one_line(str(msg or 'no file list'))}")
    out = []
    for f in doc["Data"].get("Files") or []:
        if f.get("Type", "blob") != "blob" or not isinstance(f.get("Path"), str):
            continue
        rev = f.get("Revision") or "master"
        url = f"{ep}/api/v1/models/{ref.repo}/repo?Revision={q(rev)}&FilePath={q(f['Path'])}"
        out.append(RemoteFile(f["Path"], f.get("Size"), f.get("Sha256"), url))
    return out


def quant_pattern(quant: str) -> re.Pattern:
    """A quant tag as it appears in a file name: any case, not part of a longer tag (Q4_K is not Q4_K_M)."""
    return re.compile(rf"(?<![A-Za-z0-9]){re.escape(quant)}(?![A-Za-z0-9_])", re.IGNORECASE)


def pick_gguf(files: list[RemoteFile], quant: str | None, repo: str) -> RemoteFile:
    """The GGUF of the asked quant; without one, Q4_K_M when there is one (as Ollama), else the first GGUF.
    Projector files (mmproj) are not models."""
    ggufs = sorted((f for f in files if f.path.lower().endswith(".gguf") and "mmproj" not in f.path.lower()),
                   key=lambda f: f.path)
    if not ggufs:
        raise LlamapyError(f"{repo}: no GGUF file in this repository (llamapy convert makes one from a model folder)")
    want = quant or DEFAULT_QUANT
    hits = [f for f in ggufs if quant_pattern(want).search(os.path.basename(f.path))]
    if not hits and quant is None:
        hits = ggufs
    if not hits:
        names = ", ".join(one_line(os.path.basename(f.path)) for f in ggufs[:12]) + (", ..." if len(ggufs) > 12 else "")
        raise LlamapyError(f"{repo}: no GGUF file for '{quant}' (the repository has: {names})")
    whole = [f for f in hits if not _SPLIT.search(f.path)]
    if not whole:
        part = one_line(os.path.basename(hits[0].path))
        raise LlamapyError(f"{repo}: {part} is split into parts; split GGUF files are not supported yet")
    return whole[0]


class _Cut(Exception):
    """The connection ended before the file did."""


def download(f: RemoteFile, hub: str, store: Store, *, progress: ProgressFn | None = None, retries: int = RETRIES,
             log: Callable[[str], None] | None = None) -> StagedBlob:
    """Stream `f` into the store's folder (resuming a partial file left by an earlier pull), verify its
    sha256, and return it staged for commit. A mismatch removes the partial file."""
    say = log or (lambda _m: None)
    label = one_line(f.path)
    store.ensure()
    key = f.sha256 or hashlib.sha256(f.url.encode()).hexdigest()
    partial = os.path.join(store.blobs, f".pull-{key}.partial")
    fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:
            pass
        except BlockingIOError:
            raise LlamapyError(f"{label}: another llamapy pull is downloading this file") from None
        h = hashlib.sha256()
        have = 0
        with open(partial, "rb") as old:  # the bytes an earlier pull left
            while chunk := old.read(CHUNK):
                h.update(chunk)
                have += len(chunk)
        if f.size is not None and have > f.size:
            os.ftruncate(fd, 0)
            h, have = hashlib.sha256(), 0
        if have:
            say(f"resuming {label} at {have} bytes")
        failures = 0
        etag = None
        while f.size is None or have < f.size:
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                with urllib.request.urlopen(_request(f.url, hub, headers), timeout=TIMEOUT) as r:
                    etag = etag or _etag(r)
                    if have and r.status != 206:
                        os.ftruncate(fd, 0)  # the server sent the whole file again
                        h, have = hashlib.sha256(), 0
                    if r.status == 206 and not (r.headers.get("Content-Range") or "").startswith(f"bytes {have}-"):
                        raise LlamapyError(f"{label}: the server answered another range than asked")
                    total = _length(r, have) if f.size is None else f.size
                    os.lseek(fd, have, os.SEEK_SET)
                    while True:
                        chunk = r.read(CHUNK)
                        if not chunk:
                            break
                        try:
                            view = memoryview(chunk)
                            while view:
                                view = view[os.write(fd, view):]
                        except OSError as e:
                            raise LlamapyError(f"{partial}: can't write: {e.strerror}") from None
                        h.update(chunk)
                        have += len(chunk)
                        if progress:
                            progress(have, total or have)
                    if total is not None and have < total:
                        raise _Cut()  # the connection ended early (urllib reads that as the end)
                    if f.size is None:
                        f.size = have
            except urllib.error.HTTPError as e:
                if e.code == 416 and have:  # asked past the end: start over
                    os.ftruncate(fd, 0)
                    h, have = hashlib.sha256(), 0
                    continue
                raise _http_error(e, label, hub) from None
            except (_Cut, urllib.error.URLError, OSError, http.client.HTTPException) as e:
                failures += 1
                if failures > retries:
                    reason = getattr(e, "reason", None) or type(e).__name__
                    raise LlamapyError(f"{label}: download interrupted at {have} of {f.size} bytes ({reason}); run "
                                       "the same pull again to resume") from None
                say(f"connection lost at {have} bytes; resuming")
        if f.size is not None and have > f.size:
            _discard(fd, partial)
            raise LlamapyError(f"{label}: the server sent more bytes than the hub lists; nothing stored")
        hexd = h.hexdigest()
        expect = f.sha256 or etag
        if expect is None:
            say(f"note: the hub lists no sha256 for {label}; only its size was checked")
        elif hexd != expect.lower():
            _discard(fd, partial)
            raise LlamapyError(f"{label}: sha256 mismatch (the hub lists {expect}, the download is {hexd}); "
                               "nothing stored")
        os.lseek(fd, 0, os.SEEK_SET)
        if os.read(fd, 4) != b"GGUF":
            _discard(fd, partial)
            raise LlamapyError(f"{label}: the download is not a GGUF file; nothing stored")
        staged = StagedBlob(f"sha256:{hexd}", have, store.new_tmp())
        os.replace(partial, staged.tmp)  # the lock goes with the file; a new pull gets a new partial file
        return staged
    finally:
        os.close(fd)


def _discard(fd: int, partial: str) -> None:
    os.ftruncate(fd, 0)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(partial)


def _etag(r) -> str | None:
    for k in ("X-Linked-Etag", "ETag"):
        v = (r.headers.get(k) or "").strip().removeprefix("W/").strip('"')
        if re.fullmatch(r"[0-9a-fA-F]{64}", v):
            return v
    return None


def _length(r, have: int) -> int | None:
    cl = r.headers.get("Content-Length")
    return have + int(cl) if cl and cl.isdigit() else None


def pull(ref_text: str, *, store: Store | None = None, progress: ProgressFn | None = None,
         log: Callable[[str], None] | None = None, retries: int = RETRIES) -> ModelName:
    """Pull a GGUF from the hub into the store; returns its name (`hf.co/USER/REPO:QUANT`)."""
    from .models import import_blob

    store = store or Store()
    say = log or (lambda _m: None)
    ref = parse_ref(ref_text)
    name = ref.store_name()
    from .store import parse_name
    parse_name(name)  # a repository name the store can't hold fails before anything is fetched
    files = list_files(ref)
    f = pick_gguf(files, ref.quant, ref.repo)
    say(f"pulling {one_line(f.path)}" + (f" ({f.size} bytes)" if f.size else ""))
    staged = download(f, ref.hub, store, progress=progress, retries=retries, log=say)
    return import_blob(name, staged, store)


def hf_model(repo: str, file: str | None = None, *, store: Store | None = None, progress: ProgressFn | None = None,
             log: Callable[[str], None] | None = None) -> str:
    """llama.cpp's `-hf USER/REPO[:QUANT]` (and `-hff FILE`): the GGUF path of that model in the store, pulled
    the first time only (later runs use the stored copy without asking the hub)."""
    from .models import import_blob

    store = store or Store()
    text = repo.strip()
    ref = parse_ref(text if re.match(r"^(https?://)?[^/]*\.[^/]*/", text) else "hf.co/" + text)
    name = ref.store_name()
    if file:
        stem = os.path.basename(file)
        stem = stem[:-5] if stem.lower().endswith(".gguf") else stem
        tag = re.sub(r"[^A-Za-z0-9_.-]", "_", stem)[:80].lstrip(".-") or "file"
        name = name.rsplit(":", 1)[0] + ":" + tag
    if store.find(name) is not None:
        return store.model_path(name)
    files = list_files(ref)
    if file:
        hits = [f for f in files if f.path == file or os.path.basename(f.path) == file]
        if not hits:
            raise LlamapyError(f"{ref.repo}: no file '{one_line(file)}' in this repository")
        f = hits[0]
    else:
        f = pick_gguf(files, ref.quant, ref.repo)
    (log or (lambda _m: None))(f"pulling {one_line(f.path)}" + (f" ({f.size} bytes)" if f.size else ""))
    staged = download(f, ref.hub, store, progress=progress, log=log)
    return store.model_path(import_blob(name, staged, store))
