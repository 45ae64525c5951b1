"""The server's guards on the toy model (no model file): Host, Origin/CORS, Content-Type, slow clients,
the connection cap, out-of-range numbers. The same uvicorn configuration as `llamapy serve`, in-process."""
from __future__ import annotations

import socket
import time

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serverutil import ThreadedServer, free_port
from test_server_scheduler import KEY, ToyBackend

from llamapy.chat.templates import ChatTemplate
from llamapy.server import uvicorn_config
from llamapy.server.app import create_app, is_loopback_host
from llamapy.server.common import ServerState
from llamapy.server.scheduler import Scheduler


class GuardedApp(ThreadedServer):
    """The toy model behind the app and uvicorn configuration `llamapy serve` uses."""

    def __init__(self, api_key=None, cors_origins=(), read_timeout=30.0, max_connections=None, write_timeout=600.0):
        be = ToyBackend(n_slots=2, n_ctx=128, n_batch=16)
        state = ServerState(backend=be, scheduler=Scheduler(be, max_queue=4), template=ChatTemplate.from_name("chatml"),
                            model_id="toy", model_path=__file__, api_key=api_key)
        self.port = free_port()
        app = create_app(state, loopback_only=True, cors_origins=cors_origins)
        self._serve(uvicorn_config(app, "127.0.0.1", self.port, read_timeout=read_timeout, timeout=write_timeout,
                                   max_connections=max_connections), tries=250)


@pytest.fixture(scope="module")
def open_app():
    app = GuardedApp(cors_origins=("http://ok.example",), read_timeout=0.5, max_connections=24)
    yield app
    app.close()


@pytest.fixture(scope="module")
def keyed_app():
    app = GuardedApp(api_key=KEY)
    yield app
    app.close()


BODY = {"prompt": "1", "n_predict": 2}


def test_loopback_host_names():
    for h in ("localhost", "localhost:8080", "127.0.0.1", "127.3.4.5:99", "[::1]", "[::1]:8080", "::1"):
        assert is_loopback_host(h), h
    for h in ("evil.example", "evil.example:8080", "10.0.0.1", "[::2]:80", "localhost.evil.example", "127.0.0.1.nip.io"):
        assert not is_loopback_host(h), h


def test_without_a_key_only_loopback_host_names_are_answered(open_app):
    with httpx.Client(base_url=open_app.url, timeout=10) as c:
        for host in ("evil.example", f"rebound.example:{open_app.port}", "192.168.1.2"):
            r = c.post("/completion", json=BODY, headers={"Host": host})
            assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error", host
            assert c.get("/health", headers={"Host": host}).status_code == 403
        for host in (f"localhost:{open_app.port}", f"127.0.0.1:{open_app.port}", "[::1]", "127.8.8.8"):
            assert c.post("/completion", json=BODY, headers={"Host": host}).status_code == 200, host


