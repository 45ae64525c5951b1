"""`Llama`: llama-cpp-python's high-level API on llamapy's engine and generation core.

    from llamapy import Llama
    llm = Llama(model_path="model.gguf", n_ctx=2048)
    out = llm("Q: Name the planets in the solar system. A: ", max_tokens=32, stop=["Q:", "\\n"], echo=True)

The names, keyword arguments, defaults and return shapes are llama-cpp-python's (v0.3); the shapes are in
`llama_types`. Generation runs on llamapy's generation core (`generation.sequence.Sequence`): this module
drives one sequence on the engine, the way `llamapy run` does.

Thread safety: one call at a time per `Llama`. Calls are serialized by a lock, so a second thread waits for
the call in progress. A streaming iterator holds the model only between its chunks: another call that uses
the KV cache (a completion, `eval`, `generate`, `reset`, `load_state`) made before the stream finished ends
that stream, whose next chunk raises RuntimeError. Ctrl-C (KeyboardInterrupt) during a stream leaves the
object usable.
"""
from __future__ import annotations

import math
import os
import sys
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, overload

import numpy as np
import numpy.typing as npt

from ..errors import LlamapyError
from . import llama_types as T

LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp's "pick a random seed"
GGML_TYPE_F16 = 1  # the only KV cache type the engine has

LogitsProcessor = Callable[[npt.NDArray[np.intc], npt.NDArray[np.single]], npt.NDArray[np.single]]
StoppingCriteria = Callable[[npt.NDArray[np.intc], npt.NDArray[np.single]], bool]

# llama-cpp-python's chat_format names -> llamapy's built-in templates (llama.cpp's names, also accepted)
CHAT_FORMATS = {
    "llama-2": "llama2-sys",
    "llama-3": "llama3",
    "chatml": "chatml",
    "qwen": "chatml",
    "mistral-instruct": "mistral-v1",
    "gemma": "gemma",
    "zephyr": "zephyr",
    "vicuna": "vicuna",
    "openchat": "openchat",
    "alpaca": "alpaca",
    "phi-3": "phi3",
    "chatglm3": "chatglm3",
}


class LogitsProcessorList(list[LogitsProcessor]):
    """Logits processors applied in order: each gets (input_ids, scores) and returns the new scores."""

    def __call__(self, input_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]) -> npt.NDArray[np.single]:
        for processor in self:
            scores = processor(input_ids, scores)
        return scores


class StoppingCriteriaList(list[StoppingCriteria]):
    """Stopping criteria: the generation stops when any returns True for (input_ids, logits)."""

    def __call__(self, input_ids: npt.NDArray[np.intc], logits: npt.NDArray[np.single]) -> bool:
        return any(criteria(input_ids, logits) for criteria in self)


# -- state and cache -----------------------------------------------------------------------------------------
class LlamaState:
    """A saved context: the token ids in the KV cache and the logits after them.

    llamapy's engine does not export its KV cache, so `llama_state` is empty: `Llama.load_state` evaluates
    the saved tokens again (only those the current cache does not already start with), the way they were
    evaluated at first (a prompt in one batch, generated tokens one by one), so the cache and the next
    logits come out the same; the saved logits are restored as they were.
    """

    def __init__(self, input_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single], n_tokens: int,
                 llama_state: bytes = b"", llama_state_size: int = 0, seed: int = LLAMA_DEFAULT_SEED) -> None:
        self.input_ids = input_ids
        self.scores = scores
        self.n_tokens = n_tokens
        self.llama_state = llama_state
        self.llama_state_size = llama_state_size
        self.seed = seed
        self.single: list[bool] | None = None  # which positions were evaluated alone (see Llama._track)

    @property
    def nbytes(self) -> int:
        """Memory the state holds (what a cache's capacity counts)."""
        return int(self.input_ids.nbytes + self.scores.nbytes + len(self.llama_state))


class BaseLlamaCache:
    """A prompt cache: saved states keyed by their token ids, found by the longest shared prefix."""

    def __init__(self, capacity_bytes: int = 2 << 30) -> None:
        self.capacity_bytes = capacity_bytes

    @property
    def cache_size(self) -> int:
        """Bytes the cached states hold."""
        raise NotImplementedError

    def __getitem__(self, key: Sequence[int]) -> LlamaState:
        raise NotImplementedError

    def __contains__(self, key: Sequence[int]) -> bool:
        raise NotImplementedError

    def __setitem__(self, key: Sequence[int], value: LlamaState) -> None:
        raise NotImplementedError


class LlamaRAMCache(BaseLlamaCache):
    """States kept in memory, least recently used dropped first once they pass `capacity_bytes`."""

    def __init__(self, capacity_bytes: int = 2 << 30) -> None:
        super().__init__(capacity_bytes)
        self.cache_state: OrderedDict[tuple[int, ...], LlamaState] = OrderedDict()

    @property
    def cache_size(self) -> int:
        return sum(s.nbytes for s in self.cache_state.values())

    def _find_prefix_key(self, key: tuple[int, ...]) -> tuple[int, ...] | None:
        best, best_len = None, 0
        for k in self.cache_state:
            n = _common_prefix(k, key)
            if n > best_len:
                best, best_len = k, n
        return best

    def __getitem__(self, key: Sequence[int]) -> LlamaState:
        found = self._find_prefix_key(tuple(key))
        if found is None:
            raise KeyError("no cached state shares a prefix with these tokens")
        self.cache_state.move_to_end(found)
        return self.cache_state[found]

    def __contains__(self, key: Sequence[int]) -> bool:
        return self._find_prefix_key(tuple(key)) is not None

    def __setitem__(self, key: Sequence[int], value: LlamaState) -> None:
        k = tuple(key)
        if k in self.cache_state:
            del self.cache_state[k]
        self.cache_state[k] = value
        while self.cache_size > self.capacity_bytes and len(self.cache_state) > 0:
            self.cache_state.popitem(last=False)


