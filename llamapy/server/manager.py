"""Several models in one server: store models loaded by name on first use, unloaded per `keep_alive`.

The model given with -m (or the default model) is always loaded and answers requests whose `model` is not a
stored name (llama-server's behaviour: any name is accepted). A request naming a store model gets that
model: loaded on first use (its own engine, `Scheduler` and engine thread: the same generation loop as the
default model's), kept `keep_alive` after its last use (Ollama's field: "5m", "1h30m", seconds as a number,
0 = unload when done, negative = forever; the default from LLAMAPY_KEEP_ALIVE, else OLLAMA_KEEP_ALIVE, else
5 minutes), at most `models_max` at once (the least recently used idle one is unloaded to make room). A
model is only unloaded when nothing of it is running or waiting.

Each loaded model is seen by the routes as a `ServerState` of its own (`view`): its backend, scheduler,
template (the Modelfile's Go TEMPLATE, else its GGUF's chat template) and sampling defaults (Ollama's
defaults overlaid by the Modelfile's PARAMETERs; a request's fields override them).
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import LlamapyError
from .errors import APIError, bad_request

log = logging.getLogger("llamapy.server")

DEFAULT_KEEP_ALIVE = 300.0
FOREVER = math.inf
LONGEST = 100 * 365 * 86400.0  # a keep_alive beyond a century is forever
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")


def parse_keep_alive(value: Any, what: str = "keep_alive") -> float:
    """Seconds to keep a model after use: Go durations ("5m", "1h30m", "-1m"), a bare number of seconds,
    0 (unload now) or negative (forever, returned as math.inf). LlamapyError on anything else."""
    if isinstance(value, bool) or value is None:
        raise LlamapyError(f"{what}: expected a duration such as \"5m\" or a number of seconds")
    if isinstance(value, (int, float)):
        secs = float(value)
    else:
        text = str(value).strip()
        try:
            secs = float(text)
        except ValueError:
            sign = -1.0 if text.startswith("-") else 1.0
            body = text.lstrip("+-")
            pos, secs = 0, 0.0
            for m in _DURATION.finditer(body):
                if m.start() != pos:
                    break
                secs += float(m.group(1)) * _UNITS[m.group(2)]
                pos = m.end()
            if not body or pos != len(body):
                raise LlamapyError(f"{what}: '{text[:40]}' is not a duration (e.g. \"5m\", \"1h30m\", \"30s\", "
                                   "0 to unload now, -1 to keep forever)") from None
            secs *= sign
    if math.isnan(secs):
        raise LlamapyError(f"{what}: not a number")
    return FOREVER if secs < 0 or secs > LONGEST else secs


def default_keep_alive() -> float:
    """LLAMAPY_KEEP_ALIVE, else OLLAMA_KEEP_ALIVE, else 5 minutes."""
    for var in ("LLAMAPY_KEEP_ALIVE", "OLLAMA_KEEP_ALIVE"):
        v = os.environ.get(var)
        if v:
            return parse_keep_alive(v, var)
    return DEFAULT_KEEP_ALIVE


@dataclass
class Loaded:
    """A store model loaded by the server."""
    name: str                # the stored name, e.g. "llama3:latest"
    digest: str              # sha256 of its manifest (what /api/ps and /api/tags report)
    settings: Any            # store.models.ModelSettings
    view: Any                # common.ServerState for this model
    size: int
    expires_at: float = FOREVER  # time.time() after which an idle model is unloaded
    keep_alive: float = DEFAULT_KEEP_ALIVE
    pending: int = 0         # requests between picking this model and submitting their jobs
    details: dict = field(default_factory=dict)  # Ollama's `details` (family, parameter_size, quantization)
    last_used: float = field(default_factory=time.monotonic)

    def idle(self) -> bool:
        s = self.view.scheduler
        with s.cond:
            return self.pending == 0 and s.busy_slots() == 0 and not s.waiting


class ModelManager:
    """The loaded store models of one server (see the module's doc)."""

    def __init__(self, base: Any, *, models_max: int = 3, keep_alive: float | None = None, store: Any = None,
                 n_ctx: int = 4096, load_kwargs: dict | None = None):
        self.base = base  # the ServerState of the -m / default model
        self.models_max = max(1, int(models_max))
        self.keep_alive = default_keep_alive() if keep_alive is None else keep_alive
        self._store = store
        self.n_ctx = n_ctx  # -c: the context of a model whose Modelfile sets no num_ctx
        self.load_kwargs = load_kwargs or {}
        self.loaded: OrderedDict[str, Loaded] = OrderedDict()  # least recently used first
        self._lock = asyncio.Lock()  # one load/unload at a time
        self._loading: dict[str, asyncio.Future] = {}  # loads under way, by name
        self._reaper: asyncio.Task | None = None
        self._closed = False

    @property
    def store(self):
        if self._store is None:
            from ..store.store import Store

            self._store = Store()
        return self._store

    # -- lifecycle (the app's lifespan) ------------------------------------------------------------------
    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def stop(self) -> None:
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        for name in list(self.loaded):
            await asyncio.to_thread(self._unload_now, self.loaded.pop(name))

    # -- picking a model -----------------------------------------------------------------------------------
    def stored_name(self, requested: str | None):
        """The store's name for `requested`, or None when it names no stored model."""
        from ..store.store import is_name

        if not requested or not is_name(requested):
            return None
        try:
            return self.store.find(requested)
        except (LlamapyError, OSError):
            return None

    async def acquire(self, requested: str | None, keep_alive: Any = None):
        """(the ServerState to answer with, the Loaded entry or None for the default model); a store model is
        loaded if needed. Call release() with the entry once the request's jobs are submitted."""
        ka = self.keep_alive if keep_alive is None else self._request_keep_alive(keep_alive)
        stored = self.stored_name(requested)
        if stored is None:
            return self.base, None
        key = str(stored)
        while (entry := self.loaded.get(key)) is None:  # checked and taken with no await between
            await self._load_shared(key)
        self.loaded.move_to_end(key)
        entry.pending += 1
        entry.keep_alive = ka
        entry.expires_at = FOREVER
        return entry.view, entry

    async def _load_shared(self, key: str) -> None:
        """Load `key` (requests for it meanwhile wait for this one load; requests for other loaded models
        go on)."""
        fut = self._loading.get(key)
        if fut is not None:
            await asyncio.shield(fut)
            return
        fut = self._loading[key] = asyncio.get_running_loop().create_future()
        try:
            async with self._lock:
                if key not in self.loaded:
                    await self._make_room()
                    self.loaded[key] = await asyncio.to_thread(self._load, key)
            fut.set_result(None)
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # seen: the waiters get it; no "never retrieved" warning when there are none
            raise
        finally:
            del self._loading[key]

    def release(self, entry: Loaded | None) -> None:
        """The request is submitted (or failed): the keep-alive clock starts again from now."""
        if entry is None:
            return
        entry.pending -= 1
        entry.last_used = time.monotonic()
        entry.expires_at = time.time() + entry.keep_alive

    @staticmethod
    def _request_keep_alive(value: Any) -> float:
        try:
            return parse_keep_alive(value)
        except LlamapyError as e:
            raise bad_request(str(e), "keep_alive") from None

    async def unload(self, requested: str) -> bool:
        """Unload a model at once if it is idle (an empty request with keep_alive 0); False if not loaded."""
        stored = self.stored_name(requested)
        entry = self.loaded.get(str(stored)) if stored is not None else None
        if entry is None:
            return False
        entry.keep_alive, entry.expires_at = 0.0, time.time()
        await self._reap_once()
        return True

    # -- loading and unloading -----------------------------------------------------------------------------
    def _load(self, key: str) -> Loaded:
        import hashlib

        from ..store.models import model_settings
        from ..store.store import MEDIA_MODEL

        try:
            settings = model_settings(key, self.store)
            _, doc, raw = self.store.read_manifest(key)
        except LlamapyError as e:
            raise APIError(404, str(e)) from None
        view = model_view(self.base, key, settings, self.n_ctx, self.load_kwargs)
        size = sum(la.get("size", 0) for la in doc.get("layers", []) if la.get("mediaType") == MEDIA_MODEL)
        from .routes_ollama import _details

        view.scheduler.start()
        log.info("loaded %s", key)
        return Loaded(key, "sha256:" + hashlib.sha256(raw).hexdigest(), settings, view, size,
                      details=_details(view.backend))

    async def _make_room(self) -> None:
        """Unload idle models, least recently used first, until one more fits under models_max."""
        while len(self.loaded) >= self.models_max:
            victim = next((e for e in self.loaded.values() if e.idle()), None)
            if victim is None:
                raise APIError(503, f"{len(self.loaded)} models are loaded and busy (--models-max "
                                    f"{self.models_max}); retry later")
            del self.loaded[victim.name]
            await asyncio.to_thread(self._unload_now, victim)

    @staticmethod
    def _unload_now(entry: Loaded) -> None:
        entry.view.scheduler.stop()
        entry.view.backend.llm.close()
        log.info("unloaded %s", entry.name)

    REAP_EVERY = 0.2

    async def _reap_once(self) -> None:
        async with self._lock:
            now = time.time()
            for key, entry in list(self.loaded.items()):
                if entry.expires_at != FOREVER and not entry.idle():  # still answering: kept from its end
                    entry.expires_at = max(entry.expires_at, now + entry.keep_alive)
                elif entry.expires_at <= now:
                    del self.loaded[key]
                    await asyncio.to_thread(self._unload_now, entry)

    async def _reap_forever(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.REAP_EVERY)
            try:
                await self._reap_once()
            except Exception:  # noqa: BLE001 - a failed unload must not stop the reaper
                log.exception("unloading a model failed")

    # -- facts -----------------------------------------------------------------------------------------------
    def running(self) -> list[Loaded]:
        """The loaded store models, most recently used first."""
        return list(reversed(self.loaded.values()))


def model_view(base: Any, key: str, settings: Any, n_ctx: int, load_kwargs: dict) -> Any:
    """A ServerState for stored model `key`: its own engine and scheduler, its template and its parameters."""
    from ..chat.ollama_repl import run_options
    from ..engine.engine import Engine
    from . import slot_context
    from .backend import EngineBackend
    from .scheduler import Scheduler

    try:
        opts = run_options(dict(settings.parameters))
    except LlamapyError as e:
        raise APIError(400, f"model '{key}': {e}") from None
    n_parallel = base.backend.n_slots
    ctx = int(settings.parameters["num_ctx"]) * n_parallel if "num_ctx" in settings.parameters else n_ctx
    path = settings.model_path
    try:
        llm = Engine(model_path=path, n_ctx=slot_context(path, ctx, n_parallel), n_threads=opts.threads or
                     load_kwargs.get("n_threads"), n_batch=base.backend.n_batch, n_seq_max=n_parallel,
                     embeddings=True, load=load_kwargs.get("load"))
    except LlamapyError as e:
        raise APIError(500, f"model '{key}' could not be loaded: {e}") from None
    backend = EngineBackend(llm, n_batch=base.backend.n_batch)
    template = store_template(settings, llm.metadata, opts.stop)
    sampling = opts.sampling
    return replace(base, backend=backend, scheduler=Scheduler(backend, max_queue=base.scheduler.max_queue,
                                                                  ctx_shift=base.scheduler.ctx_shift),
                   template=template, model_id=key, model_path=path, sampling=sampling,
                   model_n_predict=opts.n_predict, n_keep=opts.n_keep, metrics=None)


class GoChatTemplate:
    """A Modelfile's Go TEMPLATE behind the interface the routes use (render, stop_strings, describe)."""

    name = "modelfile"
    note = None
    is_jinja = False

    def __init__(self, source: str, system: str | None, messages: list, stops: list[str]):
        from ..store.prompt import parse_template

        self.source = source
        self.template = parse_template(source)
        self.system = system
        self.messages = messages
        self._stops = list(stops)

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        from ..store.prompt import chat_messages, execute

        msgs = chat_messages(messages, model_system=self.system, model_messages=self.messages)
        try:
            return execute(self.template, msgs)
        except LlamapyError:
            raise
        except Exception as e:  # noqa: BLE001 - a template's runtime error is the request's 400
            raise LlamapyError(f"the model's TEMPLATE failed: {e}") from None

    @property
    def stop_strings(self) -> list[str]:
        return list(self._stops)

    def describe(self) -> str:
        return "the Modelfile's TEMPLATE"


class SystemChatTemplate:
    """A GGUF chat template with a Modelfile's SYSTEM (and MESSAGEs) put in front of a request's messages."""

    def __init__(self, inner: Any, system: str | None, messages: list, stops: list[str]):
        self.inner = inner
        self.system = system
        self.messages = [{"role": m.role, "content": m.content} for m in messages]
        self._stops = list(stops)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        msgs = self.messages + list(messages)
        if self.system and not (messages and messages[0].get("role") == "system"):
            msgs.insert(0, {"role": "system", "content": self.system})
        return self.inner.render(msgs, add_generation_prompt=add_generation_prompt)

    @property
    def stop_strings(self) -> list[str]:
        return [*self.inner.stop_strings, *(s for s in self._stops if s not in self.inner.stop_strings)]


def store_template(settings: Any, metadata: dict, stops: list[str]) -> Any:
    """The template a stored model's chats use: its TEMPLATE, else its GGUF's (both with its SYSTEM)."""
    if settings.template:
        return GoChatTemplate(settings.template, settings.system, settings.messages, stops)
    from ..chat.templates import ChatTemplate

    return SystemChatTemplate(ChatTemplate.for_model(metadata), settings.system, settings.messages, stops)

