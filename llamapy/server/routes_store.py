"""Ollama's model-management endpoints over the local store: /api/tags, /api/show, /api/ps, /api/create,
/api/blobs/:digest, /api/copy, /api/delete, /api/pull.

Writes (create, blobs, copy, delete, pull) are refused with --no-model-writes, and need the API key when one
is set (the app's guard asks for it on every /api path). A remote /api/create reads no server file it was not
given: its GGUF is an uploaded blob (`files`, or FROM @sha256:...), a stored model, or a path under a folder
given with --allow-path.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..errors import LlamapyError
from ..model_args import params_label
from ..util.safe_text import printable
from .common import ServerState, ndjson, read_json
from .errors import APIError, bad_request

FOREVER_AT = "2318-11-28T00:00:00Z"  # what Ollama reports for a model kept forever


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def gguf_details(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Ollama's `details`, `model_info`) of a GGUF file, read from its header."""
    from ..ggufio.filetypes import ftype_name
    from ..info import summarize

    d = summarize(path, with_tensors=False)
    md = d["metadata"]
    arch = str(md.get("general.architecture", ""))
    try:
        quant = ftype_name(int(md.get("general.file_type")))
    except (KeyError, TypeError, ValueError):
        quant = "unknown"
    details = {"parent_model": "", "format": "gguf", "family": arch, "families": [arch] if arch else None,
               "parameter_size": params_label(int(d["n_params"])), "quantization_level": quant}
    info = {k: v for k, v in md.items() if not isinstance(v, (list, tuple, bytes))}
    info["general.parameter_count"] = int(d["n_params"])
    return details, info


