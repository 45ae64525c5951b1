"""llama-quantize's per-tensor mixes on the other architectures: MoE experts (n_expert == 8 and not),
Qwen's attention biases, Gemma's tied embeddings, Phi-3's fused attn_qkv.

Each tiny model is converted to F32 and quantized by `llamapy quantize`, and straight to the mix by
`llamapy convert --outtype`; both must give the same file. With LLAMAPY_REF_QUANTIZE=/path/to/llama-quantize
the F32 file is also quantized by the reference and compared byte for byte.
"""
from __future__ import annotations

import os
import subprocess

import pytest
from test_convert_arch import CONFIGS, VARIANTS, make, qwen_pre  # noqa: F401 - qwen_pre is a fixture

from llamapy.convert import convert
from llamapy.ggufio.filetypes import parse_ftype
from llamapy.ggufio.reader import GGUFReader
from llamapy.quantize import quantize_file

REF = os.environ.get("LLAMAPY_REF_QUANTIZE")
MIXES = ["Q4_K_M", "Q2_K", "Q3_K_M", "Q5_K_M", "Q4_0"]
if REF:  # every K-quant mix and the legacy types when the reference is there to compare with
    MIXES += ["Q3_K_S", "Q3_K_L", "Q4_K_S", "Q5_K_S", "Q6_K", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL"]  # (q8_0 is a plain --outtype)
IN_REFERENCE = ("qwen2", "qwen2-tied", "qwen2moe", "mixtral", "mixtral8", "gemma2", "phi3")  # architectures llama-quantize loads


@pytest.fixture
def f32_model(tmp_path, spm_model, vocab_n, qwen_pre, request):  # noqa: F811
    kind = request.param
    if kind in VARIANTS:
        d = VARIANTS[kind](tmp_path / kind, spm_model, vocab_n)
    else:
        d, _ = make(tmp_path / kind, kind, spm_model, vocab_n)
    return kind, d, convert(d, tmp_path / "f32.gguf", "f32").path


@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("f32_model", [*CONFIGS, "qwen2-tied"], indirect=True)
def test_quantize_equals_convert_straight_to_the_mix(tmp_path, f32_model, mix):
    kind, d, f32 = f32_model
    q = tmp_path / "q.gguf"
    quantize_file(f32, q, int(parse_ftype(mix).ftype))
    direct = convert(d, tmp_path / "direct.gguf", mix.lower()).path
    assert direct.read_bytes() == q.read_bytes()
    if REF and kind in IN_REFERENCE:
        ref = tmp_path / "ref.gguf"
        p = subprocess.run([REF, str(f32), str(ref), mix], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr[-2000:]
        if ref.read_bytes() != q.read_bytes():
            r, o = GGUFReader(ref), GGUFReader(q)
            diff = [(n, r.tensors[n].type_name, o.tensors[n].type_name) for n in r.tensors
                    if n in o.tensors and r.tensors[n].type_name != o.tensors[n].type_name]
            pytest.fail(f"differs from llama-quantize's file; type differences: {diff[:8]}")
