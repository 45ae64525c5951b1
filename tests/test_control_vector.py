"""Control vectors (--control-vector, --control-vector-scaled, --control-vector-layer-range): the engine adds
direction.N (times its scale, files summed) to the residual stream after layer N, for the layers of the range
and never layer 0, as llama.cpp applies them; checked against the numpy forward pass with the same rows
(largest |difference| / largest |logit| under 1e-4, the F32 tolerance of test_engine.py), in a batch and one
token at a time, and bad files refused in one line."""
from __future__ import annotations

import numpy as np
import pytest
from cliutil import cli
from gguf.constants import GGMLQuantizationType as T
from test_engine_models import write_random_llama
from test_lora import VOCAB

from llamapy.engine import reference as rf
from llamapy.engine.engine import Engine
from llamapy.engine.load import LoadOptions
from llamapy.errors import LlamapyError
from llamapy.ggufio.writer import GGUFWriter

TOKENS = [1, 5, 7, 9, 11, 3, 2, 8, 40, 41, 50, 60]
N_EMBD, N_LAYER = 64, 4
TOL = 1e-4


def write_cvec(path, dirs: dict[int, np.ndarray], *, ttype: int = T.F32, names: list[str] | None = None) -> str:
    """A control vector GGUF as llama.cpp's cvector-generator writes it: direction.N, F32, 1-D."""
    names = names or [f"direction.{layer}" for layer in dirs]
    with GGUFWriter(path) as w:
        w.add("general.architecture", "controlvector")
        w.add("controlvector.model_hint", "llama")
        w.add("controlvector.layer_count", len(dirs))
        for name, v in zip(names, dirs.values()):
            w.add_tensor_info(name, (len(v),), int(ttype))
        w.write_header()
        for name, v in zip(names, dirs.values()):
            w.write_tensor_data(name, v.astype(np.float16 if ttype == T.F16 else np.float32))
    return str(path)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_random_llama(tmp_path_factory.mktemp("cvec") / "m.gguf", n_layer=N_LAYER, n_embd=N_EMBD, seed=5,
                              n_vocab=128, extra_kv=VOCAB)


def directions(seed: int, layers) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {layer: rng.standard_normal(N_EMBD).astype(np.float32) * 0.5 for layer in layers}


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def engine_logits(model: str, load: LoadOptions, steps: bool = False, threads: int = 2) -> np.ndarray:
    with Engine(model, n_ctx=64, n_threads=threads, n_batch=16, load=load) as llm:
        if steps:
            return np.stack([llm.eval([t]) for t in TOKENS])
        return llm.eval_all_logits(TOKENS)


def oracle(model: str, cvec: dict[int, np.ndarray] | None) -> np.ndarray:
    args, w, types = rf.load_weights(model)
    return rf.forward(args, w, TOKENS, types, cvec=cvec)


def test_control_vectors_equal_the_numpy_forward_pass(model, tmp_path):
    a = directions(1, [1, 2, 3])
    b = directions(2, [2, 3])
    fa, fb = write_cvec(tmp_path / "a.gguf", a), write_cvec(tmp_path / "b.gguf", b)
    plain = oracle(model, None)
    # one file at scale 1, two files summed with scales, a layer range, and a direction for layer 0 ignored
    cases = [
        (LoadOptions(control_vectors=[(fa, 1.0)]), {layer: v for layer, v in a.items()}),
        (LoadOptions(control_vectors=[(fa, 0.5), (fb, -2.0)]),
         {1: 0.5 * a[1], 2: 0.5 * a[2] - 2.0 * b[2], 3: 0.5 * a[3] - 2.0 * b[3]}),
        (LoadOptions(control_vectors=[(fa, 1.0)], cvec_layer_range=(2, 2)), {2: a[2]}),
        (LoadOptions(control_vectors=[(fa, 1.0)], cvec_layer_range=(2, 0)), {2: a[2], 3: a[3]}),
    ]
    for load, rows in cases:
        want = oracle(model, rows)
        assert rel_err(want, plain) > 1e-2  # the vectors change the logits
        for steps in (False, True):
            got = engine_logits(model, load, steps=steps)
            assert rel_err(got, want) < TOL, (load, steps)
    np.testing.assert_array_equal(engine_logits(model, LoadOptions()), engine_logits(model, LoadOptions()))