LlamaCache = LlamaRAMCache


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


# -- argument checks -----------------------------------------------------------------------------------------
def _int(name: str, v: object, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(v).__name__}")
    i = int(v)
    if (lo is not None and i < lo) or (hi is not None and i > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]" if lo is not None else f"<= {hi}"
        raise ValueError(f"{name} must be {rng}, got {i}")
    return i


def _float(name: str, v: object, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(v).__name__}")
    f = float(v)
    if math.isnan(f) or (lo is not None and f < lo) or (hi is not None and f > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]" if lo is not None else f"<= {hi}"
        raise ValueError(f"{name} must be {rng}, got {f}")
    return f


def _stops(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise TypeError("stop must be a string or a list of strings")
    return [s for s in stop if s]


def _not_yet(name: str, what: str) -> ValueError:
    return ValueError(f"{name}: {what} is not supported yet")


class Llama:
    """A GGUF model loaded for completion, chat and embeddings, with llama-cpp-python's API.

    Arguments with an effect: model_path (a GGUF path, or a model name llamapy's model store resolves),
    n_ctx (0: the model's training context), n_batch / n_ubatch (the engine's batch is the smaller),
    n_threads, seed, vocab_only (tokenizer only), embedding, logits_all (keep every position's logits in
    `scores`), pooling_type, last_n_tokens_size (the penalties' window), chat_format, chat_handler, verbose.
    Accepted for compatibility, without effect: the GPU arguments (n_gpu_layers, split_mode, main_gpu,
    tensor_split, rpc_servers, offload_kqv, flash_attn, op_offload, swa_full), use_mmap (the file is always
    mapped), use_mlock, numa, n_threads_batch (one thread pool does both), no_perf, spm_infill; the RoPE
    and YaRN overrides (rope_scaling_type, rope_freq_base, rope_freq_scale, yarn_*) and kv_overrides: the
    engine reads these from the GGUF, and a non-default value gets a warning.
    Not supported yet (ValueError): type_k / type_v other than f16, lora_path, draft_model, tokenizer.

    One call at a time: a second thread waits for the call in progress (see the module docstring about
    streams). `close()` or a `with` block frees the model now; a closed Llama raises RuntimeError.
    """

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
        type_k: int | None = None,
        type_v: int | None = None,
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
        for name, kv_type in (("type_k", type_k), ("type_v", type_v)):
            if kv_type is not None and kv_type != GGML_TYPE_F16:
                raise _not_yet(name, f"a KV cache of ggml type {kv_type} (only f16, {GGML_TYPE_F16})")
        if lora_path is not None:
            raise _not_yet("lora_path", "LoRA adapters")
        if draft_model is not None:
            raise _not_yet("draft_model", "speculative decoding with a draft model")
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
        self._single: list[bool] = []
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

                self._reader = None
                self._eng = Engine(model_path=path, n_ctx=self.n_ctx_arg, n_threads=n_threads,
                                   n_batch=min(self.n_batch, self.n_ubatch), n_seq_max=1, embeddings=self._embedding)
                self._tok = self._eng.tokenizer
                self._n_ctx, self._n_vocab, self._n_embd = self._eng.n_ctx, self._eng.n_vocab, self._eng.n_embd
                self._model_pooling = self._eng.args.pooling_type
                self._raw_meta = self._eng.metadata
                self.n_threads = self._eng.n_threads
        except LlamapyError as e:
            raise ValueError(f"Failed to load model from file: {path}: {e}") from None
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
    def from_pretrained(cls, repo_id: str, filename: str | None, additional_files: list[str] | None = None,
                        local_dir: str | None = None, local_dir_use_symlinks: bool | Literal["auto"] = "auto",
                        cache_dir: str | None = None, **kwargs: Any) -> Llama:
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

    def __enter__(self) -> Llama:
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
        tok = self._tok
        ids = getattr(tok, "eog_ids", None)
        if ids is not None:
            return sorted(int(i) for i in ids)
        return [i for i in range(self._n_vocab) if tok.is_eog(i)]

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

    def _track(self, start: int, n: int) -> None:
        """Note how positions start..start+n were evaluated: the engine computes a lone token (decode) with
        other kernels than a batch, which round differently; load_state evaluates them again the same way."""
        del self._single[start:]
        b = self._eng.n_batch
        for i in range(0, n, b):
            m = min(b, n - i)
            self._single.extend([m == 1] * m)

    def _eval(self, eng: Any, ids: list[int], seq: Any, prompt: bool) -> npt.NDArray[np.single]:
        """Evaluate ids into sequence 0 (timed into seq when given); keeps the logits for `scores`."""
        self._track(eng.n_past(0), len(ids))
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

    def save_state(self) -> LlamaState:
        """The context as a LlamaState: its token ids and logits (see LlamaState about the KV cache)."""
        self._engine()
        with self._lock:
            return self._save_state()

    def _save_state(self) -> LlamaState:
        ids = self.input_ids
        scores = self.scores.copy()
        state = LlamaState(input_ids=ids, scores=scores, n_tokens=len(ids), llama_state=b"", llama_state_size=0,
                           seed=self._seed)
        state.single = list(self._single[: len(ids)])
        return state

    def load_state(self, state: LlamaState) -> None:
        """Restore a saved context: the KV cache holds its tokens again (those the cache does not already
        start with are evaluated) and the logits are the saved ones."""
        eng = self._engine()
        if not isinstance(state, LlamaState):
            raise TypeError(f"load_state: expected a LlamaState, got {type(state).__name__}")
        with self._lock:
            self._epoch += 1
            self._load_state(eng, state)

    def _load_state(self, eng: Any, state: LlamaState) -> None:
        ids = self._check_tokens("state.input_ids", list(state.input_ids[: state.n_tokens]), allow_empty=True)
        if len(ids) > self._n_ctx:
            raise ValueError(f"Requested tokens ({len(ids)}) exceed context window of {self._n_ctx}")
        same = _common_prefix(eng.tokens(0), ids)
        eng.kv_truncate(0, same)
        single = list(state.single[: len(ids)]) if state.single is not None else []
        single += [False] * (len(ids) - len(single))
        if 0 < same < len(ids) and not single[same] and not single[same - 1] and \
                (same + 1 == len(ids) or single[same + 1]):
            same -= 1  # a batched token left alone would be evaluated as a lone one: take its neighbour too
        eng.kv_truncate(0, same)
        i = same
        while i < len(ids):  # lone tokens one by one, runs of batched ones together: as they were evaluated
            j = i + 1
            while not single[i] and j < len(ids) and not single[j]:
                j += 1
            self._eval(eng, ids[i:j], None, prompt=True)
            i = j
        scores = np.asarray(state.scores, dtype=np.single)
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
            raise TypeError(f"set_cache: expected a LlamaRAMCache, got {type(cache).__name__}")
        self.cache = cache

    def set_seed(self, seed: int) -> None:
        """The seed later samplings use (LLAMA_DEFAULT_SEED: a random one each time)."""
        self._seed = _int("seed", seed, -1, 0xFFFFFFFF)

    # -- low level: sampling and generation ------------------------------------------------------------------
    def _sampler(self, *, temp: float, top_k: int, top_p: float, min_p: float, typical_p: float,
                 repeat_penalty: float, frequency_penalty: float, presence_penalty: float, mirostat_mode: int,
                 mirostat_tau: float, mirostat_eta: float, seed: int | None, logit_bias: dict[int, float] | None,
                 fresh: bool = True) -> Any:
        from ..generation.params import SamplerParams
        from ..generation.sampling import Sampler

        params = SamplerParams(
            temp=_float("temperature", temp), top_k=_int("top_k", top_k), top_p=_float("top_p", top_p, 0.0),
            min_p=_float("min_p", min_p, 0.0), typical_p=_float("typical_p", typical_p, 0.0),
            repeat_penalty=_float("repeat_penalty", repeat_penalty, 0.0),
            repeat_last_n=self.last_n_tokens_size,
            frequency_penalty=_float("frequency_penalty", frequency_penalty),
            presence_penalty=_float("presence_penalty", presence_penalty),
            mirostat=_int("mirostat_mode", mirostat_mode, 0, 2),
            mirostat_tau=_float("mirostat_tau", mirostat_tau), mirostat_eta=_float("mirostat_eta", mirostat_eta),
            seed=_int("seed", self._seed if seed is None else seed, -1, 0xFFFFFFFF),
            logit_bias=self._logit_bias(logit_bias))
        params.top_k = max(params.top_k, 0)
        if fresh:
            return Sampler(params, self._n_vocab, eog_ids=self._eog)
        key = tuple(sorted((k, str(v)) for k, v in vars(params).items()))
        if key not in self._samplers:
            self._samplers = {key: Sampler(params, self._n_vocab, eog_ids=self._eog)}
        return self._samplers[key]

    def _logit_bias(self, bias: dict[int, float] | None) -> dict[int, float]:
        if bias is None:
            return {}
        if not isinstance(bias, dict):
            raise TypeError("logit_bias must be a dict {token_id: bias}")
        out = {}
        for k, v in bias.items():
            tok = _int("logit_bias key", int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k,
                       0, self._n_vocab - 1)
            out[tok] = _float(f"logit_bias[{tok}]", v)
        return out

    def sample(self, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, typical_p: float = 1.0,
               temp: float = 0.80, repeat_penalty: float = 1.0, frequency_penalty: float = 0.0,
               presence_penalty: float = 0.0, tfs_z: float = 1.0, mirostat_mode: int = 0,
               mirostat_eta: float = 0.1, mirostat_tau: float = 5.0, penalize_nl: bool = True,
               logits_processor: LogitsProcessorList | LogitsProcessor | None = None,
               grammar: Any | None = None, idx: int | None = None) -> int:
        """Sample the next token from the last evaluated position's logits (the penalties look back on the
        KV cache's tokens). tfs_z and penalize_nl are accepted and ignored (llama.cpp dropped them)."""
        eng = self._engine()
        if grammar is not None:
            raise _not_yet("grammar", "grammar-constrained sampling")
        with self._lock:
            if idx is not None and self._logits_all and self._scores_buf is not None:
                logits = self._scores_buf[_int("idx", idx, 0, max(0, eng.n_past(0) - 1))]
            elif self._last_logits is None:
                raise RuntimeError("sample: nothing evaluated yet; call eval() first")
            else:
                logits = self._last_logits
            ids = eng.tokens(0)
            if logits_processor is not None:
                logits = np.asarray(logits_processor(np.asarray(ids, dtype=np.intc), logits.copy()), np.single)
            sampler = self._sampler(temp=temp, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
                                    repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                                    presence_penalty=presence_penalty, mirostat_mode=mirostat_mode,
                                    mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, seed=None,
                                    logit_bias=None, fresh=False)
            n = self.last_n_tokens_size
            hist = ids if n < 0 else ids[-n:] if n > 0 else []
            return int(sampler.sample(logits, hist))

    def generate(self, tokens: Sequence[int], top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                 typical_p: float = 1.0, temp: float = 0.80, repeat_penalty: float = 1.0, reset: bool = True,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0, tfs_z: float = 1.0,
                 mirostat_mode: int = 0, mirostat_tau: float = 5.0, mirostat_eta: float = 0.1,
                 penalize_nl: bool = True, logits_processor: LogitsProcessorList | LogitsProcessor | None = None,
                 stopping_criteria: StoppingCriteriaList | StoppingCriteria | None = None,
                 grammar: Any | None = None) -> Iterator[int]:
        """Evaluate tokens and yield sampled tokens, each evaluated when the next is asked for, end-of-text
        tokens included (the caller decides when to stop), until the context is full or a stopping criterion
        says so. reset=True reuses the longest prefix the KV cache shares with tokens; reset=False continues
        after what the cache holds."""
        from ..generation.sequence import Sequence as GenSequence

        eng = self._engine()
        if grammar is not None:
            raise _not_yet("grammar", "grammar-constrained sampling")
        ids = self._check_tokens("tokens", tokens)
        sampler = self._sampler(temp=temp, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
                                repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                                presence_penalty=presence_penalty, mirostat_mode=mirostat_mode,
                                mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, seed=None, logit_bias=None)

        def run() -> Iterator[int]:
            with self._lock:
                prompt = ids if reset else eng.tokens(0) + ids
            if len(prompt) > self._n_ctx:
                raise ValueError(f"Requested tokens ({len(prompt)}) exceed context window of {self._n_ctx}")
            seq = GenSequence(sampler, self._n_ctx, n_predict=-2, ctx_shift=False)
            for step, _ in self._drive(seq, prompt, True, logits_processor, stopping_criteria):
                if step.stop == "criteria":
                    return
                yield step.token

        return run()

    def _drive(self, seq: Any, prompt: list[int], reuse: bool, processor: Any, stopping: Any,
               prompt_rows: list[Any] | None = None) -> Iterator[Any]:
        """Run one sequence of the generation core on sequence 0 of the engine: evaluate the prompt after the
        prefix the cache shares, then yield each Step and evaluate its token when the next one is asked for.
        A stopping criterion yields Step(-1, stop="criteria")."""
        from ..generation.sequence import Step

        eng = self._engine()
        with self._lock:
            self._epoch += 1
            epoch = self._epoch
            self._check_open()
            todo = seq.start(prompt, eng.tokens(0) if reuse else ())
            eng.kv_truncate(0, seq.n_past)
            if prompt_rows is not None:
                self._track(seq.n_past, len(todo))
                rows = eng.eval_all_logits(todo, 0)
                seq.evaluated(len(todo))
                prompt_rows.append(rows)
                if self._logits_all:
                    if self._scores_buf is None:
                        self._scores_buf = np.zeros((self._n_ctx, self._n_vocab), dtype=np.single)
                    self._scores_buf[seq.n_past - len(todo):seq.n_past] = rows
                logits = rows[-1]
                self._last_logits = logits
            else:
                logits = self._eval(eng, todo, seq, prompt=True)
        while True:
            with self._lock:
                if self._epoch != epoch:
                    raise RuntimeError("this stream was ended: another call used the Llama object before it finished")
                if stopping is not None or processor is not None:
                    ids = np.asarray(eng.tokens(0), dtype=np.intc)
                    if processor is not None:
                        logits = np.asarray(processor(ids, logits.copy()), dtype=np.single)
                    if stopping is not None and stopping(ids, logits):
                        step = Step(-1, stop="criteria")
                        seq.timings.stop_reason = "criteria"
                    else:
                        step = seq.feed(logits)
                else:
                    step = seq.feed(logits)
            yield step, logits
            if step.stop:
                return
            with self._lock:
                if self._epoch != epoch:
                    raise RuntimeError("this stream was ended: another call used the Llama object before it finished")
                logits = self._eval(eng, [step.token], seq, prompt=False)

    # -- completions -----------------------------------------------------------------------------------------
    def _prompt_tokens(self, prompt: str | list[int], suffix: str | None) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenize(prompt.encode("utf-8"), special=True) if prompt else []
            if not ids:
                bos = self.token_bos()
                ids = [bos] if bos >= 0 else []
        elif isinstance(prompt, (list, tuple, np.ndarray)):
            ids = self._check_tokens("prompt", prompt)
        else:
            raise TypeError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")
        tok = self._tok
        if suffix is not None and tok.fim_pre_id is not None and tok.fim_suf_id is not None \
                and tok.fim_mid_id is not None:
            if not isinstance(prompt, str):
                raise TypeError("suffix needs a text prompt")
            pre = [tok.fim_pre_id] + self.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
            suf = [tok.fim_suf_id] + self.tokenize(suffix.encode("utf-8"), add_bos=False, special=True)
            head = [tok.bos_id] if tok.add_bos and tok.bos_id is not None else []
            ids = head + (suf + pre if self.spm_infill else pre + suf) + [tok.fim_mid_id]
        if not ids:
            raise ValueError("prompt is empty (no tokens) and the model has no BOS token")
        return ids

    def _completion(self, prompt: str | list[int], suffix: str | None, max_tokens: int | None, temperature: float,
                    top_p: float, min_p: float, typical_p: float, logprobs: int | None, echo: bool,
                    stop: str | list[str] | None, frequency_penalty: float, presence_penalty: float,
                    repeat_penalty: float, top_k: int, seed: int | None, mirostat_mode: int, mirostat_tau: float,
                    mirostat_eta: float, model: str | None, stopping_criteria: Any, logits_processor: Any,
                    grammar: Any, logit_bias: dict[int, float] | None, stream: bool
                    ) -> Iterator[T.CreateCompletionStreamResponse]:
        """The completion as stream chunks (create_completion joins them when not streaming)."""
        from ..generation.sequence import Sequence as GenSequence

        eng = self._engine()
        if grammar is not None:
            raise _not_yet("grammar", "grammar-constrained sampling")
        if suffix is not None and not isinstance(suffix, str):
            raise TypeError("suffix must be a string")
        if max_tokens is not None:
            max_tokens = _int("max_tokens", max_tokens)
        if logprobs is not None:
            logprobs = _int("logprobs", logprobs, 0, self._n_vocab)
        stops = _stops(stop)
        ids = self._prompt_tokens(prompt, suffix)
        if len(ids) >= self._n_ctx:
            raise ValueError(f"Requested tokens ({len(ids)}) exceed context window of {self._n_ctx}")
        n_predict = self._n_ctx - len(ids) if max_tokens is None or max_tokens <= 0 else \
            min(max_tokens, self._n_ctx - len(ids))
        sampler = self._sampler(temp=temperature, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
                                repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                                presence_penalty=presence_penalty, mirostat_mode=mirostat_mode,
                                mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, seed=seed,
                                logit_bias=logit_bias)
        tok = self._tok
        eog = self._eog
        seq = GenSequence(sampler, self._n_ctx, is_eog=eog.__contains__, piece=lambda t: tok.token_to_piece(t, False),
                          n_predict=n_predict, ctx_shift=False, stop=stops)
        prompt_text = prompt if isinstance(prompt, str) else self.detokenize(ids).decode("utf-8", "replace")
        head = {"id": f"cmpl-{uuid.uuid4()}", "object": "text_completion", "created": int(time.time()),
                "model": model if model is not None else self.model_path}
        want_prompt_rows = bool(echo and logprobs is not None)
        prompt_rows: list[Any] | None = [] if want_prompt_rows else None

        def chunk(text: str, lp: T.CompletionLogprobs | None, finish: str | None) -> T.CreateCompletionResponse:
            return {**head, "choices": [{"text": text, "index": 0, "logprobs": lp,  # type: ignore[typeddict-item]
                                         "finish_reason": finish}]}

        def run() -> Iterator[T.CreateCompletionStreamResponse]:
            if self.cache is not None:
                with self._lock:
                    try:
                        item = self.cache[ids]
                        if _common_prefix(list(item.input_ids), ids) > _common_prefix(eng.tokens(0), ids):
                            self._load_state(eng, item)
                    except KeyError:
                        pass
            steps = self._drive(seq, ids, not want_prompt_rows, logits_processor, stopping_criteria, prompt_rows)
            offset = len(prompt_text)
            n_gen = 0
            finish = "length"
            first = True
            for step, logits in steps:
                if first and echo:
                    first = False
                    lp0 = self._prompt_logprobs(ids, prompt_rows[0], logprobs) if prompt_rows else None
                    yield chunk(prompt_text, lp0, None)
                first = False
                if step.stop in ("eog", "criteria"):
                    finish = "stop"
                    break
                n_gen += 1
                if step.stop == "word":
                    finish = "stop"
                elif step.stop == "grammar":
                    finish = "stop"
                if logprobs is not None:
                    piece = tok.token_to_piece(step.token, False).decode("utf-8", errors="ignore")
                    lp = self._token_logprobs([step.token], [logits], logprobs, [piece], offset)
                    offset += len(piece)
                    if step.text or not step.stop:
                        yield chunk(step.text, lp, None)
                elif step.text:
                    yield chunk(step.text, None, None)
                if step.stop:
                    break
            tail = seq.flush()
            if suffix is not None and tok.fim_mid_id is None:
                tail += suffix
            if tail:
                yield chunk(tail, None, None)
            if self.cache is not None:
                with self._lock:
                    self.cache[eng.tokens(0)] = self._save_state()
            last = chunk("", None, finish)
            last["usage"] = {"prompt_tokens": len(ids), "completion_tokens": n_gen,
                             "total_tokens": len(ids) + n_gen}
            yield last

        return run()

    def _token_logprobs(self, tokens: list[int], rows: list[Any], n_top: int, pieces: list[str] | None,
                        offset: int) -> T.CompletionLogprobs:
        out: T.CompletionLogprobs = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for i, (t, row) in enumerate(zip(tokens, rows)):
            piece = pieces[i] if pieces is not None else \
                self._tok.token_to_piece(t, False).decode("utf-8", errors="ignore")
            lp = _log_softmax(row)
            top: dict[str, float] = {}
            if n_top > 0:
                idx = np.argpartition(-lp, n_top - 1)[:n_top] if n_top < len(lp) else np.arange(len(lp))
                for j in idx[np.argsort(-lp[idx], kind="stable")]:
                    key = self._tok.token_to_piece(int(j), False).decode("utf-8", errors="ignore")
                    top.setdefault(key, float(lp[j]))
            top[piece] = float(lp[t])
            out["tokens"].append(piece)
            out["token_logprobs"].append(float(lp[t]))
            out["top_logprobs"].append(top)
            out["text_offset"].append(offset)
            offset += len(piece)
        return out

    def _prompt_logprobs(self, ids: list[int], rows: Any, n_top: int | None) -> T.CompletionLogprobs:
        pieces = [self._tok.token_to_piece(t, False).decode("utf-8", errors="ignore") for t in ids]
        out = self._token_logprobs(ids[1:], list(rows[:-1]), n_top or 0, pieces[1:], len(pieces[0]))
        out["tokens"].insert(0, pieces[0])
        out["token_logprobs"].insert(0, None)
        out["top_logprobs"].insert(0, None)
        out["text_offset"].insert(0, 0)
        return out

    def create_completion(
        self,
        prompt: str | list[int],
        suffix: str | None = None,
        max_tokens: int | None = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        logprobs: int | None = None,
        echo: bool = False,
        stop: str | list[str] | None = [],  # noqa: B006 - llama-cpp-python's signature
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        top_k: int = 40,
        stream: bool = False,
        seed: int | None = None,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: str | None = None,
        stopping_criteria: StoppingCriteriaList | StoppingCriteria | None = None,
        logits_processor: LogitsProcessorList | LogitsProcessor | None = None,
        grammar: Any | None = None,
        logit_bias: dict[int, float] | None = None,
    ) -> T.CreateCompletionResponse | Iterator[T.CreateCompletionStreamResponse]:
        """Complete a prompt (text or token ids): a CreateCompletionResponse, or with stream=True an iterator of
        chunks. max_tokens None or <= 0: until the context is full. suffix: fill-in-the-middle when the model
        has FIM tokens, else appended to the text. logprobs: how many top tokens to list per token (prompt
        tokens too with echo). tfs_z is accepted and ignored."""
        chunks = self._completion(prompt, suffix, max_tokens, temperature, top_p, min_p, typical_p, logprobs, echo,
                                  stop, frequency_penalty, presence_penalty, repeat_penalty, top_k, seed,
                                  mirostat_mode, mirostat_tau, mirostat_eta, model, stopping_criteria,
                                  logits_processor, grammar, logit_bias, stream)
        if stream:
            return _strip_usage(chunks)
        with self._lock:
            return _join_completion(chunks, logprobs is not None)

    def __call__(
        self,
        prompt: str | list[int],
        suffix: str | None = None,
        max_tokens: int | None = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        logprobs: int | None = None,
        echo: bool = False,
        stop: str | list[str] | None = [],  # noqa: B006 - llama-cpp-python's signature
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        top_k: int = 40,
        stream: bool = False,
        seed: int | None = None,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: str | None = None,
        stopping_criteria: StoppingCriteriaList | StoppingCriteria | None = None,
        logits_processor: LogitsProcessorList | LogitsProcessor | None = None,
        grammar: Any | None = None,
        logit_bias: dict[int, float] | None = None,
    ) -> T.CreateCompletionResponse | Iterator[T.CreateCompletionStreamResponse]:
        """create_completion (see there)."""
        return self.create_completion(
            prompt, suffix=suffix, max_tokens=max_tokens, temperature=temperature, top_p=top_p, min_p=min_p,
            typical_p=typical_p, logprobs=logprobs, echo=echo, stop=stop, frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty, repeat_penalty=repeat_penalty, top_k=top_k, stream=stream,
            seed=seed, tfs_z=tfs_z, mirostat_mode=mirostat_mode, mirostat_tau=mirostat_tau,
            mirostat_eta=mirostat_eta, model=model, stopping_criteria=stopping_criteria,
            logits_processor=logits_processor, grammar=grammar, logit_bias=logit_bias)

    # -- chat ------------------------------------------------------------------------------------------------
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

    def _chat_template(self) -> Any:
        if self._template is None:
            from ..chat.templates import ChatTemplate

            self._template = ChatTemplate.for_model(self._raw_meta)
        return self._template

    def create_chat_completion(
        self,
        messages: list[T.ChatCompletionRequestMessage] | list[dict[str, Any]],
        functions: list[dict[str, Any]] | None = None,
        function_call: Any | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any | None = None,
        temperature: float = 0.2,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        stream: bool = False,
        stop: str | list[str] | None = [],  # noqa: B006 - llama-cpp-python's signature
        seed: int | None = None,
        response_format: T.ChatCompletionRequestResponseFormat | dict[str, Any] | None = None,
        max_tokens: int | None = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        tfs_z: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: str | None = None,
        logits_processor: LogitsProcessorList | LogitsProcessor | None = None,
        grammar: Any | None = None,
        logit_bias: dict[int, float] | None = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
    ) -> T.CreateChatCompletionResponse | Iterator[T.CreateChatCompletionStreamResponse]:
        """Answer a conversation: the messages rendered with the chat template (chat_format, else the model's
        own, else chatml), completed until the template's end of turn. With stream=True, an iterator of
        chunks (a role delta first, content deltas, then the finish reason). tools, functions, grammar and a
        JSON response_format are not supported yet (ValueError); response_format {"type": "text"} is."""
        self._check_open()
        if self.chat_handler is not None:
            return self.chat_handler(  # type: ignore[no-any-return]
                llama=self, messages=messages, functions=functions, function_call=function_call, tools=tools,
                tool_choice=tool_choice, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                typical_p=typical_p, stream=stream, stop=stop, seed=seed, response_format=response_format,
                max_tokens=max_tokens, presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                repeat_penalty=repeat_penalty, tfs_z=tfs_z, mirostat_mode=mirostat_mode,
                mirostat_tau=mirostat_tau, mirostat_eta=mirostat_eta, model=model,
                logits_processor=logits_processor, grammar=grammar, logit_bias=logit_bias, logprobs=logprobs,
                top_logprobs=top_logprobs)
        if tools or functions:
            raise _not_yet("tools", "tool and function calling")
        if response_format is not None:
            if not isinstance(response_format, dict):
                raise TypeError("response_format must be a dict such as {'type': 'text'}")
            kind = response_format.get("type", "text")
            if kind != "text":
                raise _not_yet("response_format", f"response_format type {kind!r} (JSON-constrained output)")
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise TypeError("messages: each message must be a dict with a 'role' string")
        if top_logprobs is not None:
            top_logprobs = _int("top_logprobs", top_logprobs, 0, 20)
        template = self._chat_template()
        msgs = [dict(m, role="system") if m["role"] == "developer" else dict(m) for m in messages]
        try:
            text = template.render(msgs, add_generation_prompt=True)
        except LlamapyError as e:
            raise ValueError(f"messages: {e}") from None
        stops = _stops(stop) + [s for s in template.stop_strings if s]
        ids = self.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        chunks = self._completion(ids, None, max_tokens, temperature, top_p, min_p, typical_p,
                                  (top_logprobs or 0) if logprobs else None, False, stops, frequency_penalty,
                                  presence_penalty, repeat_penalty, top_k, seed, mirostat_mode, mirostat_tau,
                                  mirostat_eta, model, None, logits_processor, grammar, logit_bias, stream)
        if stream:
            return _chat_chunks(chunks)
        with self._lock:
            return _chat_response(_join_completion(chunks, bool(logprobs)))

    def create_chat_completion_openai_v1(self, *args: Any, **kwargs: Any) -> Any:
        """create_chat_completion returning the `openai` package's types (ChatCompletion, or an iterator of
        ChatCompletionChunk with stream=True); needs `pip install openai`."""
        try:
            from openai.types.chat import ChatCompletion, ChatCompletionChunk
        except ImportError:
            raise ImportError("create_chat_completion_openai_v1 needs the openai package: pip install openai") \
                from None
        stream = kwargs.get("stream", False)
        out = self.create_chat_completion(*args, **kwargs)
        if stream:
            return (ChatCompletionChunk(**c) for c in out)  # type: ignore[arg-type]
        return ChatCompletion(**out)  # type: ignore[arg-type]

    # -- embeddings ------------------------------------------------------------------------------------------
    @overload
    def embed(self, input: str, normalize: bool = ..., truncate: bool = ...,
              return_count: Literal[False] = ...) -> list[float] | list[list[float]]: ...

    @overload
    def embed(self, input: list[str], normalize: bool = ..., truncate: bool = ...,
              return_count: Literal[False] = ...) -> list[list[float]] | list[list[list[float]]]: ...

    @overload
    def embed(self, input: str | list[str], normalize: bool = ..., truncate: bool = ...,
              *, return_count: Literal[True]) -> tuple[Any, int]: ...

    def embed(self, input: str | list[str], normalize: bool = True, truncate: bool = True,
              return_count: bool = False) -> Any:
        """Embeddings of a text (a list of floats) or of a list of texts (a list of those). Pooled as the GGUF
        or pooling_type says (unspecified: mean); pooling_type 0 (none) gives one vector per token instead.
        normalize: L2-normalised. truncate: inputs longer than n_batch tokens are cut to n_batch (else a
        ValueError). return_count: also return the number of tokens embedded."""
        eng = self._engine()
        if not self._embedding:
            raise RuntimeError("Llama model must be created with embedding=True to call this method")
        single = isinstance(input, str)
        texts: list[str] = [input] if isinstance(input, str) else input
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise TypeError("input must be a string or a list of strings")
        pooling = self.pooling_type if self.pooling_type >= 0 else self._model_pooling
        limit = min(self.n_batch, self._n_ctx)
        out: list[Any] = []
        total = 0
        for t in texts:
            ids = self.tokenize(t.encode("utf-8"))
            if not ids:
                raise ValueError("input: an input is empty (no tokens)")
            if len(ids) > limit:
                if not truncate:
                    raise ValueError(f"Requested tokens ({len(ids)}) exceed batch size of {limit}")
                ids = ids[:limit]
            total += len(ids)
            with self._lock:
                h = np.asarray(eng.hidden_states(ids), dtype=np.float64)
            if pooling == 0:
                vecs = [_normalized(v) if normalize else v for v in h]
                out.append([v.astype(np.float32).tolist() for v in vecs])
                continue
            v = h[0] if pooling == 2 else h[-1] if pooling == 3 else h.mean(axis=0)
            out.append((_normalized(v) if normalize else v).astype(np.float32).tolist())
        result = out[0] if single else out
        return (result, total) if return_count else result

    def create_embedding(self, input: str | list[str], model: str | None = None) -> T.CreateEmbeddingResponse:
        """OpenAI-shaped embeddings of a text or a list of texts (normalised, see embed)."""
        data, n = self.embed(input, return_count=True)
        vectors = [data] if isinstance(input, str) else data
        return {"object": "list",
                "data": [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vectors)],
                "model": model if model is not None else self.model_path,
                "usage": {"prompt_tokens": n, "total_tokens": n}}


