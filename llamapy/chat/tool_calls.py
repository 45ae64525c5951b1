"""Tool calls: the prompt a chat template gets with `tools`, the constraint that makes a call parse, and the
parser that turns the model's text back into OpenAI's `tool_calls` (whole, or as streamed deltas).

The format is the model's own, found in its chat template as llama.cpp finds it:
  hermes    `<tool_call>` in the template (Hermes 2/3 Pro, Qwen 2.5):
            <tool_call>{"name": .., "arguments": {..}}</tool_call>
  llama3    `<|start_header_id|>ipython<|end_header_id|>` (Llama 3.1+/3.2): {"name": .., "parameters": {..}}, and
            `<|python_tag|>name.call(arg=value)` for the built-in tools when the template knows that tag
  mistral   `[TOOL_CALLS]` (Mistral Nemo): [TOOL_CALLS][{"name": .., "arguments": {..}, "id": ".."}]
  generic   any other template: the tools are described in a system message and the whole answer is JSON,
            {"tool_call": {"name", "arguments"}} (or {"tool_calls": [...]} with parallel calls) or
            {"response": ".."}; this answer is always constrained, so it always parses.
With tool_choice "required" or a named function, the native formats are constrained too: the answer is a
call whose arguments follow the function's parameter schema. With "auto" they are parsed as they come.

    setup = prepare(template, messages, tools, tool_choice, parallel_tool_calls)
    text = template.render(setup.messages, add_generation_prompt=True, **setup.render_kwargs)
    grammar = setup.grammar(vocab)                      # None: unconstrained
    msg = parse(output_text, setup.format)              # ParsedMessage(content, tool_calls)
    sp = StreamParser(setup.format); sp.feed(piece) -> deltas; sp.finish() -> deltas
"""
from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

from ..errors import LlamapyError

GENERIC_PROMPT = ("Respond in JSON format, either with `tool_call` (a request to call tools) or with `response` "
                  "(your reply to the user's request).")
JSON_WS = r"(?: |\n{1,2}[ \t]{0,20})?"  # the schema engine's whitespace (as llama.cpp's SPACE_RULE)
NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class ToolError(LlamapyError, ValueError):
    """A `tools` or `tool_choice` value that cannot be used (a 400 for the server, ValueError for the API)."""


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text of the arguments object
    id: str = ""

    def openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    def ollama(self) -> dict[str, Any]:
        try:
            args = json.loads(self.arguments)
        except json.JSONDecodeError:
            args = self.arguments
        return {"function": {"name": self.name, "arguments": args}}


@dataclass
class ParsedMessage:
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)


def new_call_id() -> str:
    return "call_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(24))


# -- format detection and request checks ----------------------------------------------------------------------
def detect_format(source: str | None) -> str:
    """The tool-call format of a chat template's Jinja source (None, a built-in template: generic)."""
    src = source or ""
    if "<tool_call>" in src:
        return "hermes"
    if "<|start_header_id|>ipython<|end_header_id|>" in src:
        return "llama3_builtin" if "<|python_tag|>" in src else "llama3"
    if "[TOOL_CALLS]" in src:
        return "mistral"
    return "generic"


