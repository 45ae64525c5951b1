"""`llamapy quantize`: byte-exact with the reference quantizer, its per-tensor mixes, its command line."""
from __future__ import annotations

import errno

import numpy as np
import pytest
from conftest import shared_path

from llamapy import quantize as Q
from llamapy import quants
from llamapy.cli import main
from llamapy.errors import LlamapyError
from llamapy.ggufio.constants import TensorType as T
from llamapy.ggufio.reader import GGUFReader, TensorInfo
from llamapy.ggufio.writer import GGUFWriter
from llamapy.quants import plan as P

# ../shared/testdata/quant: file -> (type given to the reference quantizer, --pure)
REFERENCE_FILES = {
    "Q4_0": ("Q4_0", True), "Q4_1": ("Q4_1", True), "Q5_0": ("Q5_0", True), "Q5_1": ("Q5_1", True),
    "Q8_0": ("Q8_0", True), "Q2_K": ("Q2_K", True), "Q3_K_S": ("Q3_K_S", True), "Q4_K_S": ("Q4_K_S", True),
    "Q5_K_S": ("Q5_K_S", True), "Q6_K": ("Q6_K", True), "BF16": ("BF16", True),
    "mix-Q2_K": ("Q2_K", False), "mix-Q3_K_M": ("Q3_K_M", False), "mix-Q4_K_M": ("Q4_K_M", False),
    "mix-Q5_K_M": ("Q5_K_M", False),
}


@pytest.mark.parametrize("name", list(REFERENCE_FILES))
def test_output_is_the_reference_quantizers_file(name, tmp_path):
    src = shared_path("testdata", "quant", "src.gguf")
    want_path = shared_path("testdata", "quant", f"{name}.gguf")
    type_name, pure = REFERENCE_FILES[name]
    out = tmp_path / "out.gguf"
    Q.quantize_file(src, out, Q.parse_ftype(type_name).ftype, 2, pure=pure)
    with GGUFReader(out) as got, GGUFReader(want_path) as want:
        assert list(got.tensors) == list(want.tensors)
        for tname, w in want.tensors.items():
            g = got.tensors[tname]
            assert (g.shape, g.type_name) == (w.shape, w.type_name), tname
            assert g.raw.tobytes() == w.raw.tobytes(), f"{tname}: bytes differ"
        assert list(got.kv) == list(want.kv)
    assert out.read_bytes() == want_path.read_bytes()


# -- a model shaped like the default one (576-wide rows: no K-quant fits a row) ------------------------------
def make_model(path, dim=576, n_layer=2, n_head=9, n_head_kv=3, ffn=1536, vocab=64, tied=True, dtype=T.F32, seed=0,
               file_type=None):
    """A random llama-shaped GGUF: F32 norms, 2-D weights in `dtype`; shapes in GGML order (row length first)."""
    rng = np.random.default_rng(seed)
    kv_dim = dim * n_head_kv // n_head
    shapes = [("token_embd.weight", (dim, vocab))]
    for i in range(n_layer):
        shapes += [(f"blk.{i}.attn_norm.weight", (dim,)), (f"blk.{i}.attn_q.weight", (dim, dim)),
                   (f"blk.{i}.attn_k.weight", (dim, kv_dim)), (f"blk.{i}.attn_v.weight", (dim, kv_dim)),
                   (f"blk.{i}.attn_output.weight", (dim, dim)), (f"blk.{i}.ffn_norm.weight", (dim,)),
                   (f"blk.{i}.ffn_gate.weight", (dim, ffn)), (f"blk.{i}.ffn_up.weight", (dim, ffn)),
                   (f"blk.{i}.ffn_down.weight", (ffn, dim))]
    shapes.append(("output_norm.weight", (dim,)))
    if not tied:
        shapes.append(("output.weight", (dim, vocab)))
    with GGUFWriter(path) as w:
        w.add("general.architecture", "llama")
        w.add("llama.block_count", n_layer)
        w.add("llama.embedding_length", dim)
        w.add("llama.feed_forward_length", ffn)
        w.add("llama.attention.head_count", n_head)
        w.add("llama.attention.head_count_kv", n_head_kv)
        if file_type is not None:
            w.add("general.file_type", file_type)
        types = {n: (T.F32 if len(s) == 1 else dtype) for n, s in shapes}
        for n, s in shapes:
            w.add_tensor_info(n, s, types[n])
        w.write_header()
        for n, s in shapes:
            a = (0.05 * rng.standard_normal(tuple(reversed(s)))).astype(np.float32)
            w.write_tensor_data(n, a.astype(np.float16) if types[n] == T.F16 else a)
    return path


