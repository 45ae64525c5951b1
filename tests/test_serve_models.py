"""One `llamapy serve` answering the store's models by name, driven by the official `ollama` Python client:
list, show, create (from a name, from an uploaded blob), pull (from the local fake hub), chat and generate
(streamed and not) on two named models made from the default model, embed, ps, copy, delete; keep_alive
(0 unloads, a short duration expires) and --models-max (the least recently used model is unloaded)."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

ollama = pytest.importorskip("ollama")

from serverutil import free_port, stop, wait_for_health  # noqa: E402
from test_pull import Hub, fake_gguf, make_handler  # noqa: E402

from llamapy.store.modelfile import parse  # noqa: E402
from llamapy.store.models import create_model  # noqa: E402
from llamapy.store.prompt import execute  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PIRATE = "You are a pirate. Answer like one."
# the default model's chat format as a Go template over one turn (legacy: .System, .Prompt)
CHATML = ('{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
          '<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n')
ALPHA = 'FROM {src}\nSYSTEM """' + PIRATE + '"""\nPARAMETER temperature 0\nPARAMETER num_predict 6\n'
BETA = ('FROM {src}\nTEMPLATE """' + CHATML + '"""\nSYSTEM Answer in French.\nPARAMETER temperature 0\n'
        'PARAMETER num_predict 3\nPARAMETER stop <|im_end|>\n')


def start_server(models: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str, object]:
    port = free_port()
    log = open(models.parent / f"serve-{port}.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "llamapy", "serve", "--port", str(port), "-c", "1024", *args],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, LLAMAPY_MODELS=str(models), **(env or {})))
    url = f"http://127.0.0.1:{port}"
    wait_for_health(proc, url, 120, "llamapy serve", log=log)
    return proc, url, log


@pytest.fixture(scope="module")
def hub():
    h = Hub()
    h.repos["me/tiny-GGUF"] = {"tiny.Q8_0.gguf": fake_gguf(60_000, 7), "tiny.Q4_K_M.gguf": fake_gguf(40_000, 8)}
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(h))
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield h, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def served(tmp_path_factory, default_model, hub):
    """A server over a store holding alpha and beta (and gamma, for the LRU test), at most 2 loaded."""
    tmp = tmp_path_factory.mktemp("serve_models")
    models = tmp / "models"
    old = os.environ.get("LLAMAPY_MODELS")
    os.environ["LLAMAPY_MODELS"] = str(models)
    try:
        for name, text in (("alpha", ALPHA), ("beta", BETA), ("gamma", ALPHA)):
            create_model(name, parse(text.replace("{src}", default_model), str(tmp)))
    finally:
        if old is None:
            del os.environ["LLAMAPY_MODELS"]
        else:
            os.environ["LLAMAPY_MODELS"] = old
    proc, url, log = start_server(models, "--models-max", "2", env={"HF_ENDPOINT": hub[1],
                                                                     "LLAMAPY_KEEP_ALIVE": "10m"})
    yield url, models, hub[0]
    stop(proc)
    log.close()


@pytest.fixture(scope="module")
def client(served):
    return ollama.Client(host=served[0])


def loaded(client) -> list[str]:
    return [m.model for m in client.ps().models]


def wait_until(cond, seconds: float = 10.0) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def n_tokens(text: str, default_model: str) -> int:
    from llamapy.engine.engine import Engine

    with Engine(default_model, n_ctx=256) as llm:
        return len(llm.tokenizer.encode(text, add_special=True, parse_special=True))


def test_list_and_show(client):
    names = [m.model for m in client.list().models]
    assert {"alpha:latest", "beta:latest", "gamma:latest"} <= set(names)
    info = client.show("beta")
    assert "SYSTEM Answer in French." in info.modelfile and "PARAMETER num_predict 3" in info.modelfile
    assert info.template == CHATML
    assert info.parameters.splitlines()[0].split() == ["temperature", "0"]
    assert info.details.family == "llama" and info.details.quantization_level == "Q4_1"
    assert info.modelinfo["general.architecture"] == "llama" and info.modelinfo["llama.embedding_length"] == 576
    with pytest.raises(ollama.ResponseError) as e:
        client.show("nosuch")
    assert e.value.status_code == 404


def test_chat_and_generate_on_two_names_use_each_modelfile(client, default_model):
    a = client.chat(model="alpha", messages=[{"role": "user", "content": "Hi"}])
    b = client.chat(model="beta", messages=[{"role": "user", "content": "Hi"}])
    assert a.done and b.done and a.message.content and b.message.content
    # each model's own SYSTEM and template built its prompt; its num_predict bounds its answer
    beta_prompt = execute(CHATML, [{"role": "system", "content": "Answer in French."},
                                   {"role": "user", "content": "Hi"}])
    assert b.prompt_eval_count == n_tokens(beta_prompt, default_model)
    alpha_prompt = (f"<|im_start|>system\n{PIRATE}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\n")  # the GGUF's own chat template, with the Modelfile's SYSTEM
    assert a.prompt_eval_count == n_tokens(alpha_prompt, default_model)
    assert a.eval_count <= 6 and b.eval_count <= 3 and (a.eval_count, b.eval_count) != (0, 0)
    # a request's own options override the Modelfile's
    longer = client.generate(model="beta", prompt="Hi", options={"num_predict": 5, "temperature": 0})
    assert 3 < longer.eval_count <= 5
    # temperature 0 from the Modelfile: the same answer twice, streamed or not
    g1 = client.generate(model="alpha", prompt="Name a colour.")
    parts = list(client.generate(model="alpha", prompt="Name a colour.", stream=True))
    assert parts[-1].done and "".join(p.response for p in parts) == g1.response
    chunks = list(client.chat(model="beta", messages=[{"role": "user", "content": "Hi"}], stream=True))
    assert chunks[-1].done and "".join(c.message.content for c in chunks) == b.message.content
    assert {"alpha:latest", "beta:latest"} <= set(loaded(client))


def test_embed_and_openai_models(client, served):
    e = client.embed(model="alpha", input=["hello", "world"])
    assert len(e.embeddings) == 2 and len(e.embeddings[0]) == 576
    same = client.embed(model="beta", input="hello")  # the same GGUF under another name
    assert same.embeddings[0] == pytest.approx(e.embeddings[0], abs=1e-5)
    ids = [m["id"] for m in httpx.get(served[0] + "/v1/models").json()["data"]]
    assert "alpha:latest" in ids and "beta:latest" in ids
    r = httpx.post(served[0] + "/v1/chat/completions", json={"model": "beta", "messages": [
        {"role": "user", "content": "Hi"}]}, timeout=60).json()
    assert r["usage"]["completion_tokens"] <= 3  # the Modelfile's num_predict through OpenAI's API too


def test_ps_and_the_ps_command(client, served):
    client.generate(model="alpha", prompt="Hi", keep_alive="10m")
    ps = {m.model: m for m in client.ps().models}
    assert "alpha:latest" in ps
    assert ps["alpha:latest"].details.quantization_level == "Q4_1"
    left = ps["alpha:latest"].expires_at.timestamp() - time.time()
    assert 500 < left <= 600
    r = subprocess.run([sys.executable, "-m", "llamapy", "ps"], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, LLAMAPY_HOST=served[0].removeprefix("http://")), timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "UNTIL"]
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith("alpha:latest"))
    assert "minutes from now" in row and "100% CPU" in row
    r = subprocess.run([sys.executable, "-m", "llamapy", "ps", "--host", f"127.0.0.1:{free_port()}"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 1 and "can't reach a server" in r.stderr and "Traceback" not in r.stderr


def test_keep_alive_zero_unloads_and_a_short_duration_expires(client):
    client.generate(model="beta", prompt="Hi", keep_alive=0)
    assert wait_until(lambda: "beta:latest" not in loaded(client), 5), loaded(client)
    client.generate(model="beta", prompt="Hi", keep_alive="1s")
    assert "beta:latest" in loaded(client)
    assert wait_until(lambda: "beta:latest" not in loaded(client), 6), loaded(client)
    client.generate(model="beta", prompt="", keep_alive=-1)  # an empty prompt loads; negative: forever
    ps = {m.model: m for m in client.ps().models}
    assert ps["beta:latest"].expires_at.year > 2200
    client.generate(model="beta", prompt="", keep_alive=0)  # and an empty request with 0 unloads
    assert wait_until(lambda: "beta:latest" not in loaded(client), 5)
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model="beta", prompt="Hi", keep_alive="soon")
    assert e.value.status_code == 400 and "keep_alive" in str(e.value)


def test_models_max_unloads_the_least_recently_used(client):
    client.generate(model="alpha", prompt="Hi")
    client.generate(model="beta", prompt="Hi")
    assert {"alpha:latest", "beta:latest"} <= set(loaded(client))
    client.generate(model="alpha", prompt="Hi")  # beta is now the least recently used
    client.generate(model="gamma", prompt="Hi")
    now = set(loaded(client))
    assert {"alpha:latest", "gamma:latest"} <= now and "beta:latest" not in now


def test_create_copy_delete(client, served, default_model):
    r = client.create(model="pirate2", from_="alpha", system="You are a parrot.", parameters={"num_predict": 2})
    assert r.status == "success"
    info = client.show("pirate2")
    assert "SYSTEM You are a parrot." in info.modelfile and "temperature" in info.parameters
    assert client.generate(model="pirate2", prompt="Hi").eval_count <= 2
    # from an uploaded blob: the GGUF's digest, then `files`
    digest = client.create_blob(default_model)
    assert httpx.head(served[0] + f"/api/blobs/{digest}").status_code == 200
    steps = list(client.create(model="fromblob", files={"model.gguf": digest}, template=CHATML, stream=True))
    assert steps[-1].status == "success"
    assert client.show("fromblob").template == CHATML
    assert client.copy("fromblob", "fromblob-copy").status == "success"
    assert client.chat(model="fromblob-copy", messages=[{"role": "user", "content": "Hi"}],
                       options={"num_predict": 2}).done
    assert client.delete("fromblob-copy").status == "success"
    names = {m.model for m in client.list().models}
    assert "fromblob-copy:latest" not in names and {"fromblob:latest", "pirate2:latest"} <= names
    with pytest.raises(ollama.ResponseError) as e:
        client.delete("fromblob-copy")
    assert e.value.status_code == 404


def test_remote_create_reads_no_server_paths_and_blobs_are_verified(client, served, default_model):
    for body in ({"model": "x", "from": default_model}, {"model": "x", "modelfile": f"FROM {default_model}"},
                 {"model": "x", "modelfile": "FROM ../../../../etc/passwd"}):
        r = httpx.post(served[0] + "/api/create", json={**body, "stream": False}, timeout=30)
        assert r.status_code == 403 and "--allow-path" in r.text, r.text
    r = httpx.post(served[0] + "/api/create", json={"model": "x", "files": {"m.gguf": "sha256:" + "0" * 64}})
    assert r.status_code == 400 and "not been uploaded" in r.text
    data = b"GGUF not really"
    wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
    r = httpx.post(served[0] + f"/api/blobs/{wrong}", content=data)
    assert r.status_code == 400 and "digest mismatch" in r.text
    assert httpx.head(served[0] + f"/api/blobs/{wrong}").status_code == 404
    assert httpx.head(served[0] + "/api/blobs/sha256:xyz").status_code == 400
    r = httpx.post(served[0] + "/api/create", json={"model": "bad..name", "from": "alpha"})
    assert r.status_code == 400
    r = httpx.post(served[0] + "/api/create", json={"model": "y", "from": "alpha",
                                                    "parameters": {"temperature": "hot"}})
    assert r.status_code == 400 and "temperature" in r.text


def test_pull_from_the_hub(client, served):
    steps = list(client.pull("hf.co/me/tiny-GGUF:Q8_0", stream=True))
    assert steps[0].status == "pulling manifest" and steps[-1].status == "success"
    assert any(s.completed == s.total == 60_000 for s in steps if s.total)
    assert "hf.co/me/tiny-GGUF:Q8_0" in {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as e:
        client.pull("hf.co/me/nosuch-GGUF")
    assert "not found" in str(e.value)
    with pytest.raises(ollama.ResponseError) as e:
        client.pull("llama3")
    assert e.value.status_code == 400


def test_writes_can_be_turned_off_and_need_the_key(served, tmp_path):
    models = served[1]
    proc, url, log = start_server(models, "--no-model-writes", "--api-key", "k3y")
    try:
        keyed = ollama.Client(host=url, headers={"Authorization": "Bearer k3y"})
        assert "alpha:latest" in {m.model for m in keyed.list().models}
        with pytest.raises(ollama.ResponseError) as e:
            keyed.create(model="z", from_="alpha")
        assert e.value.status_code == 403 and "--no-model-writes" in str(e.value)
        for call in (lambda: keyed.delete("alpha"), lambda: keyed.copy("alpha", "z"),
                     lambda: keyed.pull("hf.co/me/tiny-GGUF")):
            with pytest.raises(ollama.ResponseError) as e:
                call()
            assert e.value.status_code == 403
        with pytest.raises(ollama.ResponseError) as e:
            ollama.Client(host=url).list()
        assert e.value.status_code == 401
        assert keyed.chat(model="beta", messages=[{"role": "user", "content": "Hi"}]).done
    finally:
        stop(proc)
        log.close()


def test_keep_alive_values():
    import math

    from llamapy.errors import LlamapyError
    from llamapy.server.manager import default_keep_alive, parse_keep_alive

    assert parse_keep_alive("5m") == 300 and parse_keep_alive("1h30m") == 5400 and parse_keep_alive("1.5s") == 1.5
    assert parse_keep_alive(30) == 30 and parse_keep_alive("45") == 45 and parse_keep_alive(0) == 0
    assert parse_keep_alive("500ms") == 0.5 and parse_keep_alive("0s") == 0
    for forever in (-1, "-1m", "-1", 1e300):
        assert parse_keep_alive(forever) == math.inf
    for bad in ("soon", "5 m", "m5", "", "5d", True, None, "nan"):
        with pytest.raises(LlamapyError):
            parse_keep_alive(bad)
    env = dict(os.environ)
    try:
        os.environ.pop("LLAMAPY_KEEP_ALIVE", None)
        os.environ["OLLAMA_KEEP_ALIVE"] = "2m"
        assert default_keep_alive() == 120
        os.environ["LLAMAPY_KEEP_ALIVE"] = "-1"
        assert default_keep_alive() == math.inf
        os.environ.pop("LLAMAPY_KEEP_ALIVE")
        os.environ.pop("OLLAMA_KEEP_ALIVE")
        assert default_keep_alive() == 300
    finally:
        os.environ.clear()
        os.environ.update(env)


def test_a_slow_upload_outlives_the_read_timeout_but_a_stalled_one_does_not(served):
    proc, url, log = start_server(served[1], "--read-timeout", "1.5")
    try:
        parts = [b"GGUF" + bytes([i]) * 1000 for i in range(8)]
        digest = "sha256:" + hashlib.sha256(b"".join(parts)).hexdigest()

        def slowly(stall: float = 0.0):
            for i, p in enumerate(parts):
                time.sleep(stall if i == 4 else 0.4)  # 8 chunks over ~3 s: twice the read timeout
                yield p

        r = httpx.post(url + f"/api/blobs/{digest}", content=slowly(), timeout=30)
        assert r.status_code == 201 and httpx.head(url + f"/api/blobs/{digest}").status_code == 200
        other = [p[::-1] for p in parts]
        parts[:] = other
        digest2 = "sha256:" + hashlib.sha256(b"".join(other)).hexdigest()
        with pytest.raises(httpx.HTTPError):
            httpx.post(url + f"/api/blobs/{digest2}", content=slowly(stall=3.0), timeout=30)
        assert httpx.head(url + f"/api/blobs/{digest2}").status_code == 404
        blobs = served[1] / "blobs"
        assert wait_until(lambda: not [f for f in os.listdir(blobs) if f.endswith(".part")], 5)  # nothing half-written
    finally:
        stop(proc)
        log.close()
