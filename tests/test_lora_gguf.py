"""PEFT adapters to GGUF (`convert-lora`) and GGUF adapters merged into a GGUF model (`export-lora`): the GGUF
adapter applied at run time gives the logits of the model merged while converting, export-lora gives that
model's tensors, both match the reference tools where they are available (LLAMAPY_REF_CONVERT_LORA: the
reference's convert_lora_to_gguf.py, run with LLAMAPY_REF_PYTHON or this python; LLAMAPY_REF_EXPORT_LORA: its
llama-export-lora), and bad adapters are refused in one line, exit 1, no output file left."""
from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("peft", reason="the adapters are made by PEFT (the test extra)")

from cliutil import cli  # noqa: E402
from peftutil import base_hf, make_adapter  # noqa: E402
from test_convert_safety import _Call, leftovers, write_pth  # noqa: E402
from test_convert_util import gguf_f32_tensors  # noqa: E402

from llamapy.convert import convert  # noqa: E402
from llamapy.convert.export_lora import export_lora  # noqa: E402
from llamapy.convert.lora_gguf import convert_lora  # noqa: E402
from llamapy.engine.engine import Engine  # noqa: E402
from llamapy.engine.load import LoadOptions  # noqa: E402
from llamapy.ggufio.reader import GGUFReader  # noqa: E402

TOKENS = [1, 5, 17, 33, 90, 100, 7, 250, 3, 44, 61, 200]
# the engine rounds K, V and attention probabilities to F16: two F32 files that differ in the last bits of
# their weights give logits within this (largest |difference| / largest |logit|); see test_lora.py
TOL_ENGINE = 1e-3


@pytest.fixture(scope="module")
def base(tmp_path_factory, spm_model, vocab_n):
    return base_hf(tmp_path_factory.mktemp("base") / "base", spm_model, vocab_n)


@pytest.fixture(scope="module")
def base_gguf(base, tmp_path_factory):
    return convert(base, tmp_path_factory.mktemp("gguf") / "base-f32.gguf", "f32").path


@pytest.fixture(scope="module")
def adapter(base, tmp_path_factory):
    return make_adapter(base, tmp_path_factory.mktemp("lora") / "lora", r=4, alpha=8)


def _logits(model, lora=()) -> np.ndarray:
    with Engine(str(model), n_ctx=64, n_threads=2, n_batch=8, load=LoadOptions(lora=list(lora))) as llm:
        return llm.eval_all_logits(TOKENS)


def _rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_convert_lora_metadata_and_tensors(adapter, base, tmp_path):
    res = convert_lora(adapter, base, tmp_path / "a.gguf", "f16")
    with GGUFReader(res.path) as r:
        assert r.get("general.type") == "adapter" and r.get("adapter.type") == "lora"
        assert r.get("general.architecture") == "llama" and r.get("adapter.lora.alpha") == 8.0
        a, b = r.tensors["blk.0.attn_q.weight.lora_a"], r.tensors["blk.0.attn_q.weight.lora_b"]
        assert a.shape == (64, 4) and b.shape == (4, 64) and a.type_name == "F32"
        assert len(r.tensors) == 2 * 7 * 2


def test_runtime_lora_gives_the_logits_of_merging_while_converting(adapter, base, base_gguf, tmp_path):
    gg = convert_lora(adapter, base, tmp_path / "a.gguf").path
    merged = convert(base, tmp_path / "merged.gguf", "f32", lora=[adapter]).path
    want = _logits(merged)
    assert _rel(_logits(base_gguf, [(str(gg), 1.0)]), want) < TOL_ENGINE
    assert _rel(_logits(base_gguf), want) > 100 * TOL_ENGINE  # the adapter does change the model


def test_rslora_and_alpha_pattern_are_folded_into_b(base, base_gguf, tmp_path):
    ad = make_adapter(base, tmp_path / "lora", r=4, alpha=6, rslora=True, rank_pattern={"v_proj": 2},
                      alpha_pattern={"o_proj": 3})
    gg = convert_lora(ad, base, tmp_path / "a.gguf").path
    merged = convert(base, tmp_path / "merged.gguf", "f32", lora=[ad]).path
    assert _rel(_logits(base_gguf, [(str(gg), 1.0)]), _logits(merged)) < TOL_ENGINE


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_export_lora_equals_merging_while_converting(adapter, base, base_gguf, tmp_path, scale):
    gg = convert_lora(adapter, base, tmp_path / "a.gguf").path
    out = export_lora(base_gguf, [(str(gg), scale)], tmp_path / "exported.gguf").path
    merged = convert(base, tmp_path / "merged.gguf", "f32", lora=[adapter], lora_scale=scale).path
    got, want = gguf_f32_tensors(out), gguf_f32_tensors(merged)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=2e-6, err_msg=name)