@pytest.fixture(scope="module")
def model576(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("m") / "m576.gguf")


def planned(path, type_name, **opts) -> dict[str, str]:
    with GGUFReader(path) as r:
        ps = Q.plan_file(r, Q.QuantizeParams(ftype=Q.parse_ftype(type_name).ftype, **opts))
        return {p.info.name: T(p.new_type).name for p in ps if not p.info.name.endswith("norm.weight")}


def per_layer(types: dict[str, str], kind: str) -> list[str]:
    return [types[f"blk.{i}.{kind}.weight"] for i in range(2)]


# Types the reference quantizer gave each tensor of this model (same shapes, run side by side)
def test_mix_q2_k_falls_back_to_iq4_nl_on_576_wide_rows(model576):
    t = planned(model576, "Q2_K")
    assert t["token_embd.weight"] == "Q8_0"  # tied: treated as output (Q6_K), which can't hold 576 -> Q8_0
    for kind in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up"):
        assert per_layer(t, kind) == ["IQ4_NL", "IQ4_NL"], kind
    assert per_layer(t, "ffn_down") == ["Q3_K", "Q3_K"]  # 1536-wide rows: Q3_K fits


def test_mix_q4_k_m_on_576_wide_rows(model576):
    t = planned(model576, "Q4_K_M")
    assert t["token_embd.weight"] == "Q8_0"
    assert per_layer(t, "attn_q") == ["Q5_0", "Q5_0"]
    assert per_layer(t, "attn_v") == ["Q5_0", "Q8_0"]  # layer 1 of 2 is in the last eighth: Q6_K -> Q8_0
    assert per_layer(t, "ffn_down") == ["Q4_K", "Q6_K"]


def test_mix_q3_k_m_and_q4_k_s_on_576_wide_rows(model576):
    t = planned(model576, "Q3_K_M")
    assert per_layer(t, "attn_v") == ["Q5_1", "Q5_1"]  # Q5_K -> Q5_1
    assert per_layer(t, "attn_output") == ["Q5_0", "Q5_0"]
    assert per_layer(t, "ffn_down") == ["Q4_K", "Q4_K"]
    assert per_layer(t, "ffn_up") == ["IQ4_NL", "IQ4_NL"]
    t = planned(model576, "Q4_K_S")
    assert per_layer(t, "attn_v") == ["Q5_1", "Q5_1"]
    assert per_layer(t, "ffn_down") == ["Q4_K", "Q4_K"]


def test_legacy_mix_puts_the_output_in_q6_k_unless_pure(tmp_path):
    path = make_model(tmp_path / "m.gguf", dim=512, n_head=8, n_head_kv=2, ffn=1024, tied=False)
    t = planned(path, "Q4_0")
    assert t["output.weight"] == "Q6_K" and t["token_embd.weight"] == "Q4_0"
    assert planned(path, "Q4_0", pure=True)["output.weight"] == "Q4_0"
    assert planned(path, "Q4_0", quantize_output_tensor=False)["output.weight"] == "F32"
    t = planned(path, "Q4_K_M", output_tensor_type=int(T.Q8_0), token_embedding_type=int(T.Q4_1))
    assert (t["output.weight"], t["token_embd.weight"]) == ("Q8_0", "Q4_1")
    t = planned(path, "Q2_K")
    assert per_layer(t, "attn_v") == ["Q4_K", "Q4_K"]  # n_gqa = 4


