"""LoRA adapters in the server, as llama-server: GET /lora-adapters (id, path, scale), POST /lora-adapters (the
scales requests get; adapters not listed: 0), the per-request `lora` field (listed adapters at their scale,
the others 0; an unknown id is a 400), a slot's cache not reused under other scales, and requests with other
scales in flight at once each getting their own adapters' output (they are not batched together)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("fastapi")

from gguf.constants import GGMLQuantizationType as T  # noqa: E402
from lorautil import write_lora  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402
from test_engine_models import write_random_llama  # noqa: E402
from test_lora import VOCAB  # noqa: E402

from llamapy.engine.engine import Engine  # noqa: E402
from llamapy.engine.load import LoadOptions  # noqa: E402
from llamapy.server import build_state  # noqa: E402
from llamapy.server.app import create_app  # noqa: E402

PROMPT = [1, 5, 7, 9, 11, 3]
N = 12


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora_server")
    base = write_random_llama(d / "base.gguf", wtype=T.F32, n_vocab=128, tied=False, extra_kv=VOCAB)
    a, _ = write_lora(d / "a.gguf", base, seed=11, b_std=1.0)
    b, _ = write_lora(d / "b.gguf", base, seed=12, b_std=1.0, targets=("attn_v", "ffn_down"))
    return base, a, b


def greedy(base: str, lora=()) -> list[int]:
    """What temperature 0 with ignore_eos gives with these adapters (path, scale), without the server."""
    with Engine(base, n_ctx=64, n_threads=1, load=LoadOptions(lora=list(lora))) as llm:
        out, logits = [], llm.eval(PROMPT)
        for _ in range(N):
            logits[VOCAB["tokenizer.ggml.eos_token_id"]] = -np.inf
            out.append(int(np.argmax(logits)))
            logits = llm.eval([out[-1]])
        return out


def complete(c: TestClient, **extra) -> list[int]:
    r = c.post("/completion", json={"prompt": PROMPT, "n_predict": N, "temperature": 0, "ignore_eos": True,
                                    "return_tokens": True, "cache_prompt": True, **extra})
    assert r.status_code == 200, r.text
    return r.json()["tokens"]


@pytest.fixture(scope="module")
def server(files):
    base, a, b = files
    state = build_state(model_path=base, n_ctx=128, n_parallel=2, n_threads=1,
                        load=LoadOptions(lora=[(a, 1.0), (b, 0.5)]))
    with TestClient(create_app(state)) as c:
        yield c


def test_list_set_and_per_request_scales(server, files):
    base, a, b = files
    c = server
    assert c.get("/lora-adapters").json() == [{"id": 0, "path": a, "scale": 1.0}, {"id": 1, "path": b, "scale": 0.5}]
    plain, with_a, both = greedy(base), greedy(base, [(a, 1.0)]), greedy(base, [(a, 1.0), (b, 0.5)])
    assert len({tuple(plain), tuple(with_a), tuple(both)}) == 3  # the adapters make a difference
    assert complete(c) == both  # no `lora` field: the server's scales
    assert complete(c, lora=[]) == plain  # a `lora` field: the adapters not listed are off
    assert complete(c, lora=[{"id": 0, "scale": 1}]) == with_a
    r = c.post("/completion", json={"prompt": PROMPT, "n_predict": 1, "lora": [{"id": 0, "scale": 1}]})
    assert r.json()["generation_settings"]["lora"] == [{"id": 0, "scale": 1.0}, {"id": 1, "scale": 0.0}]

    assert c.post("/lora-adapters", json=[{"id": 0, "scale": 1.0}]).json() == {"success": True}
    assert c.get("/lora-adapters").json()[1]["scale"] == 0.0
    assert complete(c) == with_a
    assert c.post("/lora-adapters", json=[]).status_code == 200
    assert complete(c) == plain
    assert c.post("/lora-adapters", json=[{"id": 0, "scale": 1.0}, {"id": 1, "scale": 0.5}]).status_code == 200
    assert complete(c) == both


def test_bad_lora_requests_are_400(server):
    c = server
    for body in ({"id": 0, "scale": 1}, [{"id": 2, "scale": 1}], [{"id": 0}], [{"id": "x", "scale": 1}], [3],
                 [{"id": 0, "scale": "big"}]):
        r = c.post("/lora-adapters", json=body)
        assert r.status_code == 400, (body, r.text)
        assert "\n" not in r.json()["error"]["message"]
    assert "invalid adapter id" in c.post("/lora-adapters", json=[{"id": -1, "scale": 1}]).json()["error"]["message"]
    r = c.post("/completion", json={"prompt": PROMPT, "n_predict": 1, "lora": [{"id": 5, "scale": 1}]})
    assert r.status_code == 400 and "invalid adapter id" in r.json()["error"]["message"]
    r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                             "lora": [{"id": 9, "scale": 1}]})
    assert r.status_code == 400
    r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                             "lora": [{"id": 1, "scale": 0.25}]})
    assert r.status_code == 200, r.text


def test_other_scales_in_flight_at_once(server, files):
    """Two slots generating at once with other adapter scales: each gets its own model's tokens (the
    groups of alike slots take turns; a slot's cache from other scales is not reused)."""
    base, a, b = files
    want = {"plain": greedy(base), "a": greedy(base, [(a, 1.0)]), "b": greedy(base, [(b, 2.0)])}
    loras = {"plain": [], "a": [{"id": 0, "scale": 1.0}], "b": [{"id": 1, "scale": 2.0}]}
    got: dict[str, list[int]] = {}

    def one(name: str) -> None:
        got[name] = complete(server, lora=loras[name])

    for pair in (("plain", "a"), ("a", "b"), ("b", "plain"), ("a", "a")):
        threads = [threading.Thread(target=one, args=(n,)) for n in pair]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for n in pair:
            assert got[n] == want[n], (pair, n)


def test_init_without_apply(files):
    """--lora-init-without-apply: the adapters are loaded with scale 0 (a request or POST turns them on)."""
    from llamapy.commands.option_values import lora_adapters

    base, a, b = files
    assert lora_adapters({"lora": [a], "lora_scaled": [(b, "0.25")]}) == [(a, 1.0), (b, 0.25)]
    state = build_state(model_path=base, n_ctx=128, n_threads=1,
                        load=LoadOptions(lora=[(a, 1.0), (b, 0.25)], lora_init_without_apply=True))
    with TestClient(create_app(state)) as c:
        assert [e["scale"] for e in c.get("/lora-adapters").json()] == [0.0, 0.0]
        assert complete(c) == greedy(base)
        assert complete(c, lora=[{"id": 0, "scale": 1.0}]) == greedy(base, [(a, 1.0)])
