"""Tokenizers -> GGUF tokenizer metadata (`tokenizer.ggml.*`), as the reference converters write it.

- SentencePiece (`tokenizer.model`): pieces, scores and types, plus `added_tokens.json` and the added
  tokens of `tokenizer_config.json`; model "llama".
- GPT-2 style byte-level BPE (`tokenizer.json`): vocab, merges, added tokens (control or user-defined),
  and the pre-tokenizer, recognised by hashing the token ids of a fixed probe text (the reference's
  table); model "gpt2".
- Special tokens (`bos`/`eos`/... ids, `add_bos`/`add_eos`, `chat_template`) from
  `tokenizer_config.json` and `config.json`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LlamapyError
from ..ggufio.constants import ValueType
from ..util.jsonio import load_json_bounded

# token types (GGUF / llama.cpp)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# The text whose token ids identify a BPE pre-tokenizer (the reference converter's probe).
CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

# sha256 of str(token ids of CHKTXT) -> tokenizer.ggml.pre, for the tokenizers the reference knows
PRE_TOKENIZER_HASHES = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    "8aeee3860c56296a157a1fe2fad249ec40aa59b1bb5709f4ade11c4e6fe652ed": "falcon",
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
    "0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f": "jina-v2-en",
    "8e62295832751ca1e8f92f2226f403dea30dc5165e448b5bfa05af5340c64ec7": "bert-bge-large",
    "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166": "olmo",
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "32d85c31273f8019248f2559fed492d929ea28b17e51d81d3bb36fff23ca72b3": "stablelm2",
    "6221ad2852e85ce96f791f476e0b390cf9b474c9e3d1362f53a24a06dc8220ff": "refact",
    "9c2227e4dd922002fb81bde4fc02b0483ca4f12911410dee2255e4987644e3f8": "command-r",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "a8594e3edff7c29c003940395316294b2c623e09894deebbc65f33f1515df79e": "dbrx",
    "c7699093ba4255a91e702aa38a596aa81669f3525dae06c2953267dde580f448": "jina-v1-en",
    "171aeeedd6fb548d418a7461d053f11b6f1f1fc9b387bd66640d28a4b9f5c643": "jina-v2-es",
    "27949a2493fc4a9f53f5b9b029c82689cfbe5d3a1929bb25e043089e28466de6": "jina-v2-de",
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    "c7ea5862a53e4272c035c8238367063e2b270d51faa48c0f09e9d5b54746c360": "poro-chat",
    "7967bfa498ade6b757b064f31e964dddbb80f8f9a4d68d4ba7998fcf281c531a": "jina-v2-code",
    "b6e8e1518dc4305be2fe39c313ed643381c4da5db34a98f6a04c093f8afbe99b": "chatglm-bpe",
    "81d72c7348a9f0ebe86f23298d37debe0a5e71149e29bd283904c02262b27516": "chatglm-bpe",
    "7fc505bd3104ca1083b150b17d088b59534ede9bde81f0dd2090967d7fe52cee": "viking",
    "b53802fb28e26d645c3a310b34bfe07da813026ec7c7716883404d5e0f8b1901": "jais",
    "7b3e7548e4308f52a76e8229e4e6cc831195d0d1df43aed21ac6c93da05fec5f": "codeshell",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "3c30d3ad1d6b64202cd222813e7736c2db6e1bd6d67197090fc1211fbc612ae7": "bloom",
    "bc01ce58980e1db43859146dc51b1758b3b88729b217a74792e9f8d43e479d21": "gpt3-finnish",
    "4e2b24cc4770243d65a2c9ec19770a72f08cffc161adbb73fcbb6b7dd45a0aae": "exaone",
    "fcace8b9cac38ce847670c970cd5892031a753a1ef381abd1d9af00f713da085": "phi-2",
    "60824e3c0d9401f89943cbb2fff727f0e2d4c545ba4df2d6e4f09a6db0f5b450": "chameleon",
    "1431a23e583c97432bc230bff598d103ddb5a1f89960c8f1d1051aaa944d0b35": "minerva-7b",
    "8b5a93ed704057481f240da0be7e7dca721d7f8f4755263b6807227a2cbeae65": "roberta-bpe",
    "ad851be1dba641f2e3711822f816db2c265f788b37c63b4e1aeacb9ee92de8eb": "gigachat",
    "d4c8f286ea6b520b3d495c4455483cfa2302c0cfcd4be05d781b6a8a0a7cdaf1": "megrez",
    "877081d19cf6996e2c4ff0e1236341e9b7bde288f5311a56a937f0afbbb3aeb5": "deepseek-v3",
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
}

SPECIAL_TOKEN_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
# GGUF keys of the special token ids the reference writes (it has no key for "cls")
SPECIAL_ID_KEYS = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
    "sep": "tokenizer.ggml.seperator_token_id",
    "pad": "tokenizer.ggml.padding_token_id",
    "mask": "tokenizer.ggml.mask_token_id",
    "prefix": "tokenizer.ggml.prefix_token_id",
    "suffix": "tokenizer.ggml.suffix_token_id",
    "middle": "tokenizer.ggml.middle_token_id",
    "eot": "tokenizer.ggml.eot_token_id",
}
ADD_TOKEN_KEYS = {"bos": "tokenizer.ggml.add_bos_token", "eos": "tokenizer.ggml.add_eos_token"}

KV = tuple  # (key, value, ValueType, element ValueType | None)


@dataclass
class Vocab:
    """A tokenizer's tokens as GGUF lists; `scores` is None for BPE."""

    model: str  # "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    pre: str | None = None
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    def pad_to(self, n: int, kind: str):
        """Append placeholder tokens up to `n`: kind 'dummy' (<dummy00001>...) or 'pad' ([PAD<id>])."""
        start = len(self.tokens)
        for i in range(start, n):
            if kind == "dummy":
                self.tokens.append(f"<dummy{i - start + 1:05}>")
                self.types.append(USER_DEFINED if self.model == "llama" else CONTROL)
            else:
                self.tokens.append(f"[PAD{i}]")
                self.types.append(UNUSED)
            if self.scores is not None:
                self.scores.append(-1000.0)

    def token_kvs(self) -> list[KV]:
        """tokenizer.ggml.model, pre, tokens, scores, token_type: in the reference's order."""
        kvs: list[KV] = [("tokenizer.ggml.model", self.model, ValueType.STRING, None)]
        if self.pre is not None:
            kvs.append(("tokenizer.ggml.pre", self.pre, ValueType.STRING, None))
        kvs.append(("tokenizer.ggml.tokens", self.tokens, ValueType.ARRAY, ValueType.STRING))
        if self.scores is not None:
            kvs.append(("tokenizer.ggml.scores", np.asarray(self.scores, dtype=np.float32), ValueType.ARRAY,
                        ValueType.FLOAT32))
        kvs.append(("tokenizer.ggml.token_type", np.asarray(self.types, dtype=np.int32), ValueType.ARRAY,
                    ValueType.INT32))
        return kvs


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return load_json_bounded(f.read())
    except ValueError as e:
        raise LlamapyError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise LlamapyError(f"{path}: can't read: {e.strerror}") from None