def test_plan_is_a_function_of_names_shapes_and_hyperparameters(model576):
    """The planner needs no file: names, shapes and types plus ModelArgs give the file's plan."""
    from llamapy.model_args import ModelArgs

    with GGUFReader(model576) as r:
        want = [(p.info.name, p.new_type) for p in Q.plan_file(r, Q.QuantizeParams(ftype=Q.F.MOSTLY_Q4_K_M))]
        tensors = {n: TensorInfo(n, t.shape, t.type, 0, 0) for n, t in r.tensors.items()}
    args = ModelArgs(n_vocab=64, n_embd=576, n_layer=2, n_head=9, n_ff=1536, n_head_kv=3)
    got = P.plan(tensors, args, Q.QuantizeParams(ftype=Q.F.MOSTLY_Q4_K_M))
    assert [(p.info.name, p.new_type) for p in got] == want
    assert T.Q8_0 in {t for _, t in want} and T.Q4_K in {t for _, t in want}


def test_quantize_reads_the_hyperparameters_of_any_architecture(tmp_path):
    """Quantize rewrites files the engine would refuse: other architectures, per-layer arrays (layer 0 counts)."""
    from llamapy.model_args import ModelArgs

    path = tmp_path / "q.gguf"
    with GGUFWriter(path) as w:
        w.add("general.architecture", "qwen2")
        w.add("qwen2.block_count", 80)
        w.add("qwen2.attention.head_count", 64)
        w.add("qwen2.attention.head_count_kv", np.array([8] * 80, dtype=np.uint32))
        w.write_header()
    with GGUFReader(path) as r:
        args = ModelArgs.from_gguf(r, strict=False)
        assert (args.arch, args.n_layer, args.n_head, args.n_head_kv, args.n_expert) == ("qwen2", 80, 64, 8, 0)
        with pytest.raises(LlamapyError, match="metadata qwen2.embedding_length is missing"):
            ModelArgs.from_gguf(r)  # the engine's strict read refuses what quantize rewrites
    # an 80-layer GQA model gets the 70B rule: attn_v of Q3_K_S goes to Q5_K
    tensors = {"blk.0.attn_v.weight": TensorInfo("blk.0.attn_v.weight", (8192, 1024), int(T.F32), 0, 0)}
    got = P.plan(tensors, args, Q.QuantizeParams(ftype=Q.F.MOSTLY_Q3_K_S))
    assert got[0].new_type == T.Q5_K
    assert P.plan(tensors, ModelArgs(1, 8192, 80, 64, 1, n_head_kv=64), Q.QuantizeParams(ftype=Q.F.MOSTLY_Q3_K_S)
                  )[0].new_type == T.Q3_K


def test_file_type_table_names_numbers_and_labels():
    from llamapy.ggufio.filetypes import ftype_label, options_help, parse_ftype

    assert parse_ftype("15").name == "Q4_K"  # a number names the first option with that file type
    assert parse_ftype(" q4_k_m ").ftype == 15 and parse_ftype("copy").ftype == 0
    assert parse_ftype("21") is None and parse_ftype("Q9_K") is None  # Q2_K_S: read, not written
    assert ftype_label(15) == "Q4_K - Medium" and ftype_label(21) == "Q2_K - Small"
    assert ftype_label(0) == "all F32" and ftype_label(99) == "file type 99"
    assert ftype_label(None) == "unknown file type"
    assert "Q2_K_S" not in options_help() and "12  or  Q3_K    : alias for Q3_K_M" in options_help()


def test_use_more_bits_pattern():
    assert [i for i in range(32) if P.use_more_bits(i, 32)] == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29,
                                                                30, 31]
    assert P.tensor_type_for("blk.6.ffn_down.weight", (11008, 4096), Q.F.MOSTLY_Q4_K_M, 32) == T.Q6_K
    assert P.tensor_type_for("blk.7.ffn_down.weight", (11008, 4096), Q.F.MOSTLY_Q4_K_M, 32) == T.Q4_K
    assert P.tensor_type_for("blk.1.attn_v.weight", (4096, 4096), Q.F.MOSTLY_Q3_K_M, 32) == T.Q5_K
    assert P.tensor_type_for("blk.2.attn_v.weight", (4096, 4096), Q.F.MOSTLY_Q3_K_M, 32) == T.Q4_K


