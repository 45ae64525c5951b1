"""The speculative-decoding options of run, chat and serve (llama.cpp's -md, --draft-max, ...), and prompt lookup.

llama.cpp's own lookup example takes no n-gram flags; `--lookup` turns prompt-lookup drafting on (no draft
model) and `--lookup-ngram-min/-max` bound the n-gram matched (llama-cpp-python's max_ngram_size)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from .options import Opt

_P = "Speculative decoding"


def _o(name, flags, help, type, default, **kw) -> Opt:
    return Opt(name, flags, help, type, default, panel=_P, **kw)


SPECULATIVE: list[Opt] = [
    _o("model_draft", ("-md", "--model-draft"), "Draft model (shares the target's vocabulary).", Optional[str], None,
       env="LLAMA_ARG_MODEL_DRAFT"),
    _o("draft_max", ("--draft-max", "--draft", "--draft-n"), "Most tokens drafted at a time.", int, 16,
       env="LLAMA_ARG_DRAFT_MAX"),
    _o("draft_min", ("--draft-min", "--draft-n-min"), "Least tokens a draft needs to be verified.", int, 0,
       env="LLAMA_ARG_DRAFT_MIN"),
    _o("draft_p_min", ("--draft-p-min",), "The draft stops where its top probability is below this.", float, 0.75,
       env="LLAMA_ARG_DRAFT_P_MIN"),
    _o("ctx_size_draft", ("-cd", "--ctx-size-draft"), "Draft model context (0: the target's).", int, 0,
       env="LLAMA_ARG_CTX_SIZE_DRAFT"),
    _o("threads_draft", ("-td", "--threads-draft"), "Draft model threads (default: as -t).", Optional[int], None),
    _o("lookup", ("--lookup",), "Prompt-lookup drafting: drafts copied from earlier text (no draft model).",
       bool, False),
    _o("lookup_ngram_min", ("--lookup-ngram-min",), "Shortest n-gram prompt lookup matches.", int, 1),
    _o("lookup_ngram_max", ("--lookup-ngram-max",), "Longest n-gram prompt lookup matches.", int, 3),
]


def draft_options(opts: Mapping[str, Any]) -> dict:
    """The speculative options as the keywords of llamapy.run.run / the interactive session / the server."""
    from ..generation.speculative import DraftParams

    params = DraftParams(n_max=opts["draft_max"], n_min=opts["draft_min"], p_min=opts["draft_p_min"],
                         ngram_min=opts["lookup_ngram_min"], ngram_max=opts["lookup_ngram_max"])
    params.check()
    return dict(model_draft=opts["model_draft"], lookup=opts["lookup"], draft=params,
                ctx_size_draft=opts["ctx_size_draft"] or None,
                threads_draft=opts["threads_draft"] or opts.get("threads"))
