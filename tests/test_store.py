"""The local model store: names, content-addressed blobs, manifests, create/rm/cp, garbage, two processes at once."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil

import pytest
from test_quantize import make_model

from llamapy.errors import LlamapyError
from llamapy.store.modelfile import Message, parse
from llamapy.store.models import create_model, model_settings
from llamapy.store.store import MEDIA_MODEL, ModelName, Store, models_dir, parse_name


@pytest.fixture
def store(tmp_path, monkeypatch):
    root = tmp_path / "models"
    monkeypatch.setenv("LLAMAPY_MODELS", str(root))
    return Store()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return str(make_model(tmp_path_factory.mktemp("src") / "tiny-f32.gguf", dim=64, n_head=4, n_head_kv=2, ffn=128,
                          vocab=32, file_type=0))


def sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def blob_names(store: Store) -> set[str]:
    return set(os.listdir(store.blobs)) if os.path.isdir(store.blobs) else set()


# -- names ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, parts, shown", [
    ("llama3", ("local", "library", "llama3", "latest"), "llama3:latest"),
    ("llama3-zh-inst:v2.1", ("local", "library", "llama3-zh-inst", "v2.1"), "llama3-zh-inst:v2.1"),
    ("user/model:tag", ("local", "user", "model", "tag"), "user/model:tag"),
    ("hf.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M", ("hf.co", "Qwen", "Qwen2.5-0.5B-Instruct-GGUF", "Q4_K_M"),
     "hf.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M"),
    ("localhost:8080/ns/m", ("localhost:8080", "ns", "m", "latest"), "localhost:8080/ns/m:latest"),
])
def test_names(text, parts, shown):
    n = parse_name(text)
    assert n.parts == parts and str(n) == shown


@pytest.mark.parametrize("bad", ["", "a/../b", "..", "a/b/c/d", "a\\b", "-lead", "a:", "a:b:c", "a//b", "a/b c",
                                 "x:" + "t" * 81, "名字"])
def test_bad_names_are_one_line(bad):
    with pytest.raises(LlamapyError, match="is not a valid model name") as e:
        parse_name(bad)
    assert "\n" not in str(e.value)


def test_models_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LLAMAPY_MODELS", str(tmp_path / "m"))
    assert models_dir() == str(tmp_path / "m")
    monkeypatch.delenv("LLAMAPY_MODELS")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    d = models_dir()
    assert d.endswith(os.path.join("llamapy", "models"))


# -- create ---------------------------------------------------------------------------------------------
MODELFILE = '''FROM {src}
TEMPLATE """{{{{ if .System }}}}<|im_start|>system
{{{{ .System }}}}<|im_end|>
{{{{ end }}}}<|im_start|>user
{{{{ .Prompt }}}}<|im_end|>
<|im_start|>assistant
"""
SYSTEM You are terse.
PARAMETER temperature 0.2
PARAMETER stop <|im_end|>
PARAMETER stop "User:"
MESSAGE user Hi
MESSAGE assistant Hello.
LICENSE MIT
'''


def test_create_stores_the_gguf_once_and_the_settings(store, tiny_gguf):
    mf = parse(MODELFILE.format(src=tiny_gguf))
    name = create_model("tiny", mf)
    assert name == ModelName("local", "library", "tiny", "latest")
    s = model_settings("tiny")
    assert sha256(s.model_path) == sha256(tiny_gguf)
    assert os.path.basename(s.model_path) == "sha256-" + sha256(tiny_gguf)
    assert os.stat(s.model_path).st_ino == os.stat(tiny_gguf).st_ino  # hard-linked: same file system
    assert s.template.startswith("{{ if .System }}<|im_start|>system\n") and s.system == "You are terse."
    assert s.parameters == {"temperature": 0.2, "stop": ["<|im_end|>", "User:"]}
    assert s.messages == [Message("user", "Hi"), Message("assistant", "Hello.")]
    assert s.licenses == ["MIT"]
    # every blob is named by its content
    for fn in blob_names(store):
        assert fn == "sha256-" + sha256(os.path.join(store.blobs, fn))
    # a second name for the same GGUF: the model data is not stored twice
    create_model("team/tiny:v2", parse(f"FROM {tiny_gguf}\nSYSTEM Other.\n"))
    models = [f for f in blob_names(store) if os.path.getsize(os.path.join(store.blobs, f)) > 1000]
    assert len(models) == 1
    assert [str(e.name) for e in store.entries()] == ["team/tiny:v2", "tiny:latest"]
    assert model_settings("TEAM/Tiny:V2").system == "Other."  # names match in any case
    # the manifest is Ollama's
    _, doc, _ = store.read_manifest("tiny")
    assert doc["schemaVersion"] == 2 and doc["layers"][0]["mediaType"] == MEDIA_MODEL
    assert doc["layers"][0]["size"] == os.path.getsize(tiny_gguf)


def test_copy_when_a_hard_link_is_not_possible(store, tiny_gguf, monkeypatch):
    def no_link(*a, **k):
        raise OSError(18, "Invalid cross-device link")
    monkeypatch.setattr(os, "link", no_link)
    s_path = model_settings(create_model("copied", parse(f"FROM {tiny_gguf}\n")).__str__()).model_path
    assert os.stat(s_path).st_ino != os.stat(tiny_gguf).st_ino and sha256(s_path) == sha256(tiny_gguf)
    assert not [f for f in os.listdir(store.blobs) if f.endswith(".part")]


def test_a_blob_that_does_not_match_its_hash_is_refused(store, tiny_gguf):
    with pytest.raises(LlamapyError, match="sha256 mismatch"):
        store.stage_file(tiny_gguf, mode="copy", expect_sha256="0" * 64)
    assert blob_names(store) == set()


def test_from_a_stored_model_inherits_and_overrides(store, tiny_gguf):
    create_model("base", parse(MODELFILE.format(src=tiny_gguf)))
    create_model("child", parse("FROM base\nSYSTEM New.\nPARAMETER temperature 0.7\nPARAMETER top_k 5\n"))
    b, c = model_settings("base"), model_settings("child")
    assert c.model_path == b.model_path and c.template == b.template and c.licenses == b.licenses
    assert c.messages == b.messages and c.system == "New."
    assert c.parameters == {"temperature": 0.7, "stop": ["<|im_end|>", "User:"], "top_k": 5}


def test_create_replaces_and_rm_collects_garbage(store, tiny_gguf, tmp_path):
    other = shutil.copy(tiny_gguf, tmp_path / "other.gguf")
    with open(other, "r+b") as f:  # different bytes, still a GGUF
        f.seek(-4, os.SEEK_END)
        f.write(b"\x01\x02\x03\x04")
    create_model("a", parse(f"FROM {tiny_gguf}\nSYSTEM one\n"))
    create_model("b", parse(f"FROM {tiny_gguf}\nSYSTEM two\n"))
    store.copy("a", "c:copy")
    before = blob_names(store)
    create_model("a", parse(f"FROM {other}\nSYSTEM one\n"))  # replaced: the old GGUF is still used by b and c
    assert "sha256-" + sha256(tiny_gguf) in blob_names(store)
    store.remove("b")
    assert "sha256-" + sha256(tiny_gguf) in blob_names(store)  # c still uses it
    store.remove("c:copy")
    assert "sha256-" + sha256(tiny_gguf) not in blob_names(store)
    assert "sha256-" + sha256(other) in blob_names(store) and blob_names(store) != before
    store.remove("a")
    assert blob_names(store) == set() and os.listdir(store.manifests) == []
    with pytest.raises(LlamapyError, match="model 'a' not found"):
        store.remove("a")


def test_gc_leaves_files_being_staged_alone(store, tiny_gguf):
    staged = store.stage_file(tiny_gguf, mode="copy")
    assert store.gc() == [] and os.path.exists(staged.tmp)
    store.discard(staged)


@pytest.mark.parametrize("text, message", [
    ("FROM {missing}\n", "no such file or folder"),
    ("FROM {notgguf}\n", "not a GGUF file"),
    ("FROM nosuchmodel\n", "model 'nosuchmodel' not found"),
    ("FROM \x1b[2J\n", r"FROM \\x1b\[2J: neither a file nor a model name"),
    ("FROM {tiny}\nADAPTER ./lora.gguf\n", r"ADAPTER .*lora\.gguf: no such file"),
    ("FROM {tiny}\nADAPTER {notgguf}\n", r"ADAPTER .*x\.gguf: not a GGUF file"),
    ("FROM {tiny}\nADAPTER {tiny}\n", r"ADAPTER: LoRA adapter .*: not an adapter: general.type is missing"),
])
def test_create_errors_leave_nothing_behind(store, tiny_gguf, tmp_path, text, message):
    notgguf = tmp_path / "x.gguf"
    notgguf.write_bytes(b"PK\x03\x04 not a gguf")
    mf = parse(text.format(missing=tmp_path / "missing.gguf", notgguf=notgguf, tiny=tiny_gguf), str(tmp_path))
    with pytest.raises(LlamapyError, match=message):
        create_model("m", mf)
    assert blob_names(store) == set()


def test_quantize_into_the_store(store, tiny_gguf, tmp_path):
    from llamapy.ggufio.filetypes import LlamaFtype
    from llamapy.ggufio.reader import GGUFReader
    from llamapy.quantize import file_ftype, quantize_file

    quantize_file(tiny_gguf, tmp_path / "direct.gguf", LlamaFtype.MOSTLY_Q8_0)
    create_model("tiny:q8_0", parse(f"FROM {tiny_gguf}\n"), quantize="q8_0")
    path = model_settings("tiny:q8_0").model_path
    assert sha256(path) == sha256(tmp_path / "direct.gguf")  # the bytes `llamapy quantize` writes
    with GGUFReader(path) as r:
        assert file_ftype(r) == LlamaFtype.MOSTLY_Q8_0
    with pytest.raises(LlamapyError, match="only supported for F16, BF16 and F32"):
        create_model("again", parse("FROM tiny:q8_0\n"), quantize="Q4_0")
    # a stored F32 model quantized under a new name keeps its settings
    create_model("tiny:f32", parse(f"FROM {tiny_gguf}\nSYSTEM kept\nPARAMETER seed 3\n"))
    create_model("tiny:q8-from-store", parse("FROM tiny:f32\n"), quantize="Q8_0")
    s = model_settings("tiny:q8-from-store")
    assert s.system == "kept" and s.parameters == {"seed": 3} and sha256(s.model_path) == sha256(path)
    with pytest.raises(LlamapyError, match="unknown quantization type 'Q9'"):
        create_model("bad", parse(f"FROM {tiny_gguf}\n"), quantize="Q9")
    assert not [f for f in os.listdir(store.blobs) if f.endswith(".part")]


def test_from_a_meta_folder_is_converted(store, tmp_path, spm_model, vocab_n):
    from test_convert_util import meta_params, meta_weights, save_meta

    from llamapy.convert import convert

    d = save_meta(tmp_path / "llama-tiny", meta_weights(vocab_n), meta_params(), dtype="bf16")
    shutil.copy(spm_model, d / "tokenizer.model")
    convert(d, tmp_path / "direct.gguf")
    (tmp_path / "Modelfile").write_text("FROM ./llama-tiny\n", encoding="utf-8")
    from llamapy.store.modelfile import parse_file

    create_model("converted", parse_file(tmp_path / "Modelfile"))
    assert sha256(model_settings("converted").model_path) == sha256(tmp_path / "direct.gguf")


# -- -m NAME --------------------------------------------------------------------------------------------
def test_resolve_model_takes_store_names(store, tiny_gguf, tmp_path, monkeypatch):
    from llamapy.store.locate import resolve_model

    create_model("hf.co/me/tiny:Q8_0", parse(f"FROM {tiny_gguf}\n"))
    assert resolve_model("hf.co/me/tiny:Q8_0") == model_settings("hf.co/me/tiny:Q8_0").model_path
    assert resolve_model(tiny_gguf) == tiny_gguf  # a path stays a path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").write_bytes(b"GGUF")
    create_model("tiny", parse(f"FROM {tiny_gguf}\n"))
    assert resolve_model("tiny") == "tiny"  # an existing file wins over a name
    with pytest.raises(LlamapyError, match="nosuch.gguf: no such model file"):
        resolve_model("nosuch.gguf")
    with pytest.raises(LlamapyError, match="nor a model of that name"):
        resolve_model("notstored")


# -- two processes --------------------------------------------------------------------------------------
def _churn(root: str, src: str, who: int, rounds: int, q) -> None:
    os.environ["LLAMAPY_MODELS"] = root
    try:
        for i in range(rounds):
            create_model(f"p{who}", parse(f"FROM {src}\nSYSTEM proc {who} round {i}\n"))
            create_model(f"shared:{who}", parse(f"FROM {src}\n"))
            Store().remove(f"p{who}")
            if i % 3 == 2:
                Store().remove(f"shared:{who}")
        q.put(None)
    except BaseException as e:  # report to the parent
        q.put(repr(e))


def test_two_processes_creating_and_removing_never_corrupt_the_store(store, tiny_gguf):
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_churn, args=(store.root, tiny_gguf, w, 8, q)) for w in (1, 2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert results == [None, None]
    # every manifest's blobs are there and whole, nothing else is left, no temporary files
    used = set()
    for e in store.entries():
        for la in [e.manifest["config"], *e.manifest["layers"]]:
            used.add("sha256-" + la["digest"].split(":")[1])
    assert blob_names(store) == used
    for fn in used:
        assert fn == "sha256-" + sha256(os.path.join(store.blobs, fn))
    assert sorted(str(e.name) for e in store.entries()) == ["shared:1", "shared:2"]
    for e in store.entries():
        assert json.loads(json.dumps(e.manifest))["layers"][0]["mediaType"] == MEDIA_MODEL


def test_settings_for_a_model_argument(store, tiny_gguf):
    from llamapy.store.models import settings_for

    create_model("chat", parse(f"FROM {tiny_gguf}\nSYSTEM Be brief.\nPARAMETER num_ctx 256\n"))
    s = settings_for("chat")
    assert s.system == "Be brief." and s.parameters == {"num_ctx": 256} and str(s.name) == "chat:latest"
    assert settings_for(tiny_gguf) is None and settings_for("unknown") is None and settings_for(None) is None


def test_a_shown_modelfile_builds_the_same_model(store, tiny_gguf):
    from llamapy.store.models import render_modelfile

    create_model("orig", parse(MODELFILE.format(src=tiny_gguf)))
    before = blob_names(store)
    create_model("again", parse(render_modelfile(model_settings("orig"))))  # FROM the blob itself
    assert blob_names(store) == before
    a, b = model_settings("orig"), model_settings("again")
    assert (a.model_path, a.template, a.system, a.parameters, a.messages, a.licenses) == \
        (b.model_path, b.template, b.system, b.parameters, b.messages, b.licenses)


def test_a_linked_source_keeps_its_mode(store, tmp_path):
    src = make_model(tmp_path / "private.gguf", dim=64, n_head=4, n_head_kv=2, ffn=128, vocab=32)
    os.chmod(src, 0o600)
    path = model_settings(str(create_model("private", parse(f"FROM {src}\n")))).model_path
    assert os.stat(path).st_ino == os.stat(src).st_ino and (os.stat(src).st_mode & 0o777) == 0o600
    copied = store.stage_bytes(b"x")
    store.commit(copied)
    assert os.stat(store.blob_path(copied.digest)).st_mode & 0o777 == 0o644