def test_reference_tensor_order():
    names = ["output.weight", "blk.10.attn_q.weight", "blk.2.ffn_up.weight", "token_embd.weight", "blk.2.attn_k.weight"]
    assert P.reference_order(names) == ["output.weight", "token_embd.weight", "blk.2.attn_k.weight",
                                        "blk.2.ffn_up.weight", "blk.10.attn_q.weight"]


def test_iq4_nl_fallback_bytes_match_the_numpy_reference(model576, tmp_path):
    out = tmp_path / "q2k.gguf"
    Q.quantize_file(model576, out, Q.F.MOSTLY_Q2_K, 2)
    with GGUFReader(model576) as src, GGUFReader(out) as got:
        info = got.tensors["blk.0.attn_q.weight"]
        assert info.type == T.IQ4_NL
        x = src.tensors[info.name].data.reshape(info.n_rows, info.shape[0])
        np.testing.assert_array_equal(got.tensors[info.name].raw, quants.quantize(T.IQ4_NL, x))


def test_f16_input_and_requantizing(tmp_path):
    f16 = make_model(tmp_path / "f16.gguf", dtype=T.F16, file_type=1)
    out = tmp_path / "q8.gguf"
    Q.quantize_file(f16, out, Q.F.MOSTLY_Q8_0, 2)
    with GGUFReader(f16) as src, GGUFReader(out) as got:
        info = got.tensors["blk.1.ffn_up.weight"]
        x = src.tensors[info.name].data.astype(np.float32).reshape(info.n_rows, -1)
        np.testing.assert_array_equal(info.raw, quants.quantize(T.Q8_0, x))
        assert got.get("general.file_type") == Q.F.MOSTLY_Q8_0
        assert list(got.kv)[-2:] == ["general.quantization_version", "general.file_type"]
    with pytest.raises(LlamapyError, match="already quantized.*--allow-requantize"):
        Q.quantize_file(out, tmp_path / "q4.gguf", Q.F.MOSTLY_Q4_0, 2)
    assert not (tmp_path / "q4.gguf").exists()
    Q.quantize_file(out, tmp_path / "q4.gguf", Q.F.MOSTLY_Q4_0, 2, allow_requantize=True, pure=True)
    with GGUFReader(out) as q8, GGUFReader(tmp_path / "q4.gguf") as q4:
        info = q8.tensors["blk.0.attn_q.weight"]
        x = quants.dequantize(T.Q8_0, info.raw, info.shape[0])
        np.testing.assert_array_equal(q4.tensors[info.name].raw, quants.quantize(T.Q4_0, x))


def test_copy_keeps_types_and_the_input_file_type(tmp_path):
    f16 = make_model(tmp_path / "f16.gguf", dtype=T.F16)  # no general.file_type: guessed from the tensors
    out = tmp_path / "copy.gguf"
    Q.quantize_file(f16, out, Q.F.ALL_F32, 1, only_copy=True)
    with GGUFReader(f16) as a, GGUFReader(out) as b:
        assert b.get("general.file_type") == Q.F.MOSTLY_F16 | Q.FTYPE_GUESSED
        for n, t in a.tensors.items():
            assert b.tensors[n].type == t.type and b.tensors[n].raw.tobytes() == t.raw.tobytes()


def test_quantize_rows_threads_and_reference_agree():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 1024)).astype(np.float32)
    one = Q.quantize_rows(T.Q4_1, x, n_threads=1)
    np.testing.assert_array_equal(Q.quantize_rows(T.Q4_1, x, n_threads=2), one)
    np.testing.assert_array_equal(one, quants.quantize(T.Q4_1, x))
    with pytest.raises(LlamapyError, match="multiple of"):
        Q.quantize_rows(T.Q4_K, x[:, :576])


def test_default_model_mix(default_model):
    """SmolLM2 (tied embeddings, 576-wide): the tied token embedding goes to Q8_0, as the reference does."""
    t = planned(default_model, "Q4_K_M", allow_requantize=True)
    assert t["token_embd.weight"] == "Q8_0"
    assert t["blk.0.attn_q.weight"] == "Q5_0" and t["blk.0.ffn_down.weight"] == "Q6_K"


# -- failures leave nothing behind ---------------------------------------------------------------------------
def _leftovers(d):
    return sorted(p.name for p in d.iterdir() if p.name != "m.gguf")


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")],
                         ids=["ctrl-c", "disk-full"])
