"""llama-server's switches on the server: --metrics (Prometheus text, read with prometheus_client's parser),
--no-slots, --props, --path, --no-webui, --keep, HTTPS with --ssl-key-file/--ssl-cert-file, and the
reference's wording for the same conditions."""
from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
import time

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serverutil import free_port, stop  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from llamapy.server import build_state  # noqa: E402
from llamapy.server.app import create_app  # noqa: E402


def client(default_model, **endpoints) -> TestClient:
    state = build_state(model_path=default_model, n_ctx=512, n_parallel=2, api_key=endpoints.pop("api_key", None),
                        endpoints=endpoints)
    return TestClient(create_app(state))


def test_metrics_are_llama_servers(default_model):
    from prometheus_client.parser import text_string_to_metric_families

    with client(default_model, metrics_enabled=True) as c:
        r = c.post("/completion", json={"prompt": "The capital of France is", "n_predict": 4, "temperature": 0})
        assert r.status_code == 200
        done = r.json()
        m = c.get("/metrics")
        assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert int(m.headers["Process-Start-Time-Unix"]) > 0
        fams = {f.name: f for f in text_string_to_metric_families(m.text)}
        kinds = {
            "llamacpp:prompt_tokens": "counter", "llamacpp:prompt_seconds": "counter",
            "llamacpp:tokens_predicted": "counter", "llamacpp:tokens_predicted_seconds": "counter",
            "llamacpp:n_decode": "counter", "llamacpp:n_busy_slots_per_decode": "counter",
            "llamacpp:prompt_tokens_seconds": "gauge", "llamacpp:predicted_tokens_seconds": "gauge",
            "llamacpp:kv_cache_usage_ratio": "gauge", "llamacpp:kv_cache_tokens": "gauge",
            "llamacpp:requests_processing": "gauge", "llamacpp:requests_deferred": "gauge",
        }
        assert {n: f.type for n, f in fams.items()} == kinds

        def value(name: str) -> float:
            return next(iter(fams[name].samples)).value

        assert value("llamacpp:prompt_tokens") == done["timings"]["prompt_n"] > 0
        assert value("llamacpp:tokens_predicted") == done["timings"]["predicted_n"] == 4
        assert value("llamacpp:n_decode") >= 4 and value("llamacpp:n_busy_slots_per_decode") == 1.0
        assert value("llamacpp:prompt_tokens_seconds") > 0 and value("llamacpp:predicted_tokens_seconds") > 0
        assert value("llamacpp:kv_cache_tokens") == done["tokens_evaluated"] + 3  # the last token isn't evaluated
        assert value("llamacpp:kv_cache_usage_ratio") == pytest.approx(value("llamacpp:kv_cache_tokens") / 512)
        assert value("llamacpp:requests_processing") == 0 and value("llamacpp:requests_deferred") == 0
        # the throughput gauges cover what finished since the last scrape
        again = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
        assert next(iter(again["llamacpp:predicted_tokens_seconds"].samples)).value == 0
        assert next(iter(again["llamacpp:tokens_predicted"].samples)).value == 4


def test_endpoints_switched_off_answer_501_with_the_references_words(default_model):
    with client(default_model, slots_enabled=False) as c:
        for method, path, words in (
            ("GET", "/metrics", "Start it with `--metrics`"),
            ("GET", "/slots", "This server does not support slots endpoint. Start it with `--slots`"),
            ("POST", "/props", "Start it with `--props`"),
            ("POST", "/v1/rerank", "Start it with `--reranking`"),
            ("POST", "/rerank", "Start it with `--reranking`"),
        ):
            r = c.request(method, path, json={})
            assert r.status_code == 501 and words in r.json()["error"]["message"], path
        props = c.get("/props").json()
        # the field names of llama-server's slot_params::to_json
        ref_fields = {
            "n_predict", "seed", "temperature", "dynatemp_range", "dynatemp_exponent", "top_k", "top_p", "min_p",
            "xtc_probability", "xtc_threshold", "typical_p", "repeat_last_n", "repeat_penalty", "presence_penalty",
            "frequency_penalty", "dry_multiplier", "dry_base", "dry_allowed_length", "dry_penalty_last_n",
            "dry_sequence_breakers", "mirostat", "mirostat_tau", "mirostat_eta", "stop", "max_tokens", "n_keep",
            "n_discard", "ignore_eos", "stream", "logit_bias", "n_probs", "min_keep", "grammar",
            "grammar_trigger_words", "grammar_trigger_tokens", "preserved_tokens", "chat_format", "samplers",
            "speculative.n_max", "speculative.n_min", "speculative.p_min", "timings_per_token",
            "post_sampling_probs", "lora",
        }
        assert ref_fields <= set(props["default_generation_settings"]["params"])
        assert props["default_generation_settings"]["params"]["seed"] == 0xFFFFFFFF
        assert props["default_generation_settings"]["params"]["n_keep"] == 0


