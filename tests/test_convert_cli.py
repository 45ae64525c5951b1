"""`llamapy convert` run as the tutorials run convert.py (a subprocess, relative paths)."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from test_convert_util import (
    forward_meta,
    meta_params,
    meta_weights,
    rounded,
    save_meta,
    spm_size,
)

from llamapy.ggufio.reader import GGUFReader


def llamapy(*args, cwd=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "llamapy", *args], capture_output=True, text=True, cwd=cwd, check=False,
                          timeout=timeout)


@pytest.fixture(scope="module")
def weights(spm_model):
    return meta_weights(spm_size(spm_model), seed=7)


def test_tutorial_command_line(tmp_path, weights, spm_model):
    """convert.py models/llama-2-7b-chat --vocab-dir ../llama --outtype fP16 --outfile out.gguf"""
    work = tmp_path / "work"
    save_meta(work / "models" / "llama-2-7b-chat", weights, meta_params())
    (tmp_path / "llama").mkdir()
    shutil.copy(spm_model, tmp_path / "llama" / "tokenizer.model")
    r = llamapy("convert", "models/llama-2-7b-chat", "--vocab-dir", "../llama", "--outtype", "fP16",
                "--outfile", "out.gguf", cwd=work)
    assert r.returncode == 0, r.stderr
    assert "note: params.json has vocab_size -1" in r.stderr
    assert "wrote out.gguf (F16, 21 tensors" in r.stderr
    with GGUFReader(work / "out.gguf") as g:
        assert g.get("general.file_type") == 1
        assert g.tensors["blk.0.attn_q.weight"].type_name == "F16"


def test_old_numeric_output_type(tmp_path, weights, spm_model):
    """convert.py models/7B/ 1"""
    d = save_meta(tmp_path / "models" / "7B", weights, meta_params())
    shutil.copy(spm_model, tmp_path / "models" / "tokenizer.model")
    r = llamapy("convert", "models/7B/", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = [p.name for p in d.glob("*.gguf")]
    assert out == ["7B-103K-7B-F16.gguf"]  # the reference's name for a directory called 7B
    r = llamapy("convert", "models/7B/", "0", "--outfile", "f32-{ftype}.gguf", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "f32-f32.gguf").exists()


def test_errors_are_one_line(tmp_path, weights, spm_model):
    d = save_meta(tmp_path / "m", weights, meta_params())
    r = llamapy("convert", str(d), cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.startswith("error: no tokenizer (tokenizer.model or tokenizer.json) found; tried: ")
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    r = llamapy("convert", str(d), "2", cwd=tmp_path)
    assert r.returncode == 1 and "the old numeric output type is 0 (f32) or 1 (f16)" in r.stderr
    r = llamapy("convert", str(tmp_path / "nope"), cwd=tmp_path)
    assert r.returncode == 1 and "no such model directory" in r.stderr


def test_quantized_output_runs(tmp_path, weights, spm_model):
    """--outtype q8_0 and q4_k_m straight from the checkpoint; the engine runs both."""
    from llamapy.engine.engine import Engine

    d = save_meta(tmp_path / "m", weights, meta_params(), dtype="bf16")
    shutil.copy(spm_model, d / "tokenizer.model")
    tokens = [1, 40, 41, 42, 300, 5]
    ref = forward_meta(rounded(weights, "bf16"), tokens)
    for t in ("q8_0", "q4_k_m"):
        r = llamapy("convert", str(d), "--outtype", t, "--outfile", str(tmp_path / f"{t}.gguf"))
        assert r.returncode == 0, r.stderr
        with Engine(str(tmp_path / f"{t}.gguf"), n_ctx=32, n_threads=1) as llm:
            got = llm.eval_all_logits(tokens)
            assert llm.tokenizer.encode("the quick fox", add_special=True)[0] == 1
        # quantization error, not a wrong model: the logits stay close to the checkpoint's
        assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > (0.9995 if t == "q8_0" else 0.99)