def test_without_a_key_other_origins_are_refused(open_app):
    same = f"http://127.0.0.1:{open_app.port}"
    with httpx.Client(base_url=open_app.url, timeout=10) as c:
        r = c.post("/completion", json=BODY, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403 and "origin" in r.json()["error"]["message"]
        # a form post or text/plain from a page: refused before anything runs
        r = c.post("/completion", content=b'{"prompt": "1"}',
                   headers={"Origin": "http://evil.example", "Content-Type": "text/plain"})
        assert r.status_code == 403
        pre = c.options("/completion", headers={"Origin": "http://evil.example",
                                                "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 403 and "access-control-allow-origin" not in pre.headers
        # the page's own origin (the chat page), and an origin given with --cors-origin
        r = c.post("/completion", json=BODY, headers={"Origin": same})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
        r = c.post("/completion", json=BODY, headers={"Origin": "http://ok.example"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://ok.example"
        pre = c.options("/completion", headers={"Origin": "http://ok.example", "Access-Control-Request-Method": "POST",
                                                "Access-Control-Request-Headers": "content-type"})
        assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "http://ok.example"
        assert "POST" in pre.headers["access-control-allow-methods"]


def test_with_a_key_any_origin_gets_cors_and_the_key_still_protects(keyed_app):
    with httpx.Client(base_url=keyed_app.url, timeout=10) as c:
        pre = c.options("/v1/chat/completions", headers={"Origin": "http://app.example",
                                                         "Access-Control-Request-Method": "POST",
                                                         "Access-Control-Request-Headers": "authorization"})
        assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "http://app.example"
        assert "Authorization" in pre.headers["access-control-allow-headers"]
        r = c.post("/completion", json=BODY, headers={"Origin": "http://app.example"})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "http://app.example"
        r = c.post("/completion", json=BODY, headers={"Origin": "http://app.example", "Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.example"
        # with a key, any Host name is fine (the server may be reached by name through a proxy)
        r = c.post("/completion", json=BODY, headers={"Host": "llm.example", "Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200


def test_post_bodies_must_be_json(open_app):
    with httpx.Client(base_url=open_app.url, timeout=10) as c:
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            r = c.post("/completion", content=b'{"prompt": "1", "n_predict": 2}', headers={"Content-Type": ctype})
            assert r.status_code == 415, ctype
            assert r.json()["error"]["code"] == 415
        for ctype in ("application/json", "Application/JSON; charset=utf-8"):
            r = c.post("/completion", content=b'{"prompt": "1", "n_predict": 2}', headers={"Content-Type": ctype})
            assert r.status_code == 200, ctype
        assert c.post("/completion", content=b'{"prompt": "1", "n_predict": 2}').status_code == 200  # no type: a script


def _wait_closed(s: socket.socket, limit: float) -> float:
    """Seconds until the server closes `s` (reads b'' or a reset), failing past `limit`."""
    t0 = time.monotonic()
    s.settimeout(limit)
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the connection was still open after {limit} s")
    return time.monotonic() - t0


def test_slow_and_silent_clients_are_closed_while_health_answers(open_app):
    half_header = socket.create_connection(("127.0.0.1", open_app.port))
    half_header.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    silent = socket.create_connection(("127.0.0.1", open_app.port))
    half_body = socket.create_connection(("127.0.0.1", open_app.port))
    half_body.sendall(b"POST /completion HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"prompt\": ")
    t0 = time.monotonic()
    with httpx.Client(base_url=open_app.url, timeout=2) as c:
        assert c.get("/health").status_code == 200
    for s in (half_header, silent, half_body):
        _wait_closed(s, 5)
        s.close()
    assert time.monotonic() - t0 < 3  # read timeout 0.5 s in this app
    # a slow client trickling a header byte by byte is cut at the same deadline, not reset by each byte
    trickle = socket.create_connection(("127.0.0.1", open_app.port))
    t0 = time.monotonic()
    try:
        for ch in b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: " + b"a" * 100:
            trickle.sendall(bytes([ch]))
            time.sleep(0.05)
            if time.monotonic() - t0 > 3:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    _wait_closed(trickle, 5)
    assert time.monotonic() - t0 < 3
    trickle.close()


def test_connections_past_the_cap_close_the_oldest_slow_ones():
    app = GuardedApp(read_timeout=30, max_connections=24)
    socks = []
    try:
        for _ in range(60):
            s = socket.create_connection(("127.0.0.1", app.port))
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            socks.append(s)
        _wait_closed(socks[0], 5)  # the oldest slow one made room
        _wait_closed(socks[-1 - 24], 5)  # every slow socket is accepted: the newest are the 24 kept
        with httpx.Client(base_url=app.url, timeout=5) as c:  # far less than the 30 s read timeout
            assert c.get("/health").status_code == 200
    finally:
        for s in socks:
            s.close()
        app.close()


def test_a_client_that_stops_reading_is_dropped_after_the_write_timeout():
    app = GuardedApp(write_timeout=1.0)
    try:
        body = b'{"content": "' + b"a" * (3 << 20) + b'"}'  # the toy tokenizer: one id per byte, ~9 MB of JSON back
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that reads nothing
        s.connect(("127.0.0.1", app.port))
        s.sendall(b"POST /tokenize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        time.sleep(2.5)  # the answer stalls in the socket buffers; the server gives up after 1 s of that
        s.settimeout(5)
        got = 0
        try:
            while chunk := s.recv(1 << 16):
                got += len(chunk)
        except ConnectionResetError:
            pass
        s.close()
        assert 0 < got < 3 * (3 << 20)  # cut short: a whole answer has 3 MB of ids, each "97,"
        with httpx.Client(base_url=app.url, timeout=5) as c:
            assert c.get("/health").status_code == 200
    finally:
        app.close()
