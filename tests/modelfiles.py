"""The Llama 3 Modelfile of Ollama's import tutorial, which the Modelfile, store and `run NAME` tests share."""
from __future__ import annotations

# The tutorial's TEMPLATE (the llama3 library model's, without its trailing {{ .Response }}<|eot_id|>)
LLAMA3_TEMPLATE = ("{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
                   "{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n")


def tutorial_modelfile(src: str, *extra: str) -> str:
    """The tutorial's Modelfile FROM `src`, then each of `extra` (whole instruction lines) appended."""
    return (f'FROM {src}\nTEMPLATE """{LLAMA3_TEMPLATE}"""\n'
            'SYSTEM """You are a helpful assistant. 你是一个乐于助人的助手。"""\n'
            "PARAMETER temperature 0.2\nPARAMETER num_keep 24\n"
            "PARAMETER stop <|start_header_id|>\nPARAMETER stop <|end_header_id|>\nPARAMETER stop <|eot_id|>\n"
            + "".join(extra))
