"""Hostile and broken inputs: pickles that ask for code, corrupt zips, bad safetensors headers.

Nothing from a checkpoint may run, and a failed conversion leaves no file behind.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import zipfile

import numpy as np
import pytest
from test_convert_util import (
    meta_params,
    meta_to_hf,
    meta_weights,
    save_hf,
    save_meta,
    spm_size,
)

from llamapy.convert import convert
from llamapy.convert.safetensors_io import read_header
from llamapy.convert.torch_pickle import load_torch_file
from llamapy.errors import LlamapyError


def leftovers(d) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.suffix in (".gguf", ".part"))


def write_pth(path, pickled: bytes, extra: dict[str, bytes] | None = None):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickled)
        z.writestr("archive/version", b"3\n")
        for k, v in (extra or {}).items():
            z.writestr(f"archive/{k}", v)


class _Call:
    """Pickles as a call of `fn(*args)`: the shape of every code-running pickle."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _meta_dir(tmp_path, spm_model):
    d = tmp_path / "evil"
    d.mkdir()
    (d / "params.json").write_text(json.dumps(meta_params()))
    shutil.copy(spm_model, d / "tokenizer.model")
    return d


@pytest.mark.parametrize("make_payload", [
    lambda canary: _Call(os.system, f"touch {canary}"),
    lambda canary: _Call(eval, f"open({str(canary)!r}, 'w').close()"),
    lambda canary: _Call(exec, f"open({str(canary)!r}, 'w').close()"),
    lambda canary: {"tok_embeddings.weight": _Call(os.system, f"touch {canary}")},
    lambda canary: _Call(__import__("subprocess").call, ["touch", str(canary)]),
    lambda canary: _Call(__import__, "os"),
], ids=["os.system", "eval", "exec", "inside-a-dict", "subprocess", "import"])
def test_malicious_pickle_never_runs(tmp_path, spm_model, make_payload):
    canary = tmp_path / "canary"
    d = _meta_dir(tmp_path, spm_model)
    write_pth(d / "consolidated.00.pth", pickle.dumps(make_payload(canary), protocol=2))
    with pytest.raises(LlamapyError, match=r"refusing to load .*consolidated\.00\.pth: its pickle asks for '") as e:
        convert(d, tmp_path / "out.gguf", "f16")
    assert "refused before anything ran" in str(e.value)
    assert not canary.exists()
    assert leftovers(tmp_path) == []


def test_refusal_names_what_was_asked(tmp_path):
    p = tmp_path / "x.pth"
    write_pth(p, pickle.dumps(_Call(os.system, "true"), protocol=2))
    with pytest.raises(LlamapyError, match=r"asks for '(posix|os|nt)\.system'"):
        load_torch_file(str(p))
    write_pth(p, b"\x80\x02ctorch.storage\n_load_from_bytes\nq\x00.")  # torch's legacy hook into torch.load
    with pytest.raises(LlamapyError, match=r"asks for 'torch\.storage\._load_from_bytes'"):
        load_torch_file(str(p))


def test_real_torch_checkpoint_loads_without_torch_objects(tmp_path):
    import torch

    sd = {"a": torch.arange(12, dtype=torch.float32).reshape(3, 4), "p": torch.nn.Parameter(torch.ones(2)),
          "t": torch.arange(6, dtype=torch.float16).reshape(2, 3).t()}
    torch.save(sd, tmp_path / "x.pth")
    lz = load_torch_file(str(tmp_path / "x.pth"))
    assert list(lz) == ["a", "p", "t"]
    for k, v in sd.items():
        np.testing.assert_array_equal(lz[k].read(), v.detach().numpy())


def test_tensor_past_its_storage_is_refused(tmp_path):
    import torch

    torch.save({"a": torch.zeros(4)}, tmp_path / "x.pth")
    with zipfile.ZipFile(tmp_path / "x.pth") as z:
        names = z.namelist()
        raw = z.read("x/data.pkl")
        entries = {n: z.read(n) for n in names}
    # shrink the storage entry: the tensor now reaches past it
    entries["x/data/0"] = entries["x/data/0"][:8]
    with zipfile.ZipFile(tmp_path / "y.pth", "w", zipfile.ZIP_STORED) as z:
        for n, b in entries.items():
            z.writestr(n, b)
    with pytest.raises(LlamapyError, match="holds 8 bytes, its 4 elements need 16"):
        load_torch_file(str(tmp_path / "y.pth"))
    assert raw  # the pickle itself was intact


