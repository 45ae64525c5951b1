"""Interactive generation: llama-cli's `-i`, `-r`, `-ins` and `-cnv` loop over `llamapy.engine.engine.Engine`.

The loop follows llama-cli's main loop step for step, so the tutorials' command lines behave as with llama-cli:

- the prompt is evaluated and echoed, then tokens are sampled one at a time and printed;
- after each token the text of the last 32 tokens (prompt included) is searched for every reverse prompt
  (`-r`), so a reverse prompt split across tokens is still found; a reverse prompt that is one special
  token (`<|eot_id|>`) also matches by id. A match hands control to the user (`-i`) or ends the run;
- at an end-of-generation token in interactive mode the first reverse prompt is queued and the user asked;
- the user's line is sent as [BOS] + in-prefix + line + in-suffix (`-ins` wraps it in Alpaca's
  `### Instruction:` / `### Response:`; `-cnv` renders it with the chat template instead);
- an empty line hands control back to the model; a line ending in `\\` continues on the next line
  (`--multiline-input` swaps the meaning), one ending in `/` submits without a newline;
- Ctrl-C while the model writes returns control to the user; Ctrl-C at the prompt, or Ctrl-D / end of
  input, ends the session (status 0) after printing the timing summary;
- when the context fills, the first `--keep` tokens stay and half of the rest is dropped (context shift).

Generated text goes to stdout; messages and timings go to stderr. Colors only when stdout is a terminal.
"""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, TextIO

from ..errors import LlamapyError
from ..generation.sequence import ReversePrompts, Sequence, Timings
from ..generation.speculative import DraftedRows
from ..util.escapes import process_escapes_text as process_escapes
from ..util.safe_text import printable
from .console import Console, Quit
from .templates import ChatTemplate

DEFAULT_SYSTEM_MESSAGE = "You are a helpful assistant"
INSTRUCT_PREFIX = "\n\n### Instruction:\n\n"
INSTRUCT_SUFFIX = "\n\n### Response:\n\n"
INSTRUCT_REVERSE_PROMPT = "### Instruction:\n\n"

@dataclass
class InteractiveOptions:
    """What llama-cli's interactive flags ask for. Strings are given as typed; `escape` processes them."""

    prompt: str = ""
    interactive: bool = False  # -i
    interactive_first: bool = False  # --interactive-first
    reverse_prompts: list[str] = field(default_factory=list)  # -r, repeatable
    in_prefix: str = ""
    in_suffix: str = ""
    in_prefix_bos: bool = False
    instruct: bool = False  # -ins: Alpaca framing
    conversation: bool = False  # -cnv: messages through the chat template
    chat_template: ChatTemplate | None = None  # required with conversation
    system_prompt: str | None = None  # -sys (conversation mode)
    color: bool = False
    escape: bool = True
    multiline_input: bool = False
    n_predict: int = -1  # -1 unlimited, -2 until the context is full
    n_keep: int = 0  # -1: the whole prompt
    n_batch: int = 512
    ctx_shift: bool = True
    display_prompt: bool = True
    special: bool = False  # print special tokens' text
    verbose_prompt: bool = False
    grammar: Any = None  # a compiled grammar (llamapy.grammar) each answer follows; restarted at each turn


