"""llamapy pull against a local HTTP server that answers as the Hugging Face hub (and ModelScope) do."""
from __future__ import annotations

import hashlib
import json
import os
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from llamapy.cli import main
from llamapy.errors import LlamapyError
from llamapy.store.pull import RemoteFile, parse_ref, pick_gguf, pull
from llamapy.store.store import Store

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_gguf(n: int, seed: int) -> bytes:
    return b"GGUF" + np.random.default_rng(seed).integers(0, 256, n - 4, dtype=np.uint8).tobytes()


class Hub:
    """Repos of files; the handler serves the hub's revision API, resolve URLs with Range, and ModelScope's API.
    `cut` maps a file name to how many bytes of the next responses to send before dropping the connection;
    `lie` maps a file name to bytes served instead of the listed ones."""

    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.cut: dict[str, list[int]] = {}
        self.lie: dict[str, bytes] = {}
        self.log: list[tuple[str, str, str | None, str | None]] = []

    def siblings(self, repo: str) -> list[dict]:
        out = []
        for name, data in self.repos[repo].items():
            s = {"rfilename": name, "size": len(data), "blobId": hashlib.sha1(data).hexdigest()}
            if name.endswith(".gguf"):
                s["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            out.append(s)
        return out


def make_handler(hub: Hub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def send_json(self, doc, code=200):
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def not_found(self):
            self.send_json({"error": "Repository not found"}, 404)

        def do_HEAD(self):
            self.do_GET(head=True)

        def do_GET(self, head=False):
            u = urllib.parse.urlsplit(self.path)
            q = urllib.parse.parse_qs(u.query)
            path = urllib.parse.unquote(u.path)
            hub.log.append((self.command, self.path, self.headers.get("Range"), self.headers.get("Authorization")))
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "revision":
                repo = "/".join(parts[2:4])
                if repo not in hub.repos:
                    return self.not_found()
                assert q.get("blobs") == ["true"]
                return self.send_json({"id": repo, "sha": COMMIT, "siblings": hub.siblings(repo)})
            if parts[:3] == ["api", "v1", "models"] and parts[5:] == ["repo", "files"]:
                repo = "/".join(parts[3:5])
                if repo not in hub.repos:
                    return self.send_json({"Code": 10010205001, "Message": "model not found"}, 404)
                files = [{"Name": os.path.basename(n), "Path": n, "Size": len(d), "Type": "blob", "Revision": COMMIT,
                          "Sha256": hashlib.sha256(d).hexdigest()} for n, d in hub.repos[repo].items()]
                return self.send_json({"Code": 200, "Data": {"Files": files}})
            if parts[:3] == ["api", "v1", "models"] and parts[5:] == ["repo"]:
                return self.send_file("/".join(parts[3:5]), q["FilePath"][0], head)
            if len(parts) >= 5 and parts[2] == "resolve":
                assert parts[3] == COMMIT
                return self.send_file("/".join(parts[:2]), "/".join(parts[4:]), head)
            self.not_found()

        def send_file(self, repo, name, head):
            files = hub.repos.get(repo, {})
            if name not in files:
                return self.not_found()
            data = hub.lie.get(name, files[name])
            start = 0
            rng = self.headers.get("Range")
            if rng:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
            self.send_header("X-Linked-Etag", f'"{hashlib.sha256(files[name]).hexdigest()}"')
            self.send_header("X-Linked-Size", str(len(files[name])))
            self.send_header("X-Repo-Commit", COMMIT)
            self.end_headers()
            if head:
                return
            cuts = hub.cut.get(name)
            if cuts:
                n = cuts.pop(0)
                self.wfile.write(data[start:start + n])
                self.wfile.flush()
                self.close_connection = True
                import socket
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(data[start:])
    return Handler


@pytest.fixture
def hub(monkeypatch, tmp_path):
    h = Hub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(h))
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("MODELSCOPE_DOMAIN", url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("LLAMAPY_MODELS", str(tmp_path / "models"))
    yield h
    server.shutdown()
    server.server_close()
    t.join()


QUANTS = {"README.md": b"# a model\n", "tiny.Q2_K.gguf": fake_gguf(50_000, 1), "tiny.Q4_K_M.gguf": fake_gguf(300_000, 2),
          "tiny.Q8_0.gguf": fake_gguf(80_000, 3), "mmproj-tiny-f16.gguf": fake_gguf(10_000, 4)}


def stored_bytes(name: str) -> bytes:
    with open(Store().model_path(name), "rb") as f:
        return f.read()


def leftovers(store: Store) -> list[str]:
    return [f for f in os.listdir(store.blobs) if not f.startswith("sha256-")] if os.path.isdir(store.blobs) else []


def test_pull_a_quant_by_name(hub, monkeypatch):
    hub.repos["me/tiny-GGUF"] = dict(QUANTS)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    name = pull("hf.co/me/tiny-GGUF:q8_0")
    assert str(name) == "hf.co/me/tiny-GGUF:q8_0"
    assert stored_bytes("hf.co/me/tiny-GGUF:q8_0") == QUANTS["tiny.Q8_0.gguf"]
    gets = [e for e in hub.log if "/resolve/" in e[1]]
    assert [e[1] for e in gets] == [f"/me/tiny-GGUF/resolve/{COMMIT}/tiny.Q8_0.gguf"]
    assert all(e[3] == "Bearer hf_secret" for e in hub.log)  # HF_TOKEN goes with every request
    assert leftovers(Store()) == []
    from llamapy.store.locate import resolve_model
    assert resolve_model("hf.co/me/tiny-GGUF:q8_0") == Store().model_path("hf.co/me/tiny-GGUF:q8_0")


def test_without_a_quant_q4_k_m_then_the_first_gguf(hub):
    hub.repos["me/tiny-GGUF"] = dict(QUANTS)
    assert str(pull("huggingface.co/me/tiny-GGUF")) == "hf.co/me/tiny-GGUF:latest"
    assert stored_bytes("hf.co/me/tiny-GGUF") == QUANTS["tiny.Q4_K_M.gguf"]
    hub.repos["me/other"] = {"b.Q8_0.gguf": fake_gguf(1000, 5), "a.F16.gguf": fake_gguf(2000, 6)}
    pull("https://hf.co/me/other")
    assert stored_bytes("hf.co/me/other:latest") == hub.repos["me/other"]["a.F16.gguf"]


def test_a_cut_connection_is_resumed_with_a_range_request(hub):
    hub.repos["me/tiny-GGUF"] = dict(QUANTS)
    hub.cut["tiny.Q4_K_M.gguf"] = [100_000, 50_000]
    pull("hf.co/me/tiny-GGUF:Q4_K_M")
    assert stored_bytes("hf.co/me/tiny-GGUF:Q4_K_M") == QUANTS["tiny.Q4_K_M.gguf"]
    ranges = [e[2] for e in hub.log if "/resolve/" in e[1]]
    assert ranges == [None, "bytes=100000-", "bytes=150000-"]
    assert leftovers(Store()) == []


def test_an_interrupted_pull_resumes_in_the_next_run(hub, capsys):
    hub.repos["me/tiny-GGUF"] = dict(QUANTS)
    hub.cut["tiny.Q4_K_M.gguf"] = [120_000, 0]
    with pytest.raises(LlamapyError, match=r"interrupted at 120000 of 300000 bytes .*run the same pull again"):
        pull("hf.co/me/tiny-GGUF:Q4_K_M", retries=1)
    store = Store()
    assert store.entries() == [] and len(leftovers(store)) == 1  # the partial file stays
    hub.log.clear()
    with pytest.raises(SystemExit) as done:
        main(["pull", "hf.co/me/tiny-GGUF:Q4_K_M"])
    assert not done.value.code
    assert capsys.readouterr().out.strip() == "pulled hf.co/me/tiny-GGUF:Q4_K_M"
    assert [e[2] for e in hub.log if "/resolve/" in e[1]] == ["bytes=120000-"]
    assert stored_bytes("hf.co/me/tiny-GGUF:Q4_K_M") == QUANTS["tiny.Q4_K_M.gguf"]
    assert leftovers(store) == []


def test_a_bad_hash_is_refused_and_nothing_is_left(hub):
    hub.repos["me/tiny-GGUF"] = dict(QUANTS)
    bad = bytearray(QUANTS["tiny.Q8_0.gguf"])
    bad[5000] ^= 0xFF
    hub.lie["tiny.Q8_0.gguf"] = bytes(bad)
    with pytest.raises(LlamapyError, match="sha256 mismatch .*nothing stored"):
        pull("hf.co/me/tiny-GGUF:Q8_0")
    store = Store()
    assert store.entries() == [] and os.listdir(store.blobs) == []


def test_modelscope(hub):
    hub.repos["qwen/Tiny-GGUF"] = {"sub/tiny-q4_k_m.gguf": fake_gguf(40_000, 7), "tiny-q8_0.gguf": fake_gguf(9000, 8)}
    hub.cut["sub/tiny-q4_k_m.gguf"] = [10_000]
    assert str(pull("modelscope.cn/qwen/Tiny-GGUF:Q4_K_M")) == "modelscope.cn/qwen/Tiny-GGUF:Q4_K_M"
    assert stored_bytes("modelscope.cn/qwen/Tiny-GGUF:Q4_K_M") == hub.repos["qwen/Tiny-GGUF"]["sub/tiny-q4_k_m.gguf"]
    assert [e[2] for e in hub.log if "FilePath=" in e[1]] == [None, "bytes=10000-"]


@pytest.mark.parametrize("ref, message", [
    ("hf.co/me/nosuch", "hf.co/me/nosuch: not found (HTTP 404)"),
    ("hf.co/me/tiny-GGUF:Q4_K", "no GGUF file for 'Q4_K' (the repository has: tiny.Q2_K.gguf, tiny.Q4_K_M.gguf"),
    ("hf.co/me/text-only", "no GGUF file in this repository"),
    ("hf.co/me/split:Q4_K_M", "split GGUF files are not supported yet"),
    ("github.com/me/x", "pull takes hf.co/USER/REPO[:QUANT]"),
    ("hf.co/me", "the repository must be USER/REPO"),
    ("hf.co/me/../x", "the repository must be USER/REPO"),
    ("hf.co/me/x:a/b", "is not a quantization tag"),
])
def test_errors_are_one_line(hub, ref, message):
    hub.repos["me/tiny-GGUF"] = dict(QUANTS)
    hub.repos["me/text-only"] = {"model.safetensors": b"x"}
    hub.repos["me/split"] = {"m-Q4_K_M-00001-of-00002.gguf": fake_gguf(100, 9)}
    with pytest.raises(LlamapyError) as e:
        pull(ref)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_an_unreachable_hub_says_which_host_and_about_mirrors(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("LLAMAPY_MODELS", str(tmp_path / "models"))
    with pytest.raises(LlamapyError, match=r"can't reach 127.0.0.1:9: .*\(set HF_ENDPOINT for a mirror\)"):
        pull("hf.co/me/x")


def test_parse_ref_and_pick():
    assert parse_ref("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:IQ4_XS").store_name() == \
        "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:IQ4_XS"
    files = [RemoteFile(n, 1, None, "") for n in ("m-IQ4_XS.gguf", "m-Q4_XS.gguf", "m-Q4_K_S.gguf", "m-Q4_K_M.gguf")]
    assert pick_gguf(files, "iq4_xs", "r").path == "m-IQ4_XS.gguf"
    assert pick_gguf(files, "Q4_XS", "r").path == "m-Q4_XS.gguf"  # not the IQ4_XS file
    assert pick_gguf(files, None, "r").path == "m-Q4_K_M.gguf"


def test_file_names_from_the_hub_are_escaped_in_errors(hub):
    hub.repos["me/evil"] = {"evil\x1b[2J.Q8_0.gguf": fake_gguf(100, 10)}
    with pytest.raises(LlamapyError) as e:
        pull("hf.co/me/evil:Q2_K")
    assert "\x1b" not in str(e.value) and "evil\\x1b[2J.Q8_0.gguf" in str(e.value)


def test_more_bytes_than_listed_or_not_a_gguf_is_refused(hub):
    hub.repos["me/tiny-GGUF"] = dict(QUANTS)
    hub.lie["tiny.Q8_0.gguf"] = QUANTS["tiny.Q8_0.gguf"] + b"extra"
    with pytest.raises(LlamapyError, match="more bytes than the hub lists; nothing stored"):
        pull("hf.co/me/tiny-GGUF:Q8_0")
    html = b"<html>" + bytes(1000)
    hub.repos["me/page"] = {"x.Q8_0.gguf": html}  # the listing's sha256 is the page's own: only the magic is wrong
    with pytest.raises(LlamapyError, match="not a GGUF file; nothing stored"):
        pull("hf.co/me/page:Q8_0")
    store = Store()
    assert store.entries() == [] and os.listdir(store.blobs) == []
