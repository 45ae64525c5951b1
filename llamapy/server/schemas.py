"""Request bodies of every endpoint, validated strictly: a wrong type or an out-of-range value is a 400.

Models are strict (no "5" for 5, no 1.0 for an integer, no 1 for a boolean); unknown fields are
ignored, as llama-server and the OpenAI API ignore them; `null` means "the default" for optional fields.
Field names follow llama-server (`n_predict`, `repeat_penalty`, ...), OpenAI (`max_tokens`,
`max_completion_tokens`, `logprobs`, ...) and Ollama (`options.num_predict`, ...).
"""
from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal, Optional, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import APIError, bad_request

UINT64_MAX = (1 << 64) - 1
MAX_PROMPTS = 16  # prompts in one completion request (each takes a slot)
MAX_EMBED_INPUTS = 512

Float = Annotated[float, Field(allow_inf_nan=False)]
Prob = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=-1, le=UINT64_MAX)]
Stop = Union[str, list[str], None]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class LoraScale(Strict):
    """One entry of a `lora` list (per request, or POST /lora-adapters): an adapter's id and its scale."""

    id: int
    scale: Union[Float, int]


class BasicSampling(Strict):
    """The sampling fields that llama-server's requests and Ollama's `options` both name alike."""

    temperature: Optional[Float] = None  # <= 0: greedy
    top_k: Optional[Annotated[int, Field(ge=-1)]] = None  # <= 0: off
    top_p: Optional[Prob] = None
    min_p: Optional[Prob] = None
    typical_p: Optional[Prob] = None
    repeat_penalty: Optional[NonNegFloat] = None
    repeat_last_n: Optional[Annotated[int, Field(ge=-1)]] = None  # -1: the whole context
    presence_penalty: Optional[Penalty] = None
    frequency_penalty: Optional[Penalty] = None
    mirostat: Optional[Literal[0, 1, 2]] = None
    mirostat_tau: Optional[NonNegFloat] = None
    mirostat_eta: Optional[NonNegFloat] = None
    seed: Optional[Seed] = None


class Sampling(BasicSampling):
    """Sampling and stopping fields shared by every generating endpoint (llama-server names)."""

    ignore_eos: Optional[bool] = None
    dry_multiplier: Optional[NonNegFloat] = None  # 0: off
    dry_base: Optional[Float] = None  # below 1: the server's
    dry_allowed_length: Optional[Annotated[int, Field(ge=0)]] = None
    dry_penalty_last_n: Optional[Annotated[int, Field(ge=-1)]] = None  # -1: the whole context
    dry_sequence_breakers: Optional[list[str]] = None
    xtc_probability: Optional[Prob] = None
    xtc_threshold: Optional[Float] = None  # above 0.5: off
    dynatemp_range: Optional[NonNegFloat] = None
    dynatemp_exponent: Optional[Float] = None
    samplers: Union[list[str], str, None] = None  # names in order, or their letters
    logit_bias: Any = None  # llama-server: [[id|text, bias|false], ...]; OpenAI: {"id": bias}
    stop: Stop = None
    stream: Optional[bool] = None
    n_probs: Optional[Annotated[int, Field(ge=0, le=100)]] = None
    timings_per_token: Optional[bool] = None  # streamed chunks carry `timings`
    n_predict: Optional[Annotated[int, Field(ge=-2)]] = None  # -1: until end of text or context
    max_tokens: Optional[Annotated[int, Field(ge=-1)]] = None
    grammar: Optional[str] = None
    json_schema: Any = None
    model: Optional[str] = None
    lora: Optional[list[LoraScale]] = None  # this request's adapter scales (the ones not listed: 0)


class CompletionRequest(Sampling):
    """POST /completion (llama-server)."""

    prompt: Any = None
    cache_prompt: Optional[bool] = None
    return_tokens: Optional[bool] = None
    id_slot: Optional[Annotated[int, Field(ge=-1)]] = None
    post_sampling_probs: Optional[bool] = None  # n_probs after the sampler chain, as probabilities


class OAICompletionRequest(Sampling):
    """POST /v1/completions."""

    prompt: Any = None
    n: Optional[Annotated[int, Field(ge=1)]] = None
    logprobs: Optional[Annotated[int, Field(ge=0, le=20)]] = None
    echo: Optional[bool] = None
    suffix: Optional[str] = None
    best_of: Optional[Annotated[int, Field(ge=1)]] = None
    stream_options: Optional[dict[str, Any]] = None
    user: Optional[str] = None
    cache_prompt: Optional[bool] = None


class TextPart(Strict):
    type: str
    text: Optional[str] = None


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    name: Optional[str] = None
    tool_calls: Optional[list[dict[str, Any]]] = None  # an assistant's past calls
    tool_call_id: Optional[str] = None  # a tool message: the call it answers
    tool_name: Optional[str] = None  # Ollama's name of the tool a tool message answers


