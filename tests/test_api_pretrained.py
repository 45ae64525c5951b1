"""Llama.from_pretrained against a local HTTP server that answers as the Hugging Face hub does (the model
store's pull test server): the file goes into the store once and loads."""
from __future__ import annotations

import pytest
from test_pull import fake_gguf, hub  # noqa: F401 - the hub fixture

from llamapy import Llama


@pytest.fixture
def smol_repo(hub, default_model):  # noqa: F811
    with open(default_model, "rb") as f:
        data = f.read()
    hub.repos["me/smol-GGUF"] = {"README.md": b"# smol\n", "smol-135m.Q4_1.gguf": data,
                                 "smol-135m.Q8_0.gguf": fake_gguf(1000, 7)}
    return hub


def test_from_pretrained_downloads_once_and_loads(smol_repo):
    with Llama.from_pretrained("me/smol-GGUF", "*q4_1.gguf", n_ctx=64, verbose=False) as m:
        assert "sha256-" in m.model_path  # a blob of the store
        assert m("The capital of France is", max_tokens=3, temperature=0)["usage"]["completion_tokens"] == 3
    gets = [e for e in smol_repo.log if "/resolve/" in e[1]]
    assert len(gets) == 1 and gets[0][1].endswith("/smol-135m.Q4_1.gguf")
    with Llama.from_pretrained("me/smol-GGUF", "smol-135m.Q4_1.gguf", n_ctx=64, verbose=False) as m:
        assert m.n_vocab() == 49152
    assert len([e for e in smol_repo.log if "/resolve/" in e[1]]) == 1  # from the store the second time
    from llamapy.store.locate import resolve_model

    assert resolve_model("hf.co/me/smol-GGUF:smol-135m.Q4_1") == m.model_path
    with Llama("hf.co/me/smol-GGUF:smol-135m.Q4_1", n_ctx=64, verbose=False) as named:  # a store name works
        assert named.model_path == m.model_path


def test_from_pretrained_errors(smol_repo):
    with pytest.raises(ValueError, match="No file found in me/smol-GGUF that matches '\\*q2_k.gguf'"):
        Llama.from_pretrained("me/smol-GGUF", "*q2_k.gguf", verbose=False)
    with pytest.raises(ValueError, match="Multiple files found"):
        Llama.from_pretrained("me/smol-GGUF", "*.gguf", verbose=False)
    with pytest.raises(ValueError, match="from_pretrained"):
        Llama.from_pretrained("nobody/none", "*.gguf", verbose=False)
    with pytest.raises(ValueError, match="additional_files.*not supported yet"):
        Llama.from_pretrained("me/smol-GGUF", "*q4_1.gguf", additional_files=["x.gguf"], verbose=False)
    assert not [e for e in smol_repo.log if "/resolve/" in e[1]]
