"""`llamapy serve`: llama-server's, OpenAI's and Ollama's HTTP APIs from one process.

    serve(model_path=None, host="127.0.0.1", port=8080, n_ctx=4096, n_parallel=1, ...)

loads the model with `n_parallel` slots (each gets n_ctx / n_parallel positions, as llama-server
splits -c), starts the engine thread and runs uvicorn until interrupted. Needs the `server` extra
(FastAPI + uvicorn).
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import sys

from ..errors import LlamapyError
from ..util.safe_text import printable

log = logging.getLogger("llamapy.server")


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def slot_context(model_path: str, n_ctx: int, n_parallel: int) -> int:
    """Positions per slot: -c split over the slots (-c 0: the model's training context)."""
    if n_ctx == 0:
        from ..ggufio.reader import GGUFReader
        from ..model_args import ModelArgs

        with GGUFReader(model_path) as r:
            n_ctx = ModelArgs.from_gguf(r, strict=False).n_ctx_train or 4096
    per_slot = n_ctx // n_parallel
    if per_slot < 8:
        raise LlamapyError(f"-c {n_ctx} over {n_parallel} slots leaves {per_slot} positions per slot; raise -c")
    return per_slot


def build_state(model_path: str | None = None, n_ctx: int = 4096, n_parallel: int = 1, n_threads: int | None = None,
                n_batch: int = 512, api_key: str | list[str] | None = None, alias: str | None = None,
                chat_template: str | None = None, chat_template_file: str | None = None, embedding: bool = False,
                n_predict: int = -1, max_queue: int = 32, max_body: int = 4 << 20, sampling=None,
                ctx_shift: bool = True, load=None, endpoints: dict | None = None, store_models: bool = True,
                models_max: int = 3, keep_alive: float | None = None,
                speculative: dict | None = None):
    """Load the model and everything the app needs (no sockets yet). `sampling`: the SamplerParams a
    request's missing sampling fields take; `ctx_shift`: a slot whose context fills shifts it and goes on.
    store_models: the models of the store answer by name too (server/manager.py: at most `models_max` loaded,
    each kept `keep_alive` seconds after use, None: $LLAMAPY_KEEP_ALIVE / $OLLAMA_KEEP_ALIVE / 5 minutes);
    `speculative`: the draft options (commands/options_draft.draft_options), a draft model or prompt lookup."""
    import os

    from .. import __version__
    from ..chat.templates import ChatTemplate
    from ..engine.engine import Engine
    from ..generation.params import SamplerParams
    from ..store.locate import resolve_model
    from .backend import EngineBackend
    from .common import ServerState
    from .scheduler import Scheduler

    if n_parallel < 1:
        raise LlamapyError(f"-np {n_parallel}: need at least one slot")
    path = resolve_model(model_path)
    llm = Engine(model_path=path, n_ctx=slot_context(path, n_ctx, n_parallel), n_threads=n_threads,
                n_batch=n_batch, n_seq_max=n_parallel, embeddings=True, load=load)
    log.info("%s", llm.kv_line())
    backend = EngineBackend(llm, n_batch=n_batch)
    drafter = None
    if speculative:
        from ..generation.speculative import drafter_from_options

        try:
            drafter = drafter_from_options(llm, speculative["model_draft"], speculative["lookup"],
                                           speculative["draft"], speculative["ctx_size_draft"],
                                           speculative["threads_draft"], n_seq=n_parallel)
        except BaseException:
            llm.close()
            raise
    template = ChatTemplate.for_model(llm.metadata, name=chat_template, file=chat_template_file)
    state = ServerState(
        backend=backend,
        scheduler=Scheduler(backend, max_queue=max_queue, ctx_shift=ctx_shift, drafter=drafter),
        template=template,
        model_id=alias or (model_path if model_path else os.path.basename(path)),
        model_path=path,
        api_key=api_key or None,
        max_body=max_body,
        embedding_only=embedding,
        default_n_predict=n_predict,
        sampling=sampling if sampling is not None else SamplerParams(),
        fingerprint=f"llamapy-{__version__}",
        **(endpoints or {}),
    )
    if state.default_grammar is not None:  # checked now: a grammar that does not parse stops the start
        from .common import compile_spec
        from .errors import APIError

        try:
            compile_spec(backend, state.default_grammar)
        except APIError as e:
            raise LlamapyError(f"{state.default_grammar.param}: {e.message}") from None
    if store_models:
        from .manager import ModelManager

        state.models = ModelManager(state, models_max=models_max, keep_alive=keep_alive, store=state.store,
                                    n_ctx=n_ctx, load_kwargs={"n_threads": n_threads, "load": load})
    return state


def uvicorn_config(app, host: str, port: int, verbose: bool = False, read_timeout: float = 30.0,
                   timeout: float = 600.0, max_connections: int | None = None, ssl_keyfile: str | None = None,
                   ssl_certfile: str | None = None):
    """uvicorn's Config for `app`, with the connection guards of server/connections.py: a request must
    arrive within read_timeout seconds, a client that reads nothing for `timeout` seconds is dropped,
    idle keep-alive connections close after 5 s, and open connections stay below the descriptor limit."""
    import uvicorn

    from .connections import BACKLOG, connection_cap, guarded_protocol

    protocol = guarded_protocol(read_timeout, timeout, connection_cap(max_connections))
    return uvicorn.Config(app, host=host, port=port, http=protocol, backlog=BACKLOG,
                          log_level="info" if verbose else "warning",
                          access_log=verbose, timeout_graceful_shutdown=3, timeout_keep_alive=5,
                          server_header=False, ssl_keyfile=ssl_keyfile, ssl_certfile=ssl_certfile)


def serve(host: str = "127.0.0.1", port: int = 8080, verbose: bool = False, read_timeout: float = 30.0,
          timeout: float = 600.0, cors_origins: tuple[str, ...] = (), ssl_keyfile: str | None = None,
          ssl_certfile: str | None = None, **kwargs) -> None:
    """Load the model and answer HTTP requests until interrupted (kwargs: see build_state; the others:
    see uvicorn_config and app.Guard)."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError as e:
        raise LlamapyError(f"the server needs FastAPI and uvicorn ({e.name} is missing): "
                           "pip install 'llamapy[server]'") from None
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")
    if not is_loopback(host) and not kwargs.get("api_key"):
        print(f"warning: listening on {host} without --api-key: anyone who can reach this port can use the model",
              file=sys.stderr)
    sock = listen_socket(host, port)  # before loading the model: a taken port fails at once
    try:
        state = build_state(**kwargs)
    except BaseException:
        sock.close()
        raise
    b = state.backend
    print(f"llamapy serve: {printable(state.model_path)}", file=sys.stderr)
    print(f"  {b.n_slots} slot(s) x {b.n_ctx} positions, chat template: {printable(state.template.describe())}",
          file=sys.stderr)
    if state.models is not None:
        m = state.models
        ka = "forever" if m.keep_alive == float("inf") else f"{m.keep_alive:g}s"
        print(f"  and the store's models by name ({printable(m.store.root)}): up to {m.models_max} loaded, "
              f"each kept {ka} after use", file=sys.stderr)
    if state.template.note:
        print(f"  note: {printable(state.template.note)}", file=sys.stderr)
    app = create_app(state, loopback_only=is_loopback(host), cors_origins=tuple(cors_origins))
    config = uvicorn_config(app, host, port, verbose, read_timeout=read_timeout, timeout=timeout,
                            ssl_keyfile=ssl_keyfile, ssl_certfile=ssl_certfile)

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                bound = self.servers[0].sockets[0].getsockname() if self.servers else (host, port)
                shown = bound[0] if ":" not in bound[0] else f"[{bound[0]}]"
                scheme = "https" if ssl_certfile else "http"
                print(f"  listening on {scheme}://{shown}:{bound[1]} (chat page at /, OpenAI API at /v1, "
                      "Ollama API at /api)", file=sys.stderr, flush=True)

    try:
        Server(config).run(sockets=[sock])
    finally:
        sock.close()
        b.llm.close()


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket for host:port, or a LlamapyError saying why not."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as e:
        raise LlamapyError(f"--host {host}: {getattr(e, 'strerror', None) or e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise LlamapyError(f"can't listen on {host}:{port}: {e.strerror} (another server there? try --port)") from None
    return sock