def _json_if_file(path: Path) -> Any:
    return _load_json(path) if path.is_file() else None


def looks_special(token: str) -> bool:
    """Added tokens the reference marks as control even when they are not flagged special."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


# -- SentencePiece ------------------------------------------------------------------------------
def read_spm(path: Path) -> tuple[list[str], list[float], list[int]]:
    """Pieces, scores and GGUF token types of a SentencePiece model file."""
    from sentencepiece import SentencePieceProcessor

    with open(path, "rb") as f:
        head = f.read(256).split(b"\n", 1)[0]
    if re.fullmatch(rb"[A-Za-z0-9+/=]+ \d+", head):
        raise LlamapyError(f"{path} is a tiktoken vocabulary (Llama 3), not a SentencePiece model; convert the "
                           f"model's Hugging Face release instead")
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (OSError, RuntimeError) as e:
        raise LlamapyError(f"{path}: not a SentencePiece model ({str(e).splitlines()[0] if str(e) else e})") from None
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.IdToPiece(i))
        scores.append(sp.GetScore(i))
        if sp.IsUnknown(i):
            t = UNKNOWN
        elif sp.IsControl(i):
            t = CONTROL
        elif sp.IsUnused(i):
            t = UNUSED
        elif sp.IsByte(i):
            t = BYTE
        else:
            t = NORMAL
        types.append(t)
    return tokens, scores, types


def spm_vocab_legacy(path: Path) -> Vocab:
    """SentencePiece vocab as the Meta-layout converter builds it: pieces, then the new ids of an
    `added_tokens.json` beside tokenizer.model (user-defined, score -1000)."""
    tokens, scores, types = read_spm(path)
    added_path = path.parent / "added_tokens.json"
    added = _json_if_file(added_path) or {}
    if not isinstance(added, dict):
        raise LlamapyError(f"{added_path}: expected an object of token -> id")
    base = len(tokens)
    new = {tid: tok for tok, tid in added.items() if isinstance(tid, int) and tid >= base}
    if sorted(new) != list(range(base, base + len(new))):
        raise LlamapyError(f"{added_path}: new token ids {sorted(new)} are not sequential from {base}")
    for tid in sorted(new):
        tokens.append(new[tid])
        scores.append(-1000.0)
        types.append(USER_DEFINED)
    return Vocab("llama", tokens, types, scores, source=str(path))


def _spm_slots(path: Path, model_dir: Path, vocab_size: int | None
               ) -> tuple[list[str], list[float], list[int], list[str]]:
    """The Hugging Face converters' start of a SentencePiece vocab: `vocab_size` slots ([PAD<i>] where the
    tokenizer has none) with added_tokens.json's tokens in place; (tokens, scores, types, notes)."""
    pieces, piece_scores, piece_types = read_spm(path)
    n = vocab_size if vocab_size is not None else len(pieces)
    if len(pieces) > n:
        raise LlamapyError(
            f"{path} has {len(pieces)} tokens but the model's vocab_size is {n}: the tokenizer doesn't belong to "
            f"this model"
        )
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = [-10000.0] * n
    types = [UNUSED] * n
    tokens[: len(pieces)] = pieces
    scores[: len(pieces)] = piece_scores
    types[: len(pieces)] = piece_types
    notes = []
    added = _json_if_file(model_dir / "added_tokens.json") or {}
    for tok, tid in added.items():
        if not isinstance(tid, int) or not 0 <= tid < n:
            notes.append(f"added token {tok!r} id {tid} is out of range (vocab size {n}), ignored")
            continue
        tokens[tid], scores[tid], types[tid] = tok, -1000.0, USER_DEFINED
    return tokens, scores, types, notes


