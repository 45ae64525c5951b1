"""Model identity (`general.*` metadata) and the default output file name, as the reference derives them.

Name, base name, fine-tune, version, size label, license, tags and languages come from the model card
(README.md front matter), config.json's `_name_or_path` and the directory name, through the `gguf`
package's own heuristics (`gguf.metadata.Metadata`), so the same directory gives the same metadata and
file name as llama.cpp's converters.
"""
from __future__ import annotations

from pathlib import Path

from gguf.metadata import Metadata
from gguf.utility import naming_convention, size_label

from ..errors import LlamapyError
from ..ggufio.constants import ValueType

KV = tuple

_BASE_FIELDS = ("name", "author", "version", "organization", "description", "url", "doi", "uuid", "repo_url")


def load_metadata(model_dir: Path, model_name: str | None, total_params: int,
                  override: Path | None = None) -> Metadata:
    """Authorship metadata for a model directory (model card, config.json, directory name, override file)."""
    if override is not None and not Path(override).is_file():
        raise LlamapyError(f"{override}: metadata override file not found")
    import yaml

    try:
        return Metadata.load(override, model_dir, model_name, total_params)
    except (ValueError, OSError, RecursionError, yaml.YAMLError) as e:  # RecursionError: nested absurdly deep
        detail = " ".join(str(e).split())
        raise LlamapyError(
            f"{model_dir}: can't read the model card (README.md) or metadata override: {detail}"
        ) from None


# general.* strings the reference writes when they are set, in its order; each is the Metadata attribute
# named by the key's tail with dots as underscores (general.source.repo_url -> source_repo_url)
_IDENTITY_KEYS = ("general.author", "general.version", "general.organization", "general.finetune",
                  "general.basename", "general.description", "general.quantized_by", "general.size_label")
_LINK_KEYS = ("general.license.name", "general.license.link", "general.url", "general.doi", "general.uuid",
              "general.repo_url", "general.source.url", "general.source.doi", "general.source.uuid",
              "general.source.repo_url")


def _strings_set(md: Metadata, keys: tuple[str, ...]) -> list[KV]:
    out = []
    for key in keys:
        value = getattr(md, key.removeprefix("general.").replace(".", "_"))
        if value is not None:
            out.append((key, value, ValueType.STRING, None))
    return out


def general_kvs(md: Metadata, license_join: bool = True) -> list[KV]:
    """general.name ... general.languages in the reference's order."""
    s = ValueType.STRING
    out: list[KV] = [("general.name", md.name, s, None)]
    out += _strings_set(md, _IDENTITY_KEYS)
    if md.license is not None:
        lic = ",".join(md.license) if isinstance(md.license, list) and license_join else md.license
        out.append(("general.license", lic, s, None))
    out += _strings_set(md, _LINK_KEYS)
    for group, entries in (("base_model", md.base_models), ("dataset", md.datasets)):
        if entries is None:
            continue
        out.append((f"general.{group}.count", len(entries), ValueType.UINT32, None))
        for i, entry in enumerate(entries):
            for f in _BASE_FIELDS:
                if f in entry:
                    out.append((f"general.{group}.{i}.{f}", entry[f], s, None))
    if md.tags is not None:
        out.append(("general.tags", list(md.tags), ValueType.ARRAY, s))
    if md.languages is not None:
        out.append(("general.languages", list(md.languages), ValueType.ARRAY, s))
    return out


def params_size_label(total: int, shared: int | None = None, expert_params: int = 0, n_expert: int = 0) -> str:
    """'7B', or '8x7B'-style for mixtures of experts (as gguf's size_label)."""
    return size_label(total, total if shared is None else shared, expert_params, n_expert)


def default_filename(md: Metadata, label: str | None, output_type: str | None, vocab_only: bool = False) -> str:
    """`<Name>-<size>-<finetune>-<version>-<TYPE>.gguf` (the GGUF naming convention)."""
    if vocab_only:
        stem = naming_convention(md.name, md.basename, md.finetune, md.version, None, None, model_type="vocab")
    else:
        stem = naming_convention(md.name, md.basename, md.finetune, md.version, label, output_type)
    return f"{stem}.gguf"


def fill_template(name: str, output_type: str) -> str:
    """Replace {ftype}/{outtype} (lower case) and {FTYPE}/{OUTTYPE} (upper case) in an --outfile name."""
    try:
        return name.format(output_type.lower(), outtype=output_type.lower(), ftype=output_type.lower(),
                           OUTTYPE=output_type.upper(), FTYPE=output_type.upper())
    except (KeyError, IndexError, ValueError):
        return name

