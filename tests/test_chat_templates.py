"""Chat templates: every built-in's exact text, llama.cpp's detection and single-message formatting, the
default model's own Jinja template, and the sandbox refusing hostile templates."""

from __future__ import annotations

import pytest

from llamapy.chat.templates import BUILTIN_TEMPLATES, ChatTemplate, detect_builtin
from llamapy.errors import LlamapyError

CONVO = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": " Hello! "},
    {"role": "user", "content": "2+2?"},
]

# What each built-in makes of CONVO with the generation prompt (llama.cpp's llama_chat_apply_template text;
# "alpaca" is llamapy's addition). The padded assistant message shows which formats trim.
EXPECTED = {
    "alpaca": "Be brief.\n\n### Instruction:\nHi\n\n### Response:\n Hello! \n\n### Instruction:\n2+2?\n\n### Response:\n",
    "chatglm3": "[gMASK]sop<|system|>\n Be brief.<|user|>\n Hi<|assistant|>\n  Hello! <|user|>\n 2+2?<|assistant|>",
    "chatglm4": "[gMASK]<sop><|system|>\nBe brief.<|user|>\nHi<|assistant|>\n Hello! <|user|>\n2+2?<|assistant|>",
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n Hello! <|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n",
    "command-r": "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>Be brief.<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Hello!<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>2+2?<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
    "deepseek": "Be brief.### Instruction:\nHi\n### Response:\n Hello! \n<|EOT|>\n### Instruction:\n2+2?\n### Response:\n",
    "deepseek2": "Be brief.\n\nUser: Hi\n\nAssistant:  Hello! <｜end▁of▁sentence｜>User: 2+2?\n\nAssistant:",
    "deepseek3": "Be brief.\n\n<｜User｜>Hi<｜Assistant｜> Hello! <｜end▁of▁sentence｜><｜User｜>2+2?<｜Assistant｜>",
    "exaone3": "[|system|]Be brief.[|endofturn|]\n[|user|]Hi\n[|assistant|]Hello![|endofturn|]\n[|user|]2+2?\n[|assistant|]",
    "falcon3": "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n Hello! \n<|user|>\n2+2?\n<|assistant|>\n",
    "gemma": "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n",
    "gigachat": "<s>Be brief.<|message_sep|>user<|role_sep|>Hi<|message_sep|>available functions<|role_sep|>[]<|message_sep|>assistant<|role_sep|> Hello! <|message_sep|>user<|role_sep|>2+2?<|message_sep|>available functions<|role_sep|>[]<|message_sep|>assistant<|role_sep|>",
    "glmedge": "<|system|>\nBe brief.<|user|>\nHi<|assistant|>\n Hello! <|user|>\n2+2?<|assistant|>",
    "granite": "<|start_of_role|>system<|end_of_role|>Be brief.<|end_of_text|>\n<|start_of_role|>user<|end_of_role|>Hi<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|> Hello! <|end_of_text|>\n<|start_of_role|>user<|end_of_role|>2+2?<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>\n",
    "llama2": "[INST] Be brief.\nHi [/INST] Hello! </s>[INST] 2+2? [/INST]",
    "llama2-sys": "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s>[INST] 2+2? [/INST]",
    "llama2-sys-bos": "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] 2+2? [/INST]",
    "llama2-sys-strip": "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]Hello!</s>[INST] 2+2? [/INST]",
    "llama3": "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "megrez": "<|role_start|>system<|role_end|>Be brief.<|turn_end|><|role_start|>user<|role_end|>Hi<|turn_end|><|role_start|>assistant<|role_end|> Hello! <|turn_end|><|role_start|>user<|role_end|>2+2?<|turn_end|><|role_start|>assistant<|role_end|>",
    "minicpm": "Be brief.<用户>Hi<AI>Hello!<用户>2+2?<AI>",
    "mistral": "[INST] Be brief.\nHi [/INST] Hello! </s>[INST] 2+2? [/INST]",
    "mistral-v1": " [INST] Be brief.\n\nHi [/INST]  Hello! </s> [INST] 2+2? [/INST]",
    "mistral-v3": "[INST] Be brief.\n\nHi[/INST] Hello!</s>[INST] 2+2?[/INST]",
    "mistral-v3-tekken": "[INST]Be brief.\n\nHi[/INST] Hello! </s>[INST]2+2?[/INST]",
    "mistral-v7": "[SYSTEM_PROMPT] Be brief.[/SYSTEM_PROMPT][INST] Hi[/INST]  Hello! </s>[INST] 2+2?[/INST]",
    "monarch": "system\nBe brief.</s>\n<s>user\nHi</s>\n<s>assistant\n Hello! </s>\n<s>user\n2+2?</s>\n<s>assistant\n",
    "openchat": "Be brief.<|end_of_turn|>GPT4 Correct User: Hi<|end_of_turn|>GPT4 Correct Assistant:  Hello! <|end_of_turn|>GPT4 Correct User: 2+2?<|end_of_turn|>GPT4 Correct Assistant:",
    "orion": "Human: Be brief.\n\nHi\n\nAssistant: </s> Hello! </s>Human: 2+2?\n\nAssistant: </s>",
    "phi3": "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n Hello! <|end|>\n<|user|>\n2+2?<|end|>\n<|assistant|>\n",
    "phi4": "<|im_start|>system<|im_sep|>Be brief.<|im_end|><|im_start|>user<|im_sep|>Hi<|im_end|><|im_start|>assistant<|im_sep|> Hello! <|im_end|><|im_start|>user<|im_sep|>2+2?<|im_end|><|im_start|>assistant<|im_sep|>",
    "rwkv-world": "Be brief.\n\nUser: Hi\n\nAssistant: Hello! \n\nUser: 2+2?\n\nAssistant:",
    "vicuna": "Be brief.\n\nUSER: Hi\nASSISTANT:  Hello! </s>\nUSER: 2+2?\nASSISTANT:",
    "vicuna-orca": "SYSTEM: Be brief.\nUSER: Hi\nASSISTANT:  Hello! </s>\nUSER: 2+2?\nASSISTANT:",
    "zephyr": "<|system|>\nBe brief.<|endoftext|>\n<|user|>\nHi<|endoftext|>\n<|assistant|>\n Hello! <|endoftext|>\n<|user|>\n2+2?<|endoftext|>\n<|assistant|>\n",
}


