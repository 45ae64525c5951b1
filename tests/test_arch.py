"""llama's relatives (Qwen2, Qwen3, Gemma 2, Gemma 3, Phi-3, and the mixtures of experts Qwen2-MoE,
Qwen3-MoE, Mixtral) on the one forward step.

Each check builds a tiny Hugging Face model with random weights in `transformers`, writes its state dict
as an F32 GGUF with the tensor names and metadata keys llama.cpp's converter uses (`write_hf_gguf`), and
compares the logits of llamapy's engine (a prompt batch, then one token at a time) with transformers'
and with the numpy reference forward.

Tolerances, as the max abs logit difference over the largest |logit| (at least 1): the numpy reference
without F16 rounding agrees with transformers to 1e-5 (float64 against float32); the engine keeps K, V
and the attention probabilities in F16 as llama.cpp does, so it is held to the numpy reference with
that rounding at 2e-4 and to transformers at 1e-3 (measured: up to 1e-4 and 5e-4).
"""
from __future__ import annotations

import numpy as np
import pytest

from llamapy.engine import reference as rf
from llamapy.engine.engine import Engine
from llamapy.errors import LlamapyError
from llamapy.ggufio.writer import GGUFWriter

TOKENS = [1, 7, 42, 3, 99, 15, 8, 64, 23, 5, 77, 31, 2, 50]
N_VOCAB = 128


