"""`llamapy run`, `perplexity` and `bench` on the default model, held to the reference's results."""
from __future__ import annotations

import json

import pytest
from cliutil import cli
from conftest import shared_path

from llamapy.native import kernels_active

PROMPT = "The capital of France is"


def test_greedy_continues_with_paris(default_model, capsys):
    code, out, err = cli(capsys, "run", "-p", PROMPT, "-n", "8", "--temp", "0")
    assert code == 0
    assert out.startswith(PROMPT + " Paris.")
    assert "prompt eval time" in err and "eval time" in err and "load time" in err


def test_greedy_is_deterministic_and_prompt_can_be_hidden(default_model, capsys):
    _, a, _ = cli(capsys, "run", "-p", PROMPT, "-n", "6", "--temp", "0", "--no-display-prompt", "-t", "1")
    _, b, _ = cli(capsys, "run", "-p", PROMPT, "-n", "6", "--temp", "0", "--no-display-prompt", "-t", "2")
    assert a == b and a.startswith(" Paris.")


def test_seed_gives_the_reference_text(default_model, capsys):
    """With the reference's logits (AVX2 kernels sum as it does) and its generator, a seed gives its text:
    `llama-cli -p "Once upon a time" -n 40 -s 42 -no-cnv` prints this."""
    if kernels_active() != "avx2+fma+f16c":
        pytest.skip("bit-exact logits need the AVX2 kernels")
    code, out, _ = cli(capsys, "run", "-p", "Once upon a time", "-n", "24", "-s", "42")
    assert code == 0
    assert out.startswith("Once upon a time, it was thought that the universe was governed by a single, "
                          "deterministic equation known as the eternal arrow")


def test_same_seed_same_text(default_model, capsys):
    args = ("run", "-p", "Once upon a time", "-n", "10", "-s", "7", "--temp", "1.1", "--top_k", "100",
            "--repeat_penalty", "1.2", "--repeat_last_n", "32", "--ctx_size", "256", "--n_predict", "10")
    _, a, _ = cli(capsys, *args)
    _, b, _ = cli(capsys, *args)
    assert a == b and len(a) > len("Once upon a time")


def test_options_from_tutorials(default_model, capsys, tmp_path):
    f = tmp_path / "prompt.txt"
    f.write_text("Q: What is 2+2?\\nA:\n")
    code, out, err = cli(capsys, "run", "-f", str(f), "-n", "3", "--temp", "0", "-ngl", "99", "--color",
                         "--mirostat", "2", "--mirostat-lr", "0.05", "--mirostat-ent", "4", "--keep", "-1",
                         "--verbose-prompt", "--logit-bias", "15043+1", "-b", "64")
    assert code == 0, err
    assert err.count("llamapy runs on the CPU") == 1
    assert "\x1b[33mQ: What is 2+2?\nA:\x1b[0m" in out  # -e processed the escape, the prompt is coloured
    assert "number of tokens in prompt" in err
    code, out, err = cli(capsys, "run", "-f", str(f), "-n", "1", "--temp", "0", "--no-escape")
    assert out.startswith("Q: What is 2+2?\\nA:")


def test_prompt_too_long(default_model, capsys):
    code, out, err = cli(capsys, "run", "-p", "word " * 40, "-c", "16", "-n", "4")
    assert code == 1
    assert "error: prompt is too long (" in err and "max 12)" in err
    assert "Traceback" not in err


def test_bad_options(default_model, capsys):
    code, _, err = cli(capsys, "run", "-p", "x", "--logit-bias", "abc", "-n", "1")
    assert code == 1 and "--logit-bias 'abc'" in err
    code, _, err = cli(capsys, "run", "-p", "x", "-n", "-3")
    assert code == 1 and "-n -3" in err
    code, _, err = cli(capsys, "run", "-m", "no-such-file.gguf", "-p", "x")
    assert code == 1 and "no-such-file.gguf" in err


def test_context_full_with_n_predict_minus_2(default_model, capsys):
    code, out, _ = cli(capsys, "run", "-p", PROMPT, "-n", "-2", "-c", "24", "--temp", "0", "--ignore-eos")
    assert code == 0 and out.startswith(PROMPT + " Paris.")
    assert "[end of text]" not in out


