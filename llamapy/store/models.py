"""Models by name: `create` from a Modelfile, the settings a stored model carries, its Modelfile shown back."""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import LlamapyError
from ..util.jsonio import load_json_bounded
from .modelfile import Message, Modelfile, format_parameter_value, quote
from .store import (
    MEDIA_ADAPTER,
    MEDIA_LICENSE,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    ModelName,
    ProgressFn,
    StagedBlob,
    Store,
    parse_name,
)
from .text import one_line

Log = Callable[[str], None]


@dataclass
class ModelSettings:
    """What a stored model brings to run and serve: its GGUF and the Modelfile's settings."""
    name: ModelName
    model_path: str
    template: str | None = None
    system: str | None = None
    parameters: dict[str, object] = field(default_factory=dict)
    messages: list[Message] = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)
    adapters: list[str] = field(default_factory=list)


def model_settings(name: str, store: Store | None = None) -> ModelSettings:
    """The settings of stored model `name` (its TEMPLATE, SYSTEM, PARAMETERs, MESSAGEs, LICENSEs)."""
    store = store or Store()
    stored, doc, _ = store.read_manifest(name)
    s = ModelSettings(stored, store.model_path(stored))
    for la in doc.get("layers", []):
        mt, path = la.get("mediaType"), store.blob_path(la["digest"])
        try:
            if mt == MEDIA_TEMPLATE:
                s.template = store.read_text(la["digest"])
            elif mt == MEDIA_SYSTEM:
                s.system = store.read_text(la["digest"])
            elif mt == MEDIA_PARAMS:
                s.parameters = load_json_bounded(store.read_text(la["digest"]))
            elif mt == MEDIA_MESSAGES:
                stored = load_json_bounded(store.read_text(la["digest"]))
                s.messages = [Message(m["role"], m["content"]) for m in stored]
            elif mt == MEDIA_LICENSE:
                s.licenses.append(store.read_text(la["digest"]))
            elif mt == MEDIA_ADAPTER:
                s.adapters.append(path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise LlamapyError(f"model '{stored}': its {mt.rsplit('.', 1)[-1]} layer is unreadable ({e})") from None
    return s


def _is_gguf(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _source_gguf(mf: Modelfile, store: Store, log: Log) -> tuple[str | None, str | None, dict | None]:
    """(GGUF path, a temporary file to delete afterwards, the base model's manifest) for the FROM line."""
    if mf.from_path is None:
        from .store import is_name
        if not is_name(mf.from_):
            raise LlamapyError(f"FROM {one_line(mf.from_)}: neither a file nor a model name")
        _, doc, _ = store.read_manifest(mf.from_)
        return store.model_path(mf.from_), None, doc
    p = mf.from_path
    if os.path.isdir(p):
        from ..convert import convert
        tmp = store.new_tmp()
        log(f"converting {p} to GGUF")
        try:
            convert(p, tmp, log=log)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return tmp, tmp, None
    if not os.path.exists(p):
        raise LlamapyError(f"FROM {one_line(mf.from_)}: no such file or folder")
    if not _is_gguf(p):
        raise LlamapyError(f"FROM {one_line(mf.from_)}: not a GGUF file (FROM takes a GGUF file, a Hugging Face or "
                           "Meta model folder, or a model name)")
    return p, None, None


def _check_adapters(adapters: list[str], model: str) -> None:
    """Each ADAPTER line: a GGUF LoRA adapter that fits the model, checked as `--lora` checks it."""
    if not adapters:
        return
    from ..engine.lora import read_adapter
    from ..ggufio.reader import GGUFReader

    for a in adapters:
        if not os.path.isfile(a):
            raise LlamapyError(f"ADAPTER {one_line(a)}: no such file")
        if not _is_gguf(a):
            raise LlamapyError(f"ADAPTER {one_line(a)}: not a GGUF file (ADAPTER takes a LoRA adapter in GGUF, "
                               "as llamapy convert-lora writes it)")
    with GGUFReader(model) as r:
        for a in adapters:
            try:
                read_adapter(a, r, r.tensors)
            except LlamapyError as e:
                raise LlamapyError(f"ADAPTER: {e}") from None


def _quantize(src: str, qtype: str, store: Store, log: Log, progress: ProgressFn | None) -> str:
    from ..ggufio.filetypes import LlamaFtype
    from ..ggufio.reader import GGUFReader
    from ..quantize import file_ftype, parse_ftype, quantize_file

    opt = parse_ftype(qtype)
    if opt is None or opt.name == "COPY":
        from ..quantize import QUANT_OPTIONS
        raise LlamapyError(f"unknown quantization type '{qtype}' (valid: "
                           f"{', '.join(o.name for o in QUANT_OPTIONS if o.name != 'COPY')})")
    with GGUFReader(src) as r:
        ft = file_ftype(r)
    if ft not in (LlamaFtype.ALL_F32, LlamaFtype.MOSTLY_F16, LlamaFtype.MOSTLY_BF16):
        raise LlamapyError("quantization is only supported for F16, BF16 and F32 models (this one is already "
                           "quantized)")
    tmp = store.new_tmp()
    log(f"quantizing to {opt.name}")

    so_far = 0

    def bar(_name: str, done: int, total: int):  # quantize_file reports elements done per call
        nonlocal so_far
        so_far += done
        if progress:
            progress(so_far, total)
    try:
        quantize_file(src, tmp, opt.ftype, progress=bar)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def create_model(name: str, mf: Modelfile, *, quantize: str | None = None, store: Store | None = None,
                 log: Log | None = None, progress: ProgressFn | None = None) -> ModelName:
    """Store the model a Modelfile describes under `name` (its GGUF, converted or quantized as asked, and
    its settings). Replaces a model of that name; blobs the old one alone used are removed."""
    store = store or Store()
    say = log or (lambda _m: None)
    target = parse_name(name)
    src, tmp_src, base = _source_gguf(mf, store, say)
    staged: list[StagedBlob] = []
    try:
        _check_adapters(mf.adapters, src)
        if quantize:
            q = _quantize(src, quantize, store, say, progress)
            if tmp_src:
                os.unlink(tmp_src)
            src = tmp_src = q
        model_blob = store.stage_file(src, mode="move" if tmp_src else "link", progress=progress)
        tmp_src = None
        staged.append(model_blob)

        base_layers: dict[str, list[dict]] = {}  # FROM a stored model: what the Modelfile does not set is kept
        for la in (base or {}).get("layers", []):
            base_layers.setdefault(la["mediaType"], []).append(la)
        params = {}
        for la in base_layers.get(MEDIA_PARAMS, []):
            params = load_json_bounded(store.read_text(la["digest"]))
        params.update(mf.parameters)  # per name: a Modelfile's stop list replaces the base's

        layers: list[tuple[str, StagedBlob]] = [(MEDIA_MODEL, model_blob)]
        for path in mf.adapters:  # LoRA adapters, applied at run time (FROM a stored model: its own, if none)
            b = store.stage_file(path, mode="link", progress=progress)
            staged.append(b)
            layers.append((MEDIA_ADAPTER, b))
        if not mf.adapters:
            for la in base_layers.get(MEDIA_ADAPTER, []):
                layers.append((MEDIA_ADAPTER, StagedBlob(la["digest"], la["size"], None)))

        def text_layer(media: str, value: str | None):
            if value is not None:
                b = store.stage_bytes(value.encode("utf-8"))
                staged.append(b)
                layers.append((media, b))
            else:
                for la in base_layers.get(media, []):
                    layers.append((media, StagedBlob(la["digest"], la["size"], None)))

        text_layer(MEDIA_TEMPLATE, mf.template)
        text_layer(MEDIA_SYSTEM, mf.system)
        if params:
            b = store.stage_bytes(json.dumps(params, ensure_ascii=False).encode("utf-8"))
            staged.append(b)
            layers.append((MEDIA_PARAMS, b))
        msgs = [{"role": m.role, "content": m.content} for m in mf.messages]
        text_layer(MEDIA_MESSAGES, json.dumps(msgs, ensure_ascii=False) if msgs else None)
        if mf.licenses:
            for lic in mf.licenses:
                text_layer(MEDIA_LICENSE, lic)
        else:
            text_layer(MEDIA_LICENSE, None)
        config = store.stage_bytes(json.dumps({"model_format": "gguf"}).encode())
        staged.append(config)

        store.put_model(target, config, layers)
    finally:
        for b in staged:
            store.discard(b)
        if tmp_src:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_src)
    return target


def import_blob(name: str, staged: StagedBlob, store: Store) -> ModelName:
    """Store a staged GGUF blob as model `name` with no other settings (what `pull` does)."""
    target = parse_name(name)
    config = store.stage_bytes(json.dumps({"model_format": "gguf"}).encode())
    try:
        store.put_model(target, config, [(MEDIA_MODEL, staged)])
    finally:
        store.discard(staged)
        store.discard(config)
    return target


def render_modelfile(s: ModelSettings) -> str:
    """The Modelfile `ollama show --modelfile` prints for a model."""
    lines = ['# Modelfile generated by "llamapy show"',
             "# To build a new Modelfile based on this, replace FROM with:",
             f"# FROM {s.name}", "", f"FROM {s.model_path}"]
    lines += [f"ADAPTER {a}" for a in s.adapters]
    if s.template is not None:
        lines.append(f"TEMPLATE {quote(s.template)}")
    if s.system is not None:
        lines.append(f"SYSTEM {quote(s.system)}")
    for k, v in s.parameters.items():
        for one in (v if isinstance(v, list) else [v]):
            lines.append(f"PARAMETER {k} {quote(one) if isinstance(one, str) else format_parameter_value(one)}")
    for m in s.messages:
        lines.append(f"MESSAGE {m.role} {quote(m.content)}")
    for lic in s.licenses:
        lines.append(f"LICENSE {quote(lic)}")
    return "\n".join(lines) + "\n"


def render_parameters(params: dict) -> str:
    """`ollama show --parameters`: one `name value` line each (Go's %#v), the name padded to 30."""
    out = []
    for k, v in params.items():
        for one in (v if isinstance(v, list) else [v]):
            out.append(f"{k:<30} {format_parameter_value(one)}")
    return "\n".join(out)


def human_bytes(b: int) -> str:
    """Ollama's format.HumanBytes: decimal units, whole numbers from 10 up, one decimal below."""
    for unit, scale in (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if b >= scale:
            v = b / scale
            if v >= 10 or v == int(v):
                return f"{int(v)} {unit}"
            return f"{v:.1f} {unit}"
    return f"{b} B"


def human_time(seconds_ago: float) -> str:
    """Ollama's format.HumanTime: "Less than a second ago", "About a minute ago", "3 days ago", ..."""
    s = int(seconds_ago)
    minutes, hours = int(seconds_ago / 60), int(seconds_ago / 3600 + 0.5)
    if s < 1:
        d = "Less than a second"
    elif s == 1:
        d = "1 second"
    elif s < 60:
        d = f"{s} seconds"
    elif minutes == 1:
        d = "About a minute"
    elif minutes < 60:
        d = f"{minutes} minutes"
    elif hours == 1:
        d = "About an hour"
    elif hours < 48:
        d = f"{hours} hours"
    elif hours < 24 * 7 * 2:
        d = f"{hours // 24} days"
    elif hours < 24 * 30 * 2:
        d = f"{hours // 24 // 7} weeks"
    elif hours < 24 * 365 * 2:
        d = f"{hours // 24 // 30} months"
    else:
        d = f"{int(seconds_ago / 3600) // 24 // 365} years"
    return d + " ago"


def format_table(rows: list[list[str]]) -> str:
    """Columns padded to their widest cell plus 4 spaces, as Ollama's tables."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("".join(c.ljust(w + 4) if i < len(r) - 1 else c for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def settings_for(model: str | None, store: Store | None = None) -> ModelSettings | None:
    """The stored settings behind a `-m` value: a model's when `model` names one in the store (and is not an
    existing path, which wins as in resolve_model), else None."""
    from .store import is_name

    if not model or os.path.exists(model) or not is_name(model):
        return None
    store = store or Store()
    return model_settings(model, store) if store.find(model) is not None else None
