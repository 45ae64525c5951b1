"""`llamapy serve` (the default model, no API key) against hostile input: chat templates that loop, allocate
or recurse, slow and silent sockets past the descriptor limit, large valid requests, out-of-range numbers.
Throughout, /health must keep answering within a second; the server must still stop on SIGTERM."""
from __future__ import annotations

import json
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serverutil import free_port, send_on_chat_page, stop, wait_for_health  # noqa: E402
from test_server import browser  # noqa: E402,F401 - the headless Chromium fixture

TRAP = """{% for m in messages %}
{% if m.content == 'loop' %}{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}
{% elif m.content == 'double' %}{% set ns = namespace(s='x') %}{% for i in range(36) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}
{% elif m.content == 'multiply' %}{{ 'x' * 10**10 }}
{% elif m.content == 'range' %}{% for i in range(10**9) %}{% endfor %}
{% elif m.content == 'recurse' %}{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}
{% endif %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
FD_LIMIT = 256


def _start(tmp_path, *extra: str, fd_limit: int | None = None) -> tuple[subprocess.Popen, str]:
    tpl = tmp_path / "trap.jinja"
    tpl.write_text(TRAP)
    port = free_port()

    def limit():
        if fd_limit:
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    cmd = [sys.executable, "-m", "llamapy", "serve", "--port", str(port), "-c", "1024", "--chat-template-file",
           str(tpl), *extra]
    log = open(tmp_path / "serve.log", "w+")  # a file, not a pipe nobody reads: a full pipe would block the server
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, text=True, preexec_fn=limit)
    url = f"http://127.0.0.1:{port}"
    wait_for_health(proc, url, 120, "llamapy serve", log=log, pause=0.1)
    return proc, url


@pytest.fixture(scope="module")
def server(default_model, tmp_path_factory):
    proc, url = _start(tmp_path_factory.mktemp("hostile"), "--read-timeout", "1", fd_limit=FD_LIMIT)
    yield url
    stop(proc)


class HealthWatch:
    """Polls /health in a thread while a test runs; `worst` is the slowest answer (s), None if one failed."""

    def __init__(self, url: str):
        self.url, self.worst, self.ok, self.stop = url, 0.0, True, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with httpx.Client(timeout=5) as c:
            while not self.stop.is_set():
                t0 = time.monotonic()
                try:
                    self.ok &= c.get(self.url + "/health").status_code == 200
                except httpx.HTTPError:
                    self.ok = False
                self.worst = max(self.worst, time.monotonic() - t0)
                time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)


@pytest.mark.parametrize("trap", ["loop", "double", "multiply", "range", "recurse"])
def test_hostile_template_is_refused_while_health_answers(server, trap):
    with HealthWatch(server) as w, httpx.Client(base_url=server, timeout=30) as c:
        t0 = time.monotonic()
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": trap}], "max_tokens": 1})
        took = time.monotonic() - t0
        time.sleep(0.2)
    assert r.status_code == 400, r.text
    msg = r.json()["error"]["message"]
    assert msg.startswith("chat template (") and "refused" in msg and "\n" not in msg, msg
    assert took < 3
    assert w.ok and w.worst < 1.0, w.worst
    with httpx.Client(base_url=server, timeout=30) as c:  # and the server still serves chats
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert r.status_code == 200


def test_large_valid_requests_do_not_hold_health(server):
    with HealthWatch(server) as w, httpx.Client(base_url=server, timeout=60) as c:
        r = c.post("/tokenize", json={"content": "hello world " * 320_000})  # 3.8 MB
        assert r.status_code == 200 and len(r.json()["tokens"]) > 500_000
        msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"} for i in range(40_000)]
        r = c.post("/apply-template", json={"messages": msgs})
        assert r.status_code == 200 and r.json()["prompt"].count("<|im_start|>") == 40_001
    assert w.ok and w.worst < 1.0, w.worst


def test_out_of_range_numbers_are_400(server):
    with httpx.Client(base_url=server, timeout=30) as c:
        for field in ("seed", "top_k", "repeat_last_n", "id_slot", "n_probs", "mirostat"):
            for v in (10**30, 2**31) if field != "seed" else (2**64,):
                r = c.post("/completion", json={"prompt": "x", "n_predict": 1, field: v})
                assert r.status_code == 400 and field in r.json()["error"]["message"], (field, v, r.text)
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 1,
                                                 "seed": -(10**30)})
        assert r.status_code == 400, r.text
        r = c.post("/api/generate", json={"prompt": "x", "stream": False, "options": {"num_predict": 1, "top_k": 2**40}})
        assert r.status_code == 400 and "options.top_k" in r.json()["error"]["message"], r.text
        assert c.get("/health").status_code == 200


def test_slow_sockets_past_the_descriptor_limit_leave_the_server_reachable(server):
    port = int(server.rsplit(":", 1)[1])
    socks = []
    try:
        for i in range(FD_LIMIT + 100):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 3 == 0:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # half a header
            elif i % 3 == 1:
                s.sendall(b"POST /completion HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99\r\n\r\n{")  # part of a body
            socks.append(s)  # (and every third sends nothing)
        t0 = time.monotonic()
        with httpx.Client(timeout=5) as c:
            assert c.get(server + "/health").status_code == 200
        assert time.monotonic() - t0 < 3.0  # (unreachable before: accept() failed with EMFILE and nothing timed out)
        # the slow ones are closed (made room for others, or past the 1 s read timeout)
        s = socks[0]
        s.settimeout(5)
        t0 = time.monotonic()
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - t0 < 3
    finally:
        for s in socks:
            s.close()


def test_sigterm_stops_the_server_during_a_hostile_render(tmp_path, default_model):
    proc, url = _start(tmp_path)
    try:
        def hostile():
            try:
                httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "loop"}]},
                           timeout=10)
            except httpx.HTTPError:
                pass

        threading.Thread(target=hostile, daemon=True).start()
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(5)
        assert time.monotonic() - t0 < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_template_over_budget_on_the_sample_conversation_stops_the_start(tmp_path, default_model):
    tpl = tmp_path / "spin.jinja"
    tpl.write_text("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "llamapy", "serve", "--port", str(free_port()),
                          "--chat-template-file", str(tpl)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1 and time.monotonic() - t0 < 30
    assert out.stderr.strip() == f"error: chat template ({tpl}) refused: it takes longer than 1 s", out.stderr
    assert json.dumps(out.stderr).count("\\n") == 1  # one line


def test_chat_page_works_without_a_key(server, request):
    """The page is same-origin: the Host and Origin guards of a key-less server let it through."""
    import shutil

    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)")
    wd = request.getfixturevalue("browser")
    wd.cmd("POST", "/url", {"url": server + "/"})
    wd.js("localStorage.removeItem('llamapy.api-key'); localStorage.setItem('llamapy.max-tokens', '4')")
    status = send_on_chat_page(wd, "Say hi.")
    assert status.startswith("done"), status
    msgs = wd.js("return Array.from(document.querySelectorAll('.msg')).map(e => e.className)")
    assert msgs == ["msg user", "msg assistant"]