class ChatRequest(Sampling):
    """POST /v1/chat/completions."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    n: Optional[Annotated[int, Field(ge=1)]] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[Annotated[int, Field(ge=0, le=20)]] = None
    max_completion_tokens: Optional[Annotated[int, Field(ge=-1)]] = None
    response_format: Optional[dict[str, Any]] = None
    tools: Optional[list[Any]] = None
    tool_choice: Any = None
    parallel_tool_calls: Optional[bool] = None
    stream_options: Optional[dict[str, Any]] = None
    user: Optional[str] = None
    cache_prompt: Optional[bool] = None


class TokenizeRequest(Strict):
    content: Any = ""
    add_special: bool = False
    with_pieces: bool = False


class DetokenizeRequest(Strict):
    tokens: list[int] = []


class ApplyTemplateRequest(Strict):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]


class EmbeddingRequest(Strict):
    """POST /v1/embeddings (`input`) and /embedding (`content`)."""

    input: Any = None
    content: Any = None
    model: Optional[str] = None
    encoding_format: Optional[Literal["float", "base64"]] = None
    dimensions: Optional[Annotated[int, Field(ge=1)]] = None
    user: Optional[str] = None


class OllamaOptions(BasicSampling):
    num_predict: Optional[Annotated[int, Field(ge=-2)]] = None
    stop: Stop = None
    num_ctx: Optional[Annotated[int, Field(ge=0)]] = None


class OllamaGenerateRequest(Strict):
    model: Optional[str] = None
    prompt: str = ""
    system: Optional[str] = None
    raw: bool = False
    stream: bool = True
    options: Optional[OllamaOptions] = None
    format: Any = None
    keep_alive: Any = None
    images: Optional[list[Any]] = None
    context: Optional[list[int]] = None  # the tokens an earlier answer returned: continue from there


class OllamaEmbedRequest(Strict):
    model: Optional[str] = None
    input: Any = None  # /api/embed: text or a list of texts
    prompt: Optional[str] = None  # /api/embeddings (older): one text
    options: Optional[dict[str, Any]] = None
    keep_alive: Any = None
    truncate: Optional[bool] = None


class OllamaChatRequest(Strict):
    model: Optional[str] = None
    messages: list[ChatMessage] = []
    stream: bool = True
    options: Optional[OllamaOptions] = None
    format: Any = None
    keep_alive: Any = None
    tools: Optional[list[Any]] = None


M = TypeVar("M", bound=BaseModel)


def parse_json(body: bytes) -> Any:
    """The request body as JSON, or a 400 (malformed, not UTF-8, NaN/Infinity, or nested absurdly deep)."""
    if not body.strip():
        raise bad_request("the request body is empty; send a JSON object")
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as e:
        raise bad_request(f"malformed JSON in the request body: {e}") from None
    try:  # a lone surrogate escape ("\ud800") parses, but is no text: refuse it here, once
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request("malformed JSON in the request body: a string holds a lone UTF-16 surrogate") from None
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def validate(model: type[M], data: Any) -> M:
    """`data` as a `model`, or a 400 naming the first bad field."""
    if not isinstance(data, dict):
        raise bad_request(f"the request body must be a JSON object, not {_json_type(data)}")
    try:
        m = model.model_validate(data)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"] if not _is_union_tag(p))
        raise APIError(400, f"{loc}: {err['msg']}" if loc else err["msg"], param=loc or None) from None
    _check_int32(m, "")
    return m


INT32_MAX = 2**31 - 1
UNBOUNDED_INTS = frozenset({"seed", "n_predict", "max_tokens", "max_completion_tokens", "num_predict"})


def _check_int32(m: BaseModel, prefix: str) -> None:
    """Integer fields are C ints in the engine: one beyond int32 is a 400 naming it, not an OverflowError
    (token limits and seeds have their own, wider ranges)."""
    for name, v in m:
        if isinstance(v, BaseModel):
            _check_int32(v, f"{prefix}{name}.")
        elif isinstance(v, int) and not isinstance(v, bool) and abs(v) > INT32_MAX and name not in UNBOUNDED_INTS:
            raise APIError(400, f"{prefix}{name}: {v} is out of range (at most {INT32_MAX})", param=prefix + name)


def _is_union_tag(p: Any) -> bool:
    return isinstance(p, str) and ("[" in p or p in ("str", "int", "list", "float", "bool"))


def _json_type(v: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(v), "null" if v is None else type(v).__name__
    )


def stop_list(stop: Stop) -> list[str]:
    """`stop` as a list of non-empty strings (a single string is a list of one)."""
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    return [s for s in stop if s]


def finite(x: float) -> float:
    """A float that JSON can carry: -inf (log of a zero probability) becomes the lowest float32."""
    return x if math.isfinite(x) else -3.4028234663852886e38