def test_export_two_adapters_in_order_and_outtype(base, base_gguf, tmp_path):
    a1 = make_adapter(base, tmp_path / "l1", seed=1, targets=["q_proj", "up_proj"])
    a2 = make_adapter(base, tmp_path / "l2", seed=2, targets=["q_proj", "o_proj"], r=2)
    g1, g2 = (convert_lora(a, base, tmp_path / f"{a.name}.gguf").path for a in (a1, a2))
    out = tmp_path / "x.gguf"
    code = subprocess.run([sys.executable, "-m", "llamapy", "export-lora", "-m", str(base_gguf), "--lora", str(g1),
                           "--lora-scaled", str(g2), "1", "-o", str(out)], capture_output=True, text=True)
    assert code.returncode == 0, code.stderr
    merged = convert(base, tmp_path / "merged.gguf", "f32", lora=f"{a1},{a2}").path
    got, want = gguf_f32_tensors(out), gguf_f32_tensors(merged)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=2e-6, err_msg=name)
    q = export_lora(base_gguf, [(str(g1), 1.0)], tmp_path / "q.gguf", "q8_0").path
    with GGUFReader(q) as r:
        assert r.tensors["blk.0.attn_q.weight"].type_name == "Q8_0"
        assert r.tensors["blk.0.attn_k.weight"].type_name == "F32"  # not adapted: copied as it is
        assert r.get("general.file_type") == 7
    q8 = convert(base, tmp_path / "q8.gguf", "q8_0").path
    kept = export_lora(q8, [(str(g1), 1.0)], tmp_path / "kept.gguf", "base").path
    with GGUFReader(kept) as r, GGUFReader(q8) as b:
        assert [(n, t.type) for n, t in r.tensors.items()] == sorted((n, t.type) for n, t in b.tensors.items())
        assert r.get("general.file_type") == b.get("general.file_type") == 7
    from llamapy.quants import dequantize

    want = gguf_f32_tensors(export_lora(base_gguf, [(str(g1), 1.0)], tmp_path / "f32.gguf").path)["blk.0.ffn_up.weight"]
    with GGUFReader(kept) as r:
        t = r.tensors["blk.0.ffn_up.weight"]
        got = dequantize(t.type, t.raw, t.shape[0]).reshape(want.shape)
    assert np.abs(got - want).max() < 0.01 * np.abs(want).max()  # within Q8_0's rounding of the merged weight


# -- the reference tools ---------------------------------------------------------------------------------------
REF_CONVERT = os.environ.get("LLAMAPY_REF_CONVERT_LORA")
REF_EXPORT = os.environ.get("LLAMAPY_REF_EXPORT_LORA")


def _hub_card(adapter):
    """PEFT's model card names the base by its local path; the reference's gguf-py and the gguf package
    llamapy uses derive different organizations from a path, so the card names a hub id, as published
    adapters do."""
    card = adapter / "README.md"
    card.write_text(re.sub(r"(base_model:\s*).*", r"\1huggyllama/llama-7b", card.read_text()))