@pytest.fixture(scope="module")
def hf():
    """(torch, transformers): imported once, they take seconds."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    return torch, transformers


def _config(tr, arch: str):
    common = dict(vocab_size=N_VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if arch == "llama":
        return tr.LlamaConfig(**common, rms_norm_eps=1e-5, tie_word_embeddings=False), tr.LlamaForCausalLM
    if arch == "qwen2":
        return tr.Qwen2Config(**common, rms_norm_eps=1e-6, tie_word_embeddings=False), tr.Qwen2ForCausalLM
    if arch == "qwen3":
        return tr.Qwen3Config(**common, head_dim=32, rms_norm_eps=1e-6, tie_word_embeddings=True), tr.Qwen3ForCausalLM
    if arch == "gemma2":
        return tr.Gemma2Config(**common, head_dim=32, query_pre_attn_scalar=32, sliding_window=4,
                               attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
                               hidden_activation="gelu_pytorch_tanh"), tr.Gemma2ForCausalLM
    if arch == "gemma3":
        cfg = tr.Gemma3TextConfig(**{**common, "num_hidden_layers": 7}, head_dim=32, query_pre_attn_scalar=32,
                                  sliding_window=4, hidden_activation="gelu_pytorch_tanh")
        return cfg, tr.Gemma3ForCausalLM
    if arch == "phi3":
        cfg = tr.Phi3Config(**common, rms_norm_eps=1e-5, sliding_window=6, tie_word_embeddings=False,
                            pad_token_id=0, bos_token_id=1, eos_token_id=2)
        return cfg, tr.Phi3ForCausalLM
    moe = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32)
    if arch == "qwen2moe":
        return tr.Qwen2MoeConfig(**common, **moe, shared_expert_intermediate_size=48, rms_norm_eps=1e-6,
                                 tie_word_embeddings=False), tr.Qwen2MoeForCausalLM
    if arch == "qwen3moe":
        return tr.Qwen3MoeConfig(**common, **moe, head_dim=32, norm_topk_prob=True, rms_norm_eps=1e-6,
                                 tie_word_embeddings=False), tr.Qwen3MoeForCausalLM
    if arch == "mixtral":
        return tr.MixtralConfig(**common, num_local_experts=4, num_experts_per_tok=2, rms_norm_eps=1e-5,
                                tie_word_embeddings=False), tr.MixtralForCausalLM
    raise AssertionError(arch)


GGUF_ARCH = {"mixtral": "llama"}  # test case -> the architecture llama.cpp writes


def _randomize(torch, model, arch: str, seed: int) -> None:
    """Weights with spreads that make a difference: matrices ~1/sqrt(fan_in), norms around 1."""
    g = torch.Generator().manual_seed(seed)
    gemma = arch.startswith("gemma")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                std = 1.0 if "embed" in name else p.shape[-1] ** -0.5
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            else:  # a norm: Gemma's multiply by 1 + weight
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (0.0 if gemma else 1.0))


# Hugging Face name (after "model.layers.N.") -> GGUF name (after "blk.N."), per architecture family
_LAYER_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.qkv_proj": "attn_qkv",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "mlp.gate_up_proj": "ffn_up",
    "post_attention_layernorm": "ffn_norm", "mlp.gate": "ffn_gate_inp",
    "mlp.shared_expert.gate_proj": "ffn_gate_shexp", "mlp.shared_expert.up_proj": "ffn_up_shexp",
    "mlp.shared_expert.down_proj": "ffn_down_shexp", "mlp.shared_expert_gate": "ffn_gate_inp_shexp",
}
_GEMMA_NAMES = {"post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
                "post_feedforward_layernorm": "post_ffw_norm"}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """q/k rows reordered for llama's interleaved RoPE, as llama.cpp's converter does for llama."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_hf_gguf(path, model, arch: str) -> str:
    """The model's state dict as an F32 GGUF of architecture `arch`, named and laid out as llama.cpp's
    converter writes it."""
    cfg = model.config
    n_head, n_head_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    gemma = arch.startswith("gemma")
    tensors: dict[str, np.ndarray] = {}
    for name, p in model.state_dict().items():
        a = p.detach().float().numpy()
        if name == "model.embed_tokens.weight":
            out = "token_embd.weight"
        elif name == "model.norm.weight":
            out = "output_norm.weight"
        elif name == "lm_head.weight":
            if cfg.tie_word_embeddings:
                continue
            out = "output.weight"
        else:
            _, _, i, rest = name.split(".", 3)
            if rest == "mlp.experts.gate_up_proj":  # (expert, gate rows then up rows, n_embd)
                f = a.shape[1] // 2
                tensors[f"blk.{i}.ffn_gate_exps.weight"] = np.ascontiguousarray(a[:, :f])
                tensors[f"blk.{i}.ffn_up_exps.weight"] = np.ascontiguousarray(a[:, f:])
                continue
            if rest == "mlp.experts.down_proj":
                tensors[f"blk.{i}.ffn_down_exps.weight"] = np.ascontiguousarray(a)
                continue
            mod, kind = rest.rsplit(".", 1)
            if mod == "mlp.shared_expert_gate":
                a = a.reshape(-1)
            out = f"blk.{i}.{({**_LAYER_NAMES, **_GEMMA_NAMES} if gemma else _LAYER_NAMES)[mod]}.{kind}"
            if arch == "llama" and mod in ("self_attn.q_proj", "self_attn.k_proj"):
                a = _permute(a, n_head if mod == "self_attn.q_proj" else n_head_kv)
        if gemma and out.endswith("norm.weight"):
            a = a + 1.0  # llama.cpp's converter stores Gemma's norms as 1 + weight
        tensors[out] = np.ascontiguousarray(a, dtype=np.float32)

    with GGUFWriter(path) as w:
        w.add("general.architecture", arch)
        w.add("general.name", f"random-{arch}")
        w.add("general.file_type", 0)
        w.add(f"{arch}.context_length", int(cfg.max_position_embeddings))
        w.add(f"{arch}.embedding_length", int(cfg.hidden_size))
        w.add(f"{arch}.block_count", int(cfg.num_hidden_layers))
        w.add(f"{arch}.feed_forward_length", int(cfg.intermediate_size))
        w.add(f"{arch}.attention.head_count", int(n_head))
        w.add(f"{arch}.attention.head_count_kv", int(n_head_kv))
        w.add(f"{arch}.attention.layer_norm_rms_epsilon", float(cfg.rms_norm_eps))
        w.add(f"{arch}.vocab_size", int(cfg.vocab_size))
        if arch != "llama":
            w.add(f"{arch}.attention.key_length", int(head_dim))
            w.add(f"{arch}.attention.value_length", int(head_dim))
        rope = getattr(cfg, "rope_parameters", None) or {}
        theta = (rope.get("full_attention") or rope).get("rope_theta") or getattr(cfg, "rope_theta", 10000.0)
        w.add(f"{arch}.rope.freq_base", float(theta))
        w.add(f"{arch}.rope.dimension_count", int(head_dim))
        if getattr(cfg, "sliding_window", None):
            w.add(f"{arch}.attention.sliding_window", int(cfg.sliding_window))
        n_expert = getattr(cfg, "num_experts", None) or getattr(cfg, "num_local_experts", None)
        if n_expert:
            w.add(f"{arch}.expert_count", int(n_expert))
            w.add(f"{arch}.expert_used_count", int(cfg.num_experts_per_tok))
            if getattr(cfg, "moe_intermediate_size", None):
                w.add(f"{arch}.expert_feed_forward_length", int(cfg.moe_intermediate_size))
            if getattr(cfg, "shared_expert_intermediate_size", None):
                w.add(f"{arch}.expert_shared_feed_forward_length", int(cfg.shared_expert_intermediate_size))
        if arch == "gemma2":
            w.add(f"{arch}.attn_logit_softcapping", float(cfg.attn_logit_softcapping))
            w.add(f"{arch}.final_logit_softcapping", float(cfg.final_logit_softcapping))
        for name, a in tensors.items():
            w.add_tensor_info(name, tuple(reversed(a.shape)), 0)
        w.write_header()
        for name, a in tensors.items():
            w.write_tensor_data(name, a)
    return str(path)


