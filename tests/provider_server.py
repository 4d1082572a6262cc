"""A small local LLM provider for tests: OpenAI- and Anthropic-shaped HTTP endpoints on 127.0.0.1.

Real provider clients (the ``openai`` and ``anthropic`` SDKs, and LangChain / LlamaIndex on top of
them) talk to it over HTTP.  It counts tokens itself with tiktoken ``cl100k_base`` and keeps an
honest bill of every request it answered, so tests can compare what a client *reports* with what
the provider *charged*.

Endpoints
    POST /v1/chat/completions       OpenAI chat (non-stream JSON and SSE streams, tools, response_format)
    POST /v1/completions            OpenAI legacy completions (``prompt`` string)
    POST /v1/messages               Anthropic Messages (non-stream JSON and SSE streams, tools)
    POST /v1/messages/count_tokens  Anthropic token counting (not billed; returns {"input_tokens": n})
    anything else                   404 JSON

Per-model behaviour is set with :meth:`ProviderServer.configure`; see :class:`Behaviour`.

Billing rules (all counts with cl100k_base):

* prompt (OpenAI chat): per message 3 + tokens(role) + tokens(text parts) + image tokens
  (+ 1 + tokens(name) if a name) (+ tokens(compact JSON of tool_calls) if present); + 3 reply
  priming; + tokens(compact JSON of each entry of ``tools``).
* prompt (Anthropic): the same rule over ``system`` (as a message with role "system") and the
  messages' blocks (text -> tokens(text); tool_use -> tokens(name) + tokens(compact JSON input);
  tool_result -> its content's tokens; image -> Anthropic image rule) + 3 + each tool's compact JSON.
* prompt (legacy completions): tokens(prompt).
* images: OpenAI: detail "low" -> 85, else fit in 2048x2048, then shortest side to 768 (only if
  larger), 85 + 170 * tiles(512 px).  Anthropic: ceil(w*h/750) after scaling the long edge down to
  1568.  PNG (IHDR), JPEG (SOF) and GIF sizes are read from base64 data; anything unreadable (e.g. an
  http URL) is billed as 1024x1024.
* completion = visible output tokens (text, or tool name + arguments JSON) + reasoning + overcount.
* When the client sends an output cap and the behaviour honours it (``ignore_cap=False``), the
  whole billed completion stays within the cap: reasoning tokens are spent first, then visible
  text, then overcount; if anything had to be cut the finish reason is "length" / "max_tokens".
* cost_usd = ((prompt - cache_read - cache_write) * input_price + cache_read * cache_read_price
  + cache_write * cache_write_price + completion * output_price) / 1e6.
* Streams: the bill covers what was written to the socket (an abandoned stream is billed for the
  chunks sent before the write failed; overcount is only billed once the last content chunk went out).
  A request whose client disconnects while the server is still "hanging" (before generating) is
  recorded with status 499 and cost 0.
* ``drop_after_bill``: the answer is written and billed as usual, then the connection closes with
  no response sent (a proxy or load balancer cutting it): the client sees a dropped connection.

The bill is updated *before* the bytes a client could observe are written, so right after a client
call returns, ``server.requests`` / ``server.bill_usd`` already include that call.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import select
import socket
import struct
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field, fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import tiktoken

__all__ = [
    "ANSWER_WORD",
    "Behaviour",
    "BilledRequest",
    "ProviderServer",
    "anthropic_image_tokens",
    "answer_text",
    "count_tokens",
    "image_size",
    "openai_image_tokens",
    "sample_from_schema",
]

_ENCODING: tiktoken.Encoding | None = None
_ENCODING_LOCK = threading.Lock()

#: The plain-text answer is ``"word word word ..."``: in cl100k_base "word" and every " word" are one
#: token each, so N words are exactly N tokens and every prefix of k words is exactly k tokens.
ANSWER_WORD = "word"


def _enc() -> tiktoken.Encoding:
    global _ENCODING
    if _ENCODING is None:
        with _ENCODING_LOCK:
            if _ENCODING is None:
                _ENCODING = tiktoken.get_encoding("cl100k_base")
    return _ENCODING


def count_tokens(text: str) -> int:
    """Number of cl100k_base tokens in ``text`` (special-token text is counted as plain text)."""
    if not text:
        return 0
    return len(_enc().encode(text, disallowed_special=()))


def _encode(text: str) -> list[int]:
    return _enc().encode(text, disallowed_special=()) if text else []


def _decode(tokens: list[int]) -> str:
    return _enc().decode(tokens) if tokens else ""


def answer_text(n_tokens: int) -> str:
    """The deterministic plain-text answer of exactly ``n_tokens`` cl100k tokens."""
    if n_tokens <= 0:
        return ""
    return " ".join([ANSWER_WORD] * n_tokens)


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# --------------------------------------------------------------------------------------------------
# Behaviour and bill records
# --------------------------------------------------------------------------------------------------


@dataclass
class Behaviour:
    """How one model answers.  Prices are USD per 1M tokens."""

    input_price: float = 1.0
    output_price: float = 2.0
    cache_read_price: float | None = None  # None -> input_price
    cache_write_price: float | None = None  # None -> input_price
    answer_tokens: int = 20  # length of the plain-text answer the model wants to write
    ignore_cap: bool = False  # True: max_tokens / max_completion_tokens are ignored
    cache_read_tokens: int = 0  # prompt tokens reported (and billed) as cache reads
    cache_write_tokens: int = 0  # prompt tokens reported as cache writes (Anthropic only)
    reasoning_tokens: int = 0  # hidden output tokens, billed as output
    overcount: int = 0  # extra output tokens reported and billed beyond the produced text
    fail_status: int | None = None  # answer with this HTTP status and a provider-shaped error
    fail_times: int | None = None  # only the first N requests fail (None: all of them)
    hang_s: float = 0.0  # sleep before answering (interrupted by stop() or a client disconnect)
    stream_usage: bool = True  # OpenAI streams: send the usage chunk when the client asks for it
    # Extras (not in the original brief):
    chunk_tokens: int = 4  # visible tokens per stream chunk
    chunk_delay_s: float = 0.0  # pause between stream content chunks (to test abandoned streams)
    retry_after_ms: float | None = 1.0  # failures send `retry-after-ms` (SDK retries wait ~1 ms)
    tool_rounds: int = 1  # replies that call a tool after a user message (the i-th calls the i-th tool), then text
    drop_after_bill: bool = False  # write (and bill) the answer, then close the connection without sending it

    @property
    def effective_cache_read_price(self) -> float:
        return self.input_price if self.cache_read_price is None else self.cache_read_price

    @property
    def effective_cache_write_price(self) -> float:
        return self.input_price if self.cache_write_price is None else self.cache_write_price

    def cost(self, prompt: int, completion: int, cache_read: int = 0, cache_write: int = 0) -> float:
        """USD for a request with ``prompt`` TOTAL prompt tokens (cache reads/writes included)."""
        fresh = prompt - cache_read - cache_write
        return (
            fresh * self.input_price
            + cache_read * self.effective_cache_read_price
            + cache_write * self.effective_cache_write_price
            + completion * self.output_price
        ) / 1e6


_BEHAVIOUR_FIELDS = frozenset(f.name for f in fields(Behaviour))


@dataclass
class BilledRequest:
    """One request the server answered (or refused), as billed."""

    model: str
    api: str  # "openai" | "anthropic" | "openai-completions"
    stream: bool
    cap_sent: int | None  # max_tokens / max_completion_tokens as sent by the client
    prompt_tokens: int  # TOTAL prompt tokens (cache reads and writes included)
    completion_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float
    usage_reported: bool  # the client was sent a usage object for this request
    status: int  # HTTP status (499: client went away before the answer)
    # Extras:
    cap_param: str | None = None  # "max_tokens" | "max_completion_tokens" | both, comma-joined
    usage_requested: bool = (
        False  # stream usage was asked for (OpenAI: stream_options.include_usage; Anthropic streams: always)
    )
    finish_reason: str | None = None  # as sent ("stop", "length", "tool_calls", "end_turn", ...)
    reasoning_tokens: int = 0  # part of completion_tokens
    finished: bool = True  # False while a stream is still being written
    client_disconnected: bool = False  # a write to the client failed / it left during a hang
    body: dict = field(default_factory=dict, repr=False, compare=False)  # the parsed request JSON


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------

_DEFAULT_IMAGE_SIZE = (1024, 1024)
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of PNG, JPEG or GIF bytes, or None if unreadable."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return int(w), int(h)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        w, h = struct.unpack("<HH", data[6:10])
        return int(w), int(h)
    if data[:2] == b"\xff\xd8":
        i, n = 2, len(data)
        while i + 1 < n:
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
                i += 2
                continue
            if i + 4 > n:
                return None
            (seg_len,) = struct.unpack(">H", data[i + 2 : i + 4])
            if marker in _JPEG_SOF:
                if i + 9 > n:
                    return None
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                return int(w), int(h)
            i += 2 + seg_len
    return None


def _data_url_size(url: str) -> tuple[int, int]:
    if isinstance(url, str) and url.startswith("data:") and "," in url:
        header, payload = url.split(",", 1)
        if ";base64" in header:
            return _b64_size(payload)
    return _DEFAULT_IMAGE_SIZE


def _b64_size(payload: str) -> tuple[int, int]:
    try:
        raw = base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError, TypeError):
        return _DEFAULT_IMAGE_SIZE
    return image_size(raw) or _DEFAULT_IMAGE_SIZE


def openai_image_tokens(width: int, height: int, detail: str | None = "auto") -> int:
    """OpenAI's published tile rule for GPT-4o-class vision input."""
    if detail == "low":
        return 85
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        s = 2048 / max(w, h)
        w, h = w * s, h * s
    if min(w, h) > 768:
        s = 768 / min(w, h)
        w, h = w * s, h * s
    w, h = round(w), round(h)
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return 85 + 170 * tiles


