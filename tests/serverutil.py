"""What the server tests share: a free loopback port, starting and stopping a server process, a uvicorn
server in a thread of the test process, and sending a message on the chat page."""
from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from typing import IO, Any

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(proc: subprocess.Popen, url: str, seconds: float, name: str, log: IO[str] | None = None,
                    pause: float = 0.2) -> None:
    """Wait until the server process answers GET /health with 200; fail with its output if it exits first
    (read from log when its output goes to a file, else from its stderr pipe), or after `seconds`."""
    deadline = time.time() + seconds
    while True:
        if proc.poll() is not None:
            if log is not None:
                log.seek(0)
            out = log.read() if log is not None else proc.stderr.read()
            pytest.fail(f"{name} exited with {proc.returncode}: {out}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"{name} did not answer /health within {seconds:g} s")
        time.sleep(pause)


def stop(proc: subprocess.Popen) -> None:
    """Ctrl-C, as a user stops `llamapy serve`; killed if it is not gone within 20 s."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ThreadedServer:
    """A uvicorn server on a free port, run in a thread of the test process."""

    port: int
    url: str

    def _serve(self, cfg: Any, tries: int = 200) -> None:
        import uvicorn

        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(tries):
            if self.server.started:
                break
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def send_on_chat_page(wd: Any, text: str) -> str:
    """Reload the chat page, send `text` and wait for the reply; the status line at the end."""
    wd.cmd("POST", "/refresh", {})
    wd.cmd("POST", f"/element/{wd.find('#input')}/value", {"text": text})
    wd.cmd("POST", f"/element/{wd.find('#send')}/click", {})
    status = ""
    for _ in range(600):
        status = wd.js("return document.getElementById('status').textContent")
        if status.startswith("done") or status == "error":
            break
        time.sleep(0.1)
    return status
