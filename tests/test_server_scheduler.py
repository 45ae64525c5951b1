"""The server's machinery on a tiny deterministic stand-in model: scheduling, streaming, stops, limits, guards.

The stand-in's vocabulary is the 256 bytes plus an end-of-text token; after a lowercase letter it
predicts the next letter, after "z" the end of text (or "a" again when that is banned), after anything
else "a". So any prompt continues "abcdefghijklmnopqrstuvwxyz" and stops: exact expected text
without loading a model. The real model is exercised end to end in test_server.py.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serverutil import ThreadedServer, free_port  # noqa: E402

from llamapy.chat.templates import ChatTemplate
from llamapy.generation.params import SamplerParams
from llamapy.generation.text import TextStream, partial_stop_start
from llamapy.server.app import create_app
from llamapy.server.common import ServerState
from llamapy.server.scheduler import DoneEvent, GenRequest, Job, Scheduler

EOS = 256
ALPHABET = "abcdefghijklmnopqrstuvwxyz"
KEY = "test-key-0123456789"


class ToyBackend:
    """Byte-level toy model with a per-sequence token cache, recording every batch it evaluates."""

    n_vocab = 257
    n_embd = 8

    def __init__(self, n_slots: int = 2, n_ctx: int = 64, n_batch: int = 16, step_delay: float = 0.0):
        self.n_slots, self.n_ctx, self.n_ctx_embed, self.n_batch = n_slots, n_ctx, n_ctx, n_batch
        self.step_delay = step_delay
        self.cache: dict[int, list[int]] = {i: [] for i in range(n_slots)}
        self.batches: list[list[tuple[int, int]]] = []  # per call: (seq, n_tokens)
        self.metadata = {"general.architecture": "llama", "general.file_type": 3}
        self.lock = threading.Lock()

    def eval_batch(self, items):
        time.sleep(self.step_delay)
        with self.lock:
            self.batches.append([(s, len(t)) for s, t in items])
        out = []
        for seq, toks in items:
            assert len(self.cache[seq]) + len(toks) <= self.n_ctx, "context overflow"
            self.cache[seq] += toks
            out.append(self.logits(toks[-1]))
        return out

    @staticmethod
    def logits(last: int) -> np.ndarray:
        x = np.zeros(257, dtype=np.float32)
        c = chr(last) if last < 256 else ""
        if c in ALPHABET:
            x[EOS if c == "z" else last + 1] = 10.0
        else:
            x[ord("a")] = 10.0
        x[ord("a")] = max(x[ord("a")], 5.0)
        return x

    def cache_tokens(self, seq):
        return list(self.cache[seq])

    def truncate(self, seq, n):
        self.cache[seq] = self.cache[seq][:n]

    def embed(self, tokens):
        v = np.bincount(np.asarray(tokens) % 8, minlength=8).astype(np.float32)
        return v / np.linalg.norm(v)

    def make_sampler(self, params):
        ignore_eos = params.ignore_eos

        class Greedy:
            def sample(self, logits, history):
                x = np.array(logits)
                if ignore_eos:
                    x[EOS] = -np.inf
                return int(np.argmax(x))

        return Greedy()

    def is_eog(self, t):
        return t == EOS

    def piece(self, t, special=False):
        return bytes([t]) if t < 256 else b""

    def tokenize(self, text, add_special=True, parse_special=True):
        return list(text.encode())

    def detokenize(self, tokens):
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")

    def meta(self):
        return {"vocab_type": 2, "n_vocab": 257, "n_ctx_train": 64, "n_embd": 8, "n_params": 1, "size": 1}

    def file_type_name(self):
        return "Q4_1"


# --- pure pieces -----------------------------------------------------------------------------------------


def test_text_stream_holds_partial_stop_and_cuts_it():
    ts = TextStream(lambda t: bytes([t]), ["END"])
    sent = [ts.add(b) for b in b"abEN"]
    assert sent == ["a", "b", "", ""]  # "E", "EN" could start "END"
    assert ts.add(ord("D")) == ""
    assert ts.stopped_word == "END" and ts.text == "ab"
    ts2 = TextStream(lambda t: bytes([t]), ["END"])
    assert [ts2.add(b) for b in b"ENx"] == ["", "", "ENx"]  # released once it can't be a stop string
    assert ts2.finish() == ""


def test_text_stream_keeps_utf8_whole_and_flushes_held_text_at_the_end():
    data = "é€".encode()
    ts = TextStream(lambda t: bytes([t]), [])
    assert [ts.add(b) for b in data] == ["", "é", "", "", "€"]
    ts = TextStream(lambda t: bytes([t]), ["xyz"])
    assert [ts.add(b) for b in b"axy"] == ["a", "", ""]
    assert ts.finish() == "xy" and ts.text == "axy"
    ts = TextStream(lambda t: bytes([t]), [])
    assert ts.add(0xC3) == "" and ts.finish() == "\ufffd"


def test_partial_stop_start():
    assert partial_stop_start("hello wor", ["world"]) == 6
    assert partial_stop_start("hello", ["xy", "lo!"]) == 3
    assert partial_stop_start("abc", ["zz"]) == 3


def test_scheduler_batches_all_slots_in_one_call_and_reuses_prefixes():
    be = ToyBackend(n_slots=3, n_ctx=64, n_batch=64)
    sched = Scheduler(be, max_queue=4)
    loop = asyncio.new_event_loop()
    q: asyncio.Queue = asyncio.Queue()
    prompts = [b"1", b"hello ", b"0123456789"]
    jobs = [Job(loop, q, i, gen=GenRequest(prompt=list(p), n_predict=5)) for i, p in enumerate(prompts)]
    sched.submit(jobs)
    for _ in range(6):
        sched.step()
    assert be.batches[0] == [(0, 1), (1, 6), (2, 10)]  # three prompts in one call
    assert be.batches[1] == [(0, 1), (1, 1), (2, 1)]  # then one token per slot per call
    loop.run_until_complete(asyncio.sleep(0))
    events = []
    while not q.empty():
        events.append(q.get_nowait())
    done = {e.index: e.result for e in events if isinstance(e, DoneEvent)}
    assert [done[i].content for i in range(3)] == ["abcde"] * 3
    assert all(done[i].stop_type == "limit" and not done[i].truncated for i in range(3))
    # the same prompt again is served by the slot that holds it, re-evaluating only the last token
    q2: asyncio.Queue = asyncio.Queue()
    job = Job(loop, q2, 0, gen=GenRequest(prompt=list(b"hello "), n_predict=2))
    sched.submit([job])
    while not job.finished:
        sched.step()
    loop.run_until_complete(asyncio.sleep(0))
    r = q2.get_nowait().result
    assert (r.id_slot, r.n_prompt, r.n_prompt_eval, r.content) == (1, 6, 1, "ab")
    loop.close()


def test_scheduler_drops_cancelled_jobs_and_refuses_past_the_queue_limit():
    be = ToyBackend(n_slots=1)
    sched = Scheduler(be, max_queue=1)
    loop = asyncio.new_event_loop()
    q: asyncio.Queue = asyncio.Queue()
    a = Job(loop, q, 0, gen=GenRequest(prompt=[1], n_predict=-1, sampling=SamplerParams(ignore_eos=True)), stream=True)
    b = Job(loop, q, 1, gen=GenRequest(prompt=[2], n_predict=3))
    sched.submit([a, b])  # one runs, one waits
    from llamapy.server.errors import APIError

    with pytest.raises(APIError) as e:
        sched.submit([Job(loop, q, 2, gen=GenRequest(prompt=[3]))])
    assert e.value.status == 503
    sched.step()
    sched.step()
    assert sched.slots[0].job is a
    a.cancelled = True
    sched.step()  # a is dropped, b takes the slot
    assert sched.slots[0].job is b
    while not b.finished:
        sched.step()
    assert sched.busy_slots() == 0
    loop.close()


def test_generation_stops_when_the_slot_context_is_full():
    be = ToyBackend(n_slots=1, n_ctx=16, n_batch=16)
    sched = Scheduler(be)
    loop = asyncio.new_event_loop()
    q: asyncio.Queue = asyncio.Queue()
    job = Job(loop, q, 0, gen=GenRequest(prompt=list(b"0123456789"), n_predict=100,
                                             sampling=SamplerParams(ignore_eos=True)))
    sched.submit([job])
    while not job.finished:
        sched.step()
    loop.run_until_complete(asyncio.sleep(0))
    r = q.get_nowait().result
    assert (r.content, r.stop_type, r.truncated, r.n_decoded) == ("abcdef", "limit", True, 6)
    assert len(be.cache[0]) <= 16
    loop.close()


# --- the HTTP app on the toy model ------------------------------------------------------------------------


class LiveApp(ThreadedServer):
    def __init__(self, backend, **kw):
        import uvicorn

        self.backend = backend
        self.state = ServerState(backend=backend, scheduler=Scheduler(backend, max_queue=kw.pop("max_queue", 4)),
                                 template=ChatTemplate.from_name("chatml"), model_id="toy", model_path=__file__, **kw)
        self.port = free_port()
        self._serve(uvicorn.Config(create_app(self.state), host="127.0.0.1", port=self.port, log_level="warning"))


@pytest.fixture(scope="module")
def toy():
    app = LiveApp(ToyBackend(n_slots=2, n_ctx=128, n_batch=16, step_delay=0.002), api_key=KEY, max_body=8192)
    yield app
    app.close()


def _client(app, key=KEY) -> httpx.Client:
    return httpx.Client(base_url=app.url, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=30)


def test_completion_text_stop_strings_and_limits(toy):
    with _client(toy) as c:
        r = c.post("/completion", json={"prompt": "1", "n_predict": 40})
        assert r.status_code == 200
        d = r.json()
        assert (d["content"], d["stop_type"], d["tokens_predicted"], d["tokens_evaluated"]) == (ALPHABET, "eos", 27, 1)
        assert set(d["timings"]) == {"prompt_n", "prompt_ms", "prompt_per_token_ms", "prompt_per_second",
                                     "predicted_n", "predicted_ms", "predicted_per_token_ms", "predicted_per_second"}
        d = c.post("/completion", json={"prompt": "1", "stop": ["fgh"], "n_predict": 40}).json()
        assert (d["content"], d["stop_type"], d["stopping_word"]) == ("abcde", "word", "fgh")
        d = c.post("/completion", json={"prompt": [120, " "], "n_predict": 3, "return_tokens": True}).json()
        assert (d["content"], d["tokens"], d["stop_type"]) == ("abc", [97, 98, 99], "limit")
        d = c.post("/v1/completions", json={"prompt": ["1", "2"], "max_tokens": 2, "stop": "b"}).json()
        assert [ch["text"] for ch in d["choices"]] == ["a", "a"]
        assert [ch["finish_reason"] for ch in d["choices"]] == ["stop", "stop"]
        assert d["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}


def test_streams_sse_and_ndjson(toy):
    with _client(toy) as c:
        with c.stream("POST", "/completion", json={"prompt": "1", "n_predict": 5, "stream": True}) as r:
            lines = [ln for ln in r.iter_lines() if ln]
        chunks = [json.loads(ln.removeprefix("data: ")) for ln in lines]
        assert "".join(ch["content"] for ch in chunks) == "abcde"
        assert chunks[-1]["stop"] is True and chunks[-1]["stop_type"] == "limit"
        with c.stream("POST", "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                             "max_tokens": 4, "stream": True}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            raw = r.read().decode()
        events = raw.split("\n\n")
        assert events[-1] == "" and all(e.startswith("data: ") and "\n" not in e for e in events[:-1])
        lines = events[:-1]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(ln.removeprefix("data: ")) for ln in lines[:-1]]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks) == "abcd"
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        with c.stream("POST", "/api/generate", json={"prompt": "hi!", "raw": True, "options": {"num_predict": 3}}) as r:
            assert r.headers["content-type"].startswith("application/x-ndjson")
            objs = [json.loads(ln) for ln in r.iter_lines() if ln]
        assert "".join(o["response"] for o in objs) == "abc"
        assert objs[-1]["done"] is True and objs[-1]["done_reason"] == "length" and objs[-1]["eval_count"] == 3


def test_bad_requests_get_openai_style_4xx(toy):
    with _client(toy) as c:
        cases = [
            ("/completion", b'{"prompt": "x", ', 400),
            ("/completion", b'[1, 2]', 400),
            ("/completion", b'{"prompt": "x", "n_predict": "5"}', 400),
            ("/completion", b'{"prompt": "x", "temperature": NaN}', 400),
            ("/completion", b'{"prompt": "x", "top_p": 1.5}', 400),
            ("/completion", b'{"prompt": [1, 300]}', 400),
            ("/completion", b'{"prompt": [-1]}', 400),
            ("/completion", b'{"prompt": {"a": 1}}', 400),
            ("/completion", b'{"prompt": "' + b"x" * 200 + b'"}', 400),  # longer than a slot's context
            ("/v1/chat/completions", b'{"messages": []}', 400),
            ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": 5}]}', 400),
            ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', 400),
            ("/v1/completions", b'{"prompt": "x", "n": 2}', 400),
            ("/v1/completions", b'{"prompt": "x", "logit_bias": {"999": 1}}', 400),
            ("/detokenize", b'{"tokens": [1, 1000]}', 400),
            ("/v1/embeddings", b'{"input": ""}', 400),
            ("/api/chat", b'{"messages": [{"role": "user", "content": "x"}], "options": {"seed": "1"}}', 400),
            ("/completion", b"\xff\xfe", 400),
            ("/completion", b"", 400),
            ("/completion", b"[" * 3000 + b"]" * 3000, 400),  # nested too deep
            ("/completion", b'{"prompt": "\\ud800"}', 400),  # a lone surrogate is no text
            ("/completion", b'{"prompt": "x", "n_predict": 1e400}', 400),
            ("/completion", b'{"prompt": "x", "n_predict": ' + b"9" * 5000 + b"}", 400),
        ]
        for path, body, status in cases:
            r = c.post(path, content=body)
            assert r.status_code == status, (path, body, r.text)
            err = r.json()["error"]
            assert err["code"] == status and err["type"] == "invalid_request_error" and err["message"]
        r = c.post("/completion", content=b'{"prompt": "' + b"x" * 10000 + b'"}')
        assert r.status_code == 413 and r.json()["error"]["code"] == 413

        def chunks():
            for _ in range(10):
                yield b" " * 1000

        r = c.post("/completion", content=chunks())  # no Content-Length: counted as it arrives
        assert r.status_code == 413
        r = c.get("/nope")
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
        assert c.get("/completion").status_code == 405
        assert c.get("/health").json()["status"] == "ok"  # the server is still fine


def test_api_key_guard(toy):
    with _client(toy, key=None) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/").status_code == 200
        for path in ("/props", "/api/tags", "/slots"):
            r = c.get(path)
            assert r.status_code == 401
            assert r.json()["error"]["type"] == "authentication_error"
        for path in ("/v1/models", "/models"):  # llama-server's public endpoints
            assert c.get(path).status_code == 200
        r = c.post("/completion", json={"prompt": "x"}, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = c.post("/completion", json={"prompt": "x"}, headers={"Authorization": KEY})  # no scheme
        assert r.status_code == 401
    with _client(toy) as c:
        assert c.get("/v1/models").json()["data"][0]["id"] == "toy"


def test_concurrent_streams_batch_together_and_a_stalled_reader_stalls_nobody(toy):
    be = toy.backend
    n0 = len(be.batches)

    async def one(client, i):
        text = ""
        async with client.stream("POST", "/completion",
                                 json={"prompt": f"{i}", "n_predict": 20, "stream": True}) as r:
            async for ln in r.aiter_lines():
                if ln.startswith("data: "):
                    text += json.loads(ln[6:])["content"]
        return text

    async def main():
        async with httpx.AsyncClient(base_url=toy.url, headers={"Authorization": f"Bearer {KEY}"},
                                     timeout=30) as client:
            # a client that opens a long stream and never reads it
            stalled = client.stream("POST", "/completion", json={"prompt": "s", "n_predict": 60, "ignore_eos": True,
                                                                 "stream": True})
            await stalled.__aenter__()
            texts = await asyncio.gather(*(one(client, i) for i in range(4)))
            await stalled.__aexit__(None, None, None)
            return texts

    texts = asyncio.run(main())
    assert texts == [ALPHABET[:20]] * 4
    assert max(len(b) for b in be.batches[n0:]) == 2  # both slots advanced in one call


def test_disconnect_cancels_and_full_queue_answers_503():
    app = LiveApp(ToyBackend(n_slots=1, n_ctx=4096, n_batch=16, step_delay=0.01), max_queue=1)
    try:
        body = {"prompt": "1", "n_predict": 3000, "ignore_eos": True, "stream": True}

        async def main():
            async with httpx.AsyncClient(base_url=app.url, timeout=30) as c:
                a = c.stream("POST", "/completion", json=body)
                ra = await a.__aenter__()
                it = ra.aiter_lines()
                assert (await it.__anext__()).startswith("data: ")  # a is generating
                b = c.stream("POST", "/completion", json=body)
                rb_task = asyncio.ensure_future(b.__aenter__())  # b waits in the queue
                for _ in range(100):
                    if (await c.get("/health")).json()["requests_waiting"] == 1:
                        break
                    await asyncio.sleep(0.01)
                r = await c.post("/completion", json={"prompt": "x", "n_predict": 2})
                assert r.status_code == 503 and r.json()["error"]["type"] == "unavailable_error"
                await a.__aexit__(None, None, None)  # a goes away: its slot frees and b starts
                rb = await rb_task
                assert (await rb.aiter_lines().__anext__()).startswith("data: ")
                await b.__aexit__(None, None, None)
                for _ in range(200):
                    h = (await c.get("/health")).json()
                    if h["slots_processing"] == 0:
                        break
                    await asyncio.sleep(0.01)
                assert h["slots_processing"] == 0 and h["requests_waiting"] == 0
                r = await c.post("/completion", json={"prompt": "1", "n_predict": 2})
                assert r.json()["content"] == "ab"

        asyncio.run(main())
        assert len(app.backend.cache[0]) < 1000  # neither ran anywhere near its 3000 tokens
    finally:
        app.close()


def test_embeddings_shapes(toy):
    import base64

    with _client(toy) as c:
        d = c.post("/v1/embeddings", json={"input": ["ab", "cd"]}).json()
        assert [x["index"] for x in d["data"]] == [0, 1] and len(d["data"][0]["embedding"]) == 8
        assert d["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
        d64 = c.post("/v1/embeddings", json={"input": "ab", "encoding_format": "base64"}).json()
        v = np.frombuffer(base64.b64decode(d64["data"][0]["embedding"]), dtype="<f4")
        np.testing.assert_array_equal(v, np.asarray(d["data"][0]["embedding"], dtype=np.float32))
        d = c.post("/embedding", json={"content": "ab"}).json()
        assert d[0]["index"] == 0 and len(d[0]["embedding"][0]) == 8


def test_logprobs_small_endpoints_and_embedding_only_mode(toy):
    import math

    with _client(toy) as c:
        d = c.post("/completion", json={"prompt": "1", "n_predict": 2, "n_probs": 2}).json()
        p0 = d["completion_probabilities"][0]
        assert (p0["id"], p0["token"], p0["bytes"]) == (97, "a", [97])
        assert p0["logprob"] == pytest.approx(10 - math.log(math.exp(10) + 256), abs=1e-9)
        assert p0["top_logprobs"][0]["id"] == 97 and len(p0["top_logprobs"]) == 2
        d = c.post("/v1/chat/completions", json={"messages": [{"role": "developer", "content": "be brief"},
                                                              {"role": "user", "content": "hi"}],
                                                 "max_tokens": 3, "logprobs": True}).json()
        assert d["choices"][0]["message"]["content"] == "abc"
        assert [x["token"] for x in d["choices"][0]["logprobs"]["content"]] == ["a", "b", "c"]
        assert c.post("/apply-template", json={"messages": [{"role": "user", "content": "hi"}]}).json() == {
            "prompt": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"}
        assert c.post("/tokenize", json={"content": "hé", "with_pieces": True}).json()["tokens"] == [
            {"id": 104, "piece": "h"}, {"id": 195, "piece": [195]}, {"id": 169, "piece": [169]}]
        assert c.post("/detokenize", json={"tokens": [104, 195, 169]}).json() == {"content": "hé"}
        assert c.get("/props").json()["total_slots"] == 2
        assert [(x["id"], x["is_processing"]) for x in c.get("/slots").json()] == [(0, False), (1, False)]
        assert c.get("/api/tags").json()["models"][0]["details"]["quantization_level"] == "Q4_1"
        d = c.post("/api/chat", json={"messages": [{"role": "user", "content": "hi"}], "stream": False,
                                      "options": {"num_predict": 2}}).json()
        assert d["message"] == {"role": "assistant", "content": "ab"} and d["done_reason"] == "length"
        d = c.post("/api/generate", json={"prompt": "!", "raw": True, "context": [104, 105], "stream": False,
                                          "options": {"num_predict": 2}}).json()
        assert d["response"] == "ab" and d["context"] == [104, 105, 33, 97, 98] and d["prompt_eval_count"] == 3
        e = c.post("/api/embed", json={"input": ["ab", "cd"]}).json()
        assert len(e["embeddings"]) == 2 and e["prompt_eval_count"] == 4
        e1 = c.post("/api/embeddings", json={"prompt": "ab"}).json()
        assert e1["embedding"] == e["embeddings"][0]
    app = LiveApp(ToyBackend(n_slots=1), embedding_only=True)
    try:
        with _client(app, key=None) as c:
            for path, body in (("/completion", {"prompt": "1"}), ("/v1/completions", {"prompt": "1"}),
                               ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
                               ("/api/generate", {"prompt": "1"})):
                r = c.post(path, json=body)
                assert r.status_code == 501 and r.json()["error"]["type"] == "not_supported_error"
            assert c.post("/v1/embeddings", json={"input": "ab"}).status_code == 200
    finally:
        app.close()


def test_token_limit_capped_by_the_server_and_loopback_detection():
    from types import SimpleNamespace

    from llamapy.server import is_loopback
    from llamapy.server.common import n_predict_of

    st = SimpleNamespace(default_n_predict=-1)
    assert [n_predict_of(st, None), n_predict_of(st, 5), n_predict_of(st, None, 7), n_predict_of(st, -2)] == [-1, 5, 7, -1]
    st.default_n_predict = 10
    assert [n_predict_of(st, None), n_predict_of(st, 5), n_predict_of(st, 50), n_predict_of(st, -1)] == [10, 5, 10, 10]
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10") and not is_loopback("::")


def test_serve_command_line():
    from typer.testing import CliRunner

    from llamapy.cli import app

    r = CliRunner().invoke(app, ["serve", "--help"])
    assert r.exit_code == 0
    for opt in ("-np", "--ctx-size", "--api-key", "--alias", "--chat-template", "--embedding", "--n_ctx",
                "--model_alias"):
        assert opt in r.output


FIELDS = ["prompt", "messages", "input", "content", "tokens", "n_predict", "max_tokens", "max_completion_tokens",
          "temperature", "top_k", "top_p", "min_p", "stop", "stream", "seed", "logit_bias", "n_probs", "logprobs",
          "top_logprobs", "options", "cache_prompt", "id_slot", "ignore_eos", "repeat_last_n", "encoding_format",
          "stream_options", "role", "n", "with_pieces", "add_special", "mirostat", "raw", "context", "model"]
ENDPOINTS = ["/completion", "/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/embedding", "/tokenize",
             "/detokenize", "/apply-template", "/api/generate", "/api/chat", "/api/embed", "/api/show"]


def test_random_requests_never_get_a_500():
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.sampled_from([0, 1, 2, 5, 300, -1])
               | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
               | st.sampled_from(["user", "assistant", "base64", "1"]))
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.sampled_from(FIELDS + ["0", "97"]), inner, max_size=4), max_leaves=12)
    bodies = st.dictionaries(st.sampled_from(FIELDS), values, max_size=6)
    app = LiveApp(ToyBackend(n_slots=2, n_ctx=128, n_batch=32), max_queue=8)
    try:
        with httpx.Client(base_url=app.url, timeout=30) as c:
            @settings(max_examples=150, deadline=None, derandomize=True,
                      suppress_health_check=[HealthCheck.too_slow])
            @given(st.sampled_from(ENDPOINTS), bodies)
            def check(path, body):
                with c.stream("POST", path, json=body) as r:
                    raw = r.read()
                assert r.status_code in (200, 400), (path, body, r.status_code, raw[:300])
                if r.status_code == 400:
                    assert json.loads(raw)["error"]["code"] == 400
                elif not r.headers["content-type"].startswith(("text/event-stream", "application/x-ndjson")):
                    json.loads(raw)
                else:
                    assert b'"error"' not in raw, (path, body, raw[-300:])

            check()
            assert c.get("/health").json()["slots_processing"] == 0
    finally:
        app.close()