def anthropic_image_tokens(width: int, height: int) -> int:
    """Anthropic's rule: ceil(w*h/750) after scaling the long edge down to at most 1568 px."""
    w, h = float(width), float(height)
    if max(w, h) > 1568:
        s = 1568 / max(w, h)
        w, h = round(w * s), round(h * s)
    return math.ceil(w * h / 750)


# --------------------------------------------------------------------------------------------------
# Prompt counting
# --------------------------------------------------------------------------------------------------


def _openai_content_tokens(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_tokens(content)
    n = 0
    if isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                n += count_tokens(part)
            elif isinstance(part, dict):
                kind = part.get("type")
                if kind == "image_url":
                    image = part.get("image_url") or {}
                    if isinstance(image, str):
                        image = {"url": image}
                    w, h = _data_url_size(image.get("url", ""))
                    n += openai_image_tokens(w, h, image.get("detail") or "auto")
                elif isinstance(part.get("text"), str):
                    n += count_tokens(part["text"])
                elif isinstance(part.get("refusal"), str):
                    n += count_tokens(part["refusal"])
    return n


def openai_chat_prompt_tokens(body: dict) -> int:
    n = 0
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        n += 3 + count_tokens(str(message.get("role", "")))
        n += _openai_content_tokens(message.get("content"))
        if message.get("name"):
            n += 1 + count_tokens(str(message["name"]))
        if message.get("tool_calls"):
            n += count_tokens(_compact(message["tool_calls"]))
    n += 3
    for tool in body.get("tools") or []:
        n += count_tokens(_compact(tool))
    return n


def _anthropic_blocks_tokens(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_tokens(content)
    n = 0
    if isinstance(content, list):
        for block in content:
            if isinstance(block, str):
                n += count_tokens(block)
                continue
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text":
                n += count_tokens(block.get("text") or "")
            elif kind == "image":
                source = block.get("source") or {}
                if source.get("type") == "base64":
                    w, h = _b64_size(source.get("data") or "")
                else:
                    w, h = _DEFAULT_IMAGE_SIZE
                n += anthropic_image_tokens(w, h)
            elif kind == "tool_use":
                n += count_tokens(block.get("name") or "") + count_tokens(_compact(block.get("input") or {}))
            elif kind == "tool_result":
                n += _anthropic_blocks_tokens(block.get("content"))
            elif kind == "thinking":
                n += count_tokens(block.get("thinking") or "")
            elif isinstance(block.get("text"), str):
                n += count_tokens(block["text"])
    return n


def anthropic_prompt_tokens(body: dict) -> int:
    n = 0
    system = body.get("system")
    if system:
        n += 3 + count_tokens("system") + _anthropic_blocks_tokens(system)
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        n += 3 + count_tokens(str(message.get("role", ""))) + _anthropic_blocks_tokens(message.get("content"))
    n += 3
    for tool in body.get("tools") or []:
        n += count_tokens(_compact(tool))
    return n


def completions_prompt_tokens(body: dict) -> int:
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        return sum(count_tokens(p) for p in prompt if isinstance(p, str))
    return count_tokens(prompt if isinstance(prompt, str) else "")


# --------------------------------------------------------------------------------------------------
# JSON from a schema
# --------------------------------------------------------------------------------------------------


def _resolve_ref(ref: str, root: dict) -> dict:
    if not ref.startswith("#/"):
        return {}
    node: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(node, dict):
            return {}
        node = node.get(part.replace("~1", "/").replace("~0", "~"), {})
    return node if isinstance(node, dict) else {}


def sample_from_schema(schema: Any, root: dict | None = None, _depth: int = 0) -> Any:
    """A value for a JSON schema: "x" for strings, 1 for numbers, true, [], and for objects a value for
    each REQUIRED property (nested objects with properties are filled the same way; {} otherwise)."""
    if not isinstance(schema, dict) or _depth > 20:
        return "x"
    root = schema if root is None else root
    if "$ref" in schema:
        return sample_from_schema(_resolve_ref(schema["$ref"], root), root, _depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return sample_from_schema((non_null or options)[0], root, _depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        non_null = [k for k in kind if k != "null"]
        kind = non_null[0] if non_null else "null"
    if kind == "string":
        return "x"
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "null":
        return None
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        return {
            name: sample_from_schema(properties.get(name, {"type": "string"}), root, _depth + 1)
            for name in schema.get("required") or []
        }
    return "x"


# --------------------------------------------------------------------------------------------------
# Answer planning
# --------------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """What the model writes for one request, after the cap."""

    kind: str  # "text" | "tool"
    tokens: list[int]  # visible text tokens, or the tool ARGUMENTS tokens
    truncated: bool
    reasoning: int  # billed reasoning tokens
    overcount: int  # billed overcount tokens
    tool_name: str = ""
    tool_id: str = ""
    name_tokens: int = 0  # tokens(tool_name), billed with the first tool chunk
    tool_input: dict | None = None  # parsed arguments (None if truncated)

    @property
    def visible_tokens(self) -> int:
        return len(self.tokens) + self.name_tokens

    @property
    def completion_tokens(self) -> int:
        return self.visible_tokens + self.reasoning + self.overcount


def _make_plan(behaviour: Behaviour, cap: int | None, kind: str, text: str = "", tool: dict | None = None) -> _Plan:
    if kind == "tool":
        assert tool is not None
        full = _encode(_compact(tool["input"]))
        name_tokens = count_tokens(tool["name"])
    else:
        full = _encode(text)
        name_tokens = 0
    reasoning, overcount = max(0, behaviour.reasoning_tokens), max(0, behaviour.overcount)
    visible = full
    truncated = False
    if cap is not None and not behaviour.ignore_cap:
        budget = max(0, cap)
        r = min(reasoning, budget)
        budget -= r
        budget -= min(name_tokens, budget)  # a tool name is always written whole
        v = min(len(full), budget)
        budget -= v
        o = min(overcount, budget)
        truncated = r < reasoning or v < len(full) or o < overcount
        reasoning, visible, overcount = r, full[:v], o
    plan = _Plan(kind=kind, tokens=list(visible), truncated=truncated, reasoning=reasoning, overcount=overcount)
    if kind == "tool":
        assert tool is not None
        plan.tool_name = tool["name"]
        plan.tool_id = tool["id"]
        plan.name_tokens = name_tokens
        plan.tool_input = None if len(visible) < len(full) else tool["input"]
    return plan


def _tool_round(turns: list[str], rounds: int) -> int | None:
    """Which tool-calling reply this one is (0: the first after the user's message), or None for text.

    `turns` follow the last user message: "call" (a reply that called a tool), "result" (a tool
    result), "other" (a text reply). A tool is called right after the user or a tool result.
    """
    if turns and (turns[-1] != "result" or "other" in turns):
        return None
    done = turns.count("call")
    return done if done < rounds else None


def _openai_tool_choice(body: dict, rounds: int = 1) -> dict | None:
    """The tool the OpenAI request should call now, or None to answer text."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type", "function") == "function"]
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if not tools or last_user is None:
        return None
    turns = [
        "call" if m.get("tool_calls") else "result" if m.get("role") == "tool" else "other"
        for m in messages[last_user + 1 :]
    ]
    step = _tool_round(turns, rounds)
    choice = body.get("tool_choice")
    if step is None or choice == "none":
        return None
    chosen = tools[step % len(tools)]
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        for t in tools:
            if (t.get("function") or {}).get("name") == name:
                chosen = t
    function = chosen.get("function") or {}
    schema = function.get("parameters") or {"type": "object", "properties": {}}
    return {
        "name": function.get("name", "tool"),
        "id": "call_" + uuid.uuid4().hex[:24],
        "input": sample_from_schema(schema),
    }


def _anthropic_blocks(message: dict, kind: str) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == kind for b in content)


def _anthropic_tool_choice(body: dict, rounds: int = 1) -> dict | None:
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and "input_schema" in t]
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    # Tool results travel in user messages: the user's own message is the last one without them.
    last_user = max(
        (i for i, m in enumerate(messages) if m.get("role") == "user" and not _anthropic_blocks(m, "tool_result")),
        default=None,
    )
    if not tools or last_user is None:
        return None
    turns = [
        "call" if _anthropic_blocks(m, "tool_use") else "result" if m.get("role") == "user" else "other"
        for m in messages[last_user + 1 :]
    ]
    step = _tool_round(turns, rounds)
    choice = body.get("tool_choice") or {}
    if step is None or (isinstance(choice, dict) and choice.get("type") == "none"):
        return None
    chosen = tools[step % len(tools)]
    if isinstance(choice, dict) and choice.get("type") == "tool":
        for t in tools:
            if t.get("name") == choice.get("name"):
                chosen = t
    return {
        "name": chosen.get("name", "tool"),
        "id": "toolu_" + uuid.uuid4().hex[:24],
        "input": sample_from_schema(chosen.get("input_schema") or {"type": "object"}),
    }


def _openai_json_answer(body: dict) -> str | None:
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        return json.dumps(sample_from_schema(schema) if schema else {"answer": "x"})
    if fmt.get("type") == "json_object":
        return json.dumps({"answer": "x"})
    return None


def _anthropic_json_answer(body: dict) -> str | None:
    fmt = (body.get("output_config") or {}).get("format") or body.get("output_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return json.dumps(sample_from_schema(fmt.get("schema") or {}))
    return None


def _chunks(tokens: list[int], size: int) -> list[list[int]]:
    size = max(1, size)
    return [tokens[i : i + size] for i in range(0, len(tokens), size)]


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------

_OPENAI_ERRORS = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "model_not_found"),
    408: ("server_error", "timeout"),
    409: ("invalid_request_error", "conflict"),
    422: ("invalid_request_error", "unprocessable_entity"),
    429: ("requests", "rate_limit_exceeded"),
}
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def _error_body(api: str, status: int, message: str) -> dict:
    if api == "anthropic":
        kind = _ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    kind, code = _OPENAI_ERRORS.get(
        status, ("server_error", "server_error") if status >= 500 else ("invalid_request_error", None)
    )
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class _ClientGone(Exception):
    """Writing to the client failed."""


class _Stopped(Exception):
    """The server is stopping."""


_EXTRA_REASONS = {529: "Overloaded"}

_CONNECTION_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout, TimeoutError)


# --------------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver listens with a backlog of 5: a burst of concurrent calls overflowed it, and a
    # dropped SYN is retried after 1, 3, 7, 15 s — a client could time out on a request served later.
    request_queue_size = 256
    provider: ProviderServer

    def handle_error(self, request, client_address):  # noqa: ANN001 - stdlib signature
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, _CONNECTION_ERRORS + (OSError,)):
            return  # client went away: quiet
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ProviderServer/1.0"
    sys_version = ""
    timeout = 60  # idle keep-alive connections close after this long

    server: _HTTPServer

    # ----- plumbing -----

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass

    def setup(self):
        super().setup()
        self.server.provider._track(self.connection, add=True)

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.provider._track(self.connection, add=False)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except _CONNECTION_ERRORS as exc:
            self.close_connection = True
            raise _ClientGone() from exc
        except OSError as exc:
            self.close_connection = True
            raise _ClientGone() from exc

    def _send_json(self, status: int, obj: dict, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(obj).encode()
        try:
            self.send_response(status, _EXTRA_REASONS.get(status))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
        except _CONNECTION_ERRORS + (OSError,) as exc:
            self.close_connection = True
            raise _ClientGone() from exc
        self._write(payload)

    def _start_sse(self) -> None:
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
        except _CONNECTION_ERRORS + (OSError,) as exc:
            raise _ClientGone() from exc
        finally:
            self.close_connection = True

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if readable:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True
        return False

    def _pause(self, seconds: float, watch_client: bool) -> None:
        """Sleep, raising _Stopped on stop() and _ClientGone if the client disconnects."""
        stop = self.server.provider._stop_event
        end = time.monotonic() + seconds
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            if stop.wait(min(0.02, remaining)):
                raise _Stopped()
            if watch_client and self._client_gone():
                raise _ClientGone()

    # ----- routing -----

    def do_GET(self):  # noqa: N802 - stdlib naming
        self._not_found()

    def do_PUT(self):  # noqa: N802
        self._not_found()

    def do_DELETE(self):  # noqa: N802
        self._not_found()

    def _not_found(self):
        try:
            self._read_body()
            self._send_json(
                404, {"error": {"message": f"no route {self.command} {self.path}", "type": "not_found", "code": None}}
            )
        except (_ClientGone, OSError):
            self.close_connection = True

    def do_POST(self):  # noqa: N802
        provider = self.server.provider
        path = self.path.split("?", 1)[0].rstrip("/")
        routes = {
            "/v1/chat/completions": "openai",
            "/v1/completions": "openai-completions",
            "/v1/messages": "anthropic",
            "/v1/messages/count_tokens": "anthropic-count",
        }
        api = routes.get(path)
        if api is None:
            self._not_found()
            return
        try:
            raw = self._read_body()
        except (OSError, ValueError):
            self.close_connection = True
            return
        provider._enter()
        try:
            self._serve(api, raw)
        except (_ClientGone, _Stopped):
            self.close_connection = True
        except Exception:  # a bug in this server: tell the client and remember it
            text = traceback.format_exc()
            provider._note_error(text)
            try:
                self._send_json(
                    500,
                    _error_body(
                        "anthropic" if api.startswith("anthropic") else "openai", 500, "provider_server bug:\n" + text
                    ),
                )
            except (_ClientGone, OSError):
                pass
            self.close_connection = True
        finally:
            provider._leave()

    def _serve(self, api: str, raw: bytes) -> None:
        provider = self.server.provider
        epoch = provider._current_epoch()
        error_api = "anthropic" if api.startswith("anthropic") else "openai"
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the request body must be a JSON object")
        except ValueError as exc:
            self._send_json(400, _error_body(error_api, 400, f"invalid JSON body: {exc}"))
            return

        if api == "anthropic-count":
            self._send_json(200, {"input_tokens": anthropic_prompt_tokens(body)})
            return

        model = str(body.get("model") or "")
        behaviour = provider.behaviour(model)
        stream = bool(body.get("stream"))
        cap, cap_param = self._cap(api, body)
        usage_requested = (
            bool((body.get("stream_options") or {}).get("include_usage")) if api != "anthropic" else stream
        )
        record = BilledRequest(
            model=model, api=api, stream=stream, cap_sent=cap, prompt_tokens=0, completion_tokens=0,
            cache_read_tokens=0, cache_write_tokens=0, cost_usd=0.0, usage_reported=False, status=0,
            cap_param=cap_param, usage_requested=usage_requested, body=body,
        )  # fmt: skip

        if behaviour.hang_s > 0:
            try:
                self._pause(behaviour.hang_s, watch_client=True)
            except _ClientGone:
                record.status, record.client_disconnected = 499, True
                provider._record(record, epoch)
                raise

        failure = provider._take_failure(model, behaviour)
        if failure is not None:
            record.status = failure
            provider._record(record, epoch)
            headers = {}
            if behaviour.retry_after_ms is not None:
                headers["retry-after-ms"] = str(behaviour.retry_after_ms)
            message = f"simulated failure {failure} for model {model!r}"
            self._send_json(failure, _error_body(error_api, failure, message), headers)
            return

        problem = self._validate(api, body)
        if problem:
            record.status = 400
            provider._record(record, epoch)
            self._send_json(400, _error_body(error_api, 400, problem))
            return

        if api == "openai":
            prompt = openai_chat_prompt_tokens(body)
        elif api == "anthropic":
            prompt = anthropic_prompt_tokens(body)
        else:
            prompt = completions_prompt_tokens(body)
        cache_read = min(max(0, behaviour.cache_read_tokens), prompt)
        cache_write = 0 if api != "anthropic" else min(max(0, behaviour.cache_write_tokens), prompt - cache_read)
        record.prompt_tokens, record.cache_read_tokens, record.cache_write_tokens = prompt, cache_read, cache_write

        if api == "openai":
            tool = _openai_tool_choice(body, behaviour.tool_rounds)
            json_text = None if tool else _openai_json_answer(body)
        elif api == "anthropic":
            tool = _anthropic_tool_choice(body, behaviour.tool_rounds)
            json_text = None if tool else _anthropic_json_answer(body)
        else:
            tool, json_text = None, None
        if tool is not None:
            plan = _make_plan(behaviour, cap, "tool", tool=tool)
        else:
            text = json_text if json_text is not None else answer_text(behaviour.answer_tokens)
            plan = _make_plan(behaviour, cap, "text", text=text)

        ctx = _Ctx(self, provider, record, behaviour, plan, epoch)
        if behaviour.drop_after_bill:  # a proxy or load balancer cutting the connection after the work was done
            ctx.bill(visible=plan.visible_tokens, overcount=True, usage_reported=False, finished=True)
            self.close_connection = True
            return
        if api == "openai":
            (self._openai_stream if stream else self._openai_json)(ctx)
        elif api == "anthropic":
            (self._anthropic_stream if stream else self._anthropic_json)(ctx)
        else:
            (self._completions_stream if stream else self._completions_json)(ctx)

    @staticmethod
    def _cap(api: str, body: dict) -> tuple[int | None, str | None]:
        names = ["max_tokens", "max_completion_tokens"] if api == "openai" else ["max_tokens"]
        sent = [(n, body[n]) for n in names if isinstance(body.get(n), int) and not isinstance(body.get(n), bool)]
        if not sent:
            return None, None
        return min(v for _, v in sent), ",".join(n for n, _ in sent)

    @staticmethod
    def _validate(api: str, body: dict) -> str | None:
        if not body.get("model"):
            return "model: field required"
        if api == "anthropic":
            if not isinstance(body.get("max_tokens"), int):
                return "max_tokens: Field required"
            if body["max_tokens"] < 1:
                return "max_tokens: must be at least 1"
            if not isinstance(body.get("messages"), list) or not body["messages"]:
                return "messages: at least one message is required"
        elif api == "openai":
            if not isinstance(body.get("messages"), list) or not body["messages"]:
                return "'messages' must be a non-empty array"
        elif api == "openai-completions":
            if not isinstance(body.get("prompt"), (str, list)):
                return "'prompt' is required"
        return None

    # ----- OpenAI chat -----

    def _openai_usage(self, ctx: _Ctx) -> dict:
        r = ctx.record
        return {
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": r.cache_read_tokens},
            "completion_tokens_details": {"reasoning_tokens": r.reasoning_tokens},
        }

    @staticmethod
    def _openai_finish(plan: _Plan) -> str:
        if plan.truncated:
            return "length"
        return "tool_calls" if plan.kind == "tool" else "stop"

    def _openai_json(self, ctx: _Ctx) -> None:
        plan = ctx.plan
        finish = self._openai_finish(plan)
        ctx.bill(visible=plan.visible_tokens, overcount=True, usage_reported=True, finish=finish, finished=True)
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        if plan.kind == "tool":
            message["tool_calls"] = [
                {
                    "id": plan.tool_id,
                    "type": "function",
                    "function": {"name": plan.tool_name, "arguments": _decode(plan.tokens)},
                }
            ]
        else:
            message["content"] = _decode(plan.tokens)
        response = {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": ctx.record.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": self._openai_usage(ctx),
            "system_fingerprint": None,
        }
        ctx.send_json(response)

    def _openai_stream(self, ctx: _Ctx) -> None:
        plan, record = ctx.plan, ctx.record
        include_usage = record.usage_requested
        base = {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": record.model,
            "system_fingerprint": None,
        }

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            obj = dict(base, choices=[{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])
            if include_usage:
                obj["usage"] = None
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        ctx.start_sse()
        pieces = _chunks(plan.tokens, ctx.behaviour.chunk_tokens)
        if plan.kind == "tool":
            first = {"role": "assistant", "content": None, "tool_calls": [
                {"index": 0, "id": plan.tool_id, "type": "function",
                 "function": {"name": plan.tool_name, "arguments": ""}}
            ]}  # fmt: skip
            ctx.send(chunk(first), visible=plan.name_tokens)
            for piece in pieces:
                ctx.pause_between_chunks()
                delta = {"tool_calls": [{"index": 0, "function": {"arguments": _decode(piece)}}]}
                ctx.send(chunk(delta), visible=ctx.visible + len(piece))
        else:
            ctx.send(chunk({"role": "assistant", "content": "", "refusal": None}), visible=0)
            for piece in pieces:
                ctx.pause_between_chunks()
                ctx.send(chunk({"content": _decode(piece)}), visible=ctx.visible + len(piece))
        finish = self._openai_finish(plan)
        ctx.send(chunk({}, finish), visible=ctx.visible, overcount=True, finish=finish)
        if include_usage and ctx.behaviour.stream_usage:
            usage = dict(base, choices=[], usage=self._openai_usage(ctx))
            ctx.send(
                b"data: " + json.dumps(usage).encode() + b"\n\n",
                visible=ctx.visible,
                overcount=True,
                usage_reported=True,
            )
        ctx.send(b"data: [DONE]\n\n", visible=ctx.visible, overcount=True, finished=True)

    # ----- OpenAI legacy completions -----

    def _completions_json(self, ctx: _Ctx) -> None:
        plan = ctx.plan
        finish = "length" if plan.truncated else "stop"
        ctx.bill(visible=plan.visible_tokens, overcount=True, usage_reported=True, finish=finish, finished=True)
        response = {
            "id": "cmpl-" + uuid.uuid4().hex[:24],
            "object": "text_completion",
            "created": int(time.time()),
            "model": ctx.record.model,
            "choices": [{"text": _decode(plan.tokens), "index": 0, "logprobs": None, "finish_reason": finish}],
            "usage": self._openai_usage(ctx),
        }
        ctx.send_json(response)

    def _completions_stream(self, ctx: _Ctx) -> None:
        plan, record = ctx.plan, ctx.record
        include_usage = record.usage_requested
        base = {
            "id": "cmpl-" + uuid.uuid4().hex[:24],
            "object": "text_completion",
            "created": int(time.time()),
            "model": record.model,
        }

        def chunk(text: str, finish: str | None = None) -> bytes:
            obj = dict(base, choices=[{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}])
            if include_usage:
                obj["usage"] = None
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        ctx.start_sse()
        for i, piece in enumerate(_chunks(plan.tokens, ctx.behaviour.chunk_tokens)):
            if i:
                ctx.pause_between_chunks()
            ctx.send(chunk(_decode(piece)), visible=ctx.visible + len(piece))
        finish = "length" if plan.truncated else "stop"
        ctx.send(chunk("", finish), visible=ctx.visible, overcount=True, finish=finish)
        if include_usage and ctx.behaviour.stream_usage:
            usage = dict(base, choices=[], usage=self._openai_usage(ctx))
            ctx.send(
                b"data: " + json.dumps(usage).encode() + b"\n\n",
                visible=ctx.visible,
                overcount=True,
                usage_reported=True,
            )
        ctx.send(b"data: [DONE]\n\n", visible=ctx.visible, overcount=True, finished=True)

    # ----- Anthropic -----

    @staticmethod
    def _anthropic_stop(plan: _Plan) -> str:
        if plan.truncated:
            return "max_tokens"
        return "tool_use" if plan.kind == "tool" else "end_turn"

    @staticmethod
    def _anthropic_usage(ctx: _Ctx, output_tokens: int) -> dict:
        r = ctx.record
        usage: dict[str, Any] = {
            "input_tokens": r.prompt_tokens - r.cache_read_tokens - r.cache_write_tokens,
            "cache_creation_input_tokens": r.cache_write_tokens,
            "cache_read_input_tokens": r.cache_read_tokens,
            "output_tokens": output_tokens,
        }
        if r.reasoning_tokens:
            usage["output_tokens_details"] = {"thinking_tokens": r.reasoning_tokens}
        return usage

    def _anthropic_json(self, ctx: _Ctx) -> None:
        plan = ctx.plan
        stop = self._anthropic_stop(plan)
        ctx.bill(visible=plan.visible_tokens, overcount=True, usage_reported=True, finish=stop, finished=True)
        if plan.kind == "tool":
            content = [{"type": "tool_use", "id": plan.tool_id, "name": plan.tool_name, "input": plan.tool_input or {}}]
        else:
            content = [{"type": "text", "text": _decode(plan.tokens)}]
        response = {
            "id": "msg_" + uuid.uuid4().hex[:24],
            "type": "message",
            "role": "assistant",
            "model": ctx.record.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": self._anthropic_usage(ctx, ctx.record.completion_tokens),
        }
        ctx.send_json(response)

    def _anthropic_stream(self, ctx: _Ctx) -> None:
        plan, record = ctx.plan, ctx.record

        def event(kind: str, data: dict) -> bytes:
            return f"event: {kind}\ndata: ".encode() + json.dumps(dict(type=kind, **data)).encode() + b"\n\n"

        ctx.start_sse()
        message = {
            "id": "msg_" + uuid.uuid4().hex[:24], "type": "message", "role": "assistant", "model": record.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
        }  # fmt: skip
        start_usage = self._anthropic_usage(ctx, 1)
        start_usage.pop("output_tokens_details", None)
        ctx.send(event("message_start", {"message": dict(message, usage=start_usage)}), visible=0)
        ctx.send(event("ping", {}), visible=0)
        pieces = _chunks(plan.tokens, ctx.behaviour.chunk_tokens)
        if plan.kind == "tool":
            block = {"type": "tool_use", "id": plan.tool_id, "name": plan.tool_name, "input": {}}
            ctx.send(event("content_block_start", {"index": 0, "content_block": block}), visible=plan.name_tokens)
            ctx.send(
                event("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta", "partial_json": ""}}),
                visible=ctx.visible,
            )
            for piece in pieces:
                ctx.pause_between_chunks()
                delta = {"type": "input_json_delta", "partial_json": _decode(piece)}
                ctx.send(event("content_block_delta", {"index": 0, "delta": delta}), visible=ctx.visible + len(piece))
        else:
            ctx.send(
                event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}), visible=0
            )
            for i, piece in enumerate(pieces):
                if i:
                    ctx.pause_between_chunks()
                delta = {"type": "text_delta", "text": _decode(piece)}
                ctx.send(event("content_block_delta", {"index": 0, "delta": delta}), visible=ctx.visible + len(piece))
        ctx.send(event("content_block_stop", {"index": 0}), visible=ctx.visible)
        stop = self._anthropic_stop(plan)
        usage = self._anthropic_usage(ctx, ctx.visible + plan.reasoning + plan.overcount)
        delta_event = event("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None}, "usage": usage})
        ctx.send(delta_event, visible=ctx.visible, overcount=True, usage_reported=True, finish=stop)
        ctx.send(event("message_stop", {}), visible=ctx.visible, overcount=True, finished=True)


class _Ctx:
    """One answered request: keeps its bill record in step with what was written."""

    def __init__(
        self,
        handler: _Handler,
        provider: ProviderServer,
        record: BilledRequest,
        behaviour: Behaviour,
        plan: _Plan,
        epoch: int,
    ):
        self.handler, self.provider, self.record, self.behaviour, self.plan, self.epoch = (
            handler,
            provider,
            record,
            behaviour,
            plan,
            epoch,
        )
        self.visible = 0
        self.overcount = False
        self.record.status = 200
        self.record.finished = False
        self.record.reasoning_tokens = plan.reasoning
        self._recorded = False

    def bill(self, *, visible: int, overcount: bool = False, usage_reported: bool | None = None,
             finish: str | None = None, finished: bool | None = None) -> None:  # fmt: skip
        """Set the bill to `visible` output tokens (+ reasoning, + overcount if `overcount`)."""
        with self.provider._lock:
            r = self.record
            self.visible, self.overcount = visible, overcount
            r.completion_tokens = visible + self.plan.reasoning + (self.plan.overcount if overcount else 0)
            r.cost_usd = self.behaviour.cost(
                r.prompt_tokens, r.completion_tokens, r.cache_read_tokens, r.cache_write_tokens
            )
            if usage_reported is not None:
                r.usage_reported = usage_reported
            if finish is not None:
                r.finish_reason = finish
            if finished is not None:
                r.finished = finished
        if not self._recorded:
            self._recorded = True
            self.provider._record(self.record, self.epoch)

    def start_sse(self) -> None:
        self.bill(visible=0)
        try:
            self.handler._start_sse()
        except _ClientGone:
            self._gone()
            raise

    def send(self, data: bytes, *, visible: int, overcount: bool = False, usage_reported: bool | None = None,
             finish: str | None = None, finished: bool | None = None) -> None:  # fmt: skip
        """Bill as if `data` had been delivered, write it, and roll the bill back if the write fails."""
        with self.provider._lock:
            before = (self.visible, self.overcount, self.record.usage_reported, self.record.finish_reason)
        self.bill(visible=visible, overcount=overcount, usage_reported=usage_reported, finish=finish, finished=finished)
        try:
            self.handler._write(data)
        except _ClientGone:
            prev_visible, prev_over, prev_usage, prev_finish = before
            with self.provider._lock:
                self.record.finish_reason = prev_finish
            self.bill(visible=prev_visible, overcount=prev_over, usage_reported=prev_usage)
            self._gone()
            raise

    def send_json(self, obj: dict) -> None:
        try:
            self.handler._send_json(200, obj)
        except _ClientGone:
            # A non-stream answer was fully generated: it stays billed, but usage never arrived.
            with self.provider._lock:
                self.record.usage_reported = False
            self._gone()
            raise

    def pause_between_chunks(self) -> None:
        if self.behaviour.chunk_delay_s > 0:
            self.handler._pause(self.behaviour.chunk_delay_s, watch_client=False)

    def _gone(self) -> None:
        with self.provider._lock:
            self.record.client_disconnected = True
            self.record.finished = True
        self.provider._notify()


# --------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------


class ProviderServer:
    """An OpenAI + Anthropic compatible test provider on 127.0.0.1 with an honest bill.

    >>> with ProviderServer() as server:
    ...     server.configure("gpt-4o-mini", answer_tokens=5)
    ...     # point a client at server.openai_url / server.anthropic_url
    """

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self.port: int | None = None
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._behaviours: dict[str, Behaviour] = {}
        self._failures: dict[str, int] = {}
        self._requests: list[BilledRequest] = []
        self._errors: list[str] = []
        self._epoch = 0
        self._in_flight = 0
        self._connections: set[socket.socket] = set()
        self._stop_event = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        _enc()  # load the encoding up front (fails fast if the offline cache is missing)

    # ----- lifecycle -----

    def start(self) -> ProviderServer:
        if self._httpd is not None:
            return self
        self._stop_event.clear()
        httpd = _HTTPServer((self.host, 0), _Handler)
        httpd.provider = self
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"provider-server-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stop_event.set()
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ProviderServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._httpd is not None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("ProviderServer is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def openai_url(self) -> str:
        return self.base_url + "/v1"

    @property
    def anthropic_url(self) -> str:
        return self.base_url

    # ----- behaviour -----

    def configure(self, model: str, **fields: Any) -> Behaviour:
        """Set the behaviour of `model` (fields of Behaviour; the rest keep their defaults).

        Re-configuring a model replaces its behaviour and restarts its `fail_times` count."""
        unknown = set(fields) - _BEHAVIOUR_FIELDS
        if unknown:
            raise TypeError(f"unknown Behaviour fields: {sorted(unknown)}")
        behaviour = Behaviour(**fields)
        with self._lock:
            self._behaviours[model] = behaviour
            self._failures.pop(model, None)
        return behaviour

    def behaviour(self, model: str) -> Behaviour:
        """The behaviour for `model` (a copy; unknown models get the defaults)."""
        with self._lock:
            return replace(self._behaviours.get(model) or Behaviour())

    def reset(self) -> None:
        """Forget all behaviours, failure counts, requests and errors.  Requests still in flight from
        before the reset are not recorded."""
        with self._lock:
            self._behaviours.clear()
            self._failures.clear()
            self._requests.clear()
            self._errors.clear()
            self._epoch += 1
            self._changed.notify_all()

    # ----- the bill -----

    @property
    def requests(self) -> list[BilledRequest]:
        """Snapshot (a new list) of the billed requests, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def bill_usd(self) -> float:
        with self._lock:
            return sum(r.cost_usd for r in self._requests)

    @property
    def errors(self) -> list[str]:
        """Tracebacks of bugs inside this server (should stay empty)."""
        with self._lock:
            return list(self._errors)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no request is being handled (e.g. a stream the client abandoned, or a hang the
        client timed out on, has been noticed and billed).  Returns False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._in_flight > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    # ----- internals used by the handler -----

    def _current_epoch(self) -> int:
        with self._lock:
            return self._epoch

    def _record(self, record: BilledRequest, epoch: int) -> None:
        with self._lock:
            if epoch == self._epoch:
                self._requests.append(record)
            self._changed.notify_all()

    def _notify(self) -> None:
        with self._lock:
            self._changed.notify_all()

    def _note_error(self, text: str) -> None:
        with self._lock:
            self._errors.append(text)

    def _take_failure(self, model: str, behaviour: Behaviour) -> int | None:
        if behaviour.fail_status is None:
            return None
        with self._lock:
            if behaviour.fail_times is not None:
                done = self._failures.get(model, 0)
                if done >= behaviour.fail_times:
                    return None
                self._failures[model] = done + 1
            return behaviour.fail_status

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._changed.notify_all()

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)