def spm_vocab_hf(path: Path, model_dir: Path, vocab_size: int | None) -> Vocab:
    """SentencePiece vocab as the Hugging Face converter builds it: `vocab_size` slots ([PAD<i>] where the
    tokenizer has none), then `added_tokens.json` and tokenizer_config.json's added tokens in place."""
    tokens, scores, types, notes = _spm_slots(path, model_dir, vocab_size)
    n = len(tokens)
    tc = _json_if_file(model_dir / "tokenizer_config.json") or {}
    for sid, data in (tc.get("added_tokens_decoder") or {}).items():
        tid = int(sid)
        tok = data["content"]
        if not 0 <= tid < n:
            raise LlamapyError(
                f"{model_dir / 'tokenizer_config.json'}: added token {tok!r} has id {tid}, outside the "
                f"vocab of {n}"
            )
        if data.get("special") or looks_special(tok):
            types[tid] = CONTROL
        else:
            tok = tok.replace("\u2581", " ")
            types[tid] = USER_DEFINED
        scores[tid] = -1000.0
        tokens[tid] = tok
    return Vocab("llama", tokens, types, scores, pre="default", source=str(path), notes=notes)


def spm_vocab_phi3(path: Path, model_dir: Path, vocab_size: int | None) -> Vocab:
    """SentencePiece vocab as the reference's Phi-3 class builds it: like spm_vocab_hf, but added tokens are
    control tokens only when marked special (no look-alike test, no U+2581 rewriting), and tokenizer.json's
    added_tokens are applied last."""
    tokens, scores, types, notes = _spm_slots(path, model_dir, vocab_size)
    n = len(tokens)
    tc = _json_if_file(model_dir / "tokenizer_config.json") or {}
    tj = _json_if_file(model_dir / "tokenizer.json") or {}
    entries = [(int(sid), d, "tokenizer_config.json") for sid, d in (tc.get("added_tokens_decoder") or {}).items()]
    entries += [(int(d["id"]), d, "tokenizer.json") for d in (tj.get("added_tokens") or [])]
    for tid, data, where in entries:
        tok = data["content"]
        if not 0 <= tid < n:
            raise LlamapyError(f"{model_dir / where}: added token {tok!r} has id {tid}, outside the vocab of {n}")
        tokens[tid], scores[tid] = tok, -1000.0
        types[tid] = CONTROL if data.get("special") else USER_DEFINED
    return Vocab("llama", tokens, types, scores, pre="default", source=str(path), notes=notes)


