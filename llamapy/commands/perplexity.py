"""`llamapy perplexity`: llama-perplexity's PPL of a text file (-f), chunks of -c tokens; its saved logits
(--kl-divergence-base FILE) and KL divergence against them (--kl-divergence)."""
from __future__ import annotations

from typing import Optional

import typer

from .options import COMMON, NOT_YET, LlamaCommand, Opt, _c, _n, with_options

_P = "Perplexity"

# llama-perplexity's own
PERPLEXITY: list[Opt] = [
    _c("chunks", ("--chunks",), "Chunks to score (-1: all).", int, -1, min=-1, panel=_P),
    _n("all_logits", ("--perplexity", "--all-logits"), "Score every token of each chunk's second half.",
       "that is what perplexity always does here", bool, _P),
    *(_n(name, (flag,), what, NOT_YET, kind, _P) for name, flag, what, kind in (
        ("hellaswag", "--hellaswag", "HellaSwag score.", bool),
        ("hellaswag_tasks", "--hellaswag-tasks", "HellaSwag tasks.", Optional[int]),
        ("winogrande", "--winogrande", "Winogrande score.", bool),
        ("winogrande_tasks", "--winogrande-tasks", "Winogrande tasks.", Optional[int]),
        ("multiple_choice", "--multiple-choice", "Multiple-choice score.", bool),
        ("multiple_choice_tasks", "--multiple-choice-tasks", "Multiple-choice tasks.", Optional[int]),
        ("ppl_stride", "--ppl-stride", "Stride of the perplexity windows.", Optional[int]),
        ("ppl_output_type", "--ppl-output-type", "Output type <0|1>.", Optional[int]),
    )),
    _c("kl_divergence", ("--kl-divergence",), "Score the model against the log-probabilities saved in "
       "--kl-divergence-base FILE (KL divergence, same top token, Δp).", bool, False, panel=_P),
    _c("kl_divergence_base", ("--save-all-logits", "--kl-divergence-base"), "File of saved log-probabilities: "
       "written by a perplexity run, read by --kl-divergence (the reference's format).", Optional[str], None,
       panel=_P),
]

# llama-perplexity's defaults where they differ from llama-cli's
_OWN = [Opt("ctx_size", ("-c", "--ctx-size", "--n_ctx"), "Tokens per chunk.", int, 512, panel="Common"),
        Opt("file", ("-f", "--file"), "Text file to score.", str, None, panel="Perplexity")]
_IGNORED = [o for o in COMMON if o.name in ("n_predict", "keep", "special", "chat_template", "chat_template_file",
                                           "jinja", "reasoning_format")]
_NONE = "no effect on perplexity; ignored"
_NOTED = [Opt(name, flags, help, kind, False if kind is bool else None, panel="Perplexity", note=note)
          for name, flags, help, kind, note in (
              ("prompt", ("-p", "--prompt"), "Prompt.", Optional[str], "perplexity scores the -f file; ignored"),
              ("binary_file", ("-bf", "--binary-file"), "Prompt file.", Optional[str],
               "perplexity scores the -f file; ignored"),
              ("escape", ("-e", "--escape"), "Process escapes.", bool, "the -f file is scored as it is"),
              ("no_escape", ("--no-escape",), "Keep escapes.", bool, "the -f file is scored as it is"),
              ("verbose_prompt", ("--verbose-prompt",), "Print the prompt's tokens.", bool, _NONE),
              ("n_predict", ("-n", "--predict", "--n-predict"), "Tokens to generate.", Optional[int], _NONE),
              ("keep", ("--keep",), "Tokens kept on a context shift.", Optional[int], _NONE),
              ("parallel", ("-np", "--parallel"), "Parallel sequences.", Optional[int],
               "perplexity scores -b / -c chunks at once; ignored"),
          )]
TABLES = (_OWN, PERPLEXITY, _NOTED, [o for o in COMMON if o not in _IGNORED])


def register(app: typer.Typer) -> None:
    @app.command("perplexity", cls=LlamaCommand, context_settings={"help_option_names": ["-h", "--help", "--usage"]})
    @with_options(*TABLES)
    def perplexity(**opts):
        """Perplexity of a text, the reference's way (second half of each chunk scored)."""
        from ..errors import LlamapyError
        from ..perplexity import run_perplexity
        from .option_values import apply_process_options, load_options
        from .options import announce
        from .run import log_stream

        if not opts["file"] and not opts["kl_divergence"]:
            raise LlamapyError("perplexity needs a text file: -f FILE")
        announce(opts, *TABLES)
        apply_process_options(opts)
        run_perplexity(model=opts["model"], file=opts["file"], ctx_size=opts["ctx_size"],
                       batch_size=opts["batch_size"], chunks=opts["chunks"], threads=opts["threads"],
                       err=log_stream(opts), load=load_options(opts), logits_file=opts["kl_divergence_base"],
                       kl_divergence=opts["kl_divergence"])
