"""Output files and process ends: no partial file left by SIGTERM/SIGHUP (and stale ones removed), the
umask and an existing file's mode honoured, symlinks written through; deep JSON, huge numbers and closed
pipes end in one line (or quietly), never a traceback."""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time

import pytest
from test_convert_util import TINY, hf_config, meta_params, meta_to_hf, meta_weights, save_hf, save_meta
from test_safe_output import tiny_model

from llamapy.convert import convert
from llamapy.errors import LlamapyError
from llamapy.ggufio.reader import GGUFReader
from llamapy.util.fileio import atomic_write, remove_stale_parts

DEAD_PID = 4_194_304 + 12_345  # above Linux's largest pid_max: never a running process


def llamapy(*args, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "llamapy", *args], capture_output=True, text=True, timeout=timeout,
                          **kw)


def parts(d) -> list[str]:
    return sorted(n for n in os.listdir(d) if n.endswith(".part"))


# --- signals -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_f32(tmp_path_factory):
    """A model whose quantization takes a while (long enough to be signalled mid-write)."""
    from test_quantize import make_model

    return make_model(tmp_path_factory.mktemp("big") / "big.gguf", n_layer=6)


def _signal_mid_write(cmd: list[str], out_dir, sig: int, cwd=None) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-m", "llamapy", *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=cwd)
    deadline = time.monotonic() + 120
    while not [p for p in parts(out_dir) if p.startswith(f".llamapy-{proc.pid}-")]:
        assert proc.poll() is None, f"finished before it could be signalled: {proc.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_quantize_signalled_leaves_no_partial_file(tmp_path, big_f32, sig):
    r = _signal_mid_write(["quantize", str(big_f32), str(tmp_path / "q.gguf"), "Q4_K_M", "1"], tmp_path, sig)
    assert r.returncode == 128 + sig, r.stderr
    assert "Traceback" not in r.stderr
    assert parts(tmp_path) == [] and not (tmp_path / "q.gguf").exists()


def test_convert_signalled_leaves_no_partial_file(tmp_path, spm_model, vocab_n):
    hp = {**TINY, "dim": 512, "n_layers": 16, "n_heads": 8, "n_kv_heads": 8, "ffn": 1376}  # ~50M weights
    d = tmp_path / "m"
    save_hf(d, meta_to_hf(meta_weights(vocab_n, seed=2, hp=hp), hp), hf_config(vocab_n, hp))
    shutil.copy(spm_model, d / "tokenizer.model")
    out = tmp_path / "out"
    out.mkdir()
    r = _signal_mid_write(["convert", str(d), "--outtype", "q8_0", "--outfile", str(out / "o.gguf")], out,
                          signal.SIGTERM)
    assert r.returncode == 143, r.stderr
    assert "Traceback" not in r.stderr
    assert parts(out) == [] and not (out / "o.gguf").exists()


def test_stale_partial_files_are_removed_by_the_next_write(tmp_path):
    stale = tmp_path / f".llamapy-{DEAD_PID}-abc123.part"
    live = tmp_path / f".llamapy-{os.getpid()}-def456.part"  # a writer that is still running: kept
    other = tmp_path / ".llamapy-notapid.part"
    for p in (stale, live, other):
        p.write_bytes(b"half")
    src = tiny_model(tmp_path / "m.gguf")
    r = llamapy("quantize", str(src), str(tmp_path / "q.gguf"), "Q8_0")
    assert r.returncode == 0, r.stderr
    assert not stale.exists() and live.exists() and other.exists()
    assert remove_stale_parts(str(tmp_path)) == []


# --- permissions --------------------------------------------------------------------------------------------


def _umask(mask):
    return lambda: os.umask(mask)


def test_new_output_honours_the_umask(tmp_path):
    src = tiny_model(tmp_path / "m.gguf")
    r = subprocess.run([sys.executable, "-m", "llamapy", "quantize", str(src), str(tmp_path / "q.gguf"), "Q8_0"],
                       capture_output=True, text=True, timeout=300, preexec_fn=_umask(0o077))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(tmp_path / "q.gguf").st_mode) == 0o600
    with atomic_write(tmp_path / "plain.bin") as f:  # and under this process's umask
        f.write(b"x")
    assert stat.S_IMODE(os.stat(tmp_path / "plain.bin").st_mode) == 0o666 & ~_current_umask()


def _current_umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


