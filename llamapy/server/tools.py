"""Tool calls for the chat routes (OpenAI /v1/chat/completions, Ollama /api/chat): the request's tools
turned into the prompt and constraint of llamapy.chat.tool_calls, and a 400 for what cannot be used."""
from __future__ import annotations

from typing import Any

from ..chat.tool_calls import ToolError, ToolSetup, prepare
from .common import GrammarSpec, ServerState, compile_spec
from .errors import bad_request


def messages_of(req: Any) -> list[dict[str, Any]]:
    return [m.model_dump(exclude_none=True) if hasattr(m, "model_dump") else dict(m) for m in req.messages]


def tool_setup(state: ServerState, messages: list[dict[str, Any]], tools: Any, tool_choice: Any = None,
               parallel: bool | None = None, spec: GrammarSpec | None = None) -> ToolSetup:
    """How a request is prompted, constrained and parsed; `spec` is its response_format, if any (with tools
    the answer is then either calls or a response following that schema)."""
    schema = None
    if spec is not None:
        if spec.kind == "gbnf":
            raise bad_request("give tools or grammar, not both", "grammar")
        schema = spec.value if spec.kind == "json_schema" else {"type": "object"}
        if not isinstance(schema, dict):
            schema = {} if schema is True else {"not": {}}
    try:
        return prepare(getattr(state.template, "source", None), messages, tools, tool_choice, parallel, schema)
    except ToolError as e:
        param = "tool_choice" if str(e).startswith("tool_choice") else "tools"
        raise bad_request(str(e), param) from None


def setup_grammar(state: ServerState, setup: ToolSetup) -> Any:
    """The compiled constraint of a tool setup (a schema or grammar the engine refuses is a 400), or None."""
    if setup.schema is not None:
        return compile_spec(state.backend, GrammarSpec("json_schema", setup.schema, "tools"))
    if setup.lark is not None:
        return compile_spec(state.backend, GrammarSpec("gbnf", setup.lark, "tools"))
    return None
