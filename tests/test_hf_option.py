"""llama.cpp's `-hf USER/REPO[:QUANT]` / `-hff FILE` in run, chat and serve: the GGUF is pulled from the hub
(the local fake hub of test_pull) into the store the first time, then used from the store without asking again."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_pull import QUANTS, hub  # noqa: F401  (the fake hub fixture)

from llamapy.errors import LlamapyError
from llamapy.store.pull import hf_model
from llamapy.store.store import Store

ROOT = Path(__file__).resolve().parent.parent


def hub_requests(h) -> int:
    return len(h.log)


def test_pulled_once_then_taken_from_the_store(hub):  # noqa: F811
    hub.repos["me/tiny-GGUF"] = dict(QUANTS)
    p = hf_model("me/tiny-GGUF:Q8_0")
    with open(p, "rb") as f:
        assert f.read() == QUANTS["tiny.Q8_0.gguf"]
    assert Store().find("hf.co/me/tiny-GGUF:Q8_0") is not None
    seen = hub_requests(hub)
    assert hf_model("me/tiny-GGUF:Q8_0") == p and hub_requests(hub) == seen  # no second download, no listing
    # -hff: that file, stored under a tag of its name
    q = hf_model("me/tiny-GGUF", "tiny.Q2_K.gguf")
    with open(q, "rb") as f:
        assert f.read() == QUANTS["tiny.Q2_K.gguf"]
    assert Store().find("hf.co/me/tiny-GGUF:tiny.Q2_K") is not None
    with pytest.raises(LlamapyError, match="no file 'nosuch.gguf'"):
        hf_model("me/tiny-GGUF", "nosuch.gguf")
    with pytest.raises(LlamapyError, match="USER/REPO"):
        hf_model("not-a-repo")


def run(args, env=None):
    return subprocess.run([sys.executable, "-m", "llamapy", *args], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, **(env or {})), timeout=300)


def test_run_with_hf_downloads_once(hub, default_model):  # noqa: F811
    with open(default_model, "rb") as f:
        hub.repos["me/smol-GGUF"] = {"smol.Q4_1.gguf": f.read()}
    r = run(["run", "-hf", "me/smol-GGUF:Q4_1", "-p", "Hello", "-n", "3", "--temp", "0"])
    assert r.returncode == 0, r.stderr
    assert "pulling smol.Q4_1.gguf" in r.stderr
    seen = hub_requests(hub)
    again = run(["run", "-hf", "me/smol-GGUF:Q4_1", "-p", "Hello", "-n", "3", "--temp", "0"])
    assert again.returncode == 0 and again.stdout == r.stdout and hub_requests(hub) == seen
    assert "pulling" not in again.stderr
    for args, msg in ((["-hff", "smol.Q4_1.gguf"], "give -hf USER/REPO too"),
                      (["-hf", "me/smol-GGUF", "-m", default_model], "not both"),
                      (["-hf", "me/nosuch-GGUF"], "not found")):
        r = run(["run", *args, "-p", "x", "-n", "1"])
        assert r.returncode == 1 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
