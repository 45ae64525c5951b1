"""`llamapy serve` end to end: a real server on a loopback port with the default model.

One server process (4 slots, an API key) is shared by every test here. Generated text is checked
against the engine in this process. A request that runs alone with nothing cached is computed exactly
as the reference computes it (prompt in one call, then one token per call), so its output must match
bit for bit (logprobs). Elsewhere the same row can be computed in a batch of a different shape (a
reused prompt prefix, other slots' tokens beside it), which moves logits by float rounding, as in
llama.cpp; there the text is checked token by token to be a greedy continuation: every token is the
model's top choice or within TIE of it, and the text ends where the model may end it.
Clients: the official `openai` package, the tutorials' `curl`, httpx, and headless Chromium.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serverutil import free_port, send_on_chat_page, stop, wait_for_health  # noqa: E402

KEY = "sk-test-4b1d2c9e"
N_SLOTS = 4
CTX = 2048  # 512 positions per slot


@pytest.fixture(scope="session")
def server(default_model):
    port = free_port()
    cmd = [sys.executable, "-m", "llamapy", "serve", "--port", str(port), "-np", str(N_SLOTS), "-c", str(CTX),
           "--api-key", KEY, "--alias", "smol", "--max-queue", "8",
           "--no-context-shift"]  # test_max_tokens_is_clamped_to_the_context checks the end of a full slot
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_for_health(proc, url, 180, "llamapy serve")
    yield url
    stop(proc)


@pytest.fixture(scope="session")
def ref(default_model):
    """The engine in this process: greedy continuations to compare the server with."""
    from llamapy.chat.templates import ChatTemplate
    from llamapy.engine.engine import Engine

    llm = Engine(default_model, n_ctx=1024, n_threads=1)
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


TIE = 1.0  # logits this close to the top count as a tie (batch-shape rounding reaches ~0.5 on this model)


def check_greedy(llm, prompt_ids: list[int], text: str, n_max: int, end: str) -> int:
    """Assert that `text` is a greedy continuation of the prompt and return how many tokens it took.

    At each step the chosen token is the highest-logit one within TIE of the top whose bytes continue
    `text`. `end`: "length" (exactly n_max tokens), "stop" (an end-of-generation token is a top choice
    after the text), "prefix" (the text may end inside the last token: a stop string cut it)."""
    tok = llm.tokenizer
    data = text.encode()
    llm.kv_clear(0)
    logits = llm.eval(prompt_ids, 0)
    pos = n = 0
    while pos < len(data):
        assert n < n_max, f"more text than {n_max} tokens: {text!r}"
        top = float(logits.max())
        near = [int(t) for t in np.argsort(-logits, kind="stable") if logits[t] >= top - TIE]
        choice = None
        for t in near:
            piece = _piece(llm, t)
            if piece and (data.startswith(piece, pos) or (end == "prefix" and piece.startswith(data[pos:]))):
                choice = t
                break
        assert choice is not None, (f"no top token continues the text at byte {pos}: {text!r}; "
                                    f"top: {[_piece(llm, t) for t in near[:5]]}")
        pos += len(_piece(llm, choice))
        n += 1
        logits = llm.eval([choice], 0)
    if end == "length":
        assert n == n_max, f"stopped after {n} of {n_max} tokens: {text!r}"
    elif end == "stop":
        top = float(logits.max())
        assert any(tok.is_eog(int(t)) for t in np.nonzero(logits >= top - TIE)[0]), f"the model would go on: {text!r}"
    return n


def check_finished(llm, prompt_ids: list[int], text: str, n_max: int, finish: str) -> int:
    """check_greedy for an answer that ended with OpenAI's finish_reason; returns the tokens generated
    (the end-of-generation token counts, as llama-server counts it)."""
    n = check_greedy(llm, prompt_ids, text, n_max, "length" if finish == "length" else "stop")
    return n + (finish == "stop")


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
    ids = encode(ref, prompt)
    c = oai.completions.create(model="davinci-002", prompt=prompt, max_tokens=8, temperature=0)
    ch = c.choices[0]
    assert c.usage.completion_tokens == check_finished(ref, ids, ch.text, 8, ch.finish_reason)
    assert c.usage.prompt_tokens == len(ids)
    assert c.model == "davinci-002"  # any model name is accepted
    chunks = list(oai.completions.create(model="x", prompt=prompt, max_tokens=8, temperature=0, stream=True))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    check_finished(ref, ids, text, 8, [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1])
    models = oai.models.list()
    assert [m.id for m in models.data] == ["smol"]


def test_openai_client_chat_stream_and_not(server, ref):
    import openai

    oai = openai.OpenAI(base_url=server + "/v1", api_key=KEY)
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is 2 + 2?"}]
    ids = chat_ids(ref, messages)
    r = oai.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=16, temperature=0)
    assert r.choices[0].message.role == "assistant"
    want = r.choices[0].message.content
    assert r.usage.completion_tokens == check_finished(ref, ids, want, 16, r.choices[0].finish_reason)
    assert r.usage.prompt_tokens == len(ids)
    chunks = list(oai.chat.completions.create(model="gpt-4o-mini", messages=messages, max_completion_tokens=16,
                                              temperature=0, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    assert chunks[-1].usage.completion_tokens == check_finished(ref, ids, text, 16, finish)
    # stop as a string and as a list: the answer ends just before the first stop string
    words = want.split()
    if len(words) > 1:
        r2 = oai.chat.completions.create(model="m", messages=messages, max_tokens=16, temperature=0, stop=words[1])
        cut = r2.choices[0].message.content
        assert r2.choices[0].finish_reason == "stop" and words[1] not in cut
        check_greedy(ref, ids, cut + words[1], 16, "prefix")
        r3 = oai.chat.completions.create(model="m", messages=messages, max_tokens=16, temperature=0,
                                         stop=["\u2603", words[1]])
        assert r3.choices[0].finish_reason == "stop" and words[1] not in r3.choices[0].message.content
        check_greedy(ref, ids, r3.choices[0].message.content + words[1], 16, "prefix")


def test_chat_logprobs_are_the_models(server, ref):
    # nothing reused, nothing beside it: computed exactly as greedy() computes it, so equal to 1e-4
    messages = [{"role": "user", "content": "Name a color."}]
    ids, logits = greedy(ref, chat_ids(ref, messages), 4)
    with client(server) as c:
        d = c.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 4, "temperature": 0,
                                                 "logprobs": True, "top_logprobs": 3, "cache_prompt": False}).json()
    content = d["choices"][0]["logprobs"]["content"]
    assert d["choices"][0]["message"]["content"] == text_of(ref, ids)
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
        assert tops == pytest.approx(sorted(lsm, reverse=True)[:3], abs=1e-4)


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
    prompt = "Building a website can be done in 10 simple steps:"
    body = '{"prompt": "Building a website can be done in 10 simple steps:","n_predict": 12, "temperature": 0}'
    out = subprocess.run(["curl", "-s", "--request", "POST", "--url", server + "/completion",
                          "--header", "Content-Type: application/json", "--header", f"Authorization: Bearer {KEY}",
                          "--data", body], capture_output=True, text=True, timeout=120, check=False)
    d = json.loads(out.stdout)
    assert d["stop"] is True and d["stop_type"] in ("limit", "eos")
    n = check_greedy(ref, encode(ref, prompt), d["content"], 12, "length" if d["stop_type"] == "limit" else "stop")
    assert d["tokens_predicted"] == n + (d["stop_type"] == "eos")
    assert d["tokens_evaluated"] == len(encode(ref, prompt))
    assert d["generation_settings"]["n_predict"] == 12 and d["generation_settings"]["temperature"] == 0
    t = d["timings"]
    assert t["predicted_n"] == d["tokens_predicted"] and t["prompt_n"] >= 1
    for k in ("prompt_ms", "prompt_per_token_ms", "prompt_per_second", "predicted_ms", "predicted_per_token_ms",
              "predicted_per_second"):
        assert t[k] > 0


def test_completion_stream_tokens_and_prefix_reuse(server, ref):
    prompt = "Once upon a time, in a small village,"
    ids = encode(ref, prompt)
    with client(server) as c:
        with c.stream("POST", "/completion", json={"prompt": prompt, "n_predict": 10, "temperature": 0,
                                                   "stream": True, "id_slot": 2}) as r:
            chunks = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: ")]
        text = "".join(ch["content"] for ch in chunks)
        streamed = [t for ch in chunks[:-1] for t in ch["tokens"]]
        assert text == text_of(ref, streamed)
        assert chunks[-1]["stop"] is True
        check_greedy(ref, ids, text, 10, "length" if chunks[-1]["stop_type"] == "limit" else "stop")
        # the same prompt again in the same slot: only the last prompt token is evaluated again
        d = c.post("/completion", json={"prompt": prompt, "n_predict": 10, "temperature": 0, "id_slot": 2,
                                        "return_tokens": True}).json()
        assert d["timings"]["prompt_n"] == 1 and d["tokens_evaluated"] == len(ids)
        assert d["content"] == text_of(ref, d["tokens"])
        check_greedy(ref, ids, d["content"], 10, "length" if d["stop_type"] == "limit" else "stop")
        # token ids as the prompt, and ids mixed with text, are the same prompt
        for p in (ids, [ids[0], ref.tokenizer.decode(ids[1:])]):
            d2 = c.post("/completion", json={"prompt": p, "n_predict": 10, "temperature": 0,
                                             "cache_prompt": False}).json()
            assert d2["tokens_evaluated"] == len(ids)
            check_greedy(ref, ids, d2["content"], 10, "length" if d2["stop_type"] == "limit" else "stop")


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
    ids = chat_ids(ref, messages)
    with client(server) as c:
        d = c.post("/api/chat", json={"model": "smol", "messages": messages, "stream": False,
                                      "options": {"temperature": 0, "num_predict": 8}}).json()
        assert d["message"]["role"] == "assistant" and d["done"] is True
        assert d["eval_count"] == check_finished(ref, ids, d["message"]["content"], 8, d["done_reason"])
        assert d["prompt_eval_count"] == len(ids)
        with c.stream("POST", "/api/chat", json={"messages": messages,
                                                 "options": {"temperature": 0, "num_predict": 8}}) as r:
            objs = [json.loads(ln) for ln in r.iter_lines() if ln]
        assert objs[-1]["done"] is True and all(not o["done"] for o in objs[:-1])
        text = "".join(o["message"]["content"] for o in objs)
        assert objs[-1]["eval_count"] == check_finished(ref, ids, text, 8, objs[-1]["done_reason"])
        g = c.post("/api/generate", json={"prompt": "Say hello.", "stream": False,
                                          "options": {"temperature": 0, "num_predict": 8}}).json()
        check_finished(ref, ids, g["response"], 8, g["done_reason"])  # /api/generate applies the chat template
        assert g["context"][: len(ids)] == ids
        tags = c.get("/api/tags").json()["models"]
        assert tags[0]["name"] == "smol" and tags[0]["details"]["quantization_level"] == "Q4_1"


# --- concurrency -------------------------------------------------------------------------------------------------


def test_eight_concurrent_streams_all_finish_correctly(server, ref):
    prompts = [f"Fact number {i}: the ocean" for i in range(4)] + [f"My favourite food is {w}" for w in
                                                                      ("pizza", "rice", "soup", "bread")]

    async def one(c: httpx.AsyncClient, p: str) -> tuple[str, str]:
        text, finish = "", None
        async with c.stream("POST", "/v1/completions", json={"prompt": p, "max_tokens": 12, "temperature": 0,
                                                             "stream": True}) as r:
            assert r.status_code == 200
            async for ln in r.aiter_lines():
                if ln.startswith("data: ") and ln != "data: [DONE]":
                    ch = json.loads(ln[6:])["choices"]
                    text += ch[0]["text"] if ch else ""
                    finish = ch[0]["finish_reason"] or finish if ch else finish
        return text, finish

    async def main():
        async with httpx.AsyncClient(base_url=server, headers={"Authorization": f"Bearer {KEY}"},
                                     timeout=300) as c:
            return await asyncio.gather(*(one(c, p) for p in prompts))

    results = asyncio.run(main())
    for p, (text, finish) in zip(prompts, results):
        check_finished(ref, encode(ref, p), text, 12, finish)  # each stream got its own prompt's continuation
    assert len({t for t, _ in results}) >= 6


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
            ("/completion", {"prompt": "word " * 600}),  # more tokens than a slot's context
            ("/api/generate", {"prompt": "x", "options": {"num_predict": 1.5}}),
            ("/detokenize", {"tokens": [-5]}),
            ("/completion", {"prompt": "x", "samplers": ["top_k", "xyz"]}),
            ("/completion", {"prompt": "x", "samplers": "kq"}),
            ("/completion", {"prompt": "x", "dry_sequence_breakers": []}),
            ("/completion", {"prompt": "x", "dry_penalty_last_n": -2}),
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
    prompt = "word " * 480
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
        # llama-server's public endpoints: the model list needs no key
        for path in ("/v1/models", "/models"):
            r = c.get(path)
            assert r.status_code == 200 and r.json()["data"], path
        for method, path in (("POST", "/completion"), ("POST", "/v1/chat/completions"), ("GET", "/api/tags"),
                             ("GET", "/props"), ("GET", "/slots"), ("POST", "/v1/completions")):
            r = c.request(method, path, json={"prompt": "x"})
            assert r.status_code == 401, path
            assert r.json()["error"]["type"] == "authentication_error"
        assert c.get("/props", headers={"Authorization": "Bearer " + KEY[:-1]}).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0).completions.create(
            model="m", prompt="x", max_tokens=1)


def test_refuses_to_start_without_a_model_or_a_port(server, tmp_path):
    out = subprocess.run([sys.executable, "-m", "llamapy", "serve", "-m", str(tmp_path / "none.gguf"),
                          "--port", str(free_port())], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1
    assert out.stderr.strip().startswith("error:") and "none.gguf" in out.stderr
    port = server.rsplit(":", 1)[1]  # taken by the test server
    out = subprocess.run([sys.executable, "-m", "llamapy", "serve", "--port", port], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 1
    assert out.stderr.strip() == f"error: can't listen on 127.0.0.1:{port}: Address already in use " \
                                 "(another server there? try --port)"


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
    port = free_port()
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
    wd = browser
    wd.cmd("POST", "/url", {"url": server + "/"})
    wd.js("localStorage.setItem('llamapy.api-key', arguments[0]);"
          "localStorage.setItem('llamapy.temperature', '0'); localStorage.setItem('llamapy.max-tokens', '10')", KEY)
    status = send_on_chat_page(wd, "Tell me a joke.")
    assert status.startswith("done"), status
    msgs = wd.js("return Array.from(document.querySelectorAll('.msg')).map(e => [e.className, e.textContent])")
    assert [m[0] for m in msgs] == ["msg user", "msg assistant"] and msgs[0][1] == "Tell me a joke."
    reply = msgs[1][1]
    n = check_greedy(ref, chat_ids(ref, [{"role": "user", "content": "Tell me a joke."}]), reply, 10,
                     "length" if "token limit" in status else "stop")
    assert f"{n + ('token limit' not in status)} tokens" in status
    assert wd.js("return document.getElementById('model').textContent") == "smol"


def test_sampler_order_and_dry_fields_reach_the_chain(server):
    with client(server) as c:
        base = {"prompt": "The capital of France is", "n_predict": 8, "cache_prompt": False}
        greedy = c.post("/completion", json={**base, "temperature": 0}).json()["content"]
        # a chain of top-k alone with k = 1 is greedy whatever the temperature and seed
        only_k = c.post("/completion", json={**base, "temperature": 5, "seed": 3, "samplers": "k", "top_k": 1})
        assert only_k.status_code == 200 and only_k.json()["content"] == greedy
        only_k = c.post("/completion", json={**base, "temperature": 5, "seed": 3, "samplers": ["top_k"], "top_k": 1})
        assert only_k.json()["content"] == greedy
        assert only_k.json()["generation_settings"]["samplers"] == ["top_k"]
        # DRY steers greedy decoding off a repeating pattern
        rep = {"prompt": "1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2", "n_predict": 8, "temperature": 0, "cache_prompt": False}
        plain = c.post("/completion", json=rep).json()["content"]
        dry = c.post("/completion", json={**rep, "dry_multiplier": 3.0, "dry_sequence_breakers": ["none"]})
        assert dry.status_code == 200 and dry.json()["content"] != plain
        settings = dry.json()["generation_settings"]
        assert settings["dry_multiplier"] == 3.0 and settings["dry_sequence_breakers"] == ["none"]
        assert settings["samplers"] == ["penalties", "dry", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"]
