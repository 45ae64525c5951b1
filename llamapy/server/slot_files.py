"""llama-server's slot save, restore and erase (`POST /slots/{id}?action=...`, with --slot-save-path DIR).

A slot's tokens and KV cache go to a llamapy state file (engine/state.py) named by the request's `filename`,
which must be a plain name inside DIR: no separators, no '..', no control characters (the rules llama.cpp's
fs_validate_filename applies). A file that can't be restored (another model, cut short, corrupt) is a 400
and leaves the slot empty, as the reference's failed restore does.
"""
from __future__ import annotations

import asyncio
import os
import time
import unicodedata
from typing import Any

from .errors import APIError, bad_request

# characters a file name may not hold: separators and what Windows forbids, and look-alikes of '.', '/', '\'
_FORBIDDEN = set('/\\:*?"<>|') | {"\uff0e", "\u2215", "\u2216", "\ufffd", "\ufeff"}


def valid_filename(name: object) -> bool:
    """Whether `name` is a plain file name that stays inside the save folder."""
    if not isinstance(name, str) or not name or len(name.encode("utf-8", "surrogatepass")) > 255:
        return False
    for c in name:
        o = ord(c)
        if o <= 0x1F or o == 0x7F or 0x80 <= o <= 0x9F or 0xD800 <= o <= 0xDFFF or c in _FORBIDDEN:
            return False
        if unicodedata.category(c) == "Cs":
            return False
    if name[0] == " " or name[-1] in " .":
        return False
    return name not in (".", "..") and ".." not in name


def _filename(body: Any) -> str:
    if not isinstance(body, dict) or "filename" not in body:
        raise bad_request("the request needs a 'filename'", "filename")
    name = body["filename"]
    if not valid_filename(name):
        raise bad_request("Invalid filename", "filename")
    return name


async def slot_action(state, id_slot: str, action: str, body: Any) -> dict[str, Any]:
    """The answer to POST /slots/{id_slot}?action=..., or an APIError."""
    if not state.slot_save_path:
        raise APIError(501, "This server does not support slots action. Start it with `--slot-save-path`")
    try:
        sid = int(id_slot)
    except ValueError:
        raise bad_request("Invalid slot ID") from None
    if action not in ("save", "restore", "erase"):
        raise bad_request("Invalid action", "action")
    if not 0 <= sid < len(state.scheduler.slots):
        raise bad_request("Invalid slot ID")
    llm = state.backend.llm
    if action == "erase":
        def erase(slot) -> dict[str, Any]:
            n = llm.n_past(slot.id)
            llm.kv_clear(slot.id)
            return {"id_slot": sid, "n_erased": n}
        return await _on_engine(state, sid, erase)
    name = _filename(body)
    path = os.path.join(state.slot_save_path, name)
    if action == "save":
        def save(slot) -> dict[str, Any]:
            from ..engine.state import save_file

            t0 = time.perf_counter()
            n_tok = llm.n_past(slot.id)
            n_bytes = save_file(llm, slot.id, path)
            return {"id_slot": sid, "filename": name, "n_saved": n_tok, "n_written": n_bytes,
                    "timings": {"save_ms": 1e3 * (time.perf_counter() - t0)}}
        return await _on_engine(state, sid, save)

    def restore(slot) -> dict[str, Any]:
        from ..engine.state import StateError, read_file, restore

        t0 = time.perf_counter()
        try:
            data = read_file(llm, path)
            tokens = restore(llm, slot.id, data, name)
        except StateError as e:
            llm.kv_clear(slot.id)
            msg = str(e).replace(path, name)  # the answer names the file as the client did, not the folder
            raise bad_request(f"Unable to restore slot: {msg}") from None
        return {"id_slot": sid, "filename": name, "n_restored": len(tokens), "n_read": len(data),
                "timings": {"restore_ms": 1e3 * (time.perf_counter() - t0)}}
    return await _on_engine(state, sid, restore)


async def _on_engine(state, sid: int, fn) -> dict[str, Any]:
    from ..errors import LlamapyError

    fut = state.scheduler.slot_action(sid, fn)
    try:
        return await asyncio.wrap_future(fut)
    except APIError:
        raise
    except LlamapyError as e:
        raise bad_request(str(e)) from None