# -- byte-level BPE ------------------------------------------------------------------------------
def _tokenizer_json(path: Path) -> dict:
    tj = _load_json(path)
    model = tj.get("model") if isinstance(tj, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict):
        raise LlamapyError(f"{path}: no model.vocab; not a Hugging Face tokenizer.json")
    return tj


def bpe_kind(path: Path) -> str:
    """'bpe' for GPT-2 style byte-level BPE; 'spm-bpe' for SentencePiece-style BPE (byte fallback); else
    the model type."""
    model = _tokenizer_json(path)["model"]
    if model.get("type") != "BPE":
        return str(model.get("type"))
    return "spm-bpe" if model.get("byte_fallback") else "bpe"


def detect_pre(tokenizer_path: Path) -> str:
    """tokenizer.ggml.pre for a tokenizer.json, from the hash of its token ids for the probe text."""
    from tokenizers import Tokenizer

    try:
        tk = Tokenizer.from_file(str(tokenizer_path))
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises plain Exception
        raise LlamapyError(f"{tokenizer_path}: can't load the tokenizer ({e})") from None
    ids = tk.encode(CHKTXT).ids
    h = sha256(str(ids).encode()).hexdigest()
    pre = PRE_TOKENIZER_HASHES.get(h)
    if pre is None:
        raise LlamapyError(
            f"{tokenizer_path}: BPE pre-tokenizer not recognized (hash {h}); llama.cpp wouldn't know how to "
            f"split text for it. Known pre-tokenizers: {', '.join(sorted(set(PRE_TOKENIZER_HASHES.values())))}"
        )
    return pre


def bpe_vocab(tokenizer_path: Path, vocab_size: int | None) -> Vocab:
    """GPT-2 style BPE vocab from tokenizer.json as the reference builds it: base and added tokens by id,
    [PAD<i>] in gaps up to `vocab_size`, added tokens control or user-defined."""
    from tokenizers import Tokenizer

    tj = _tokenizer_json(tokenizer_path)
    kind = bpe_kind(tokenizer_path)
    if kind != "bpe":
        what = ("a SentencePiece-style BPE (byte fallback): put its tokenizer.model beside it"
                if kind == "spm-bpe" else f"a {kind} tokenizer, not byte-level BPE")
        raise LlamapyError(f"{tokenizer_path} is {what}")
    vocab: dict[str, int] = dict(tj["model"]["vocab"])
    added_meta: dict[int, dict] = {}
    for a in tj.get("added_tokens") or []:
        vocab[a["content"]] = a["id"]
        added_meta[a["id"]] = a
    tc = _json_if_file(tokenizer_path.parent / "tokenizer_config.json") or {}
    for sid, data in (tc.get("added_tokens_decoder") or {}).items():
        tid = int(sid)
        vocab[data["content"]] = tid
        added_meta.setdefault(tid, dict(data, id=tid))
    n = vocab_size if vocab_size is not None else len(vocab)
    top = max(vocab.values()) if vocab else -1
    if top >= n:
        raise LlamapyError(
            f"{tokenizer_path} has token id {top} but the model's vocab_size is {n}: the tokenizer doesn't belong "
            f"to this model"
        )
    reverse = {tid: tok for tok, tid in vocab.items()}
    tk = None
    tokens, types = [], []
    for i in range(n):
        tok = reverse.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        a = added_meta.get(i)
        if a is not None and a.get("content") == tok:
            if not a.get("normalized", True):
                if tk is None:
                    tk = Tokenizer.from_file(str(tokenizer_path))
                tok = tk.decode(tk.encode(tok, add_special_tokens=False).ids, skip_special_tokens=False)
            if a.get("special") or looks_special(tok):
                types.append(CONTROL)
            else:
                tok = tok.replace("\u2581", " ")
                types.append(USER_DEFINED)
        else:
            types.append(NORMAL)
        tokens.append(tok)
    return Vocab("gpt2", tokens, types, None, pre=detect_pre(tokenizer_path), source=str(tokenizer_path))


