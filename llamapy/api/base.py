"""`Llama`'s construction, lifetime, tokens, the KV cache and saved states (the class is in llama.py)."""
from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from ..errors import LlamapyError
from ..generation.generate import eog_ids
from .common import (
    CHAT_FORMATS,
    GGML_TYPE_F16,
    LLAMA_DEFAULT_SEED,
    BaseLlamaCache,
    LlamaState,
    _float,
    _int,
    _not_yet,
    _string_metadata,
)

_L = TypeVar("_L", bound="LlamaBase")


class LlamaBase:
    """A loaded model and its KV cache: what `Llama`'s completion, chat and embedding methods build on."""

    def __init__(
        self,
        model_path: str,
        *,
        n_gpu_layers: int = 0,
        split_mode: int = 1,
        main_gpu: int = 0,
        tensor_split: list[float] | None = None,
        rpc_servers: str | None = None,
        vocab_only: bool = False,
        use_mmap: bool = True,
        use_mlock: bool = False,
        kv_overrides: dict[str, bool | int | float | str] | None = None,
        seed: int = LLAMA_DEFAULT_SEED,
        n_ctx: int = 512,
        n_batch: int = 512,
        n_ubatch: int = 512,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        rope_scaling_type: int | None = -1,
        pooling_type: int = -1,
        rope_freq_base: float = 0.0,
        rope_freq_scale: float = 0.0,
        yarn_ext_factor: float = -1.0,
        yarn_attn_factor: float = 1.0,
        yarn_beta_fast: float = 32.0,
        yarn_beta_slow: float = 1.0,
        yarn_orig_ctx: int = 0,
        logits_all: bool = False,
        embedding: bool = False,
        offload_kqv: bool = True,
        flash_attn: bool = False,
        op_offload: bool | None = None,
        swa_full: bool | None = None,
        no_perf: bool = False,
        last_n_tokens_size: int = 64,
        lora_base: str | None = None,
        lora_scale: float = 1.0,
        lora_path: str | None = None,
        numa: bool | int = False,
        chat_format: str | None = None,
        chat_handler: Callable[..., Any] | None = None,
        draft_model: Any | None = None,
        tokenizer: Any | None = None,
        type_k: int | str | None = None,
        type_v: int | str | None = None,
        spm_infill: bool = False,
        verbose: bool = True,
        **kwargs: Any,
    ) -> None:
        """Load the model (see the class docstring for which arguments have an effect)."""
        self._init_args = {k: v for k, v in locals().items() if k not in ("self", "kwargs")} | kwargs
        self._eng: Any = None
        self._closed = True
        if not isinstance(model_path, str) or not model_path:
            raise TypeError("model_path must be a non-empty string (a GGUF file)")
        self.n_ctx_arg = _int("n_ctx", n_ctx, 0)
        self.n_batch = _int("n_batch", n_batch, 1)
        self.n_ubatch = _int("n_ubatch", n_ubatch, 1)
        if n_threads is not None:
            n_threads = _int("n_threads", n_threads, -1) or None
            n_threads = None if n_threads is not None and n_threads < 0 else n_threads
        if n_threads_batch is not None:
            _int("n_threads_batch", n_threads_batch, -1)
        self._seed = _int("seed", seed, -1, 0xFFFFFFFF)
        self.last_n_tokens_size = _int("last_n_tokens_size", last_n_tokens_size, -1)
        self.pooling_type = _int("pooling_type", pooling_type, -1, 4)
        if self.pooling_type == 4:
            raise _not_yet("pooling_type", "rank pooling (4)")
        from ..engine.load import kv_cache_type

        try:  # ggml type ids (as llama-cpp-python takes them) or names (f16, q8_0, ...)
            self._type_k = kv_cache_type(GGML_TYPE_F16 if type_k is None else type_k, "K")
            self._type_v = kv_cache_type(GGML_TYPE_F16 if type_v is None else type_v, "V")
        except LlamapyError as e:
            raise ValueError(str(e)) from None
        if lora_path is not None and (not isinstance(lora_path, (str, os.PathLike)) or not str(lora_path)):
            raise TypeError("lora_path must be a path to a GGUF LoRA adapter")
        lora_scale = _float("lora_scale", lora_scale, -1e9, 1e9)
        if lora_base is not None and not isinstance(lora_base, (str, os.PathLike)):
            raise TypeError("lora_base must be a path or None")
        self.draft_model = draft_model
        self._drafter: Any = None
        if draft_model is not None:   # speculative decoding (api/speculative.py)
            from .speculative import CallableDrafter

            self._drafter = CallableDrafter(draft_model)
        if tokenizer is not None:
            raise _not_yet("tokenizer", "a tokenizer other than the GGUF's")
        defaults = {"rope_scaling_type": (rope_scaling_type, -1), "rope_freq_base": (rope_freq_base, 0.0),
                    "rope_freq_scale": (rope_freq_scale, 0.0), "yarn_ext_factor": (yarn_ext_factor, -1.0),
                    "yarn_attn_factor": (yarn_attn_factor, 1.0), "yarn_beta_fast": (yarn_beta_fast, 32.0),
                    "yarn_beta_slow": (yarn_beta_slow, 1.0), "yarn_orig_ctx": (yarn_orig_ctx, 0)}
        changed = [k for k, (v, d) in defaults.items() if v is not None and v != d]
        if kv_overrides:
            changed.append("kv_overrides")
        if changed:
            warnings.warn(f"{', '.join(changed)}: not applied (llamapy reads these from the GGUF)", stacklevel=2)
        self.rope_settings = {k: v for k, (v, _) in defaults.items()}
        self.kv_overrides = kv_overrides
        self.verbose = bool(verbose)
        self.chat_format = chat_format
        self.chat_handler = chat_handler
        self.spm_infill = spm_infill
        self.lora_scale = lora_scale
        self.numa = numa
        self.model_path = model_path
        self._logits_all = bool(logits_all)
        self._embedding = bool(embedding)
        self._vocab_only = bool(vocab_only)
        self.cache: BaseLlamaCache | None = None
        self._lock = threading.RLock()  # held per call, or per chunk of a stream
        self._epoch = 0
        self._samplers: dict[tuple[Any, ...], Any] = {}
        self._template: Any = None
        if chat_format is not None:
            self._template = self._template_for(chat_format)

        from ..store.locate import resolve_model

        try:
            path = resolve_model(model_path)
        except LlamapyError:
            raise ValueError(f"Model path does not exist: {model_path}") from None
        t0 = time.perf_counter()
        try:
            if self._vocab_only:
                from ..ggufio.reader import GGUFReader
                from ..model_args import ModelArgs
                from ..tokenizer.core import Tokenizer

                self._reader: Any = GGUFReader(path)
                args = ModelArgs.from_gguf(self._reader)
                self._tok: Any = Tokenizer.from_gguf(self._reader)
                self._n_ctx = self.n_ctx_arg or args.n_ctx_train
                self._n_vocab, self._n_embd = args.n_vocab, args.n_embd
                self._model_pooling = args.pooling_type
                self._raw_meta: dict[str, Any] = {k: v.value for k, v in self._reader.kv.items()}
            else:
                from ..engine.engine import Engine
                from ..engine.load import LoadOptions

                self._reader = None
                self._eng = Engine(model_path=path, n_ctx=self.n_ctx_arg, n_threads=n_threads,
                                   n_batch=min(self.n_batch, self.n_ubatch), n_seq_max=1, embeddings=self._embedding,
                                   load=LoadOptions(type_k=self._type_k, type_v=self._type_v))
                self._tok = self._eng.tokenizer
                self._n_ctx, self._n_vocab, self._n_embd = self._eng.n_ctx, self._eng.n_vocab, self._eng.n_embd
                self._model_pooling = self._eng.args.pooling_type
                self._raw_meta = self._eng.metadata
                self.n_threads = self._eng.n_threads
        except LlamapyError as e:
            raise ValueError(f"Failed to load model from file: {path}: {e}") from None
        self.lora_path = lora_path
        self.lora_base = lora_base  # accepted: adapters apply to the model as loaded, quantized or not
        if lora_path is not None and self._eng is not None:
            try:
                self._eng.add_lora(os.fspath(lora_path), lora_scale)
            except LlamapyError as e:
                self._eng.close()
                raise RuntimeError(f"Failed to initialize LoRA adapter from lora path: {lora_path}: {e}") from None
        self._closed = False
        self.model_path = path
        self.metadata: dict[str, str] = _string_metadata(self._raw_meta)
        self._eog = frozenset(self._eog_ids())
        self._last_logits: npt.NDArray[np.single] | None = None
        self._scores_buf: npt.NDArray[np.single] | None = None
        if self.verbose:
            desc = getattr(self._eng, "desc", "vocabulary only")
            print(f"llamapy: loaded {path} ({desc}) in {time.perf_counter() - t0:.2f} s, n_ctx = {self._n_ctx}",
                  file=sys.stderr)

    # -- lifetime --------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls: type[_L], repo_id: str, filename: str | None,
                        additional_files: list[str] | None = None, local_dir: str | None = None,
                        local_dir_use_symlinks: bool | Literal["auto"] = "auto", cache_dir: str | None = None,
                        **kwargs: Any) -> _L:
        """Download a GGUF from the Hugging Face Hub into llamapy's model store (once) and load it.

        filename: the file's name, or a glob (`*q8_0.gguf`) matching exactly one file of the repository.
        HF_ENDPOINT (a mirror) and HF_TOKEN are honoured. The file goes to llamapy's store (as `llamapy pull`
        does, named hf.co/REPO:FILE-STEM), not to local_dir / cache_dir, which are accepted and ignored.
        additional_files (split GGUFs) are not supported yet. kwargs: the Llama arguments."""
        import fnmatch
        import re

        from ..store.models import import_blob
        from ..store.pull import download, list_files, parse_ref
        from ..store.store import Store

        if not isinstance(repo_id, str) or not isinstance(filename, str):
            raise TypeError("from_pretrained: repo_id and filename must be strings")
        if additional_files:
            raise _not_yet("additional_files", "split GGUF files")
        verbose = bool(kwargs.get("verbose", True))
        try:
            ref = parse_ref(f"hf.co/{repo_id}")
            files = list_files(ref)
            names = [f.path for f in files]
            matches = [f for f in files if fnmatch.fnmatchcase(f.path, filename)
                       or fnmatch.fnmatchcase(os.path.basename(f.path), filename)]
            if not matches:  # "*q8_0.gguf" for a file named ...Q8_0.gguf
                low = filename.lower()
                matches = [f for f in files if fnmatch.fnmatchcase(os.path.basename(f.path).lower(), low)]
            if not matches:
                raise ValueError(f"No file found in {repo_id} that matches {filename!r} "
                                 f"(files: {', '.join(names[:20])})")
            if len(matches) > 1:
                raise ValueError(f"Multiple files found in {repo_id} matching {filename!r}: "
                                 f"{', '.join(f.path for f in matches[:20])}")
            f = matches[0]
            stem = os.path.basename(f.path)
            stem = stem[:-5] if stem.lower().endswith(".gguf") else stem
            tag = re.sub(r"[^A-Za-z0-9_.-]", "_", stem).lstrip(".-")[:80] or "latest"
            name = f"hf.co/{ref.repo}:{tag}"
            store = Store()
            if store.find(name) is None:
                def say(msg: str) -> None:
                    if verbose:
                        print(f"llamapy: {msg}", file=sys.stderr)

                import_blob(name, download(f, ref.hub, store, log=say), store)
            path = store.model_path(name)
        except LlamapyError as e:
            raise ValueError(f"from_pretrained({repo_id!r}, {filename!r}): {e}") from None
        return cls(model_path=path, **kwargs)

    def close(self) -> None:
        """Free the model, its KV cache and thread pool now; the object can't be used afterwards."""
        with self._lock:
            self._closed = True
            self._epoch += 1
            if self._eng is not None:
                self._eng.close()
                self._eng = None
            if getattr(self, "_reader", None) is not None:
                self._reader.close()
                self._reader = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickled as its arguments: unpickling loads the model again (the KV cache starts empty)."""
        return dict(self._init_args)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def __enter__(self: _L) -> _L:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Llama is closed")

    def _engine(self) -> Any:
        self._check_open()
        if self._eng is None:
            raise RuntimeError("this Llama was loaded with vocab_only=True: it can tokenize but not evaluate")
        return self._eng

    # -- model facts -----------------------------------------------------------------------------------------
    def n_ctx(self) -> int:
        """The context size (positions of the KV cache)."""
        return self._n_ctx

    def n_embd(self) -> int:
        """The embedding size."""
        return self._n_embd

    def n_vocab(self) -> int:
        """The vocabulary size."""
        return self._n_vocab

    def token_bos(self) -> int:
        """The beginning-of-sequence token id (-1: none)."""
        b = self._tok.bos_id
        return -1 if b is None else int(b)

    def token_eos(self) -> int:
        """The end-of-sequence token id (-1: none)."""
        e = self._tok.eos_id
        return -1 if e is None else int(e)

    def token_nl(self) -> int:
        """The newline token id."""
        nl = self._tok.nl_id
        return -1 if nl is None else int(nl)

    @property
    def n_tokens(self) -> int:
        """Tokens in the KV cache."""
        return 0 if self._eng is None else int(self._eng.n_past(0))

    @property
    def input_ids(self) -> npt.NDArray[np.intc]:
        """The token ids in the KV cache."""
        if self._eng is None:
            return np.zeros(0, dtype=np.intc)
        return np.asarray(self._eng.tokens(0), dtype=np.intc)

    @property
    def scores(self) -> npt.NDArray[np.single]:
        """Logits: with logits_all, one row per token in the KV cache; else one row, the last position's."""
        if self._logits_all and self._scores_buf is not None:
            return self._scores_buf[: self.n_tokens]
        if self._last_logits is None:
            return np.zeros((0, self._n_vocab), dtype=np.single)
        return self._last_logits.reshape(1, -1)

    def _eog_ids(self) -> list[int]:
        return eog_ids(self._tok, self._n_vocab)

    # -- tokens ----------------------------------------------------------------------------------------------
    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        """Token ids of UTF-8 text; add_bos adds BOS when the model asks for it; special parses control tokens
        written in the text."""
        self._check_open()
        if isinstance(text, str):
            raise TypeError("tokenize: text must be bytes (use text.encode('utf-8'))")
        if not isinstance(text, (bytes, bytearray)):
            raise TypeError(f"tokenize: text must be bytes, got {type(text).__name__}")
        s = bytes(text).decode("utf-8", errors="replace")
        return [int(t) for t in self._tok.encode(s, add_special=bool(add_bos), parse_special=bool(special))]

    def detokenize(self, tokens: Sequence[int], prev_tokens: Sequence[int] | None = None,
                   special: bool = False) -> bytes:
        """The bytes of tokens (control tokens only with special). prev_tokens is accepted for compatibility:
        a GGUF vocabulary's pieces do not depend on what came before."""
        self._check_open()
        ids = self._check_tokens("tokens", tokens, allow_empty=True)
        piece = self._tok.token_to_piece
        out = b"".join(piece(t, bool(special)) for t in ids)
        if ids and ids[0] == self.token_bos() and out[:1] == b" ":
            out = out[1:]
        return out

    def _check_tokens(self, name: str, tokens: object, allow_empty: bool = False) -> list[int]:
        if isinstance(tokens, (str, bytes)) or not isinstance(tokens, (Sequence, np.ndarray)):
            raise TypeError(f"{name} must be a list of token ids, got {type(tokens).__name__}")
        out = []
        for t in tokens:
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                raise TypeError(f"{name}: token ids must be integers, got {type(t).__name__}")
            if not 0 <= int(t) < self._n_vocab:
                raise ValueError(f"{name}: token id {int(t)} is outside the vocabulary [0, {self._n_vocab})")
            out.append(int(t))
        if not out and not allow_empty:
            raise ValueError(f"{name} is empty")
        return out

    # -- low level: the KV cache -----------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty the KV cache (the next evaluation starts at position 0)."""
        eng = self._engine()
        with self._lock:
            self._epoch += 1
            eng.kv_truncate(0, 0)
            self._last_logits = None

    def eval(self, tokens: Sequence[int]) -> None:
        """Evaluate tokens after those already in the KV cache; their logits go to `scores`."""
        eng = self._engine()
        ids = self._check_tokens("tokens", tokens)
        with self._lock:
            self._epoch += 1
            if eng.n_past(0) + len(ids) > self._n_ctx:
                raise ValueError(f"Requested tokens ({eng.n_past(0) + len(ids)}) exceed context window of "
                                 f"{self._n_ctx}")
            self._eval(eng, ids, None, prompt=True)

    def _eval(self, eng: Any, ids: list[int], seq: Any, prompt: bool) -> npt.NDArray[np.single]:
        """Evaluate ids into sequence 0 (timed into seq when given); keeps the logits for `scores`."""
        if self._logits_all:
            start = eng.n_past(0)
            t0 = time.perf_counter()
            rows = eng.eval_all_logits(ids, 0)
            if seq is not None:
                seq.evaluated(len(ids), 1e3 * (time.perf_counter() - t0), prompt=prompt)
            if self._scores_buf is None:
                self._scores_buf = np.zeros((self._n_ctx, self._n_vocab), dtype=np.single)
            self._scores_buf[start:start + len(ids)] = rows
            logits: npt.NDArray[np.single] = rows[-1]
        elif seq is not None:
            logits = seq.eval(eng, 0, ids, prompt=prompt)
        else:
            logits = eng.eval(ids, 0)
        self._last_logits = logits
        return logits

    def _keep_rows(self, start: int, rows: npt.NDArray[np.single]) -> None:
        """logits_all: a speculative verify step's rows into `scores` from position start."""
        if self._scores_buf is None:
            self._scores_buf = np.zeros((self._n_ctx, self._n_vocab), dtype=np.single)
        self._scores_buf[start:start + len(rows)] = rows

    def save_state(self) -> LlamaState:
        """The context as a LlamaState: its token ids, logits, seed, and in `llama_state` the KV cache (llamapy's
        state format: checked against the model when loaded)."""
        self._engine()
        with self._lock:
            return self._save_state()

    def _save_state(self) -> LlamaState:
        from ..engine.state import encode

        eng = self._engine()
        ids = self.input_ids
        data = encode(eng, 0)
        return LlamaState(input_ids=ids, scores=self.scores.copy(), n_tokens=len(ids), llama_state=data,
                          llama_state_size=len(data), seed=self._seed)

    def load_state(self, state: LlamaState) -> None:
        """Restore a saved context: the KV cache holds its tokens again, from the saved KV state, and the logits
        are the saved ones. A state of another model, or a corrupt one, raises ValueError (the context is then
        left empty)."""
        eng = self._engine()
        if not isinstance(state, LlamaState):
            raise TypeError(f"load_state: expected a LlamaState, got {type(state).__name__}")
        with self._lock:
            self._epoch += 1
            self._load_state(eng, state)

    def _load_state(self, eng: Any, state: LlamaState) -> None:
        from ..engine.state import StateError, restore

        ids = self._check_tokens("state.input_ids", list(state.input_ids[: state.n_tokens]), allow_empty=True)
        if len(ids) > self._n_ctx:
            raise ValueError(f"Requested tokens ({len(ids)}) exceed context window of {self._n_ctx}")
        if not isinstance(state.llama_state, (bytes, bytearray, memoryview)):
            raise TypeError(f"state.llama_state must be bytes, got {type(state.llama_state).__name__}")
        scores = np.asarray(state.scores, dtype=np.single)
        if scores.ndim != 2 or scores.shape[1] != self._n_vocab or (ids and scores.shape[0] == 0):
            raise ValueError(f"state.scores: shape {scores.shape}, expected (rows, {self._n_vocab})")
        try:
            got = restore(eng, 0, state.llama_state, "state.llama_state")
        except StateError as e:
            eng.kv_clear(0)
            self._last_logits = None
            raise ValueError(str(e)) from None
        if got != ids:
            eng.kv_clear(0)
            self._last_logits = None
            raise ValueError("state.input_ids do not match the tokens of state.llama_state")
        if self._logits_all and scores.shape[0] == len(ids) and len(ids):
            if self._scores_buf is None:
                self._scores_buf = np.zeros((self._n_ctx, self._n_vocab), dtype=np.single)
            self._scores_buf[: len(ids)] = scores
        self._last_logits = scores[-1].copy() if len(scores) and len(ids) else None
        self._seed = state.seed

    def set_cache(self, cache: BaseLlamaCache | None) -> None:
        """Use a prompt cache (LlamaRAMCache), or none: completions look up the longest cached prefix of their
        prompt and store their final state."""
        if cache is not None and not isinstance(cache, BaseLlamaCache):
            raise TypeError(f"set_cache: expected a LlamaRAMCache or LlamaDiskCache, got {type(cache).__name__}")
        self.cache = cache

    def set_seed(self, seed: int) -> None:
        """The seed later samplings use (LLAMA_DEFAULT_SEED: a random one each time)."""
        self._seed = _int("seed", seed, -1, 0xFFFFFFFF)

    def _template_for(self, chat_format: str) -> Any:
        from ..chat.templates import ChatTemplate

        if not isinstance(chat_format, str):
            raise TypeError(f"chat_format must be a string, got {type(chat_format).__name__}")
        try:
            return ChatTemplate.from_name(CHAT_FORMATS.get(chat_format, chat_format))
        except LlamapyError:
            names = ", ".join(sorted(CHAT_FORMATS))
            raise ValueError(f"chat_format {chat_format!r} is unknown: use one of {names}, or a llama.cpp "
                             "template name") from None