def test_set_control_vectors_switches_between_steps(model, tmp_path):
    a = directions(3, [1, 3])
    fa = write_cvec(tmp_path / "a.gguf", a)
    with Engine(model, n_ctx=64, n_threads=2, n_batch=16) as llm:
        plain = llm.eval_all_logits(TOKENS)
        rows = llm.set_control_vectors([(fa, 1.0)])
        assert sorted(rows) == [1, 3]
        llm.kv_clear()
        on = llm.eval_all_logits(TOKENS)
        llm.set_control_vectors([])
        llm.kv_clear()
        np.testing.assert_array_equal(llm.eval_all_logits(TOKENS), plain)
    assert rel_err(on, oracle(model, a)) < TOL


def test_layer_zero_and_the_last_layer(model, tmp_path):
    """direction.N is never used for N = 0 (refused, as llama.cpp refuses it) nor past the model's layers."""
    with pytest.raises(LlamapyError, match="direction.0"):
        engine_logits(model, LoadOptions(control_vectors=[(write_cvec(tmp_path / "z.gguf", directions(1, [0])),
                                                           1.0)]))
    far = write_cvec(tmp_path / "far.gguf", directions(1, [N_LAYER, N_LAYER + 3]))
    np.testing.assert_array_equal(engine_logits(model, LoadOptions(control_vectors=[(far, 1.0)])),
                                  engine_logits(model, LoadOptions()))


def test_bad_control_vectors_are_refused_in_one_line(model, tmp_path, capsys):
    v = directions(1, [1])
    bad = {
        "f16": (write_cvec(tmp_path / "f16.gguf", v, ttype=T.F16), "is not F32"),
        "name": (write_cvec(tmp_path / "name.gguf", v, names=["blk.1.weight"]), "is not direction.N"),
        "size": (write_cvec(tmp_path / "size.gguf", {1: np.ones(N_EMBD + 1, np.float32)}), "the model's n_embd is 64"),
        "empty": (write_cvec(tmp_path / "empty.gguf", {}), "no direction tensors"),
        "missing": (str(tmp_path / "none.gguf"), "no such file"),
    }
    for path, msg in bad.values():
        with pytest.raises(LlamapyError, match=msg):
            engine_logits(model, LoadOptions(control_vectors=[(path, 1.0)]))
    code, _, err = cli(capsys, "run", "-m", model, "-p", "ab", "-n", "2", "--control-vector", bad["f16"][0])
    assert code == 1 and err.strip().splitlines()[-1].startswith("error: control vector")
    code, _, err = cli(capsys, "run", "-m", model, "-p", "ab", "-n", "2", "--control-vector-scaled", bad["f16"][0],
                       "x")
    assert code == 1 and "the scale must be a number" in err


def test_run_with_control_vectors(model, tmp_path, capsys):
    """The options reach the engine: a strong vector changes what greedy decoding writes (scaled by 1, the
    same; by 0, nothing); the range 3 3 on a file of layer 1 only leaves the text as it was."""
    f = write_cvec(tmp_path / "a.gguf", {1: np.full(N_EMBD, 8.0, np.float32)})
    base = ["run", "-m", model, "-p", "ab", "-n", "8", "--temp", "0", "-no-cnv"]

    def text(*extra: str) -> tuple[str, str]:
        code, out, err = cli(capsys, *base, *extra)
        assert code == 0, err
        return out, err

    plain, _ = text()
    steered, err = text("--control-vector", f)
    assert steered != plain and "note:" not in err  # no "not supported" line any more
    assert text("--control-vector-scaled", f, "1")[0] == steered
    assert text("--control-vector-scaled", f, "0")[0] == plain
    assert text("--control-vector", f, "--control-vector-layer-range", "3", "3")[0] == plain
