"""`llamapy info` and the CLI's error handling, run as a user would (a subprocess)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


def llamapy(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "llamapy", *args], capture_output=True, text=True, timeout=timeout)


def test_info_default_model(default_model):
    r = llamapy("info", "--json", default_model)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["n_tensors"] == 272
    assert d["tensor_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert abs(d["n_params"] - 134.5e6) < 0.1e6
    assert d["metadata"]["general.architecture"] == "llama"
    assert d["metadata"]["tokenizer.ggml.tokens"]["length"] == 49152


def test_info_without_m_uses_default_model(default_model):
    r = llamapy("info", "--no-tensors")
    assert r.returncode == 0, r.stderr
    assert "272 tensors (Q4_1 x210, F32 x61, Q8_0 x1)" in r.stdout.replace("\n", " ")


def test_info_system_names_kernels():
    r = llamapy("info", "--system")
    assert r.returncode == 0, r.stderr
    assert "kernels_active:" in r.stdout
    v = llamapy("--version")
    assert v.returncode == 0 and "kernels:" in v.stdout


@pytest.mark.parametrize(
    "content,expected",
    [
        (b"", "empty file"),
        (b"not a model at all", "not a GGUF file"),
        (b"GGUF\x03\x00\x00\x00" + b"\xff" * 16, "can't fit"),
    ],
)
def test_info_bad_file_one_line(tmp_path, content, expected):
    p = tmp_path / "bad.gguf"
    p.write_bytes(content)
    r = llamapy("info", str(p))
    assert r.returncode == 1
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and str(p) in lines[0]
    assert "Traceback" not in r.stderr


def test_info_missing_file(tmp_path):
    r = llamapy("info", str(tmp_path / "nope.gguf"))
    assert r.returncode == 1 and "no such" in r.stderr and "Traceback" not in r.stderr


def test_unknown_flag_is_usage_error():
    r = llamapy("info", "--no-such-flag")
    assert r.returncode == 2 and "No such option" in r.stderr
