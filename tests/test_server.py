"""`llamapy serve` end to end: a real server on a loopback port with the default model.

One server process (4 slots, an API key) is shared by every test here. Generated text is checked
against the engine itself: greedy decoding (temperature 0) in this process, token by token, must give
exactly what the server returns, whichever endpoint, stream or not, and however many requests share
the batch. Clients: the official `openai` package, the tutorials' `curl`, httpx, headless Chromium.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

KEY = "sk-test-4b1d2c9e"
N_SLOTS = 4
CTX = 4096  # 1024 positions per slot


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(default_model):
    port = _free_port()
    cmd = [sys.executable, "-m", "llamapy", "serve", "--port", str(port), "-np", str(N_SLOTS), "-c", str(CTX),
           "--api-key", KEY, "--alias", "smol", "--max-queue", "8"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        if proc.poll() is not None:
            pytest.fail(f"llamapy serve exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            proc.kill()
            pytest.fail("llamapy serve did not answer /health within 180 s")
        time.sleep(0.2)
    yield url
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def ref(default_model):
    """The engine in this process: greedy continuations to compare the server with."""
    from llamapy.chat_templates import ChatTemplate
    from llamapy.llama import Llama

    llm = Llama(default_model, n_ctx=1024, n_threads=1)
    llm.template = ChatTemplate.for_model(llm.metadata)
    yield llm
    llm.close()


def greedy(llm, prompt_ids: list[int], n: int) -> tuple[list[int], list[np.ndarray]]:
    """Token ids (and the logits each was chosen from) of a greedy continuation; stops at end of text."""
    llm.kv_clear(0)
    logits = llm.eval(prompt_ids, 0)
    out, all_logits = [], []
    for _ in range(n):
        tok = int(np.argmax(logits))
        out.append(tok)
        all_logits.append(logits)
        if llm.tokenizer.is_eog(tok):
            break
        logits = llm.eval([tok], 0)
    return out, all_logits


def text_of(llm, ids: list[int]) -> str:
    """Generated text as llama-server shows it: control tokens (the end of text among them) are not written."""
    return b"".join(_piece(llm, t) for t in ids).decode("utf-8", "replace")


def _piece(llm, t: int) -> bytes:
    return llm.tokenizer.token_to_piece(t, special=False)


def encode(llm, text: str) -> list[int]:
    return list(llm.tokenizer.encode(text, add_special=True, parse_special=True))


def chat_ids(llm, messages) -> list[int]:
    return encode(llm, llm.template.render(messages, add_generation_prompt=True))


def client(url: str, key: str | None = KEY) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=120)


# --- OpenAI client --------------------------------------------------------------------------------------------


def test_openai_client_completions_and_models(server, ref):
    import openai

    oai = openai.OpenAI(base_url=server + "/v1", api_key=KEY)
    prompt = "The capital of France is"
    ids, _ = greedy(ref, encode(ref, prompt), 8)
    c = oai.completions.create(model="davinci-002", prompt=prompt, max_tokens=8, temperature=0)
    assert c.choices[0].text == text_of(ref, ids)
    assert c.choices[0].finish_reason == ("stop" if ref.tokenizer.is_eog(ids[-1]) else "length")
    assert c.usage.prompt_tokens == len(encode(ref, prompt)) and c.usage.completion_tokens == len(ids)
    assert c.model == "davinci-002"  # any model name is accepted
    stream = oai.completions.create(model="x", prompt=prompt, max_tokens=8, temperature=0, stream=True)
    assert "".join(ch.choices[0].text for ch in stream if ch.choices) == text_of(ref, ids)
    models = oai.models.list()
    assert [m.id for m in models.data] == ["smol"]


def test_openai_client_chat_stream_and_not(server, ref):
    import openai

    oai = openai.OpenAI(base_url=server + "/v1", api_key=KEY)
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is 2 + 2?"}]
    ids, _ = greedy(ref, chat_ids(ref, messages), 16)
    want = text_of(ref, ids)
    r = oai.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=16, temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want
    assert r.usage.completion_tokens == len(ids)
    chunks = list(oai.chat.completions.create(model="gpt-4o-mini", messages=messages, max_completion_tokens=16,
                                              temperature=0, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == len(ids)
    # stop as a string and as a list: the text ends before the first stop string
    words = want.split()
    if len(words) > 1:
        r2 = oai.chat.completions.create(model="m", messages=messages, max_tokens=16, temperature=0, stop=words[1])
        assert r2.choices[0].message.content == want[: want.index(words[1])]
        assert r2.choices[0].finish_reason == "stop"
        r3 = oai.chat.completions.create(model="m", messages=messages, max_tokens=16, temperature=0,
                                         stop=["\u2603", words[1]])
        assert r3.choices[0].message.content == r2.choices[0].message.content


def test_chat_logprobs_are_the_models(server, ref):
    messages = [{"role": "user", "content": "Name a color."}]
    ids, logits = greedy(ref, chat_ids(ref, messages), 4)
    with client(server) as c:
        d = c.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 4, "temperature": 0,
                                                 "logprobs": True, "top_logprobs": 3}).json()
    content = d["choices"][0]["logprobs"]["content"]
    assert len(content) == len(ids)
    for item, tok, x in zip(content, ids, logits):
        x = x.astype(np.float64)
        lsm = x - (x.max() + np.log(np.exp(x - x.max()).sum()))
        assert item["id"] == tok
        assert item["logprob"] == pytest.approx(lsm[tok], abs=1e-4)
        assert item["bytes"] == list(_piece(ref, tok))
        assert len(item["top_logprobs"]) == 3
        assert item["top_logprobs"][0]["token"] == item["token"]  # greedy: the chosen token is the top one
        tops = [t["logprob"] for t in item["top_logprobs"]]
        assert tops == sorted(tops, reverse=True)


def test_openai_client_embeddings(server, ref):
    import openai

    oai = openai.OpenAI(base_url=server + "/v1", api_key=KEY)
    texts = ["hello world", "The quick brown fox"]
    r = oai.embeddings.create(model="text-embedding-3-small", input=texts)  # the client asks for base64
    assert [d.index for d in r.data] == [0, 1]
    for d, t in zip(r.data, texts):
        v = np.asarray(d.embedding)
        assert v.shape == (ref.n_embd,)
        np.testing.assert_allclose(v, ref.embed(encode(ref, t)), atol=1e-5)
    assert r.usage.prompt_tokens == sum(len(encode(ref, t)) for t in texts)
    with client(server) as c:
        d = c.post("/v1/embeddings", json={"input": "hello world", "encoding_format": "float"}).json()
    np.testing.assert_allclose(d["data"][0]["embedding"], r.data[0].embedding, atol=1e-6)


# --- llama-server endpoints -------------------------------------------------------------------------------------


def test_tutorial_curl_completion(server, ref):
    body = '{"prompt": "Building a website can be done in 10 simple steps:","n_predict": 12, "temperature": 0}'
    out = subprocess.run(["curl", "-s", "--request", "POST", "--url", server + "/completion",
                          "--header", "Content-Type: application/json", "--header", f"Authorization: Bearer {KEY}",
                          "--data", body], capture_output=True, text=True, timeout=120, check=False)
    d = json.loads(out.stdout)
    ids, _ = greedy(ref, encode(ref, "Building a website can be done in 10 simple steps:"), 12)
    assert d["content"] == text_of(ref, ids)
    assert d["stop"] is True and d["stop_type"] in ("limit", "eos")
    assert d["tokens_predicted"] == len(ids)
    assert d["tokens_evaluated"] == len(encode(ref, "Building a website can be done in 10 simple steps:"))
    assert d["generation_settings"]["n_predict"] == 12 and d["generation_settings"]["temperature"] == 0
    t = d["timings"]
    assert t["predicted_n"] == len(ids) and t["prompt_n"] >= 1
    for k in ("prompt_ms", "prompt_per_token_ms", "prompt_per_second", "predicted_ms", "predicted_per_token_ms",
              "predicted_per_second"):
        assert t[k] > 0


def test_completion_stream_tokens_and_prefix_reuse(server, ref):
    prompt = "Once upon a time, in a small village,"
    ids, _ = greedy(ref, encode(ref, prompt), 10)
    with client(server) as c:
        with c.stream("POST", "/completion", json={"prompt": prompt, "n_predict": 10, "temperature": 0,
                                                   "stream": True, "id_slot": 2}) as r:
            chunks = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: ")]
        assert "".join(ch["content"] for ch in chunks) == text_of(ref, ids)
        assert [t for ch in chunks[:-1] for t in ch["tokens"]] == [t for t in ids if not ref.tokenizer.is_eog(t)]
        assert chunks[-1]["stop"] is True
        # the same prompt again in the same slot: only the last prompt token is evaluated again
        d = c.post("/completion", json={"prompt": prompt, "n_predict": 10, "temperature": 0, "id_slot": 2}).json()
        assert d["content"] == text_of(ref, ids)
        assert d["timings"]["prompt_n"] == 1 and d["tokens_evaluated"] == len(encode(ref, prompt))
        # token ids as the prompt give the same text
        d2 = c.post("/completion", json={"prompt": encode(ref, prompt), "n_predict": 10, "temperature": 0}).json()
        assert d2["content"] == d["content"]


def test_tokenize_detokenize_props_health(server, ref):
    with client(server) as c:
        toks = c.post("/tokenize", json={"content": "Hello world"}).json()["tokens"]
        assert toks == list(ref.tokenizer.encode("Hello world", add_special=False, parse_special=True))
        pieces = c.post("/tokenize", json={"content": "Hello world", "with_pieces": True}).json()["tokens"]
        assert "".join(p["piece"] for p in pieces) == "Hello world"
        assert c.post("/detokenize", json={"tokens": toks}).json() == {"content": "Hello world"}
        p = c.get("/props").json()
        assert p["total_slots"] == N_SLOTS and p["default_generation_settings"]["n_ctx"] == CTX // N_SLOTS
        assert p["chat_template"] == ref.chat_template
        h = httpx.get(server + "/health").json()  # open without a key
        assert h["status"] == "ok" and h["slots_idle"] + h["slots_processing"] == N_SLOTS


# --- Ollama ------------------------------------------------------------------------------------------------------


def test_ollama_generate_chat_tags(server, ref):
    messages = [{"role": "user", "content": "Say hello."}]
    ids, _ = greedy(ref, chat_ids(ref, messages), 8)
    with client(server) as c:
        d = c.post("/api/chat", json={"model": "smol", "messages": messages, "stream": False,
                                      "options": {"temperature": 0, "num_predict": 8}}).json()
        assert d["message"] == {"role": "assistant", "content": text_of(ref, ids)} and d["done"] is True
        assert d["eval_count"] == len(ids)
        with c.stream("POST", "/api/chat", json={"messages": messages,
                                                 "options": {"temperature": 0, "num_predict": 8}}) as r:
            objs = [json.loads(ln) for ln in r.iter_lines() if ln]
        assert "".join(o["message"]["content"] for o in objs) == text_of(ref, ids)
        assert objs[-1]["done"] is True and all(not o["done"] for o in objs[:-1])
        g = c.post("/api/generate", json={"prompt": "Say hello.", "stream": False,
                                          "options": {"temperature": 0, "num_predict": 8}}).json()
        assert g["response"] == text_of(ref, ids)  # /api/generate applies the chat template
        tags = c.get("/api/tags").json()["models"]
        assert tags[0]["name"] == "smol" and tags[0]["details"]["quantization_level"] == "Q4_1"


# --- concurrency -------------------------------------------------------------------------------------------------


def test_eight_concurrent_streams_all_finish_correctly(server, ref):
    prompts = [f"Fact number {i}: the ocean" for i in range(4)] + [f"My favourite food is {w}" for w in
                                                                      ("pizza", "rice", "soup", "bread")]
    want = [text_of(ref, greedy(ref, encode(ref, p), 12)[0]) for p in prompts]

    async def one(c: httpx.AsyncClient, p: str) -> str:
        text = ""
        async with c.stream("POST", "/v1/completions", json={"prompt": p, "max_tokens": 12, "temperature": 0,
                                                             "stream": True, "cache_prompt": False}) as r:
            assert r.status_code == 200
            async for ln in r.aiter_lines():
                if ln.startswith("data: ") and ln != "data: [DONE]":
                    ch = json.loads(ln[6:])["choices"]
                    text += ch[0]["text"] if ch else ""
        return text

    async def main():
        async with httpx.AsyncClient(base_url=server, headers={"Authorization": f"Bearer {KEY}"},
                                     timeout=300) as c:
            return await asyncio.gather(*(one(c, p) for p in prompts))

    assert asyncio.run(main()) == want


def test_disconnect_frees_the_slot(server):
    async def main():
        async with httpx.AsyncClient(base_url=server, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
            s = c.stream("POST", "/completion", json={"prompt": "Count:", "n_predict": 900, "ignore_eos": True,
                                                      "stream": True})
            r = await s.__aenter__()
            it = r.aiter_lines()
            while not (await it.__anext__()).startswith("data: "):
                pass
            assert (await c.get("/health")).json()["slots_processing"] >= 1
            await s.__aexit__(None, None, None)
            for _ in range(300):
                h = (await c.get("/health")).json()
                if h["slots_processing"] == 0:
                    return h
                await asyncio.sleep(0.05)
            return h

    assert asyncio.run(main())["slots_processing"] == 0


# --- bad requests and auth ---------------------------------------------------------------------------------------


def test_bad_requests_are_400_or_413(server):
    with client(server) as c:
        for path in ("/completion", "/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/api/chat",
                     "/tokenize"):
            r = c.post(path, content=b'{"prompt": ')
            assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", path
        bad = [
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": "8"}),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "temperature": True}),
            ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}),
            ("/v1/chat/completions", {"messages": "hi"}),
            ("/v1/completions", {"prompt": "x", "top_p": -0.1}),
            ("/v1/completions", {"prompt": [0, 49152]}),
            ("/completion", {"prompt": "x", "n_probs": 1000}),
            ("/completion", {"prompt": "x", "stop": [1, 2]}),
            ("/completion", {"prompt": "word " * 1100}),  # more tokens than a slot's context
            ("/api/generate", {"prompt": "x", "options": {"num_predict": 1.5}}),
            ("/detokenize", {"tokens": [-5]}),
        ]
        for path, body in bad:
            r = c.post(path, json=body)
            assert r.status_code == 400, (path, body, r.text)
            err = r.json()["error"]
            assert err["code"] == 400 and err["message"]
        r = c.post("/v1/completions", content=b'{"prompt": "' + b"a" * (5 << 20) + b'"}')
        assert r.status_code == 413 and r.json()["error"]["code"] == 413
        assert c.get("/health").status_code == 200


def test_max_tokens_is_clamped_to_the_context(server, ref):
    prompt = "word " * 1000
    n_prompt = len(encode(ref, prompt))
    with client(server) as c:
        d = c.post("/completion", json={"prompt": prompt, "n_predict": 10**9, "ignore_eos": True}).json()
    assert d["tokens_evaluated"] == n_prompt
    assert d["stop_type"] == "limit" and d["truncated"] is True
    assert d["tokens_predicted"] == CTX // N_SLOTS - n_prompt


def test_auth(server):
    import openai

    with client(server, key=None) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/").status_code == 200
        for method, path in (("GET", "/v1/models"), ("POST", "/completion"), ("POST", "/v1/chat/completions"),
                             ("GET", "/api/tags"), ("GET", "/props")):
            r = c.request(method, path, json={"prompt": "x"})
            assert r.status_code == 401, path
            assert r.json()["error"]["type"] == "authentication_error"
        assert c.get("/v1/models", headers={"Authorization": "Bearer " + KEY[:-1]}).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0).models.list()


def test_refuses_to_start_without_a_model(tmp_path):
    out = subprocess.run([sys.executable, "-m", "llamapy", "serve", "-m", str(tmp_path / "none.gguf"),
                          "--port", str(_free_port())], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1
    assert out.stderr.strip().startswith("error:") and "none.gguf" in out.stderr


# --- the chat page in headless Chromium --------------------------------------------------------------------------


class WebDriver:
    """Just enough of the W3C WebDriver protocol to drive chromedriver over HTTP."""

    ELEMENT = "element-6066-11e4-a52e-4f735466cecf"

    def __init__(self, driver_url: str, profile: str):
        self.http = httpx.Client(base_url=driver_url, timeout=120)
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}"]
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome",
                                                 "goog:chromeOptions": {"binary": shutil.which("chromium"),
                                                                        "args": args}}}}
        r = self.http.post("/session", json=caps).json()
        self.sid = r["value"]["sessionId"]

    def cmd(self, method: str, path: str, body: dict | None = None):
        r = self.http.request(method, f"/session/{self.sid}{path}", json=body if method == "POST" else None)
        v = r.json()["value"]
        if r.status_code != 200:
            raise AssertionError(f"webdriver {path}: {v}")
        return v

    def js(self, script: str, *args):
        return self.cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    def find(self, css: str) -> str:
        return self.cmd("POST", "/element", {"using": "css selector", "value": css})[self.ELEMENT]

    def close(self):
        self.http.delete(f"/session/{self.sid}")


@pytest.fixture(scope="module")
def browser():
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)")
    port = _free_port()
    drv = subprocess.Popen(["chromedriver", f"--port={port}", "--allowed-ips=127.0.0.1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            httpx.get(f"http://127.0.0.1:{port}/status", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    profile = tempfile.mkdtemp(prefix="llamapy-chromium-")
    wd = WebDriver(f"http://127.0.0.1:{port}", profile)
    yield wd
    wd.close()
    drv.terminate()
    drv.wait(10)
    shutil.rmtree(profile, ignore_errors=True)


def test_chat_page_streams_a_reply(server, ref, browser):
    messages = [{"role": "user", "content": "Tell me a joke."}]
    ids, _ = greedy(ref, chat_ids(ref, messages), 10)
    wd = browser
    wd.cmd("POST", "/url", {"url": server + "/"})
    wd.js("localStorage.setItem('llamapy.api-key', arguments[0]);"
          "localStorage.setItem('llamapy.temperature', '0'); localStorage.setItem('llamapy.max-tokens', '10')", KEY)
    wd.cmd("POST", "/refresh", {})
    wd.cmd("POST", f"/element/{wd.find('#input')}/value", {"text": "Tell me a joke."})
    wd.cmd("POST", f"/element/{wd.find('#send')}/click", {})
    status = ""
    for _ in range(600):
        status = wd.js("return document.getElementById('status').textContent")
        if status.startswith("done") or status == "error":
            break
        time.sleep(0.1)
    assert status.startswith("done"), status
    msgs = wd.js("return Array.from(document.querySelectorAll('.msg')).map(e => [e.className, e.textContent])")
    assert msgs == [["msg user", "Tell me a joke."], ["msg assistant", text_of(ref, ids)]]
    assert wd.js("return document.getElementById('model').textContent") == "smol"