@pytest.mark.parametrize("safetensors", [True, False])
@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0"])
def test_convert_lora_byte_identical_to_the_reference(base, tmp_path, outtype, safetensors):
    if not REF_CONVERT or not os.path.isfile(REF_CONVERT):
        pytest.skip("set LLAMAPY_REF_CONVERT_LORA to the reference convert_lora_to_gguf.py to compare with it")
    ad = make_adapter(base, tmp_path / "lora", safetensors=safetensors, targets=["q_proj", "k_proj", "v_proj",
                                                                                 "down_proj", "o_proj"])
    _hub_card(ad)
    ref = tmp_path / "ref.gguf"
    py = os.environ.get("LLAMAPY_REF_PYTHON") or sys.executable
    p = subprocess.run([py, REF_CONVERT, str(ad), "--base", str(base), "--outfile", str(ref), "--outtype", outtype],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    ours = convert_lora(ad, base, tmp_path / "ours.gguf", outtype).path
    assert ours.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_adapter_byte_identical_to_the_reference(base, tmp_path, dtype):
    if not REF_CONVERT or not os.path.isfile(REF_CONVERT):
        pytest.skip("set LLAMAPY_REF_CONVERT_LORA to the reference convert_lora_to_gguf.py to compare with it")
    import torch
    from safetensors.torch import load_file, save_file

    ad = make_adapter(base, tmp_path / "lora", targets=["q_proj", "k_proj", "up_proj"])
    _hub_card(ad)
    st = ad / "adapter_model.safetensors"
    save_file({k: v.to(getattr(torch, dtype)) for k, v in load_file(str(st)).items()}, str(st))
    ref = tmp_path / "ref.gguf"
    py = os.environ.get("LLAMAPY_REF_PYTHON") or sys.executable
    p = subprocess.run([py, REF_CONVERT, str(ad), "--base", str(base), "--outfile", str(ref), "--outtype", "f16"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert convert_lora(ad, base, tmp_path / "ours.gguf", "f16").path.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("btype", ["f32", "f16", "q8_0"])
def test_export_lora_as_llama_export_lora(adapter, base, tmp_path, btype):
    if not REF_EXPORT or not os.path.isfile(REF_EXPORT):
        pytest.skip("set LLAMAPY_REF_EXPORT_LORA to the reference llama-export-lora to compare with it")
    model = convert(base, tmp_path / "base.gguf", btype).path
    gg = convert_lora(adapter, base, tmp_path / "a.gguf").path
    ref = tmp_path / "ref.gguf"
    p = subprocess.run([REF_EXPORT, "-m", str(model), "--lora-scaled", str(gg), "0.75", "-o", str(ref)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    ours = export_lora(model, [(str(gg), 0.75)], tmp_path / "ours.gguf").path
    with GGUFReader(ours) as a, GGUFReader(ref) as b:
        keys = [k for k in a.kv if not k.startswith("GGUF.")]
        assert keys == [k for k in b.kv if not k.startswith("GGUF.")]
        assert all(np.array_equal(np.asarray(a.kv[k].value, dtype=object), np.asarray(b.kv[k].value, dtype=object))
                   for k in keys)
        assert list(a.tensors) == list(b.tensors)
        for name, t in a.tensors.items():
            u = b.tensors[name]
            assert (t.type, t.shape) == (u.type, u.shape), name
            if t.type_name in ("F32", "F16"):  # merged: the sums in another order, within a last bit of F16
                x, y = np.asarray(t.data, np.float32), np.asarray(u.data, np.float32)
                np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-6, err_msg=name)
            else:
                assert t.raw.tobytes() == u.raw.tobytes(), name


# -- bad input ----------------------------------------------------------------------------------------------
def _refused(capsys, tmp_path, *args, match: str):
    out = tmp_path / "out.gguf"
    capsys.readouterr()  # what making the adapter printed
    code, _, err = cli(capsys, *args, *(["--outfile", str(out)] if args[0] != "export-lora" else ["-o", str(out)]))
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(match, lines[0]), lines[0]
    assert not out.exists() and leftovers(tmp_path) == []


def test_adapter_for_another_model_size(capsys, tmp_path, spm_model, vocab_n, base):
    from test_convert_util import TINY

    other = base_hf(tmp_path / "wide", spm_model, vocab_n, hp={**TINY, "dim": 128, "ffn": 192})
    ad = make_adapter(other, tmp_path / "lora")
    _refused(capsys, tmp_path, "convert", str(base), "--outtype", "f16", "--lora", str(ad),
             match=r"'model\.layers\.\d\.[a-z_.]+': lora_A \[4, 1(28|92)\] and lora_B .* for a base tensor of")


def test_resized_embedding_without_modules_to_save(capsys, tmp_path, base, vocab_n):
    ad = make_adapter(base, tmp_path / "lora", targets=["q_proj", "embed_tokens"], new_vocab=vocab_n + 7)
    for f in ("adapter_model.safetensors",):  # keep the LoRA pair of the embeddings, drop the saved base layer
        from safetensors.torch import load_file, save_file

        sd = {k: v for k, v in load_file(str(ad / f)).items() if "base_layer" not in k}
        save_file(sd, str(ad / f))
    _refused(capsys, tmp_path, "convert", str(base), "--outtype", "f16", "--lora", str(ad),
             match=rf"embed_tokens'.*\[{vocab_n + 7}, 64\] update for a base tensor of \[{vocab_n}, 64\]")


def test_unknown_target_module(capsys, tmp_path, adapter, base):
    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["target_modules"] = ["q_proj", "c_attn"]
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    (bad / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes())
    _refused(capsys, tmp_path, "convert", str(base), "--outtype", "f16", "--lora", str(bad),
             match=r"target_modules names 'c_attn', which a llama model has no module of")
    _refused(capsys, tmp_path, "convert-lora", str(bad), "--base", str(base), match=r"'c_attn'")


def test_rank_zero(capsys, tmp_path, adapter, base):
    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["r"] = 0
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    (bad / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes())
    _refused(capsys, tmp_path, "convert", str(base), "--outtype", "q4_0", "--lora", str(bad),
             match=r"'r' is 0; a LoRA rank must be at least 1")


def test_hostile_pickle_never_runs(capsys, tmp_path, adapter, base):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    canary = tmp_path / "canary"
    write_pth(bad / "adapter_model.bin", pickle.dumps(
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": _Call(os.system, f"touch {canary}")},
        protocol=2))
    _refused(capsys, tmp_path, "convert", str(base), "--outtype", "f16", "--lora", str(bad),
             match=r"refusing to load .*adapter_model\.bin: its pickle asks for '(posix|os)\.system'")
    _refused(capsys, tmp_path, "convert-lora", str(bad), "--base", str(base), match=r"refusing to load")
    assert not canary.exists()


def test_gguf_adapter_for_another_architecture(capsys, tmp_path, base_gguf):
    from gguf.constants import GGMLQuantizationType as T
    from lorautil import write_lora

    (tmp_path / "in").mkdir()
    path, _ = write_lora(tmp_path / "in" / "qwen.gguf", base_gguf, arch="qwen2", ttype=T.F32)
    _refused(capsys, tmp_path, "export-lora", "-m", str(base_gguf), "--lora", path,
             match=r"architecture 'qwen2' does not match the model's 'llama'")
