"""`python -m llamapy.server`: llama-cpp-python's server command line on a loopback port, used with the
official `openai` client. The server is started from a config file listing two models, as
llama-cpp-python's --config_file allows: llamapy serves the first and says so."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from serverutil import free_port, wait_for_health  # noqa: E402

KEY = "sk-api-test"


@pytest.fixture(scope="module")
def server(default_model, tmp_path_factory):
    port = free_port()
    cfg = tmp_path_factory.mktemp("cfg") / "models.json"
    cfg.write_text(json.dumps({"host": "127.0.0.1", "port": port, "models": [
        {"model": default_model, "model_alias": "smol", "n_ctx": 1024, "chat_format": "chatml"},
        {"model": default_model, "model_alias": "second"}]}))
    proc = subprocess.Popen([sys.executable, "-m", "llamapy.server", "--config_file", str(cfg), "--api_key", KEY,
                             "--n_gpu_layers", "99"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_for_health(proc, url, 120, "python -m llamapy.server")
    yield url, proc
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0)


def test_models_lists_the_first_model(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["smol"]


def test_completion_with_stop(client):
    r = client.completions.create(model="smol", prompt="Q: Name the planets in the solar system? A: ",
                                  max_tokens=32, stop=["Q:", "\n"], temperature=0)
    text = r.choices[0].text
    assert text.strip() and "\n" not in text and "Q:" not in text
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 32


def test_chat_completion(client):
    r = client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Say hello."}],
                                       max_tokens=16, temperature=0)
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content


def test_embeddings(client):
    r = client.embeddings.create(model="smol", input=["hello", "world"])
    assert len(r.data) == 2 and len(r.data[0].embedding) == 576


def test_api_key_is_required(server):
    bad = openai.OpenAI(base_url=server[0] + "/v1", api_key="wrong", max_retries=0)
    assert bad.models.list().data  # public, as llama-server's /v1/models
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model="m", prompt="x", max_tokens=1)


def test_the_note_about_the_second_model_and_ignored_options(server):
    url, proc = server
    proc.terminate()
    proc.wait(timeout=10)
    err = proc.stderr.read()
    assert "serving the first of 2" in err and "second" in err
    assert "--n_gpu_layers" in err


def test_bad_options_get_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = subprocess.run([sys.executable, "-m", "llamapy.server", "--config_file", str(bad)], capture_output=True,
                       text=True)
    assert r.returncode == 1 and r.stderr.startswith("error: --config_file") and len(r.stderr.splitlines()) == 1
    r = subprocess.run([sys.executable, "-m", "llamapy.server", "--model", str(tmp_path / "none.gguf"),
                        "--port", "0"], capture_output=True, text=True)
    assert r.returncode == 1 and "no such model file" in r.stderr and len(r.stderr.splitlines()) == 1
    r = subprocess.run([sys.executable, "-m", "llamapy.server", "--port", "99999"], capture_output=True, text=True)
    assert r.returncode == 1 and "port" in r.stderr
    r = subprocess.run([sys.executable, "-m", "llamapy.server", "--n_ctx", "big"], capture_output=True, text=True)
    assert r.returncode == 2 and "--n_ctx" in r.stderr and len(r.stderr.splitlines()) == 1