# -- helpers -------------------------------------------------------------------------------------------------
def _string_metadata(raw: dict[str, Any]) -> dict[str, str]:
    """GGUF metadata as llama.cpp's llama_model_meta_val_str gives it: scalars as text, arrays left out."""
    out = {}
    for k, v in raw.items():
        if isinstance(v, (list, tuple, np.ndarray)):
            continue
        if isinstance(v, (bool, np.bool_)):
            out[k] = "true" if v else "false"
        elif isinstance(v, (float, np.floating)):
            out[k] = f"{float(v):f}"
        elif isinstance(v, bytes):
            out[k] = v.decode("utf-8", errors="replace")
        else:
            out[k] = str(v)
    return out


def _log_softmax(row: Any) -> npt.NDArray[np.float64]:
    x = np.asarray(row, dtype=np.float64)
    m = np.max(x)
    return x - (m + np.log(np.sum(np.exp(x - m))))  # type: ignore[no-any-return]


def _normalized(v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def _strip_usage(chunks: Iterator[T.CreateCompletionStreamResponse]) -> Iterator[T.CreateCompletionStreamResponse]:
    for c in chunks:
        c.pop("usage", None)
        yield c


def _join_completion(chunks: Iterator[T.CreateCompletionStreamResponse], with_logprobs: bool
                     ) -> T.CreateCompletionResponse:
    """One response from a completion's chunks."""
    text: list[str] = []
    lp: T.CompletionLogprobs = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    last: T.CreateCompletionResponse | None = None
    for c in chunks:
        ch = c["choices"][0]
        text.append(ch["text"])
        if ch["logprobs"] is not None:
            part = ch["logprobs"]
            lp["tokens"].extend(part["tokens"])
            lp["token_logprobs"].extend(part["token_logprobs"])
            lp["top_logprobs"].extend(part["top_logprobs"])
            lp["text_offset"].extend(part["text_offset"])
        last = c
    assert last is not None
    choice: T.CompletionChoice = {"text": "".join(text), "index": 0, "logprobs": lp if with_logprobs else None,
                                  "finish_reason": last["choices"][0]["finish_reason"]}
    return {"id": last["id"], "object": "text_completion", "created": last["created"], "model": last["model"],
            "choices": [choice], "usage": last["usage"]}


def _chat_logprobs(lp: T.CompletionLogprobs | None) -> T.ChatCompletionLogprobs | None:
    if lp is None:
        return None
    content: list[T.ChatCompletionLogprobToken] = []
    for tok, logprob, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        content.append({"token": tok, "logprob": float(logprob or 0.0), "bytes": list(tok.encode("utf-8")),
                        "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode("utf-8"))}
                                         for t, v in (top or {}).items()]})
    return {"content": content, "refusal": None}


