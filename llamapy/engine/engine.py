"""High-level model object: the Python API that `run`, `chat`, `perplexity`, `bench` and `serve` share.

CONTRACT (implemented by the engine; chat and server code against exactly this):

    llm = Engine(model_path=None, n_ctx=0, n_threads=None, n_batch=512, n_seq_max=1, embeddings=False)
        model_path None -> the default model; n_ctx 0 -> the model's training context;
        n_threads None -> physical cores; n_seq_max: how many independent sequences (server slots)
        share the KV cache (each sequence gets its own n_ctx positions).
    llm.tokenizer          llamapy.tokenizer.Tokenizer (encode/decode/token_to_piece/bos_id/eos_id/is_eog/...)
    llm.metadata           dict of GGUF metadata as plain Python values
    llm.chat_template      str | None   (tokenizer.chat_template)
    llm.n_ctx, llm.n_vocab, llm.n_embd, llm.n_seq_max, llm.n_threads, llm.model_path, llm.desc (str)

    llm.eval(tokens, seq_id=0) -> np.ndarray[float32] (n_vocab,)
        append `tokens` to sequence seq_id (positions continue from llm.n_past(seq_id)) in one or more
        C calls of up to n_batch tokens; returns the logits of the last token.
        Raises LlamapyError when the sequence would pass n_ctx.
    llm.eval_batch(items: list[tuple[int, list[int]]]) -> list[np.ndarray]
        several sequences advanced in ONE C call per n_batch tokens (continuous batching):
        items = [(seq_id, tokens), ...]; returns the last-token logits of each item, in order.
    llm.eval_all_logits(tokens, seq_id=0) -> np.ndarray (len(tokens), n_vocab)   (perplexity)
    llm.n_past(seq_id=0) -> int
    llm.tokens(seq_id=0) -> list[int]          token ids currently in the KV cache of that sequence
    llm.kv_truncate(seq_id, n)                 keep the first n positions of a sequence (prefix reuse)
    llm.kv_clear(seq_id=None)                  clear one sequence, or all
    llm.context_shift(seq_id, n_keep, n_discard)
        drop positions [n_keep, n_keep+n_discard) and shift the rest down (RoPE re-rotated), as llama.cpp
    llm.kv_state(seq_id, n) -> bytes / llm.kv_state_load(seq_id, tokens, data) / llm.kv_types
        a sequence's KV state out and back in (saved states: engine/state.py writes and checks the files)
    llm.embed(tokens) -> np.ndarray[float32] (n_embd,)   pooled (mean unless the GGUF says otherwise),
        L2-normalised final hidden states; uses a scratch sequence, leaves others untouched.
    llm.close() / context manager

Sampling lives in llamapy.generation (settings: params.SamplerParams, with the reference's defaults):
    sampler = Sampler(params, llm.n_vocab, eog_ids=...)
    tok = sampler.sample(logits, history)      history: recent token ids (for penalties)
    sampler.last_probs -> list[(token_id, prob)] of the top n_probs candidates of the last sample (logprobs)

Generation: one core per sequence, llamapy.generation.sequence.Sequence (prefix reuse, context shift,
stop rules, streaming text), and its pull driver llamapy.generation.generate:
    generate(llm, prompt_tokens, params, n_predict=-1, seq_id=0, reuse_prefix=True) -> Iterator[int]
        evaluates the prompt (reusing a matching prefix already in that sequence's cache), then samples
        and yields token ids until an end-of-generation token (not yielded) or n_predict tokens;
        context shift when the context fills and n_predict allows it.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import LlamapyError
from ..ggufio.constants import ValueType
from ..ggufio.reader import GGUFReader
from ..model_args import ModelArgs, check_tensors, model_desc
from ..util.safe_text import printable
from .build import fill_params, physical_cores, set_weights, slot_parts, weight_memory
from .load import (
    KV_TYPE_NAMES,
    YARN_BETA_FAST,
    YARN_BETA_SLOW,
    LoadOptions,
    apply_overrides,
    apply_pooling,
    check_tensor_values,
    munlock,
)

# YaRN settings the reference never reads from GGUF (every YaRN model uses these)
__all__ = ["Engine", "LoadOptions", "YARN_BETA_FAST", "YARN_BETA_SLOW", "physical_cores"]


def _plain(v):
    if v.type != ValueType.ARRAY:
        return v.value
    vals = v.value
    return vals.tolist() if isinstance(vals, np.ndarray) else [_plain(x) if hasattr(x, "type") else x for x in vals]


def _ptr(arr: np.ndarray, ctype: str):
    from ..native import ffi

    return ffi.cast(ctype, arr.ctypes.data) if arr is not None else ffi.NULL


class Engine:
    """A loaded model with its KV cache and thread pool; see the module docstring for the contract."""

    def __init__(
        self,
        model_path: str | None = None,
        n_ctx: int = 0,
        n_threads: int | None = None,
        n_batch: int = 512,
        n_seq_max: int = 1,
        embeddings: bool = False,
        load: LoadOptions | None = None,
    ):
        from ..native import ffi, lib
        from ..store.locate import resolve_model

        t0 = time.perf_counter()
        self._engine = None
        self._reader = None
        self.model_path = resolve_model(model_path)
        self._reader = GGUFReader(self.model_path)
        r = self._reader
        load = load or LoadOptions()
        self._locked = None
        self._weights = None
        try:
            apply_overrides(r, load.override_kv)
            self.args = args = ModelArgs.from_gguf(r)
            tensors = check_tensors(r, args)
            apply_pooling(args, load.pooling, self.model_path)
            if load.check_tensors:
                check_tensor_values(r, tensors)
        except BaseException:
            self.close()
            raise
        if n_ctx < 0 or n_batch < 1 or n_seq_max < 1:
            self.close()
            raise LlamapyError(f"n_ctx {n_ctx}, n_batch {n_batch}, n_seq_max {n_seq_max}: out of range")
        self.n_ctx = n_ctx or args.n_ctx_train
        self.n_batch = min(n_batch, load.n_ubatch or n_batch, self.n_ctx * n_seq_max)
        self.n_seq_max = n_seq_max
        self.n_vocab = args.n_vocab
        self.n_embd = args.n_embd
        self.embeddings = embeddings
        self.desc = model_desc(r, args)
        self.n_params = sum(t.n_elements for t in r.tensors.values())
        self.model_size = sum(t.nbytes for t in r.tensors.values())
        self._scratch_seq = n_seq_max  # an extra sequence for embed()

        p = ffi.new("lp_engine_params *")
        self.type_k, self.type_v = load.type_k, load.type_v
        try:
            self.rope = fill_params(p, args, load, self.n_ctx, n_seq_max + 1, self.n_batch, n_threads)
        except BaseException:
            self.close()
            raise
        self.rope_freq_scale = p.rope_freq_scale
        eng = lib.lp_engine_new(p)
        if eng == ffi.NULL:
            kv = 2 * args.n_layer * (n_seq_max + 1) * self.n_ctx * args.kv_dim * 2
            self.close()
            raise LlamapyError(f"can't allocate the engine (KV cache {kv / 2**20:.0f} MiB for n_ctx {self.n_ctx}); "
                               "try a smaller -c")
        self._engine = ffi.gc(eng, lib.lp_engine_free)
        self.n_threads = lib.lp_engine_n_threads(eng)

        self._base, self._weights, self._locked = weight_memory(r, self.model_path, load)
        self._tensors = tensors  # the file's (a LoRA pair must name one of them)
        if "output.weight" not in tensors:
            tensors = dict(tensors, **{"output.weight": tensors["token_embd.weight"]})
        try:
            set_weights(eng, self._base, tensors, args, self.model_path)
        except BaseException:
            self.close()
            raise

        self.loras: list = []  # LoraAdapter, in the order given (their ids)
        try:
            for path, scale in load.lora:
                self.add_lora(path, 0.0 if load.lora_init_without_apply else scale)
            if load.control_vectors:
                self.set_control_vectors(load.control_vectors, load.cvec_layer_range)
        except BaseException:
            self.close()
            raise

        self._seq_tokens: list[list[int]] = [[] for _ in range(n_seq_max + 1)]
        self._one = ffi.new("int32_t[4]")
        self._tokenizer = None
        self._metadata = None
        self.load_time = time.perf_counter() - t0

    # -- LoRA adapters -------------------------------------------------------------------------
    def set_control_vectors(self, files: list[tuple[str, float]], layer_range: tuple[int, int] | None = None
                            ) -> dict[int, np.ndarray]:
        """Control vector GGUFs (path, scale), summed, added after their layers from now on (engine/cvec.py);
        an empty list removes them. Returns layer -> the row the step adds."""
        from ..native import ffi, lib
        from .cvec import layers_to_apply, read_control_vectors

        rows = layers_to_apply(read_control_vectors(files, self.args.n_embd), self.args.n_layer, layer_range)
        for layer in range(self.args.n_layer):
            v = rows.get(layer)
            if v is not None:
                rows[layer] = v = np.ascontiguousarray(v, dtype=np.float32)  # alive through the call (copied)
            data = ffi.cast("float *", v.ctypes.data) if v is not None else ffi.NULL
            if lib.lp_engine_set_cvec(self._engine, layer, data) != 0:
                raise LlamapyError(ffi.string(lib.lp_engine_error(self._engine)).decode())
        return rows

    def add_lora(self, path: str, scale: float = 1.0) -> int:
        """Load a GGUF LoRA adapter (checked against the model) and apply it with `scale`; its id."""
        from ..native import ffi, lib
        from .lora import pack_b, read_adapter

        if not np.isfinite(scale):
            raise LlamapyError(f"LoRA adapter {printable(path)}: scale {scale} is not finite")
        ad = read_adapter(path, self._reader, self._tensors, float(scale))
        idx = len(self.loras)
        keep = []  # the arrays the engine points at, alive as long as the adapter
        for name, (a, b) in ad.pairs.items():
            rank = a.shape[0]
            for slot_name, layer, row, rows in slot_parts(name, self._tensors[name], self.args):
                bp = pack_b(b[row:row + rows])
                keep.append(bp)
                pa, pb = ffi.cast("const void *", a.ctypes.data), ffi.cast("const void *", bp.ctypes.data)
                ttype = 1 if a.dtype == np.float16 else 0
                if lib.lp_engine_lora_add(self._engine, getattr(lib, slot_name), layer, idx, pa, pb, rank, ttype,
                                          ad.mult(rank)) != 0:
                    msg = ffi.string(lib.lp_engine_error(self._engine)).decode()
                    raise LlamapyError(f"LoRA adapter {printable(ad.path)}: tensor '{name}': {msg}")
        ad.engine_arrays = keep
        self.loras.append(ad)
        lib.lp_engine_lora_scale(self._engine, idx, ad.scale)
        return idx

    def lora_scales(self) -> list[float]:
        """The scale in effect of each adapter, by id."""
        return [ad.scale for ad in self.loras]

    def set_lora_scales(self, scales: Sequence[float]) -> None:
        """Set the scale of every adapter (by id; 0 turns one off); takes effect at the next step."""
        from ..native import lib

        if len(scales) != len(self.loras):
            raise LlamapyError(f"{len(scales)} LoRA scales for {len(self.loras)} adapters")
        for i, s in enumerate(scales):
            s = float(s)
            if not np.isfinite(s):
                raise LlamapyError(f"LoRA adapter {i}: scale {s} is not finite")
            if s != self.loras[i].scale:
                lib.lp_engine_lora_scale(self._engine, i, s)
                self.loras[i].scale = s

    # -- properties ----------------------------------------------------------------------------
    def kv_bytes(self) -> int:
        """Bytes of the KV cache as allocated (every sequence, the scratch one for embed() included)."""
        from ..native import lib

        return int(lib.lp_engine_kv_bytes(self._engine))

    def kv_line(self) -> str:
        """The load line of the KV cache: its size and types, as the reference's llama_kv_cache_init."""
        from ..native import lib

        total = self.kv_bytes()
        k = int(lib.lp_engine_kv_row_bytes(self._engine, 0)) * self.args.n_layer * (self.n_seq_max + 1) * self.n_ctx
        mib = 2.0 ** 20
        return (f"llama_kv_cache_init: KV self size = {total / mib:7.2f} MiB, K ({KV_TYPE_NAMES[self.type_k]}): "
                f"{k / mib:7.2f} MiB, V ({KV_TYPE_NAMES[self.type_v]}): {(total - k) / mib:7.2f} MiB")

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from ..tokenizer.core import Tokenizer

            self._tokenizer = Tokenizer.from_gguf(self._reader)
        return self._tokenizer

    @property
    def metadata(self) -> dict:
        if self._metadata is None:
            self._metadata = {k: _plain(v) for k, v in self._reader.kv.items()}
        return self._metadata

    @property
    def chat_template(self) -> str | None:
        return self._reader.get("tokenizer.chat_template")

    # -- evaluation ----------------------------------------------------------------------------
    def _check_seq(self, seq_id: int, scratch_ok: bool = False) -> None:
        top = self.n_seq_max + (1 if scratch_ok else 0)
        if not 0 <= seq_id < top:
            raise LlamapyError(f"sequence {seq_id} out of range (n_seq_max = {self.n_seq_max})")

    def _run(self, tokens: np.ndarray, pos: np.ndarray, seq: np.ndarray, out_idx: np.ndarray,
             logits: np.ndarray | None, hidden: np.ndarray | None) -> None:
        """One C call: tokens/pos/seq/out_idx int32 arrays; logits/hidden float32 outputs or None."""
        from ..native import ffi, lib

        rc = lib.lp_engine_eval(
            self._engine, len(tokens), _ptr(tokens, "int32_t *"), _ptr(pos, "int32_t *"), _ptr(seq, "int32_t *"),
            len(out_idx), _ptr(out_idx, "int32_t *"),
            _ptr(logits, "float *") if logits is not None else ffi.NULL,
            _ptr(hidden, "float *") if hidden is not None else ffi.NULL,
        )
        if rc != 0:
            raise LlamapyError(ffi.string(lib.lp_engine_error(self._engine)).decode())

    def _append(self, seq_id: int, tokens: Sequence[int], all_logits: bool) -> np.ndarray:
        toks = np.ascontiguousarray(tokens, dtype=np.int32)
        n = len(toks)
        if n == 0:
            raise LlamapyError("eval: no tokens given")
        past = len(self._seq_tokens[seq_id])
        if past + n > self.n_ctx:
            raise LlamapyError(
                f"sequence {seq_id}: {past} + {n} tokens would pass the context size {self.n_ctx}")
        if toks.min() < 0 or toks.max() >= self.n_vocab:
            bad = int(toks[(toks < 0) | (toks >= self.n_vocab)][0])
            raise LlamapyError(f"token id {bad} is outside the vocabulary (0..{self.n_vocab - 1})")
        out = np.empty((n if all_logits else 1, self.n_vocab), dtype=np.float32)
        for start in range(0, n, self.n_batch):
            chunk = toks[start:start + self.n_batch]
            m = len(chunk)
            pos = np.arange(past + start, past + start + m, dtype=np.int32)
            seq = np.full(m, seq_id, dtype=np.int32)
            if all_logits:
                self._run(chunk, pos, seq, np.arange(m, dtype=np.int32), out[start:start + m], None)
            elif start + m == n:
                self._run(chunk, pos, seq, np.array([m - 1], dtype=np.int32), out, None)
            else:
                self._run(chunk, pos, seq, np.empty(0, dtype=np.int32), None, None)
            self._seq_tokens[seq_id].extend(int(t) for t in chunk)
        return out

    def eval(self, tokens: Sequence[int], seq_id: int = 0) -> np.ndarray:
        """Append tokens to a sequence; the logits (n_vocab,) of the last one."""
        self._check_seq(seq_id)
        if len(tokens) == 1:
            return self._eval_one(int(tokens[0]), seq_id)
        return self._append(seq_id, tokens, all_logits=False)[0]

    def _eval_one(self, tok: int, seq_id: int) -> np.ndarray:
        """One generated token: the step with the least Python around the C call."""
        from ..native import ffi, lib

        toks = self._seq_tokens[seq_id]
        if len(toks) >= self.n_ctx:
            raise LlamapyError(f"sequence {seq_id}: {len(toks)} + 1 tokens would pass the context size {self.n_ctx}")
        if not 0 <= tok < self.n_vocab:
            raise LlamapyError(f"token id {tok} is outside the vocabulary (0..{self.n_vocab - 1})")
        p = self._one  # int32_t[4]: token, position, sequence, output index 0
        p[0], p[1], p[2] = tok, len(toks), seq_id
        out = np.empty(self.n_vocab, dtype=np.float32)
        if lib.lp_engine_eval(self._engine, 1, p, p + 1, p + 2, 1, p + 3, ffi.from_buffer("float[]", out),
                              ffi.NULL) != 0:
            raise LlamapyError(ffi.string(lib.lp_engine_error(self._engine)).decode())
        toks.append(tok)
        return out

    def eval_all_logits(self, tokens: Sequence[int], seq_id: int = 0) -> np.ndarray:
        """Append tokens to a sequence; the logits of every one (len(tokens), n_vocab)."""
        self._check_seq(seq_id)
        return self._append(seq_id, tokens, all_logits=True)

    def eval_verify(self, tokens: Sequence[int], seq_id: int = 0) -> np.ndarray:
        """Append tokens to a sequence in one step; the logits of every one (len(tokens), n_vocab), each row
        bitwise what a one-token step at its position would give (a speculative draft's exact verification)."""
        from ..native import lib

        self._check_seq(seq_id)
        if len(tokens) > self.n_batch:
            raise LlamapyError(f"eval_verify: {len(tokens)} tokens in one step (n_batch {self.n_batch})")
        lib.lp_engine_set_exact_rows(self._engine, 1)
        try:
            return self._append(seq_id, tokens, all_logits=True)
        finally:
            lib.lp_engine_set_exact_rows(self._engine, 0)

    def eval_batch(self, items: Iterable[tuple[int, Sequence[int]]],
                   first_output: int | None = None, last_rows: Sequence[int] | None = None) -> list[np.ndarray]:
        """Advance several sequences together, one C call per n_batch tokens.

        Returns the last-token logits (n_vocab,) of each item, or with `first_output` = k the logits
        of its tokens k.. as (len(tokens) - k, n_vocab) (perplexity scores the second half of chunks),
        or with `last_rows` (a count per item) the logits of each item's last rows as (count, n_vocab),
        every row exactly what a one-token step would give (speculative drafts verified in a shared batch).
        """
        if last_rows is not None:
            from ..native import lib

            items = list(items)
            lib.lp_engine_set_exact_rows(self._engine, 1)
            try:
                return self._eval_batch(items, None, list(last_rows))
            finally:
                lib.lp_engine_set_exact_rows(self._engine, 0)
        return self._eval_batch(items, first_output, None)

    def _eval_batch(self, items, first_output: int | None, last_rows: list[int] | None) -> list[np.ndarray]:
        items = [(int(s), np.ascontiguousarray(t, dtype=np.int32)) for s, t in items]
        seen = set()
        for s, t in items:
            self._check_seq(s)
            if s in seen:
                raise LlamapyError(f"eval_batch: sequence {s} appears twice")
            seen.add(s)
            if len(t) == 0:
                raise LlamapyError(f"eval_batch: no tokens for sequence {s}")
            if len(self._seq_tokens[s]) + len(t) > self.n_ctx:
                raise LlamapyError(
                    f"sequence {s}: {len(self._seq_tokens[s])} + {len(t)} tokens would pass "
                    f"the context size {self.n_ctx}")
            if t.min() < 0 or t.max() >= self.n_vocab:
                raise LlamapyError(f"eval_batch: a token id of sequence {s} is outside the vocabulary")
            if first_output is not None and not 0 <= first_output < len(t):
                raise LlamapyError(f"eval_batch: first_output {first_output} for {len(t)} tokens")
        toks = np.concatenate([t for _, t in items])
        seq = np.concatenate([np.full(len(t), s, dtype=np.int32) for s, t in items])
        pos = np.concatenate([np.arange(len(self._seq_tokens[s]), len(self._seq_tokens[s]) + len(t), dtype=np.int32)
                              for s, t in items])
        starts = np.concatenate([[0], np.cumsum([len(t) for _, t in items])[:-1]]).astype(np.int64)
        # (batch index, item, row in that item's result) of every wanted output
        if last_rows is not None:
            if len(last_rows) != len(items) or any(not 1 <= k <= len(t) for k, (_, t) in zip(last_rows, items)):
                raise LlamapyError("eval_batch: last_rows must give 1..len(tokens) rows per item")
            wanted = [(int(starts[i]) + len(t) - k + j, i, j)
                      for i, ((_, t), k) in enumerate(zip(items, last_rows)) for j in range(k)]
            results = [np.empty((k, self.n_vocab), dtype=np.float32) for k in last_rows]
        elif first_output is None:
            wanted = [(int(starts[i]) + len(t) - 1, i, 0) for i, (_, t) in enumerate(items)]
            results = [np.empty(self.n_vocab, dtype=np.float32) for _ in items]
        else:
            wanted = [(int(starts[i]) + k, i, k - first_output)
                      for i, (_, t) in enumerate(items) for k in range(first_output, len(t))]
            results = [np.empty((len(t) - first_output, self.n_vocab), dtype=np.float32) for _, t in items]
        w = 0
        for start in range(0, len(toks), self.n_batch):
            end = min(start + self.n_batch, len(toks))
            mine = []
            while w < len(wanted) and wanted[w][0] < end:
                mine.append(wanted[w])
                w += 1
            out_idx = np.array([b - start for b, _, _ in mine], dtype=np.int32)
            logits = np.empty((len(mine), self.n_vocab), dtype=np.float32) if mine else None
            self._run(toks[start:end], pos[start:end], seq[start:end], out_idx, logits, None)
            for j, (_, i, row) in enumerate(mine):
                if first_output is None and last_rows is None:
                    results[i][:] = logits[j]
                else:
                    results[i][row] = logits[j]
        for s, t in items:
            self._seq_tokens[s].extend(int(x) for x in t)
        return results

    # -- the KV cache --------------------------------------------------------------------------
    def n_past(self, seq_id: int = 0) -> int:
        self._check_seq(seq_id)
        return len(self._seq_tokens[seq_id])

    def tokens(self, seq_id: int = 0) -> list[int]:
        self._check_seq(seq_id)
        return list(self._seq_tokens[seq_id])

    def kv_truncate(self, seq_id: int, n: int) -> None:
        """Keep the first n positions of a sequence; later evals overwrite the rest."""
        self._check_seq(seq_id)
        if n < 0:
            raise LlamapyError(f"kv_truncate: n = {n}")
        del self._seq_tokens[seq_id][n:]

    def kv_clear(self, seq_id: int | None = None) -> None:
        if seq_id is None:
            for t in self._seq_tokens:
                t.clear()
        else:
            self._check_seq(seq_id)
            self._seq_tokens[seq_id].clear()

    def context_shift(self, seq_id: int, n_keep: int, n_discard: int) -> None:
        """Drop positions [n_keep, n_keep + n_discard) of a sequence; later ones move down (K re-rotated)."""
        from ..native import ffi, lib

        self._check_seq(seq_id)
        toks = self._seq_tokens[seq_id]
        n_past = len(toks)
        if n_keep < 0 or n_discard < 0 or n_keep + n_discard > n_past:
            raise LlamapyError(f"context_shift: keep {n_keep} + discard {n_discard} of {n_past} positions")
        if n_discard == 0:
            return
        if lib.lp_engine_kv_shift(self._engine, seq_id, n_keep + n_discard, n_past, -n_discard) != 0:
            raise LlamapyError(ffi.string(lib.lp_engine_error(self._engine)).decode())
        del toks[n_keep:n_keep + n_discard]

    def kv_copy(self, src_seq: int, dst_seq: int, n: int | None = None) -> None:
        """Copy the first n positions (all by default) of one sequence's cache to another."""
        from ..native import ffi, lib

        self._check_seq(src_seq)
        self._check_seq(dst_seq)
        n = len(self._seq_tokens[src_seq]) if n is None else n
        if not 0 <= n <= len(self._seq_tokens[src_seq]):
            raise LlamapyError(f"kv_copy: {n} positions, sequence {src_seq} has {len(self._seq_tokens[src_seq])}")
        if lib.lp_engine_kv_copy(self._engine, src_seq, dst_seq, n) != 0:
            raise LlamapyError(ffi.string(lib.lp_engine_error(self._engine)).decode())
        self._seq_tokens[dst_seq] = list(self._seq_tokens[src_seq][:n])

    @property
    def kv_types(self) -> tuple[int, int]:
        """The KV cache's K and V types (GGML type ids)."""
        from ..native import lib

        return int(lib.lp_engine_kv_type_k(self._engine)), int(lib.lp_engine_kv_type_v(self._engine))

    def kv_state_size(self, n: int) -> int:
        """Bytes of the KV state of n positions (engine/state.py)."""
        from ..native import lib

        return int(lib.lp_engine_kv_state_size(self._engine, n))

    def kv_state(self, seq_id: int, n: int) -> bytes:
        """The KV state of positions [0, n) of a sequence, as bytes in the engine's layout."""
        from ..native import ffi, lib

        self._check_seq(seq_id)
        if not 0 <= n <= len(self._seq_tokens[seq_id]):
            raise LlamapyError(f"kv_state: {n} positions, sequence {seq_id} has {len(self._seq_tokens[seq_id])}")
        buf = bytearray(self.kv_state_size(n))
        if lib.lp_engine_kv_state_get(self._engine, seq_id, n, ffi.from_buffer(buf), len(buf)) != 0:
            raise LlamapyError(ffi.string(lib.lp_engine_error(self._engine)).decode())
        return bytes(buf)

    def kv_state_load(self, seq_id: int, tokens: Sequence[int], data) -> None:
        """Put a KV state (kv_state's bytes) of len(tokens) positions into a sequence, which then holds tokens."""
        from ..native import ffi, lib

        self._check_seq(seq_id)
        n = len(tokens)
        if n > self.n_ctx:
            raise LlamapyError(f"kv_state_load: {n} positions exceed the context size {self.n_ctx}")
        if lib.lp_engine_kv_state_set(self._engine, seq_id, n, ffi.from_buffer(data), len(data)) != 0:
            raise LlamapyError(ffi.string(lib.lp_engine_error(self._engine)).decode())
        self._seq_tokens[seq_id] = [int(t) for t in tokens]

    # -- embeddings ----------------------------------------------------------------------------
    def hidden_states(self, tokens: Sequence[int]) -> np.ndarray:
        """Final-normed hidden states (len(tokens), n_embd) of tokens evaluated from position 0 in a
        scratch sequence (other sequences are untouched)."""
        toks = np.ascontiguousarray(tokens, dtype=np.int32)
        n = len(toks)
        if n == 0:
            raise LlamapyError("embed: no tokens given")
        if n > self.n_ctx:
            raise LlamapyError(f"embed: {n} tokens exceed the context size {self.n_ctx}")
        if toks.min() < 0 or toks.max() >= self.n_vocab:
            raise LlamapyError("embed: a token id is outside the vocabulary")
        out = np.empty((n, self.n_embd), dtype=np.float32)
        s = self._scratch_seq
        for start in range(0, n, self.n_batch):
            m = min(self.n_batch, n - start)
            self._run(toks[start:start + m], np.arange(start, start + m, dtype=np.int32),
                      np.full(m, s, dtype=np.int32), np.arange(m, dtype=np.int32), None, out[start:start + m])
        return out

    def embed(self, tokens: Sequence[int]) -> np.ndarray:
        """One L2-normalised vector for the text: pooled final hidden states (mean unless the GGUF says
        cls or last)."""
        h = self.hidden_states(tokens)
        pooling = self.args.pooling_type
        v = h[0] if pooling == 2 else h[-1] if pooling == 3 else h.mean(axis=0, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        norm = np.linalg.norm(v)
        return (v / norm if norm > 0 else v).astype(np.float32)

    # -- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        from ..native import ffi, lib

        if self._engine is not None:
            eng, self._engine = self._engine, None
            ffi.gc(eng, None)  # free it now, not again at garbage collection
            lib.lp_engine_free(eng)
        if getattr(self, "_locked", None):
            munlock(*self._locked)
            self._locked = None
        self._base = None
        self._weights = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