@pytest.mark.parametrize("cut", [0.5, 0.99])
def test_truncated_pth_is_a_clear_error_and_leaves_nothing(tmp_path, spm_model, cut):
    n = spm_size(spm_model)
    d = save_meta(tmp_path / "m", meta_weights(n), meta_params(), dtype="f16")
    shutil.copy(spm_model, d / "tokenizer.model")
    p = d / "consolidated.00.pth"
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(LlamapyError, match=r"consolidated\.00\.pth: corrupt or truncated zip checkpoint"):
        convert(d, tmp_path / "out.gguf", "f16")
    assert leftovers(tmp_path) == []


def test_not_a_zip(tmp_path, spm_model):
    d = _meta_dir(tmp_path, spm_model)
    (d / "consolidated.00.pth").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(LlamapyError, match="not a zip-format PyTorch checkpoint"):
        convert(d, tmp_path / "out.gguf", "f16")


def _hf_dir(tmp_path, spm_model):
    n = spm_size(spm_model)
    d = save_hf(tmp_path / "m", meta_to_hf(meta_weights(n)), {"architectures": ["LlamaForCausalLM"],
                "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2,
                "num_hidden_layers": 2, "rms_norm_eps": 1e-5, "vocab_size": n}, dtype="f16")
    shutil.copy(spm_model, d / "tokenizer.model")
    return d


@pytest.mark.parametrize("keep", [0.3, 0.999])
def test_truncated_safetensors_is_a_clear_error_and_leaves_nothing(tmp_path, spm_model, keep):
    d = _hf_dir(tmp_path, spm_model)
    p = d / "model.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(LlamapyError, match=r"model\.safetensors: .*past the end of the \d+-byte file \(truncated\?\)"):
        convert(d, tmp_path / "out.gguf", "f16")
    assert leftovers(tmp_path) == [] and leftovers(d) == []


def _safetensors(tmp_path, header: dict | bytes, data: bytes = b"", declared: int | None = None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    p = tmp_path / "x.safetensors"
    p.write_bytes(struct.pack("<Q", len(raw) if declared is None else declared) + raw + data)
    return str(p)


@pytest.mark.parametrize("header,data,declared,message", [
    (b"", b"", 1 << 40, "header length 1099511627776 is over the"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, 10 ** 6,
     "runs past the end of the"),
    (b"{not json", b"", None, "header is not valid JSON"),
    (b"[1, 2]", b"", None, "header is a JSON list, not an object"),
    ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "unsupported dtype 'Q4'"),
    ({"a": {"dtype": "F32", "shape": [2, -1], "data_offsets": [0, 8]}}, b"\0" * 8, None, "bad shape"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, None, "are not in order"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None,
     "8 bytes of data for shape \\[3\\] F32, which needs 12"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None,
     "data ends at byte .*past the end"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F16", "shape": [4], "data_offsets": [4, 12]}}, b"\0" * 12, None,
     "tensor 'b' \\[4, 12\\) overlaps tensor 'a' \\[0, 8\\)"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8.0]}}, b"\0" * 8, None, "bad data_offsets"),
], ids=["huge-length", "length-past-end", "bad-json", "not-object", "dtype", "shape", "order", "count",
        "short-data", "overlap", "float-offset"])
def test_safetensors_header_validation(tmp_path, header, data, declared, message):
    with pytest.raises(LlamapyError, match=message):
        read_header(_safetensors(tmp_path, header, data, declared))


def test_valid_safetensors_header(tmp_path):
    p = _safetensors(tmp_path, {"__metadata__": {"format": "pt"},
                                "b": {"dtype": "BF16", "shape": [2], "data_offsets": [8, 12]},
                                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12)
    start, tensors = read_header(p)
    assert start == os.path.getsize(p) - 12 and sorted(tensors) == ["a", "b"]
    assert tensors["b"] == {"dtype": "BF16", "shape": [2], "begin": 8, "end": 12}


def test_output_never_overwrites_the_input(tmp_path, spm_model):
    d = _hf_dir(tmp_path, spm_model)
    with pytest.raises(LlamapyError, match="would overwrite the input"):
        convert(d, d / "model.safetensors", "f16")