def test_every_builtin_has_an_expected_string():
    assert sorted(EXPECTED) == sorted(BUILTIN_TEMPLATES)
    for name in ("llama2", "llama3", "chatml", "alpaca", "mistral", "zephyr", "vicuna", "gemma", "phi3"):
        assert name in BUILTIN_TEMPLATES


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_renders_expected_text(name):
    tpl = ChatTemplate.from_name(name)
    assert tpl.render(CONVO) == EXPECTED[name]
    assert not tpl.is_jinja
    assert tpl.stop_strings, name


def test_generation_prompt_is_optional():
    tpl = ChatTemplate.from_name("chatml")
    assert tpl.render(CONVO[:2], add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )
    assert ChatTemplate.from_name("llama3").render([{"role": "user", "content": " x "}], False) == (
        "<|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>"
    )


def test_stop_strings():
    assert ChatTemplate.from_name("chatml").stop_strings == ["<|im_end|>"]
    assert ChatTemplate.from_name("llama3").stop_strings == ["<|eot_id|>"]
    assert ChatTemplate.from_name("gemma").stop_strings == ["<end_of_turn>"]
    assert ChatTemplate.from_name("alpaca").stop_strings == ["### Instruction:"]
    assert ChatTemplate.from_source("{{ messages[0].content }}", eos_token="</s>").stop_strings == ["</s>"]


def test_unknown_name_lists_the_builtins():
    with pytest.raises(LlamapyError, match="unknown chat template 'nope'.*chatml"):
        ChatTemplate.from_name("nope")