def test_replacing_a_file_keeps_its_mode(tmp_path):
    src = tiny_model(tmp_path / "m.gguf")
    out = tmp_path / "q.gguf"
    out.write_bytes(b"old")
    os.chmod(out, 0o600)
    r = subprocess.run([sys.executable, "-m", "llamapy", "quantize", str(src), str(out), "Q8_0"],
                       capture_output=True, text=True, timeout=300, preexec_fn=_umask(0o022))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    with GGUFReader(out) as g:
        assert g.tensors["blk.0.attn_q.weight"].type_name == "Q8_0"


def test_a_symlinked_output_is_written_through(tmp_path):
    src = tiny_model(tmp_path / "m.gguf")
    (tmp_path / "store").mkdir()
    target = tmp_path / "store" / "real.gguf"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    link = tmp_path / "link.gguf"
    link.symlink_to(target)
    r = llamapy("quantize", str(src), str(link), "Q8_0")
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    with GGUFReader(target) as g:
        assert g.tensors["blk.0.attn_q.weight"].type_name == "Q8_0"
    assert parts(tmp_path / "store") == [] and parts(tmp_path) == []


# --- deep JSON, huge numbers, closed pipes ---------------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, spm_model, vocab_n):
    d = tmp_path_factory.mktemp("hf") / "model"
    save_hf(d, meta_to_hf(meta_weights(vocab_n, seed=3)), hf_config(vocab_n))
    shutil.copy(spm_model, d / "tokenizer.model")
    return d


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("file", ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors",
                                  "--metadata"])
def test_deeply_nested_json_is_one_line(tmp_path, hf_dir, file):
    d = _copy(hf_dir, tmp_path / "m")
    kw = {}
    if file == "model.safetensors":
        raw = DEEP.encode()
        (d / file).write_bytes(struct.pack("<Q", len(raw)) + raw)
    elif file == "--metadata":
        (tmp_path / "meta.json").write_text(DEEP)
        kw["metadata"] = tmp_path / "meta.json"
    else:
        (d / file).write_text(DEEP)
    with pytest.raises(LlamapyError) as e:
        convert(d, tmp_path / "o.gguf", "f32", **kw)
    assert "\n" not in str(e.value) and len(str(e.value)) < 1000
    assert not (tmp_path / "o.gguf").exists()


def test_deeply_nested_params_json_is_one_line(tmp_path, spm_model, vocab_n):
    d = save_meta(tmp_path / "m", meta_weights(vocab_n, seed=1), meta_params())
    (d / "params.json").write_text(DEEP)
    shutil.copy(spm_model, d / "tokenizer.model")
    r = llamapy("convert", str(d), "--outfile", str(tmp_path / "o.gguf"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"error: {d / 'params.json'}: not valid JSON (nested too deeply)")


@pytest.mark.parametrize("opt", ["-c", "--top-k", "--repeat-last-n"])
def test_numbers_beyond_int32_are_one_line(default_model, opt):
    r = llamapy("run", "-m", default_model, "-p", "hi", "-n", "1", opt, "10000000000")
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in r.stderr


def test_absurd_thread_counts_are_capped_with_a_warning(default_model):
    r = llamapy("run", "-m", default_model, "-p", "hi", "-n", "1", "-t", "10000000000")
    assert r.returncode == 0, r.stderr
    limit = 4 * (os.cpu_count() or 1)
    assert f"warning: -t 10000000000 is more than 4 threads per CPU core ({os.cpu_count()} cores); using {limit}" \
        in r.stderr
    assert f"n_threads = {limit}" in r.stderr


@pytest.mark.parametrize("args", [["info"], ["info", "--json"], ["tokenize", "-p", "hello world " * 50],
                                  ["run", "-p", "Once upon a time", "-n", "40", "--temp", "0"]],
                         ids=["info", "info-json", "tokenize", "run"])
def test_a_closed_output_pipe_ends_quietly_with_status_0(default_model, args):
    cmd = [sys.executable, "-m", "llamapy", *args, *(["-m", default_model] if args[0] != "info" else [default_model])]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(5)
    p.stdout.close()  # the reader is done, as `| head -c 5`
    err = p.stderr.read().decode()
    assert p.wait(120) == 0, err
    assert "Traceback" not in err and "Broken pipe" not in err


def test_atomic_write_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "x.bin") as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    assert json.dumps(parts(tmp_path)) == "[]"