def _chat_response(c: T.CreateCompletionResponse) -> T.CreateChatCompletionResponse:
    ch = c["choices"][0]
    return {"id": "chat" + c["id"], "object": "chat.completion", "created": c["created"], "model": c["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": ch["text"]},
                         "logprobs": _chat_logprobs(ch["logprobs"]), "finish_reason": ch["finish_reason"]}],
            "usage": c["usage"]}


def _chat_chunks(chunks: Iterator[T.CreateCompletionStreamResponse]
                 ) -> Iterator[T.CreateChatCompletionStreamResponse]:
    first = True
    for c in chunks:
        head: dict[str, Any] = {"id": "chat" + c["id"], "model": c["model"], "created": c["created"],
                                "object": "chat.completion.chunk"}
        if first:
            first = False
            yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None,  # type: ignore
                                        "finish_reason": None}]}
        ch = c["choices"][0]
        if ch["finish_reason"] is not None:
            yield {**head, "choices": [{"index": 0, "delta": {}, "logprobs": None,  # type: ignore[typeddict-item]
                                        "finish_reason": ch["finish_reason"]}]}
        elif ch["text"]:
            yield {**head, "choices": [{"index": 0, "delta": {"content": ch["text"]},  # type: ignore
                                        "logprobs": _chat_logprobs(ch["logprobs"]), "finish_reason": None}]}


__all__ = ["LLAMA_DEFAULT_SEED", "BaseLlamaCache", "Llama", "LlamaCache", "LlamaRAMCache", "LlamaState",
           "LogitsProcessor", "LogitsProcessorList", "StoppingCriteria", "StoppingCriteriaList"]