class _Session:
    """The state of one interactive run; `run()` is main.cpp's loop."""

    def __init__(self, llm, sampler, opts: InteractiveOptions, console: Console, timings, drafter=None):
        self.llm, self.sampler, self.opts, self.con, self.t = llm, sampler, opts, console, timings
        self.drafter = drafter
        self.spec: DraftedRows | None = None
        self.seq: Sequence | None = None
        self.tok = llm.tokenizer
        esc = process_escapes if opts.escape else (lambda s: s)
        self.prompt = esc(opts.prompt)
        self.in_prefix = esc(opts.in_prefix)
        self.in_suffix = esc(opts.in_suffix)
        self.antiprompts = [esc(r) for r in opts.reverse_prompts]
        self.system_prompt = esc(opts.system_prompt) if opts.system_prompt is not None else None
        self.interactive = opts.interactive or opts.interactive_first or opts.instruct or opts.conversation
        self.interactive_first = opts.interactive_first
        self.tpl = opts.chat_template
        # llama.cpp: in conversation mode an in-prefix/suffix replaces the chat template
        self.format_chat = opts.conversation and not (self.in_prefix or self.in_suffix)
        if self.format_chat and self.tpl is None:
            raise LlamapyError("conversation mode needs a chat template")
        self.chat: list[dict] = []
        self.add_bos = bool(self.tok.encode("", add_special=True, parse_special=False))
        self.inp_pfx: list[int] = []
        self.inp_sfx: list[int] = []
        self.quit_status = 0

    # -- tokens and text -------------------------------------------------------------------------------------
    def encode(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        return list(self.tok.encode(text, add_special=add_special, parse_special=parse_special))

    def piece(self, tid: int, special: bool) -> bytes:
        p = self.tok.token_to_piece(tid, special=special)
        return p.encode("utf-8", errors="surrogateescape") if isinstance(p, str) else bytes(p)

    def recent_text(self, ids) -> str:
        return b"".join(self.piece(t, True) for t in ids).decode("utf-8", errors="replace")

    def chat_add(self, role: str, content: str, add_generation_prompt: bool) -> str:
        msg = {"role": role, "content": content}
        text = self.tpl.format_single(self.chat, msg, add_generation_prompt)
        self.chat.append(msg)
        return text

    # -- setup ---------------------------------------------------------------------------------------------------
    def initial_tokens(self) -> list[int]:
        o = self.opts
        first_user = None
        if self.format_chat:
            if self.system_prompt is not None:
                system, first_user = self.system_prompt, (self.prompt or None)
            else:
                system = self.prompt or DEFAULT_SYSTEM_MESSAGE
            text = self.chat_add("system", system, False)
            if first_user is not None:
                text += self.chat_add("user", first_user, True)
        else:
            text = self.prompt
        ids = self.encode(text, add_special=True, parse_special=True)
        if not ids:
            if not self.add_bos:
                raise LlamapyError(
                    "the prompt is empty: give one with -p or -f (this model adds no BOS token)"
                )
            ids = [self.tok.bos_id]
        n_ctx = self.llm.n_ctx
        if len(ids) > n_ctx - 4:
            raise LlamapyError(
                f"the prompt is too long ({len(ids)} tokens, max {n_ctx - 4}): use a larger -c"
            )
        if o.instruct:
            self.n_keep = len(ids)
            self.inp_pfx = self.encode(INSTRUCT_PREFIX, add_special=True, parse_special=True)
            self.inp_sfx = self.encode(INSTRUCT_SUFFIX, add_special=False, parse_special=True)
            self.antiprompts.append(INSTRUCT_REVERSE_PROMPT)
            self.interactive_first = True
        elif o.n_keep < 0 or o.n_keep > len(ids):
            self.n_keep = len(ids)
        else:
            self.n_keep = o.n_keep + int(self.add_bos)
        if o.conversation and first_user is None:
            self.interactive_first = True
        return ids

    def announce(self) -> None:
        o, info = self.opts, self.con.info
        if o.conversation:
            if self.format_chat:
                if self.tpl.note:
                    info(f"note: {self.tpl.note}")
                info(printable(f"chat template: {self.tpl.describe()}; example:\n{self.tpl.example()}",
                               keep_newlines=True))
            else:
                info("in-prefix/in-suffix given: the chat template is not used")
        if self.interactive:
            info("interactive mode on.")
            for r in self.antiprompts:
                info(f"Reverse prompt: '{r}'")
            if o.in_prefix_bos:
                info("Input prefix with BOS")
            if self.in_prefix:
                info(f"Input prefix: '{self.in_prefix}'")
            if self.in_suffix:
                info(f"Input suffix: '{self.in_suffix}'")
            info(f"generate: n_ctx = {self.llm.n_ctx}, n_predict = {o.n_predict}, n_keep = {self.n_keep}")
            info("== Running in interactive mode. ==")
            info(" - Press Ctrl+C to interject at any time.")
            if o.multiline_input:
                info(" - To return control to the AI, end your input with '\\'.")
                info(" - To return control without starting a new line, end your input with '/'.")
            else:
                info(" - Press Return to return control to the AI.")
                info(" - To return control without starting a new line, end your input with '/'.")
                info(" - If you want to submit another line, end your input with '\\'.")
            info(" - Press Ctrl+D (end of input) or Ctrl+C at the prompt to quit.")
            if self.format_chat and not self.prompt and self.system_prompt is None:
                info(
                    " - Using default system message. To change it, set a different value via -p, -f or -sys."
                )
            info("")

    # -- the loop --------------------------------------------------------------------------------------------------
    def run(self) -> None:
        """main.cpp's loop: the generation core samples, shifts and times; this decides whose turn it is."""
        o, con, llm = self.opts, self.con, self.llm
        embd_inp = self.initial_tokens()
        n_prompt = len(embd_inp)
        if o.verbose_prompt:
            con.info(f"prompt: {len(embd_inp)} tokens")
            for tid in embd_inp:
                con.info(f"{tid:6d} -> '{self.piece(tid, True).decode('utf-8', errors='replace')}'")
        self.announce()
        seq = Sequence(self.sampler, llm.n_ctx, is_eog=self.tok.is_eog, n_predict=o.n_predict, n_keep=self.n_keep,
                       ctx_shift=o.ctx_shift, timings=self.t,
                       constraint=o.grammar.matcher() if o.grammar is not None else None)
        seq.n_past = llm.n_past(0)
        # speculative decoding: a sampled token is evaluated with a draft of the next ones (see DraftedRows)
        self.seq = seq
        self.spec = spec = DraftedRows(llm, self.drafter) if self.drafter is not None else None
        rp = ReversePrompts(self.antiprompts, lambda r: self.encode(r, add_special=False, parse_special=True),
                            lambda t: self.piece(t, True))

        n_ctx = llm.n_ctx
        self.is_interacting = self.interactive_first
        self.need_insert_eot = False
        is_antiprompt = False
        input_echo = True
        display = o.display_prompt
        n_remain = o.n_predict
        n_consumed = 0
        embd: list[int] = []
        logits = None
        assistant: list[bytes] = []
        sampled = False

        con.set_display("prompt")
        while (n_remain != 0 and not is_antiprompt) or self.interactive:
            if embd:
                if len(embd) > n_ctx - 4:
                    skipped = len(embd) - (n_ctx - 4)
                    embd = embd[: n_ctx - 4]
                    con.set_display("error")
                    con.write(f"<<input too long: skipped {skipped} token{'s' if skipped != 1 else ''}>>")
                    con.set_display("reset")
                if spec is not None and not sampled:
                    spec.drop(seq)  # input tokens: a draft's rows still waiting in the cache go first
                shift = seq.shift_for(len(embd))
                if shift is not None:
                    if shift[1] == 0:
                        con.info("\ncontext full: stopping (use --keep with context shift to continue)"
                                 if not o.ctx_shift or o.n_predict == -2 else
                                 "\ncontext full and nothing left to discard: stopping (lower --keep)")
                        break
                    llm.context_shift(0, *shift)
                if spec is not None and sampled:
                    logits = spec.eval_next(seq, embd[0], n_remain if o.n_predict >= 0 else None)
                else:
                    logits = seq.eval(llm, 0, embd, prompt=len(embd) > 1)
            embd = []

            sampled = len(embd_inp) <= n_consumed and not self.is_interacting
            if sampled and (tid := seq.sample(logits)) < 0:  # the grammar allows no token the sampler may pick
                con.info("\nthe grammar allows no further token")
                if not self.interactive:
                    break
                self.is_interacting, sampled = True, False
            elif sampled:
                if spec is not None:
                    spec.settle(seq, tid)
                rp.add(tid)
                embd.append(tid)
                input_echo = True
                n_remain -= 1
            else:
                while len(embd_inp) > n_consumed:
                    tid = embd_inp[n_consumed]
                    embd.append(tid)
                    seq.add_input([tid])
                    rp.add(tid)
                    n_consumed += 1
                    if len(embd) >= o.n_batch:
                        break

            if input_echo and display:
                for tid in embd:
                    con.write_bytes(self.piece(tid, o.special))
            if input_echo and len(embd_inp) == n_consumed:
                con.set_display("reset")
                display = True

            if len(embd_inp) <= n_consumed:
                if rp.prompts:
                    is_antiprompt = rp.found(pad=0 if self.interactive else 2)
                    if is_antiprompt and self.interactive:
                        self.is_interacting = True

                # an end-of-generation token just sampled, or ending the prompt (not one we queued ourselves)
                ends_prompt = bool(embd) and n_consumed == n_prompt
                if (sampled or ends_prompt) and seq.is_eog(embd[-1]):
                    if self.interactive:
                        if self.antiprompts:
                            embd_inp += self.encode(self.antiprompts[0], add_special=False, parse_special=True)
                            is_antiprompt = True
                        if self.format_chat:
                            self.chat_add("assistant", self._text(assistant), False)
                            assistant = []
                        self.is_interacting = True
                        con.write("\n")
                elif self.format_chat and sampled:
                    assistant.append(self.piece(embd[0], False))

                if seq.n_past > 0 and self.is_interacting:
                    if self.format_chat and assistant:  # interrupted mid-answer: keep what was said
                        self.chat_add("assistant", self._text(assistant), False)
                        assistant = []
                    start = self.take_input(embd_inp, is_antiprompt)
                    if start is not None:
                        if o.instruct and not is_antiprompt:
                            n_consumed = start  # as llama.cpp: the Alpaca prefix follows what was consumed
                        # -n is a budget per answer. llama.cpp subtracts the typed tokens from what is left,
                        # so a long line can leave nothing and the prompt comes back unanswered.
                        n_remain = o.n_predict
                    input_echo = False

                if seq.n_past > 0:
                    if self.is_interacting:  # llama.cpp resets its sampler chain at each turn
                        seq.new_turn()
                    self.is_interacting = False

            if embd and seq.is_eog(embd[-1]) and not self.interactive:
                con.write(" [end of text]\n")
                break
            if self.interactive and n_remain <= 0 and o.n_predict >= 0:
                n_remain = o.n_predict
                self.is_interacting = True

    @staticmethod
    def _text(pieces: list[bytes]) -> str:
        return b"".join(pieces).decode("utf-8", errors="replace")

    def take_input(self, embd_inp: list[int], is_antiprompt: bool) -> int | None:
        """Ask the user and queue their tokens on embd_inp. Returns where the user's tokens start, or None
        for an empty line, which hands control back."""
        o, con = self.opts, self.con
        if o.conversation or o.instruct:
            con.write("\n> ")
        if o.in_prefix_bos:
            embd_inp.append(self.tok.bos_id)
        if self.in_prefix and not o.conversation:
            con.write(self.in_prefix)
        con.set_display("user_input")
        buffer = ""
        more = True
        while more:
            line, more, eof = con.readline(o.multiline_input)
            if eof:
                con.set_display("reset")
                raise Quit()
            buffer += line
        con.set_display("reset")
        if len(buffer) <= 1:  # an empty line hands control back to the model
            return None
        if self.in_suffix and not o.conversation:
            con.write(self.in_suffix)
        start = len(embd_inp)
        if o.instruct and not is_antiprompt:
            embd_inp += self.inp_pfx
        if o.escape:
            buffer = process_escapes(buffer)
        if self.format_chat:
            user_text = self.chat_add("user", buffer, True)
        else:
            user_text = buffer
        line_pfx = self.encode(self.in_prefix, add_special=False, parse_special=True)
        line_inp = self.encode(user_text, add_special=False, parse_special=self.format_chat)
        line_sfx = self.encode(self.in_suffix, add_special=False, parse_special=True)
        if self.need_insert_eot and self.format_chat:
            embd_inp.append(_eot_id(self.tok))
        self.need_insert_eot = False
        embd_inp += line_pfx + line_inp + line_sfx
        if o.instruct:
            embd_inp += self.inp_sfx
        return start

    # -- Ctrl-C ------------------------------------------------------------------------------------------------------
    def on_sigint(self, signum, frame) -> None:
        if self.interactive and not self.is_interacting:
            self.is_interacting = True
            self.need_insert_eot = True
            return
        if not self.interactive:
            self.quit_status = 130
        raise Quit()


def _eot_id(tok) -> int:
    eot = getattr(tok, "eot_id", None)
    if eot is None or eot < 0:
        return tok.eos_id
    return eot


def run_interactive(
    llm,
    sampler,
    opts: InteractiveOptions,
    *,
    t_load_ms: float = 0.0,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    drafter=None,
) -> int:
    """Run llama-cli's interactive loop until the user leaves (Ctrl-D, Ctrl-C at the prompt, end of input)
    or, without -i, until a reverse prompt, an end-of-generation token or n_predict tokens.

    `sampler` has `sample(logits, history) -> token id` (llamapy.generation.sampling.Sampler). `drafter` (a draft
    model or prompt lookup, generation/speculative.py): each sampled token is verified with a draft of the next
    ones in one step. Returns the exit status.
    """
    con = Console(stdout or sys.stdout, stdin or sys.stdin, stderr or sys.stderr, opts.color)
    timings = Timings(load_ms=t_load_ms)
    session = _Session(llm, sampler, opts, con, timings, drafter)
    in_main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, session.on_sigint) if in_main else None
    try:
        session.run()
    except Quit:
        pass
    finally:
        if session.spec is not None:
            session.spec.drop(session.seq)  # the cache as it would be without a draft
        if in_main:
            signal.signal(signal.SIGINT, old)
        con.set_display("reset")
        con.write("\n\n")
    for line in timings.lines():
        con.info(f"llama_perf: {line}")
    return session.quit_status


def chat_template_for_session(tpl: ChatTemplate) -> ChatTemplate:
    """The template a turn-by-turn chat can use: the session appends each turn's text to the KV cache, so a
    Jinja template that re-renders earlier turns differently (e.g. folding the system message into the
    first user turn) is replaced by its built-in family, as llama-cli does without --jinja."""
    if tpl.history_is_stable() or tpl.family is None:
        return tpl
    builtin = ChatTemplate.from_name(tpl.family)
    builtin.note = (
        f"the {tpl.name} template re-renders earlier turns differently; using the built-in '{tpl.family}' "
        "format for this chat"
    )
    return builtin