def _build(hf, tmp_path, case: str, seed: int = 0, **config):
    torch, tr = hf
    cfg, cls = _config(tr, case)
    for k, v in config.items():
        setattr(cfg, k, v)
    if "num_hidden_layers" in config and hasattr(cfg, "layer_types"):
        cfg.layer_types = cfg.layer_types[:cfg.num_hidden_layers]
    arch = GGUF_ARCH.get(case, case)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    _randomize(torch, model, arch, seed)
    path = write_hf_gguf(tmp_path / f"{arch}.gguf", model, arch)
    with torch.no_grad():
        want = model(torch.tensor([TOKENS])).logits[0].float().numpy()
    return path, want


ARCHS = ["llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "qwen2moe", "qwen3moe", "mixtral"]


def rel_diff(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("arch", ARCHS)
def test_engine_matches_transformers(hf, tmp_path, arch):
    path, want = _build(hf, tmp_path, arch)
    assert np.abs(want).max() > 0.5  # logits that tell models apart

    args, w, types = rf.load_weights(path)
    assert args.arch == GGUF_ARCH.get(arch, arch)
    exact = rf.forward(args, w, TOKENS, types, kv_f16=False, act_round=False)
    assert rel_diff(exact, want) < 1e-5
    rounded = rf.forward(args, w, TOKENS, types)

    with Engine(path, n_ctx=64, n_threads=2) as llm:
        batch = llm.eval_all_logits(TOKENS)
        llm.kv_clear()
        step = np.stack([llm.eval([t]) for t in TOKENS])
    for got in (batch, step):
        assert rel_diff(got, rounded) < 2e-4
        assert rel_diff(got, want) < 1e-3
    assert int(np.argmax(batch[-1])) == int(np.argmax(want[-1]))


def test_traits_follow_metadata(hf, tmp_path):
    """The sliding window and soft-caps are read from the file: changing them changes the logits."""
    path, want = _build(hf, tmp_path, "gemma2")
    from llamapy.ggufio.reader import GGUFReader
    from llamapy.model_args import ModelArgs

    with GGUFReader(path) as r:
        a = ModelArgs.from_gguf(r)
    assert (a.n_swa, a.swa_pattern, a.attn_softcap, a.final_softcap, a.act) == (4, 2, 5.0, 3.0, "gelu")
    with Engine(path, n_ctx=64, n_threads=2) as llm:
        got = llm.eval_all_logits(TOKENS)
    assert np.abs(got).max() <= 3.0  # the final soft-cap bounds the logits


def _rewrite(src: str, dst, drop: tuple[str, ...] = (), kv: dict | None = None) -> str:
    from llamapy.ggufio.reader import GGUFReader

    with GGUFReader(src) as r, GGUFWriter(dst) as w:
        for k, v in r.kv.items():
            if k in (kv or {}):
                w.add(k, kv[k])
            elif not k.startswith("GGUF."):
                w.add_value(k, v)
        names = [n for n in r.tensors if n not in drop]
        for n in names:
            t = r.tensors[n]
            w.add_tensor_info(n, t.shape, t.type)
        w.write_header()
        for n in names:
            w.write_tensor_data(n, np.array(r.tensors[n].raw))
    return str(dst)


def test_missing_qk_norm_is_named(hf, tmp_path):
    path, _ = _build(hf, tmp_path, "qwen3")
    bad = _rewrite(path, tmp_path / "bad.gguf", drop=("blk.1.attn_k_norm.weight",))
    with pytest.raises(LlamapyError, match=r"tensor 'blk\.1\.attn_k_norm\.weight' is missing"):
        Engine(bad, n_ctx=32)


def test_unknown_architecture_lists_the_supported(hf, tmp_path):
    path, _ = _build(hf, tmp_path, "qwen2")
    bad = _rewrite(path, tmp_path / "bad.gguf", kv={"general.architecture": "mamba"})
    with pytest.raises(LlamapyError) as e:
        Engine(bad, n_ctx=32)
    msg = str(e.value)
    assert "'mamba' is not supported" in msg and "qwen2" in msg and "gemma3" in msg and "\n" not in msg


def test_wrong_expert_count_is_named(hf, tmp_path):
    path, _ = _build(hf, tmp_path, "qwen2moe")
    bad = _rewrite(path, tmp_path / "bad.gguf", kv={"qwen2moe.expert_count": 4})
    with pytest.raises(LlamapyError, match=r"tensor 'blk\.0\.ffn_gate_inp\.weight' has shape \[64, 8\], "
                                           r"expected \[64, 4\] \(from expert_count 4"):
        Engine(bad, n_ctx=32)



def test_experts_follow_the_router(hf, tmp_path):
    """The experts the router does not pick are never read: NaN in their weights changes nothing."""
    path, _ = _build(hf, tmp_path, "qwen3moe")
    toks = TOKENS[:3]
    args, w, types = rf.load_weights(path)
    trace: dict[str, set] = {}
    rf.forward(args, w, toks, types, trace=trace)
    with Engine(path, n_ctx=64, n_threads=2) as llm:
        want = llm.eval_all_logits(toks)

    from llamapy.ggufio.reader import GGUFReader

    spoiled = tmp_path / "spoiled.gguf"
    _rewrite(path, spoiled)
    data = bytearray(spoiled.read_bytes())
    n_spoiled = 0
    with GGUFReader(str(spoiled)) as r:
        for layer in range(args.n_layer):
            for kind in ("gate", "up", "down"):
                t = r.tensors[f"blk.{layer}.ffn_{kind}_exps.weight"]
                per = t.nbytes // args.n_expert
                for e in set(range(args.n_expert)) - trace[f"blk.{layer}."]:
                    nan = np.full(per // 4, np.nan, dtype=np.float32).tobytes()
                    data[t.offset + e * per:t.offset + (e + 1) * per] = nan
                    n_spoiled += 1
    assert n_spoiled >= 2 * 3  # at least two experts per layer are left out
    spoiled.write_bytes(bytes(data))
    with Engine(str(spoiled), n_ctx=64, n_threads=2) as llm:
        batch = llm.eval_all_logits(toks)
        llm.kv_clear()
        step = np.stack([llm.eval([t]) for t in toks])
    np.testing.assert_array_equal(batch, want)
    assert np.isfinite(step).all() and np.abs(step - want).max() < 1e-4


@pytest.mark.parametrize("arch", ["qwen3", "gemma3"])
def test_context_shift_rerotates_by_the_layer_rope(hf, tmp_path, arch):
    """After dropping positions, the re-rotated keys match the kept tokens evaluated from scratch: NEOX pairs,
    and for gemma3 the local layers' own RoPE base. One layer, so a cached key depends only on its token
    and position, and the next token's logits only on the cache."""
    # a window wider than the text: the kept tokens' keys are all in view
    path, _ = _build(hf, tmp_path, arch, num_hidden_layers=1, sliding_window=16)
    with Engine(path, n_ctx=64, n_threads=2) as llm:
        llm.eval(TOKENS[:10])
        llm.context_shift(0, 2, 3)
        got = llm.eval([TOKENS[10]])
        kept = TOKENS[:2] + TOKENS[5:10] + [TOKENS[10]]
        llm.kv_clear()
        want = llm.eval(kept)
        llm.kv_clear()
        unshifted = llm.eval(TOKENS[:11])
    assert rel_diff(got, want) < 2e-3
    assert rel_diff(unshifted, want) > 1e-2  # the check can tell


@pytest.mark.parametrize("case", ["qwen2moe", "mixtral"])
def test_quantized_experts(hf, tmp_path, case):
    """Q4_K_M experts (repacked for the fast product; each expert a view of its rows) against the numpy
    reference with the same activation rounding."""
    from gguf.constants import GGMLQuantizationType as T

    from llamapy.ggufio.filetypes import LlamaFtype
    from llamapy.quantize import quantize_file

    extra = dict(moe_intermediate_size=256, shared_expert_intermediate_size=256) if case == "qwen2moe" else {}
    path, _ = _build(hf, tmp_path, case, hidden_size=256, intermediate_size=256, **extra)
    q = tmp_path / "q4km.gguf"
    quantize_file(path, q, LlamaFtype.MOSTLY_Q4_K_M, n_threads=2)
    args, w, types = rf.load_weights(str(q))
    assert types["blk.0.ffn_gate_exps.weight"] == T.Q4_K
    want = rf.forward(args, w, TOKENS, types)
    with Engine(str(q), n_ctx=64, n_threads=2) as llm:
        batch = llm.eval_all_logits(TOKENS)
        llm.kv_clear()
        step = np.stack([llm.eval([t]) for t in TOKENS])
    assert rel_diff(batch, want) < 1e-4 and rel_diff(step, want) < 1e-4


@pytest.mark.parametrize("arch,layers,extra,want", [
    ("llama", 30, {}, "?B"), ("llama", 16, {}, "1B"), ("llama", 32, {"n_expert": 8, "n_expert_used": 2}, "8x7B"),
    ("llama", 16, {"n_expert": 8, "n_expert_used": 2}, "?B"), ("qwen2", 24, {"n_embd": 896}, "1B"),
    ("qwen2", 24, {"n_embd": 1024}, "0.5B"), ("qwen2", 28, {"n_embd": 1536}, "1.5B"), ("qwen2moe", 24, {}, "A2.7B"),
    ("gemma2", 26, {}, "2B"), ("gemma2", 2, {}, "?B"), ("phi3", 32, {}, "3B"),
    ("qwen3", 28, {}, "596M"), ("gemma3", 18, {}, "596M"),
    ("qwen3moe", 48, {"n_expert": 128, "n_expert_used": 8}, "596M.A3M"),
])
def test_size_labels(arch, layers, extra, want):
    """The reference's names (from its load_hparams) for the architectures it has; the parameter count for
    the later ones."""
    from llamapy.model_args import ModelArgs

    kw = dict(n_vocab=1000, n_embd=64, n_layer=layers, n_head=4, n_ff=128, arch=arch)
    a = ModelArgs(**{**kw, **extra})
    assert a.size_label(596_049_920, 3_000_000) == want


def test_size_label_in_the_load_line(hf, tmp_path):
    """qwen3 (after the reference's build): the file's parameters counted; a mixture of experts: total.Aactive."""
    path, _ = _build(hf, tmp_path, "qwen3moe")
    with Engine(path, n_ctx=16) as llm:
        n = llm.n_params
        arch, label, _ = llm.desc.split(" ", 2)
    assert arch == "qwen3moe" and label.startswith(f"{n / 1e3:.0f}K.A") and label != "?B"


def test_info_names_the_size_and_the_supported_architectures(hf, tmp_path, capsys):
    from cliutil import cli

    path, _ = _build(hf, tmp_path, "qwen3")
    code, out, _ = cli(capsys, "info", path)
    assert code == 0 and "architecture qwen3 (" in out and "K): runs" in out
    bad = _rewrite(path, tmp_path / "bad.gguf", kv={"general.architecture": "mamba"})
    code, out, _ = cli(capsys, "info", bad)
    flat = " ".join(out.split())
    assert code == 0 and "architecture mamba: llamapy can't run it (llamapy runs llama, qwen2, qwen3" in flat
    code, _, err = cli(capsys, "run", "-m", bad, "-p", "x", "-n", "1")
    assert code == 1 and "'mamba' is not supported (llamapy runs llama, qwen2" in err and "Traceback" not in err