def check_tools(tools: Any) -> list[dict[str, Any]]:
    """OpenAI `tools` checked: [{"type": "function", "function": {"name", "description"?, "parameters"?}}];
    a missing `parameters` becomes an empty object schema."""
    if not isinstance(tools, list):
        raise ToolError("tools must be a list of {\"type\": \"function\", \"function\": {...}} objects")
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or t.get("type", "function") != "function" \
                or not isinstance(t.get("function"), dict):
            raise ToolError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}")
        fn = t["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ToolError(f"tools[{i}].function.name must be 1 to 64 letters, digits, '_', '.' or '-'")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise ToolError(f"tools[{i}].function.parameters must be a JSON schema object")
        desc = fn.get("description")
        if desc is not None and not isinstance(desc, str):
            raise ToolError(f"tools[{i}].function.description must be a string")
        if any(o["function"]["name"] == name for o in out):
            raise ToolError(f"tools[{i}]: a second function named '{name}'")
        f = {"name": name, "parameters": params} | ({"description": desc} if desc is not None else {})
        out.append({"type": "function", "function": f})
    return out


def check_choice(choice: Any, tools: list[dict[str, Any]]) -> str:
    """OpenAI `tool_choice` as "auto", "none", "required" or the name of one of the tools."""
    if choice is None:
        return "auto" if tools else "none"
    if choice != "none" and not tools:
        if choice == "auto":
            return "none"
        raise ToolError("tool_choice asks for a tool call, but tools lists no function")
    if choice in ("auto", "none", "required"):
        return str(choice)
    if isinstance(choice, dict) and choice.get("type", "function") == "function" \
            and isinstance(choice.get("function"), dict) and isinstance(choice["function"].get("name"), str):
        name = choice["function"]["name"]
        if not any(t["function"]["name"] == name for t in tools):
            raise ToolError(f"tool_choice names the function '{name}', which is not in tools")
        return name
    raise ToolError('tool_choice must be "auto", "none", "required" or {"type": "function", "function": {"name": ...}}')


# -- the prompt ----------------------------------------------------------------------------------------------
def _args_object(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments


def _history_calls(m: dict[str, Any]) -> list[dict[str, Any]]:
    calls = m.get("tool_calls") or []
    if not isinstance(calls, list):
        raise ToolError("an assistant message's tool_calls must be a list")
    out = []
    for c in calls:
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ToolError("each of an assistant message's tool_calls needs function.name")
        out.append({"id": c.get("id", ""), "type": "function",
                    "function": {"name": fn["name"], "arguments": _args_object(fn.get("arguments", {}))}})
    return out


def _generic_messages(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The conversation for a template that knows nothing of tools: the tools and the answer's JSON shape in
    the system message, past calls as the JSON the model would have written, tool results as user turns."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role == "assistant" and m.get("tool_calls"):
            calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                     for c in _history_calls(m)]  # as the constrained answer has them (no ids)
            body = {"tool_call": calls[0]} if len(calls) == 1 else {"tool_calls": calls}
            out.append({"role": "assistant", "content": json.dumps(body, ensure_ascii=False)})
        elif role == "tool":
            resp = {"tool_response": {"content": m.get("content") or ""}
                    | ({"tool_call_id": m["tool_call_id"]} if m.get("tool_call_id") else {})
                    | ({"tool": m.get("name") or m.get("tool_name")} if m.get("name") or m.get("tool_name") else {})}
            out.append({"role": "user", "content": json.dumps(resp, ensure_ascii=False)})
        else:
            out.append({k: v for k, v in m.items() if k not in ("tool_calls", "tool_call_id")})
    if tools is not None:
        text = ("You can call these tools to answer the user's requests:\n"
                + json.dumps([t["function"] for t in tools], ensure_ascii=False, indent=2) + "\n\n" + GENERIC_PROMPT)
        if out and out[0].get("role") == "system":
            out[0] = dict(out[0], content=f"{out[0].get('content') or ''}\n\n{text}".lstrip())
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


def _native_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Assistant tool_calls with their arguments as objects (what tool-aware templates expect)."""
    out = []
    for m in messages:
        if m.get("role") == "assistant" and m.get("tool_calls"):
            out.append(dict(m, tool_calls=_history_calls(m), content=m.get("content") or ""))
        else:
            out.append(dict(m))
    return out


# -- the constraint ------------------------------------------------------------------------------------------
def _call_schema(fn: dict[str, Any], args_key: str = "arguments", with_id: bool = False) -> dict[str, Any]:
    props: dict[str, Any] = {"name": {"type": "string", "const": fn["name"]}, args_key: fn["parameters"]}
    required = ["name", args_key]
    if with_id:
        props["id"] = {"type": "string", "pattern": "^[a-zA-Z0-9]{9}$"}
        required.append("id")
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def _one_of(schemas: list[dict[str, Any]]) -> dict[str, Any]:
    return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}


def _lark_json(schema: dict[str, Any]) -> str:
    return "%json " + json.dumps(dict(schema, **{"x-guidance": {"whitespace_pattern": JSON_WS}}), ensure_ascii=False)


@dataclass
class ToolSetup:
    """How one request with tools is prompted, constrained and parsed."""

    format: str  # hermes, llama3, llama3_builtin, mistral, generic
    choice: str  # auto, none, required, or a function's name
    parallel: bool
    messages: list[dict[str, Any]]
    render_kwargs: dict[str, Any]
    schema: dict[str, Any] | None = None  # the whole answer follows this JSON schema (generic format)
    lark: str | None = None  # or this grammar (native formats, with required or a named function)
    stops: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.choice != "none"

    def grammar(self, vocab: Any) -> Any:
        """The compiled constraint (llamapy.grammar, cached by content), or None."""
        from ..grammar import compile_gbnf, compile_json_schema

        if self.schema is not None:
            return compile_json_schema(self.schema, vocab)
        if self.lark is not None:
            return compile_gbnf(self.lark, vocab)
        return None


def prepare(template_source: str | None, messages: list[dict[str, Any]], tools: Any, tool_choice: Any = None,
            parallel_tool_calls: bool | None = None, response_schema: dict[str, Any] | None = None) -> ToolSetup:
    """The prompt, constraint and parser for a chat request with `tools` (ToolError on a bad tools/choice)."""
    checked = check_tools(tools) if tools else []
    choice = check_choice(tool_choice, checked)
    parallel = bool(parallel_tool_calls) if parallel_tool_calls is not None else False
    fmt = detect_format(template_source)
    if response_schema is not None and checked and choice != "none":
        fmt = "generic"  # tools and a response schema together: llama.cpp's generic format holds both
    if not checked or choice == "none":
        msgs = _native_messages(messages) if fmt != "generic" else _generic_messages(messages, None)
        return ToolSetup(fmt, "none", parallel, msgs, {})
    fns = [t["function"] for t in checked]
    if choice not in ("auto", "required"):
        fns = [f for f in fns if f["name"] == choice]
    setup = ToolSetup(fmt, choice, parallel, [], {"tools": checked})
    if fmt == "generic":
        setup.messages = _generic_messages(messages, checked)
        setup.render_kwargs = {}
        one = [_call_schema(f, with_id=False) for f in fns]
        if parallel:
            calls: dict[str, Any] = {"type": "object", "properties": {"tool_calls": {
                "type": "array", "items": _one_of(one), "minItems": 1}}, "required": ["tool_calls"]}
        else:
            calls = {"type": "object", "properties": {"tool_call": _one_of(one)}, "required": ["tool_call"]}
        calls["additionalProperties"] = False
        if choice == "auto":
            reply = {"type": "object", "properties": {"response": response_schema or {"type": "string"}},
                     "required": ["response"], "additionalProperties": False}
            setup.schema = {"anyOf": [calls, reply]}
        else:
            setup.schema = calls
        return setup
    setup.messages = _native_messages(messages)
    if fmt.startswith("llama3"):
        setup.stops = ["<|eom_id|>"]
        setup.render_kwargs["tools_in_user_message"] = False
        if fmt == "llama3_builtin":
            builtin = [f["name"] for f in fns if f["name"] in BUILTIN_TOOLS]
            if builtin:
                setup.render_kwargs["builtin_tools"] = builtin
    if choice == "auto":
        return setup
    n = "+" if parallel else ""
    if fmt == "hermes":
        rules = [f"call{i}: {_lark_json(_call_schema(f))}" for i, f in enumerate(fns)]
        body = " | ".join(f"call{i}" for i in range(len(fns)))
        setup.lark = ("%llguidance {}\nstart: tc" + n + "\ntc: \"<tool_call>\" WS (" + body
                      + ") WS \"</tool_call>\" WS\nWS: /[ \\t\\n]*/\n" + "\n".join(rules) + "\n")
    elif fmt.startswith("llama3"):
        rules = [f"call{i}: {_lark_json(_call_schema(f, 'parameters'))}" for i, f in enumerate(fns)]
        body = " | ".join(f"call{i}" for i in range(len(fns)))
        setup.lark = "%llguidance {}\nstart: " + body + "\n" + "\n".join(rules) + "\n"
    else:  # mistral
        arr: dict[str, Any] = {"type": "array", "items": _one_of([_call_schema(f, with_id=True) for f in fns]),
                               "minItems": 1}
        if not parallel:
            arr["maxItems"] = 1
        setup.lark = "%llguidance {}\nstart: \"[TOOL_CALLS]\" calls\ncalls: " + _lark_json(arr) + "\n"
    return setup


BUILTIN_TOOLS = {"wolfram_alpha": "query", "web_search": "query", "brave_search": "query", "python": "code",
                 "code_interpreter": "code"}
