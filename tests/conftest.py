"""Shared fixtures: the reference data folder (../shared) and the default model, each skipped clearly when absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LLAMAPY_SHARED", ROOT.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or a skip saying that the reference data is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"reference data not found: {p} (../shared is only beside CI and developer checkouts)")
    return p


@pytest.fixture(scope="session")
def default_model() -> str:
    from llamapy.store.locate import DEFAULT_MODEL_INSTALL, default_model_path

    p = default_model_path()
    if p is None:
        pytest.skip(f"default model not installed: {DEFAULT_MODEL_INSTALL}")
    return p


@pytest.fixture(scope="session")
def spm_model(tmp_path_factory):
    """A tiny SentencePiece tokenizer.model, trained once for the convert tests."""
    from test_convert_util import train_spm

    return train_spm(tmp_path_factory.mktemp("spm") / "tokenizer.model")


@pytest.fixture(scope="session")
def vocab_n(spm_model):
    from test_convert_util import spm_size

    return spm_size(spm_model)