def test_failure_midway_leaves_no_output(tmp_path, monkeypatch, exc):
    src = make_model(tmp_path / "m.gguf", dim=256, n_head=4, n_head_kv=2, ffn=512)
    calls = []
    real = Q._convert_chunks

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise exc
        return real(*a, **k)

    monkeypatch.setattr(Q, "_convert_chunks", failing)
    with pytest.raises((KeyboardInterrupt, LlamapyError)) as e:
        Q.quantize_file(src, tmp_path / "out.gguf", Q.F.MOSTLY_Q4_0, 2)
    if isinstance(exc, OSError):
        assert "No space left on device" in str(e.value)
    assert _leftovers(tmp_path) == []


# -- the command line --------------------------------------------------------------------------------------
def run_cli(*args) -> int:
    try:
        main(["quantize", *map(str, args)])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_cli_legacy_number_and_explicit_output(tmp_path, capsys):
    src = make_model(tmp_path / "m.gguf", dim=256, n_head=4, n_head_kv=2, ffn=512)
    assert run_cli(src, tmp_path / "q4_0.bin", 2, 1) == 0
    with GGUFReader(tmp_path / "q4_0.bin") as r:
        assert r.get("general.file_type") == Q.F.MOSTLY_Q4_0
        assert r.tensors["blk.0.ffn_up.weight"].type == T.Q4_0
    out = capsys.readouterr()
    assert "model size" in out.out and "quant size" in out.out


def test_cli_default_output_name_and_any_case(tmp_path):
    src = make_model(tmp_path / "m.gguf", dim=256, n_head=4, n_head_kv=2, ffn=512)
    assert run_cli(src, "q5_k_m") == 0
    with GGUFReader(tmp_path / "ggml-model-Q5_K_M.gguf") as r:
        assert r.get("general.file_type") == Q.F.MOSTLY_Q5_K_M


def test_cli_unknown_type_lists_the_valid_ones(tmp_path, capsys):
    src = make_model(tmp_path / "m.gguf", dim=256, n_head=4, n_head_kv=2, ffn=512)
    assert run_cli(src, tmp_path / "o.gguf", "Q9_K") == 1
    err = capsys.readouterr().err
    assert "unknown quantization type 'Q9_K'" in err and "Q4_K_M" in err and "Q8_0" in err
    assert _leftovers(tmp_path) == []


def test_cli_refuses_output_equal_to_input(tmp_path, capsys):
    src = make_model(tmp_path / "m.gguf", dim=256, n_head=4, n_head_kv=2, ffn=512)
    before = src.read_bytes()
    assert run_cli(src, src, "Q4_0") == 1
    assert "is the input file" in capsys.readouterr().err
    assert src.read_bytes() == before


def test_cli_refuses_requantizing_without_the_flag(tmp_path, capsys):
    src = make_model(tmp_path / "m.gguf", dim=256, n_head=4, n_head_kv=2, ffn=512)
    assert run_cli(src, tmp_path / "q8.gguf", "Q8_0") == 0
    assert run_cli(tmp_path / "q8.gguf", tmp_path / "q4.gguf", "Q4_0") == 1
    assert "--allow-requantize" in capsys.readouterr().err
    assert not (tmp_path / "q4.gguf").exists()
    assert run_cli("--allow-requantize", tmp_path / "q8.gguf", tmp_path / "q4.gguf", "Q4_0") == 0


def test_cli_unwritable_output_directory(tmp_path, capsys):
    src = make_model(tmp_path / "m.gguf", dim=256, n_head=4, n_head_kv=2, ffn=512)
    assert run_cli(src, tmp_path / "missing" / "o.gguf", "Q4_0") == 1
    assert "can't write here" in capsys.readouterr().err
    assert _leftovers(tmp_path) == []


def test_cli_help_lists_types_with_bits_per_weight(capsys):
    assert run_cli("--help") == 0
    out = capsys.readouterr().out
    for line in ("2  or  Q4_0", "15  or  Q4_K_M", "7  or  Q8_0", "COPY"):
        assert line in out
    assert "4.50 bpw" in out and "6.56 bpw" in out