# -- special tokens, merges, chat template -------------------------------------------------------
@dataclass
class SpecialVocab:
    merges: list[str] = field(default_factory=list)
    ids: dict[str, int] = field(default_factory=dict)
    add: dict[str, bool] = field(default_factory=dict)
    chat_template: Any = None
    notes: list[str] = field(default_factory=list)

    def set_id(self, typ: str, tid: Any, n_vocab: int | None):
        if not isinstance(tid, int) or isinstance(tid, bool):
            return
        if tid < 0:
            raise LlamapyError(f"invalid id {tid} for the {typ} token")
        if n_vocab is not None and tid >= n_vocab:
            self.notes.append(f"{typ} token id {tid} is out of range (vocab size {n_vocab}), skipped")
            return
        self.ids.setdefault(typ, tid)

    def kvs(self) -> list[KV]:
        """merges, special ids, add_* flags, chat template: in the reference's order."""
        out: list[KV] = []
        if self.merges:
            out.append(("tokenizer.ggml.merges", self.merges, ValueType.ARRAY, ValueType.STRING))
        for typ, tid in self.ids.items():
            if typ in SPECIAL_ID_KEYS:
                out.append((SPECIAL_ID_KEYS[typ], tid, ValueType.UINT32, None))
        for typ, flag in self.add.items():
            if typ in ADD_TOKEN_KEYS:
                out.append((ADD_TOKEN_KEYS[typ], flag, ValueType.BOOL, None))
        out.extend(chat_template_kvs(self.chat_template))
        return out


def chat_template_kvs(value: Any) -> list[KV]:
    if value is None:
        return []
    if isinstance(value, str):
        return [("tokenizer.chat_template", value, ValueType.STRING, None)]
    out: list[KV] = []
    names: list[str] = []
    default = None
    for choice in value:
        name = "".join(c if c.isascii() and c.isalnum() else "_" for c in choice.get("name", ""))
        template = choice.get("template")
        if name and template is not None:
            if name == "default":
                default = template
            elif name not in names:
                names.append(name)
                out.append((f"tokenizer.chat_template.{name}", template, ValueType.STRING, None))
    if names:
        out.append(("tokenizer.chat_templates", names, ValueType.ARRAY, ValueType.STRING))
    if default is not None:
        out.append(("tokenizer.chat_template", default, ValueType.STRING, None))
    return out


def _merges_from_json(merges: Any, where: Path) -> list[str]:
    if not isinstance(merges, list) or not merges:
        return []
    if isinstance(merges[0], str):
        return list(merges)
    if isinstance(merges[0], list) and len(merges[0]) == 2 and isinstance(merges[0][0], str):
        # pairs (transformers >= 4.45); spaces inside a part are written as U+0120 like GPT-2's bytes
        return [" ".join("".join("\u0120" if c == " " else c for c in part) for part in pair) for pair in merges]
    raise LlamapyError(f"{where}: unknown format of model.merges")


def _merges_txt(path: Path) -> list[str]:
    merges = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if lines and lines[0].strip().startswith("#"):
        lines = lines[1:]
    for line in lines:
        parts = line.strip().split(None, 3)
        if len(parts) == 2:
            merges.append(f"{parts[0]} {parts[1]}")
    return merges


def special_vocab(model_dir: Path, n_vocab: int | None, load_merges: bool,
                  types: tuple[str, ...] = SPECIAL_TOKEN_TYPES) -> SpecialVocab:
    """Special token ids, add_* flags and the chat template from tokenizer_config.json / config.json
    (and merges from tokenizer.json or merges.txt when asked), as the reference's SpecialVocab."""
    sv = SpecialVocab()
    tj_path = model_dir / "tokenizer.json"
    added_tokens: list = []
    if tj_path.is_file():
        tj = _load_json(tj_path)
        if load_merges:
            sv.merges = _merges_from_json((tj.get("model") or {}).get("merges"), tj_path)
        added_tokens = tj.get("added_tokens") or []
    tc_path = model_dir / "tokenizer_config.json"
    if tc_path.is_file():
        tc = _load_json(tc_path)
        ct = tc.get("chat_template")
        if ct is None or isinstance(ct, (str, list)):
            sv.chat_template = ct
        else:
            sv.notes.append(f"{tc_path}: chat_template is neither text nor a list, ignored")
        for typ in types:
            flag = tc.get(f"add_{typ}_token")
            if isinstance(flag, bool):
                sv.add[typ] = flag
            entry = tc.get(f"{typ}_token")
            if isinstance(entry, dict):
                entry = entry.get("content")
            if not isinstance(entry, str):
                continue
            tid = next((a.get("id") for a in added_tokens if a.get("content") == entry), None)
            sv.set_id(typ, tid, n_vocab)
    cfg_path = model_dir / "config.json"
    if cfg_path.is_file():
        cfg = _load_json(cfg_path)
        for typ in types:
            sv.set_id(typ, cfg.get(f"{typ}_token_id"), n_vocab)
    if load_merges and not sv.merges and (model_dir / "merges.txt").is_file():
        sv.merges = _merges_txt(model_dir / "merges.txt")
    return sv