def test_perplexity_matches_the_reference(default_model, capsys):
    text = shared_path("testdata", "text", "python-license.txt")
    code, out, err = cli(capsys, "perplexity", "-f", str(text), "-c", "128")
    assert code == 0, err
    assert out.startswith("[1]")
    final = [line for line in out.splitlines() if line.startswith("Final estimate: PPL = ")]
    ppl = float(final[0].split("=")[1].split("+/-")[0])
    assert abs(ppl - 14.3415) / 14.3415 < 0.005  # the reference: 14.3415 (29 chunks)
    assert "[29]" in out and "[30]" not in out


def test_perplexity_needs_two_chunks(default_model, capsys, tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("Too short to score. " * 5)
    code, _, err = cli(capsys, "perplexity", "-f", str(f), "-c", "128")
    assert code == 1 and "you need at least 256 tokens" in err


def test_bench_table_and_json(default_model, capsys):
    code, out, _ = cli(capsys, "bench", "-p", "16", "-n", "4", "-r", "2", "-t", "2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split("|")[1:-1] == [" model                          ", "       size ", "     params ",
                                         " backend    ", " threads ", "          test ", "                  t/s "]
    assert "pp16" in lines[2] and "tg4" in lines[3] and "llama ?B Q4_1" in lines[2] and " ± " in lines[2]
    code, out, _ = cli(capsys, "bench", "-p", "0", "-n", "3", "-r", "1", "-o", "json")
    recs = json.loads(out)
    assert len(recs) == 1 and recs[0]["n_prompt"] == 0 and recs[0]["n_gen"] == 3
    assert recs[0]["model_type"] == "llama ?B Q4_1" and len(recs[0]["samples_ts"]) == 1


def test_bench_pg_is_one_combined_test(default_model, capsys):
    """-pg P,N (llama-bench's combined test): after the -p/-n tests, one row timing a prompt of P then N
    generated, its t/s over P + N tokens; repeatable; a malformed pair is one line and a non-zero exit."""
    code, out, _ = cli(capsys, "bench", "-p", "0", "-n", "0", "-pg", "8,2", "-pg", "4,1", "-r", "1", "-o", "json")
    assert code == 0
    recs = json.loads(out)
    assert [(r["n_prompt"], r["n_gen"]) for r in recs] == [(8, 2), (4, 1)]
    assert abs(recs[0]["avg_ts"] - 10 * 1e9 / recs[0]["avg_ns"]) < 1e-6 * recs[0]["avg_ts"]
    code, out, _ = cli(capsys, "bench", "-p", "4", "-n", "0", "-pg", "8,2", "-r", "1")
    assert code == 0 and "pp4 " in out and "pp8+tg2" in out
    for bad in ("8", "8,x", "8,-1", "1,2,3"):
        code, _, err = cli(capsys, "bench", "-p", "0", "-n", "0", "-pg", bad, "-r", "1")
        assert code != 0 and err.strip().count("\n") == 0 and "-pg" in err and "Traceback" not in err


def test_read_bandwidth_measure():
    """The roofline's bandwidth (benchmarks/bench_engine.py): a positive rate, and -1 for arguments it refuses."""
    from llamapy.native import lib

    assert lib.lp_read_bandwidth(2, 1 << 20, 2) > 0.1
    assert lib.lp_read_bandwidth(0, 1 << 20, 2) == -1 and lib.lp_read_bandwidth(1, 1 << 20, 0) == -1
    assert lib.lp_read_bandwidth(1, 100, 1) == -1


def test_generation_runs_past_the_context_by_shifting(default_model, capsys):
    """-n 60 with -c 32: the context fills and shifts (half of what follows --keep dropped) and goes on."""
    args = ("run", "-p", PROMPT, "-n", "60", "-c", "32", "--temp", "0", "--ignore-eos", "--keep", "2")
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    assert out.startswith(PROMPT + " Paris.")
    assert "eval time =" in err and "/    59 runs" in err  # every generated token but the last was evaluated
    assert cli(capsys, *args)[1] == out