def register(router: APIRouter, state: ServerState) -> None:
    def store():
        if state.store is not None:
            return state.store
        from ..store.store import Store

        return Store()

    def writable() -> None:
        if not state.model_writes:
            raise APIError(403, "this server was started with --no-model-writes: the model store is read-only")

    async def body_model(request: Request, *keys: str, check: Callable[[str], Any] | None = None
                         ) -> tuple[dict[str, Any], str]:
        """The JSON body and the model it names; `check` (a name parser) refuses a malformed name with a 400."""
        body = await read_json(request)
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object", "model")
        name = next((body[k] for k in (*keys, "model", "name") if isinstance(body.get(k), str) and body[k]), None)
        if name is None:
            raise bad_request("'model' is required", "model")
        if check is not None:
            try:
                check(name)
            except LlamapyError as e:
                raise bad_request(str(e), "model") from None
        return body, name

    def not_found(name: str) -> APIError:
        return APIError(404, f"model '{printable(name, 200)}' not found")

    async def store_change(change: Callable[..., Any], *args: str, missing: str, field: str) -> Response:
        """Run a change of the store in a thread: 200, or 404 when `missing` is not there, else 400 naming `field`."""
        try:
            await asyncio.to_thread(change, *args)
        except LlamapyError as e:
            raise (not_found(missing) if "not found" in str(e) else bad_request(str(e), field)) from None
        return Response(status_code=200)

    # -- reading --------------------------------------------------------------------------------------------
    @router.get("/api/tags")
    async def tags():
        def listing():
            st = os.stat(state.model_path)
            own = {"name": state.model_id, "model": state.model_id, "modified_at": _iso(st.st_mtime),
                   "size": st.st_size, "digest": "", "details": _own_details(state)}
            out = [own]
            if state.models is not None:
                for e in store().entries():
                    out.append({"name": str(e.name), "model": str(e.name), "modified_at": _iso(e.modified),
                                "size": e.size, "digest": _manifest_digest(store(), e.name),
                                "details": {"format": "gguf"}})
            return out
        return {"models": await asyncio.to_thread(listing)}

    @router.post("/api/show")
    async def show(request: Request):
        body, name = await body_model(request)
        models = state.models
        stored = models.stored_name(name) if models is not None else None
        if stored is None and models is not None and name.removesuffix(":latest") != state.model_id:
            raise not_found(name)
        if stored is None:  # the server's own model (with no store, any name is it, as everywhere)
            tpl = state.template
            b = state.backend
            return {"modelfile": "", "parameters": "", "template": getattr(tpl, "source", None) or tpl.name,
                    "details": _own_details(state),
                    "model_info": {k: v for k, v in b.metadata.items() if not isinstance(v, (list, tuple))}}

        def describe():
            from ..store.models import model_settings, render_modelfile, render_parameters

            s = model_settings(str(stored), store())
            details, info = gguf_details(s.model_path)
            out: dict[str, Any] = {"modelfile": render_modelfile(s), "parameters": render_parameters(s.parameters),
                                   "template": s.template or "", "details": details, "model_info": info,
                                   "capabilities": ["completion", "embedding"],
                                   "modified_at": _iso(os.stat(store().manifest_path(stored)).st_mtime)}
            if s.system:
                out["system"] = s.system
            if s.licenses:
                out["license"] = "\n".join(s.licenses)
            if s.messages:
                out["messages"] = [{"role": m.role, "content": m.content} for m in s.messages]
            return out
        try:
            return await asyncio.to_thread(describe)
        except LlamapyError as e:
            raise APIError(404 if "not found" in str(e) else 500, str(e)) from None

    @router.get("/api/ps")
    async def ps():
        b = state.backend
        own = {"name": state.model_id, "model": state.model_id, "size": b.meta().get("file_size", 0),
               "digest": "", "details": _own_details(state), "expires_at": FOREVER_AT, "size_vram": 0,
               "context_length": b.n_ctx}
        out = [own]
        for e in (state.models.running() if state.models is not None else []):
            expires = FOREVER_AT if e.expires_at == float("inf") else _iso(e.expires_at)
            out.insert(len(out) - 1, {"name": e.name, "model": e.name, "size": e.size, "digest": e.digest[7:],
                                      "details": e.details, "expires_at": expires, "size_vram": 0,
                                      "context_length": e.view.backend.n_ctx})
        return {"models": out}

    # -- writing --------------------------------------------------------------------------------------------
    @router.api_route("/api/blobs/{digest}", methods=["HEAD"])
    async def blob_head(digest: str):
        path = _blob_path(store(), digest)
        return Response(status_code=200 if os.path.isfile(path) else 404)

    @router.post("/api/blobs/{digest}")
    async def blob_post(digest: str, request: Request):
        writable()
        s = store()
        path = _blob_path(s, digest)
        if os.path.isfile(path):  # stored already: the upload is read and dropped
            async for _ in request.stream():
                pass
            return Response(status_code=200)
        tmp = await asyncio.to_thread(s.new_tmp)
        h = hashlib.sha256()
        try:
            f = await asyncio.to_thread(open, tmp, "wb")
            try:
                async for chunk in request.stream():
                    h.update(chunk)
                    await asyncio.to_thread(f.write, chunk)
            finally:
                f.close()
            if h.hexdigest() != digest.split(":", 1)[-1].lower():
                raise bad_request(f"digest mismatch: the body's sha256 is {h.hexdigest()}, not "
                                  f"{printable(digest, 80)}; nothing stored", "digest")
            from ..store.store import StagedBlob

            def commit():
                with s.lock():
                    s.commit(StagedBlob("sha256:" + h.hexdigest(), os.path.getsize(tmp), tmp))
            await asyncio.to_thread(commit)
        except OSError as e:
            raise APIError(507 if e.errno == 28 else 500, f"can't store the blob: {e.strerror}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return Response(status_code=201)

    @router.post("/api/copy")
    async def copy(request: Request):
        writable()
        body = await read_json(request)
        src, dst = (body.get("source"), body.get("destination")) if isinstance(body, dict) else (None, None)
        if not (isinstance(src, str) and isinstance(dst, str) and src and dst):
            raise bad_request("'source' and 'destination' are required", "source")
        return await store_change(store().copy, src, dst, missing=src, field="destination")

    @router.delete("/api/delete")
    async def delete(request: Request):
        writable()
        _, name = await body_model(request)
        if state.models is not None:
            await state.models.unload(name)
        return await store_change(store().remove, name, missing=name, field="model")

    @router.post("/api/create")
    async def create(request: Request):
        writable()
        from ..store.store import parse_name

        body, name = await body_model(request, check=parse_name)
        s = store()
        mf = modelfile_of(body, s, state.allow_paths)
        quantize = body.get("quantize") or body.get("quantization")
        if quantize is not None and not isinstance(quantize, str):
            raise bad_request("'quantize' must be a string such as \"Q4_K_M\"", "quantize")

        def work(say: Callable[[str], None], progress: Callable[[int, int], None]) -> None:
            from ..store.models import create_model

            say("parsing modelfile")
            create_model(name, mf, quantize=quantize, store=s, log=say, progress=progress)
            say("writing manifest")
        if state.models is not None:
            await state.models.unload(name)  # a model replaced under its name is loaded afresh
        return await progress_response(work, body.get("stream", True) is not False)

    @router.post("/api/pull")
    async def pull(request: Request):
        writable()
        from ..store.pull import parse_ref

        body, name = await body_model(request, check=parse_ref)
        s = store()

        def work(say: Callable[[str], None], progress: Callable[[int, int], None]) -> None:
            from ..store.pull import pull as pull_model

            say("pulling manifest")
            pull_model(name, store=s, progress=progress, log=say)
            say("verifying sha256 digest")
            say("writing manifest")
        return await progress_response(work, body.get("stream", True) is not False)


def _manifest_digest(store: Any, name: Any) -> str:
    """The sha256 of a model's manifest (its ID in `llamapy list` is the first 12 digits)."""
    try:
        with open(store.manifest_path(name), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return ""


def _own_details(state: ServerState) -> dict[str, Any]:
    from .routes_ollama import _details

    return _details(state.backend)


def _blob_path(store: Any, digest: str) -> str:
    if not re.fullmatch(r"sha256[:-][0-9a-fA-F]{64}", digest):
        raise bad_request(f"'{printable(digest, 80)}' is not a digest (sha256:<64 hex digits>)", "digest")
    return store.blob_path("sha256:" + digest[7:].lower())


def _allowed(path: str, store: Any, allow_paths: tuple[str, ...]) -> bool:
    real = os.path.realpath(path)
    roots = [store.blobs, *allow_paths]
    return any(real == os.path.realpath(r) or real.startswith(os.path.realpath(r).rstrip(os.sep) + os.sep)
               for r in roots)


def _str_field(body: dict, key: str) -> str | None:
    v = body.get(key)
    if v is not None and not isinstance(v, str):
        raise bad_request(f"'{key}' must be a string", key)
    return v


def modelfile_of(body: dict, store: Any, allow_paths: tuple[str, ...]):
    """The Modelfile of an /api/create request: its `modelfile` text, or Ollama's newer fields (`from`, `files`,
    `template`, `system`, `parameters`, `messages`, `license`), checked so it reads no file it was not given."""
    from ..store.modelfile import Message, Modelfile, parse, parse_parameter

    text = _str_field(body, "modelfile")
    try:
        mf = parse(text, base_dir=store.blobs) if text else Modelfile()
    except LlamapyError as e:
        raise bad_request(str(e), "modelfile") from None
    files = body.get("files")
    if files is not None:
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise bad_request("'files' must be an object {file name: \"sha256:<digest>\"}", "files")
        ggufs = [d for f, d in files.items() if f.lower().endswith(".gguf")] or list(files.values())
        if len(ggufs) != 1:
            raise bad_request("'files' must hold exactly one GGUF file (safetensors folders are not taken over "
                              "the API)", "files")
        mf.from_, mf.from_path = ggufs[0], None
    elif (frm := _str_field(body, "from")) is not None:
        from ..store.modelfile import resolve_from

        mf.from_, mf.from_path = frm, resolve_from(frm, os.sep)
    if not mf.from_:
        raise bad_request("a FROM is required: 'from' (a model name), 'files' (uploaded blobs) or a 'modelfile'",
                          "from")
    blob = re.fullmatch(r"@?(sha256[:-][0-9a-fA-F]{64})", mf.from_.strip())
    if blob:
        path = _blob_path(store, blob.group(1))
        if not os.path.isfile(path):
            raise bad_request(f"blob {blob.group(1)} has not been uploaded (POST /api/blobs/... first)", "files")
        mf.from_path = path
    elif mf.from_path is not None and not _allowed(mf.from_path, store, allow_paths):
        raise APIError(403, f"FROM {printable(mf.from_, 200)}: the server reads no files given by path "
                            "(upload the GGUF with /api/blobs, or start the server with --allow-path FOLDER)")
    for key in ("template", "system"):
        if (v := _str_field(body, key)) is not None:
            setattr(mf, key, v)
    lic = body.get("license")
    if lic is not None:
        mf.licenses = [lic] if isinstance(lic, str) else [x for x in lic if isinstance(x, str)]
    params = body.get("parameters")
    if params is not None:
        if not isinstance(params, dict):
            raise bad_request("'parameters' must be an object", "parameters")
        for k, v in params.items():
            try:
                if k.lower() == "stop":
                    mf.parameters["stop"] = [str(x) for x in (v if isinstance(v, list) else [v])]
                else:
                    raw = str(v).lower() if isinstance(v, bool) else str(v)
                    mf.parameters[k.lower()] = parse_parameter(k, raw)
            except LlamapyError as e:
                raise bad_request(str(e), "parameters") from None
    msgs = body.get("messages")
    if msgs is not None:
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                                 and isinstance(m.get("content"), str) for m in msgs):
            raise bad_request("'messages' must be a list of {role, content}", "messages")
        mf.messages = [Message(m["role"], m["content"]) for m in msgs]
    if body.get("adapters"):
        raise bad_request("adapters (LoRA) are not supported yet", "adapters")
    return mf


async def progress_response(work: Callable, stream: bool) -> Response:
    """Run `work(say, progress)` on a thread: streamed as Ollama's status lines ({"status"}, then {"status",
    "total", "completed"} while bytes move, then {"status": "success"}, or {"error"}), or one answer."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    last = [0.0]

    def say(msg: str) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, {"status": printable(str(msg), 300)})

    def progress(done: int, total: int) -> None:
        now = loop.time()
        if now - last[0] >= 0.1 or done >= total:
            last[0] = now
            loop.call_soon_threadsafe(queue.put_nowait, {"status": "downloading", "total": total,
                                                         "completed": done})

    async def go() -> None:
        try:
            await asyncio.to_thread(work, say, progress)
            queue.put_nowait({"status": "success"})
        except LlamapyError as e:
            queue.put_nowait(APIError(404 if "not found" in str(e) else 400, str(e)))
        except OSError as e:
            queue.put_nowait(APIError(507 if e.errno == 28 else 500, f"{e.strerror or e}"))
        queue.put_nowait(None)

    task = asyncio.create_task(go())
    if not stream:
        final: Any = None
        while (item := await queue.get()) is not None:
            final = item
        await task
        if isinstance(final, APIError):
            raise final
        return JSONResponse(final)

    async def lines():
        while (item := await queue.get()) is not None:
            yield ndjson({"error": item.message} if isinstance(item, APIError) else item)
        await task

    return StreamingResponse(lines(), media_type="application/x-ndjson")
