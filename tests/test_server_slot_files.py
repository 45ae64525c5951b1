"""llama-server's slot save / restore / erase through the HTTP API (`--slot-save-path`)."""
from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from serverutil import free_port, stop, wait_for_health

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle. It begins:"


def _serve(extra: list[str]):
    port = free_port()
    cmd = [sys.executable, "-m", "llamapy", "serve", "--port", str(port), "-np", "2", "-c", "512", "-t", "2", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_for_health(proc, url, 180, "llamapy serve")
    return proc, url


@pytest.fixture(scope="module")
def server(default_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("slots") / "saved"  # created by the server
    proc, url = _serve(["--slot-save-path", str(folder)])
    yield url, folder
    stop(proc)


def _complete(c, slot: int) -> dict:
    r = c.post("/completion", json={"prompt": PROMPT, "n_predict": 12, "temperature": 0, "id_slot": slot,
                                    "cache_prompt": True})
    assert r.status_code == 200, r.text
    return r.json()


def test_save_erase_restore_continue(server):
    url, folder = server
    with httpx.Client(base_url=url, timeout=120) as c:
        first = _complete(c, 0)
        n_cached = first["tokens_cached"]
        r = c.post("/slots/0?action=save", json={"filename": "story.bin"})
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["id_slot"] == 0 and d["filename"] == "story.bin" and d["n_saved"] == n_cached
        assert d["n_written"] == (folder / "story.bin").stat().st_size and d["timings"]["save_ms"] >= 0
        r = c.post("/slots/0?action=erase")
        assert r.status_code == 200 and r.json() == {"id_slot": 0, "n_erased": n_cached}
        # restored into the other slot: the prompt is found there, only the last token is evaluated again
        r = c.post("/slots/1?action=restore", json={"filename": "story.bin"})
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["id_slot"] == 1 and d["n_restored"] == n_cached and d["n_read"] == (folder / "story.bin").stat().st_size
        assert "restore_ms" in d["timings"]
        again = _complete(c, 1)
        assert again["timings"]["prompt_n"] == 1
        assert again["content"] == first["content"]
        # the erased slot evaluates the whole prompt
        third = _complete(c, 0)
        assert third["timings"]["prompt_n"] == first["timings"]["prompt_n"] > 1


@pytest.mark.parametrize("name", ["../escape.bin", "..", "a/b.bin", "/etc/passwd", "x\\y", "", " lead", "dot.",
                                  "a\u2215b", "ctl\x01"])
def test_a_filename_that_could_leave_the_folder_is_refused(server, name):
    url, folder = server
    with httpx.Client(base_url=url, timeout=60) as c:
        for action in ("save", "restore"):
            r = c.post(f"/slots/0?action={action}", json={"filename": name})
            assert r.status_code == 400, (name, action, r.text)
            assert r.json()["error"]["message"] == "Invalid filename"
    assert not (folder.parent / "escape.bin").exists()


def test_bad_requests(server):
    url, folder = server
    with httpx.Client(base_url=url, timeout=60) as c:
        assert c.post("/slots/0?action=fly", json={"filename": "a"}).status_code == 400
        assert c.post("/slots/x?action=save", json={"filename": "a"}).json()["error"]["message"] == "Invalid slot ID"
        assert c.post("/slots/7?action=erase").status_code == 400
        assert c.post("/slots/0?action=save", json={}).status_code == 400
        assert c.post("/slots/0?action=save", content=b"{nope").status_code == 400
        r = c.post("/slots/0?action=restore", json={"filename": "missing.bin"})
        assert r.status_code == 400 and "Unable to restore slot" in r.json()["error"]["message"]
        assert str(folder) not in r.text  # the answer names the file, not the server's folder


def test_a_corrupt_or_truncated_file_is_a_400_and_an_empty_slot(server):
    url, folder = server
    with httpx.Client(base_url=url, timeout=120) as c:
        _complete(c, 0)
        assert c.post("/slots/0?action=save", json={"filename": "good.bin"}).status_code == 200
        data = (folder / "good.bin").read_bytes()
        (folder / "cut.bin").write_bytes(data[:len(data) // 2])
        flipped = bytearray(data)
        flipped[len(data) - 10] ^= 0xFF
        (folder / "flip.bin").write_bytes(bytes(flipped))
        (folder / "junk.bin").write_bytes(b"LPYSTATE" + b"\xff" * 200)
        for name, words in (("cut.bin", "cut short"), ("flip.bin", "checksum"), ("junk.bin", "version")):
            r = c.post("/slots/1?action=restore", json={"filename": name})
            assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
            assert c.post("/slots/1?action=erase").json()["n_erased"] == 0  # the slot was left empty
        assert c.get("/health").status_code == 200


def test_without_a_save_path_the_action_is_refused(default_model):
    proc, url = _serve([])
    try:
        r = httpx.post(url + "/slots/0?action=save", json={"filename": "a.bin"}, timeout=30)
        assert r.status_code == 501
        assert r.json()["error"]["message"] == ("This server does not support slots action. Start it with "
                                                "`--slot-save-path`")
        assert r.json()["error"]["type"] == "not_supported_error"
    finally:
        stop(proc)
