"""The shapes of what `Llama` returns, as llama-cpp-python's `llama_types` names them (OpenAI's shapes).

Plain dicts at run time; these TypedDicts say which keys and value types each one has, so code written
against llama-cpp-python's types type-checks against llamapy's.
"""
import sys
from typing import Any, Literal, Union

# evaluated annotations (no `from __future__ import annotations`): TypedDict reads NotRequired from them
if sys.version_info >= (3, 11):
    from typing import NotRequired, TypedDict
else:  # pragma: no cover
    from typing_extensions import NotRequired, TypedDict

JsonType = Union[None, int, str, bool, list[Any], dict[str, Any]]


# -- embeddings ----------------------------------------------------------------------------------------------
class EmbeddingUsage(TypedDict):
    prompt_tokens: int
    total_tokens: int


class Embedding(TypedDict):
    index: int
    object: str
    embedding: list[float] | list[list[float]]


class CreateEmbeddingResponse(TypedDict):
    object: Literal["list"]
    model: str
    data: list[Embedding]
    usage: EmbeddingUsage


# -- completions ---------------------------------------------------------------------------------------------
class CompletionLogprobs(TypedDict):
    text_offset: list[int]
    token_logprobs: list[float | None]
    tokens: list[str]
    top_logprobs: list[dict[str, float] | None]


class CompletionChoice(TypedDict):
    text: str
    index: int
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length"] | None


class CompletionUsage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CreateCompletionResponse(TypedDict):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: NotRequired[CompletionUsage]


CreateCompletionStreamResponse = CreateCompletionResponse
Completion = CreateCompletionResponse
CompletionChunk = CreateCompletionResponse


# -- chat ----------------------------------------------------------------------------------------------------
class ChatCompletionTopLogprobToken(TypedDict):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatCompletionLogprobToken(ChatCompletionTopLogprobToken):
    top_logprobs: list[ChatCompletionTopLogprobToken]


class ChatCompletionLogprobs(TypedDict):
    content: list[ChatCompletionLogprobToken] | None
    refusal: list[ChatCompletionLogprobToken] | None


class ChatCompletionResponseMessage(TypedDict):
    content: str | None
    role: Literal["assistant", "function"]
    tool_calls: NotRequired[list[dict[str, Any]]]
    function_call: NotRequired[dict[str, Any]]


class ChatCompletionResponseChoice(TypedDict):
    index: int
    message: ChatCompletionResponseMessage
    logprobs: ChatCompletionLogprobs | None
    finish_reason: str | None


class CreateChatCompletionResponse(TypedDict):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatCompletionResponseChoice]
    usage: CompletionUsage


class ChatCompletionStreamResponseDelta(TypedDict):
    content: NotRequired[str | None]
    role: NotRequired[Literal["system", "user", "assistant", "tool"]]


class ChatCompletionStreamResponseChoice(TypedDict):
    index: int
    delta: ChatCompletionStreamResponseDelta | dict[str, Any]
    finish_reason: Literal["stop", "length", "tool_calls", "function_call"] | None
    logprobs: NotRequired[ChatCompletionLogprobs | None]


class CreateChatCompletionStreamResponse(TypedDict):
    id: str
    model: str
    object: Literal["chat.completion.chunk"]
    created: int
    choices: list[ChatCompletionStreamResponseChoice]


ChatCompletion = CreateChatCompletionResponse
ChatCompletionChunk = CreateChatCompletionStreamResponse


# -- requests ------------------------------------------------------------------------------------------------
class ChatCompletionRequestMessage(TypedDict, total=False):
    """One message of `messages`: a role and its content (text, or a list of OpenAI content parts)."""

    role: str
    content: str | list[dict[str, Any]] | None
    name: str


class ChatCompletionRequestResponseFormat(TypedDict, total=False):
    type: Literal["text", "json_object", "json_schema"]
    schema: JsonType
    json_schema: JsonType


# -- models (the server's /v1/models) ------------------------------------------------------------------------
class ModelData(TypedDict):
    id: str
    object: Literal["model"]
    owned_by: str
    permissions: list[str]


class ModelList(TypedDict):
    object: Literal["list"]
    data: list[ModelData]