def test_format_single_matches_llama_cpp():
    sys_msg = {"role": "system", "content": "You are a helpful assistant"}
    new = {"role": "user", "content": "How are you"}
    past = [sys_msg, {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "I am assistant"}]

    def single(name, past, msg, gen):
        return ChatTemplate.from_name(name).format_single(past, msg, gen)

    assert (
        single("chatml", [], sys_msg, False) == "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
    )
    assert single("llama2", [], sys_msg, False) == "[INST] You are a helpful assistant\n"
    assert (
        single("llama2-sys", [], sys_msg, False)
        == "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\n"
    )
    assert single("gemma", [], sys_msg, False) == ""
    # a past ending in a newline keeps it: the model stopped at <|im_end|> and never wrote the "\n"
    assert (
        single("chatml", past, new, True)
        == "\n<|im_start|>user\nHow are you<|im_end|>\n<|im_start|>assistant\n"
    )
    assert single("mistral", past, new, True) == "[INST] How are you [/INST]"
    assert single("mistral-v7", past, new, True) == "[INST] How are you[/INST]"
    assert single("llama3", past, new, True) == (
        "<|start_header_id|>user<|end_header_id|>\n\nHow are you<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


@pytest.mark.parametrize(
    "source,family",
    [
        ("{{ '<|im_start|>' + m.role }}", "chatml"),
        ("{{ '<|im_start|>' }}{{ '<|im_sep|>' }}", "phi4"),
        ("{{ bos_token + '[INST] ' }}{{ '<<SYS>>' }}", "llama2-sys-bos"),
        ("{{ '[INST] ' + content.strip() }}", "llama2-sys-strip"),
        ("{{ '[INST]' }}", "llama2"),
        ("mistral", "llama2"),
        ("{{ '[SYSTEM_PROMPT]' }}{{ '[INST]' }}", "mistral-v7"),
        ("{{ '<|start_header_id|>' + role + '<|end_header_id|>' }}", "llama3"),
        ("{{ '<start_of_turn>' }}", "gemma"),
        ("{{ '<|user|>' }}{{ '<|assistant|>' }}{{ '<|end|>' }}", "phi3"),
        ("{{ '<|user|>' }}{{ '<|endoftext|>' }}", "zephyr"),
        ("{{ 'USER: ' }}{{ 'ASSISTANT: ' }}", "vicuna"),
        ("{{ '### Instruction:' }}{{ '### Response:' }}", "alpaca"),
        ("{{ messages[0].content }}", None),
    ],
)
def test_detect_builtin(source, family):
    assert detect_builtin(source) == family


def test_jinja_basics_bos_stripped_and_raise_exception():
    src = (
        "{{ bos_token }}{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools here') }}"
        "{% endif %}<{{ m.role }}>{{ m.content | trim }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    tpl = ChatTemplate.from_source(src, bos_token="<s>", eos_token="</s>")
    assert tpl.is_jinja and tpl.family is None
    assert tpl.render(CONVO[1:3], add_generation_prompt=False) == "<user>Hi</s><assistant>Hello!"
    assert tpl.render(CONVO[1:2]) == "<user>Hi</s><assistant>"
    with pytest.raises(LlamapyError, match="rejected the messages: no tools here"):
        tpl.render([{"role": "tool", "content": "x"}])
    with pytest.raises(LlamapyError, match="does not parse"):
        ChatTemplate.from_source("{% for m in messages %}")


def test_jinja_without_system_role_gets_it_merged():
    src = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[bot]{% endif %}"
    )
    tpl = ChatTemplate.from_source(src)
    assert not tpl.supports_system_role
    assert tpl.render(CONVO) == "[user]Be brief.\nHi[assistant] Hello! [user]2+2?[bot]"


def test_content_parts_and_tojson():
    tpl = ChatTemplate.from_source("{% for m in messages %}{{ m.content }}|{{ m.role | tojson }}{% endfor %}")
    parts = [
        {"type": "text", "text": "a"},
        {"type": "image_url", "image_url": {}},
        {"type": "text", "text": "b"},
    ]
    assert (
        tpl.render([{"role": "user", "content": parts}, {"role": "ünï", "content": None}])
        == 'a\nb|"user"|"ünï"'
    )


HOSTILE = [
    "{{ self.__init__.__globals__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}",
    "{{ raise_exception.__globals__['__builtins__']['open']('{marker}', 'w').write('x') }}",
    "{{ messages.append({'role': 'user', 'content': 'injected'}) }}",
    "{% set m = messages[0] %}{{ m.update({'content': 'changed'}) }}",
]


@pytest.mark.parametrize("source", HOSTILE)
def test_sandbox_refuses_hostile_templates(source, tmp_path):
    marker = tmp_path / "pwned"
    msgs = [{"role": "user", "content": "hi"}]
    tpl = ChatTemplate.from_source(source.replace("{marker}", str(marker)))
    with pytest.raises(LlamapyError, match=r"chat template \(jinja\) refused"):
        tpl.render(msgs)
    assert not marker.exists()
    assert msgs == [{"role": "user", "content": "hi"}]


def test_for_model_choices(tmp_path):
    meta = {
        "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>"],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    tpl = ChatTemplate.for_model(meta)
    assert tpl.name == "chatml" and "no chat template" in tpl.note and "chatml" in tpl.note
    tpl = ChatTemplate.for_model(
        {**meta, "tokenizer.chat_template": "{{ bos_token }}{{ messages[0].content }}!"}
    )
    assert tpl.from_model and tpl.note is None
    assert (tpl.bos_token, tpl.eos_token) == ("<s>", "</s>")
    assert tpl.render([{"role": "user", "content": "x"}]) == "x!"
    assert ChatTemplate.for_model(meta, name="llama3").name == "llama3"
    assert ChatTemplate.for_model(meta, name="{{ messages[0].content }}?").render(CONVO) == "Be brief.?"
    with pytest.raises(LlamapyError, match="unknown chat template"):
        ChatTemplate.for_model(meta, name="llama9")
    f = tmp_path / "t.jinja"
    f.write_text("{% for m in messages %}{{ m.role[0] }}:{{ m.content }};{% endfor %}", encoding="utf-8")
    assert (
        ChatTemplate.for_model(meta, name="llama3", file=str(f)).render(CONVO)
        == "s:Be brief.;u:Hi;a: Hello! ;u:2+2?;"
    )
    f.write_text("gemma\n", encoding="utf-8")
    assert ChatTemplate.for_model(meta, file=str(f)).name == "gemma"
    with pytest.raises(LlamapyError, match="can't read chat template"):
        ChatTemplate.for_model(meta, file=str(tmp_path / "missing.jinja"))


def test_default_model_template(default_model):
    from llamapy.ggufio.reader import GGUFReader

    with GGUFReader(default_model) as r:
        meta = {
            k: r.kv[k].value
            for k in ("tokenizer.chat_template", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id")
        }
        meta["tokenizer.ggml.tokens"] = list(r.kv["tokenizer.ggml.tokens"].value)
    tpl = ChatTemplate.for_model(meta)
    assert tpl.from_model and tpl.is_jinja and tpl.family == "chatml"
    assert tpl.eos_token == "<|im_end|>" and tpl.stop_strings == ["<|im_end|>"]
    assert tpl.render(CONVO) == EXPECTED["chatml"]
    # without a system message this template supplies its own
    assert tpl.render([{"role": "user", "content": "Hi"}]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tpl.example().endswith("<|im_start|>user\nHow are you?<|im_end|>\n<|im_start|>assistant\n")


def test_history_stability():
    assert ChatTemplate.from_name("gemma").history_is_stable()
    smollm_like = (
        "{% for m in messages %}{% if loop.first and messages[0]['role'] != 'system' %}<|im_start|>system\nX"
        "<|im_end|>\n{% endif %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    assert ChatTemplate.from_source(smollm_like).history_is_stable()
    # a template without a system role gets the system text folded into the first user turn: not stable
    gemma_like = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}<start_of_turn>{{ 'model' if m.role == 'assistant' else m.role }}\n"
        "{{ m.content | trim }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    )
    tpl = ChatTemplate.from_source(gemma_like)
    assert tpl.family == "gemma" and not tpl.history_is_stable()

    from llamapy.chat.interactive import chat_template_for_session

    chosen = chat_template_for_session(tpl)
    assert chosen.name == "gemma" and not chosen.is_jinja and "re-renders earlier turns" in chosen.note
    assert chat_template_for_session(ChatTemplate.from_source(smollm_like)).is_jinja


# the chat templates these families' tokenizer_config.json ship (abridged to their distinguishing lines)
QWEN25 = ("{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
          "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are "
          "a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}{{- '<|im_start|>' + "
          "message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endfor %}")
GEMMA2 = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'assistant') %}"
          "{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + "
          "role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}")
PHI3 = ("{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + "
        "'<|end|>\\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
        "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")


@pytest.mark.parametrize("source,family", [(QWEN25, "chatml"), (GEMMA2, "gemma"), (PHI3, "phi3")])
def test_model_families_templates_are_detected(source, family):
    assert detect_builtin(source) == family