def test_props_slots_keep_and_public_models(default_model):
    with client(default_model, props_writable=True, n_keep=-1, api_key="k") as c:
        assert c.get("/health").status_code == 200 and c.get("/models").status_code == 200
        auth = {"Authorization": "Bearer k"}
        assert c.get("/slots").status_code == 401
        assert c.get("/slots", headers=auth).status_code == 200
        assert c.post("/props", json={}, headers=auth).json() == {"success": True}
        settings = c.get("/props", headers=auth).json()["default_generation_settings"]["params"]
        assert settings["n_keep"] == -1


def test_static_path_and_no_webui(default_model, tmp_path):
    (tmp_path / "index.html").write_text("<p>mine</p>")
    (tmp_path / "a.txt").write_text("file a")
    with client(default_model, static_path=str(tmp_path)) as c:
        assert c.get("/").text == "<p>mine</p>" and c.get("/a.txt").text == "file a"
        assert c.get("/health").json()["status"] == "ok"
    with client(default_model, webui=False) as c:
        assert c.get("/").status_code == 404 and c.get("/health").status_code == 200


def test_prompt_too_long_has_the_references_words(default_model):
    with client(default_model) as c:
        r = c.post("/completion", json={"prompt": "word " * 400, "n_predict": 1})
        assert r.status_code == 400 and "exceeds the available context size" in r.json()["error"]["message"]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_https_with_a_self_signed_certificate(default_model, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    port = free_port()
    trust = ssl.create_default_context(cafile=str(cert))
    proc = subprocess.Popen([sys.executable, "-m", "llamapy", "serve", "--port", str(port), "-c", "256",
                             "--ssl-key-file", str(key), "--ssl-cert-file", str(cert), "--metrics"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                r = httpx.get(f"https://127.0.0.1:{port}/health", verify=trust, timeout=2)
                break
            except httpx.HTTPError:
                assert time.time() < deadline, "no answer over HTTPS"
                time.sleep(0.2)
        assert r.status_code == 200
        assert httpx.get(f"https://127.0.0.1:{port}/metrics", verify=trust).status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)  # plain HTTP is not spoken
    finally:
        stop(proc)


@pytest.mark.parametrize("args,words", [
    (["--reranking"], "--reranking: the model has no rerank head"),
    (["--ssl-key-file", "k.pem"], "HTTPS needs both --ssl-key-file and --ssl-cert-file"),
    (["--path", "/no/such/dir"], "--path /no/such/dir: no such folder"),
    (["--pooling", "rank"], "--pooling rank"),
    (["--pooling", "bogus"], "is not one of none, mean, cls, last, rank"),
])
def test_serve_refuses_at_start_in_one_line(default_model, args, words):
    out = subprocess.run([sys.executable, "-m", "llamapy", "serve", "--port", str(free_port()), *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and words in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def sse_chunks(text: str) -> list[dict]:
    import json

    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ") and line != "data: [DONE]"]


def test_stream_chunks_carry_timings_and_probs(default_model):
    with client(default_model) as c:
        r = c.post("/completion", json={"prompt": "The capital of France is", "n_predict": 5, "temperature": 0,
                                        "stream": True, "timings_per_token": True, "n_probs": 2})
        chunks = sse_chunks(r.text)
        tokens = [ch for ch in chunks if not ch["stop"]]
        assert len(tokens) == 5
        for i, ch in enumerate(tokens):
            assert ch["timings"]["predicted_n"] == i + 1 and ch["timings"]["prompt_n"] == 5
            assert len(ch["completion_probabilities"]) == 1
            assert len(ch["completion_probabilities"][0]["top_logprobs"]) == 2
        r = c.post("/v1/completions", json={"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0,
                                            "stream": True, "logprobs": 2})
        parts = [ch for ch in sse_chunks(r.text) if ch["choices"] and ch["choices"][0]["finish_reason"] is None]
        assert len(parts) == 4 and all(p["choices"][0]["logprobs"] is not None for p in parts)
        r = c.post("/completion", json={"prompt": "Hi", "n_predict": 2, "stream": True})
        assert all("timings" not in ch for ch in sse_chunks(r.text) if not ch["stop"])


def test_infill_needs_fim_tokens_and_lays_them_out(default_model):
    from llamapy.engine.load import LoadOptions, parse_override_kv

    with client(default_model) as c:
        r = c.post("/infill", json={"input_prefix": "def f(", "input_suffix": ")"})
        assert r.status_code == 501
        assert r.json()["error"]["message"] == ("Infill is not supported by this model: prefix token is missing. "
                                                "suffix token is missing. middle token is missing. ")
    ids = {"fim_pre": 3, "fim_suf": 4, "fim_mid": 6}
    load = LoadOptions(override_kv=parse_override_kv([f"tokenizer.ggml.{k}_token_id=int:{v}" for k, v in ids.items()]))
    state = build_state(model_path=default_model, n_ctx=512, load=load)
    with TestClient(create_app(state)) as c:
        b = state.backend
        assert (b.tok.fim_pre_id, b.tok.fim_suf_id, b.tok.fim_mid_id) == (3, 4, 6)
        assert b.tok.fim_rep_id is None and b.tok.fim_sep_id is None and not b.add_bos
        assert c.post("/infill", json={"input_suffix": ")"}).json()["error"]["message"] == '"input_prefix" is required'
        r = c.post("/infill", json={"input_prefix": "def add(a, b", "input_suffix": "\n", "prompt": "):",
                                    "n_predict": 2, "temperature": 0})
        assert r.status_code == 200, r.text
        want = [3] + b.tokenize("def add(a, b", False, False) + b.tokenize("):", False, False) + [4] \
            + b.tokenize("\n", False, False) + [6]
        assert r.json()["tokens_evaluated"] == len(want)
        from llamapy.server.infill import format_infill

        assert format_infill(b, "def add(a, b", "\n", [], "):", 2) == want
        # --spm-infill: suffix first, then prefix and prompt
        spm = [4] + b.tokenize("\n", False, False) + [3] + b.tokenize("def add(a, b", False, False) \
            + b.tokenize("):", False, False) + [6]
        assert format_infill(b, "def add(a, b", "\n", [], "):", 2, spm=True) == spm
        # extra files, with no file separator token, go first after the reference's snippet marker
        # (they take the context the batch leaves: a slot of 512 positions, batches of 64)
        from types import SimpleNamespace

        small = SimpleNamespace(tok=b.tok, tokenize=b.tokenize, n_batch=64, n_ctx=512, add_bos=False)
        got = format_infill(small, "x", "y", [{"filename": "a.py", "text": "import os"}], "", 2)
        snippet = b.tokenize("\n\n--- snippet ---\n\n", False, False) + b.tokenize("import os", False, False)
        assert got == snippet + [3] + b.tokenize("x", False, False) + [4] + b.tokenize("y", False, False) + [6]


def test_post_sampling_probs_are_the_chains_candidates(default_model):
    with client(default_model) as c:
        r = c.post("/completion", json={"prompt": "The capital of France is", "n_predict": 3, "temperature": 0,
                                        "n_probs": 3, "post_sampling_probs": True}).json()
        assert r["generation_settings"]["post_sampling_probs"] is True
        for e in r["completion_probabilities"]:  # greedy: the chosen token has it all
            assert "logprob" not in e and e["prob"] == 1.0
            assert e["top_probs"][0]["id"] == e["id"] and e["top_probs"][0]["prob"] == 1.0
        r = c.post("/completion", json={"prompt": "Once upon a time", "n_predict": 8, "temperature": 1.0,
                                        "top_k": 5, "top_p": 1.0, "min_p": 0.0, "seed": 7, "n_probs": 2, "post_sampling_probs": True,
                                        "stream": True})
        entries = [ch["completion_probabilities"][0] for ch in sse_chunks(r.text) if not ch["stop"]]
        assert len(entries) == 8
        for e in entries:
            top = [t["prob"] for t in e["top_probs"]]
            assert len(top) == 2 and top == sorted(top, reverse=True) and sum(top) <= 1.0 + 1e-6
            assert 0.0 < e["prob"] <= top[0]  # the drawn token was a candidate, no likelier than the first
        plain = c.post("/completion", json={"prompt": "Hi", "n_predict": 1, "n_probs": 2}).json()
        assert "logprob" in plain["completion_probabilities"][0]


def test_threads_http_and_keep(default_model):
    import anyio.to_thread

    from llamapy.server.common import keep_of

    with client(default_model, threads_http=3, n_keep=2) as c:
        tokens = c.portal.call(lambda: anyio.to_thread.current_default_thread_limiter().total_tokens)
        assert tokens == 3
    st = build_state(model_path=default_model, n_ctx=256, endpoints={"n_keep": 2})
    bos = int(st.backend.add_bos)
    assert keep_of(st, list(range(10))) == bos + 2
    st.n_keep = -1
    assert keep_of(st, list(range(10))) == 10
    st.n_keep = 50
    assert keep_of(st, list(range(10))) == 10
    st.backend.llm.close()


def test_api_key_file_gives_every_line_as_a_key(default_model, tmp_path):
    from llamapy.commands.serve import read_api_keys
    from llamapy.errors import LlamapyError

    f = tmp_path / "keys"
    f.write_text("first-key\n\nsecond-key\r\nthird-key")
    keys = read_api_keys(str(f))
    assert keys == ["first-key", "second-key", "third-key"]
    with client(default_model, api_key=keys) as c:
        body = {"prompt": "Hi", "n_predict": 1}
        for k in keys:
            assert c.post("/completion", json=body, headers={"Authorization": f"Bearer {k}"}).status_code == 200
        assert c.post("/completion", json=body, headers={"Authorization": "Bearer fourth-key"}).status_code == 401
        assert c.post("/completion", json=body).status_code == 401
        assert c.get("/v1/models").status_code == 200 and c.get("/models").status_code == 200  # public
    (tmp_path / "empty").write_text("\n\n")
    for path, msg in ((tmp_path / "empty", "no API key in the file"), (tmp_path / "none", "can't read the API keys")):
        with pytest.raises(LlamapyError, match=msg):
            read_api_keys(str(path))


def test_api_key_and_api_key_file_both_count(default_model, tmp_path):
    f = tmp_path / "keys"
    f.write_text("from-file\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llamapy", "serve", "-m", default_model, "--port", str(port),
                             "-c", "256", "--api-key", "from-option", "--api-key-file", str(f)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        from serverutil import wait_for_health

        url = f"http://127.0.0.1:{port}"
        wait_for_health(proc, url, 120, "llamapy serve")
        for key, status in (("from-option", 200), ("from-file", 200), ("other", 401)):
            r = httpx.get(url + "/props", headers={"Authorization": f"Bearer {key}"}, timeout=30)
            assert r.status_code == status, key
    finally:
        stop(proc)


def test_server_grammar_is_the_default_of_requests_that_give_none(default_model, tmp_path):
    from llamapy.commands.serve import server_grammar

    f = tmp_path / "yesno.gbnf"
    f.write_text('root ::= "yes" | "no"\n')
    spec = server_grammar(None, str(f), None)
    assert (spec.kind, spec.value) == ("gbnf", 'root ::= "yes" | "no"\n')
    with client(default_model, default_grammar=spec) as c:
        for seed in range(3):
            r = c.post("/completion", json={"prompt": "Is the sky blue?", "n_predict": 8, "seed": seed,
                                            "temperature": 1.0})
            assert r.json()["content"] in ("yes", "no")
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
        assert r.json()["choices"][0]["message"]["content"] in ("yes", "no")
        # a request's own grammar or schema wins
        r = c.post("/completion", json={"prompt": "Count:", "n_predict": 8, "grammar": 'root ::= "1 2 3"'})
        assert r.json()["content"] == "1 2 3"
        r = c.post("/completion", json={"prompt": "A number:", "n_predict": 8, "json_schema": {"const": 42}})
        assert r.json()["content"] == "42"
    spec = server_grammar(None, None, '{"type": "boolean"}')
    with client(default_model, default_grammar=spec) as c:
        r = c.post("/completion", json={"prompt": "True or false:", "n_predict": 8})
        assert r.json()["content"] in ("true", "false")


def test_server_grammar_refusals(default_model, tmp_path):
    from llamapy.commands.serve import server_grammar
    from llamapy.errors import LlamapyError

    for args, msg in (((None, None, "{nope"), "-j/--json-schema: not JSON"),
                      (("root ::= x", None, "{}"), "give one of --grammar, --grammar-file and -j"),
                      ((None, str(tmp_path / "none.gbnf"), None), "--grammar-file"),
                      ((None, None, "[1]"), "a JSON schema must be an object")):
        with pytest.raises(LlamapyError, match=msg):
            server_grammar(*args)
    r = subprocess.run([sys.executable, "-m", "llamapy", "serve", "-m", default_model, "--port", str(free_port()),
                        "-c", "256", "--grammar", "root ::= undefined-rule"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: --grammar:") and "Traceback" not in r.stderr
