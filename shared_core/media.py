"""Tokens of the non-text parts of chat messages: images, audio, files and tool blocks.

Providers bill an image by its size in pixels, not by the length of its base64 text, so the
size is read from the image's header (PNG, JPEG, GIF, WebP) without decoding the picture, and
turned into tokens with the provider's published rule:

* OpenAI (GPT-4o-class models), "Calculating costs" in the vision guide,
  https://platform.openai.com/docs/guides/images-vision — `openai_image_tokens`.
* Anthropic (Claude), "Evaluate image size" / "Calculate image costs" in the vision guide,
  https://docs.anthropic.com/en/docs/build-with-claude/vision — `anthropic_image_tokens`.

An image whose size cannot be read (an http URL, a file id, unreadable data) is counted at the
most its rule can give (`OPENAI_MAX_IMAGE_TOKENS`, `ANTHROPIC_MAX_IMAGE_TOKENS`), so a pre-call
estimate never falls short because of it. All counts are input tokens; all sizes are pixels.
"""

from __future__ import annotations

import binascii
import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from fractions import Fraction
from typing import Any

__all__ = [
    "OPENAI_LOW_DETAIL_TOKENS",
    "OPENAI_BASE_TOKENS",
    "OPENAI_TILE_TOKENS",
    "OPENAI_MAX_IMAGE_TOKENS",
    "ANTHROPIC_PIXELS_PER_TOKEN",
    "ANTHROPIC_MAX_LONG_EDGE",
    "ANTHROPIC_MAX_IMAGE_PIXELS",
    "ANTHROPIC_MAX_IMAGE_TOKENS",
    "PAYLOAD_CHARS_PER_TOKEN",
    "image_size",
    "openai_image_tokens",
    "anthropic_image_tokens",
    "block_tokens",
]

# --- OpenAI, GPT-4o-class models (vision guide, "Calculating costs") -------------------------
#: Tokens of any image at detail "low" (the model sees a 512 px thumbnail).
OPENAI_LOW_DETAIL_TOKENS = 85
#: Fixed tokens of an image at detail "high"/"auto", on top of its tiles.
OPENAI_BASE_TOKENS = 85
#: Tokens per 512 × 512 px tile at detail "high"/"auto".
OPENAI_TILE_TOKENS = 170
_OPENAI_FIT = 2048  # px: first fit within 2048 × 2048
_OPENAI_SHORT = 768  # px: then the short side is brought down to 768
_OPENAI_TILE = 512  # px
#: Most tokens an image can cost at detail "high"/"auto": after the two scalings an image is at
#: most 768 × 2048 px, i.e. ceil(768/512) × ceil(2048/512) = 2 × 4 = 8 tiles → 85 + 170 × 8.
#: Used when the size cannot be read.
OPENAI_MAX_IMAGE_TOKENS = OPENAI_BASE_TOKENS + OPENAI_TILE_TOKENS * 8  # 1445

# --- Anthropic, Claude (vision guide, "Evaluate image size", "Calculate image costs") --------
#: Pixels per token: tokens = width × height / 750.
ANTHROPIC_PIXELS_PER_TOKEN = 750
#: An image whose long edge is over 1568 px is scaled down (aspect kept) to this long edge.
ANTHROPIC_MAX_LONG_EDGE = 1568
#: Area (px²) above which an image is scaled down (aspect kept). The guide says an image of more
#: than "~1,600 tokens" is scaled down, and lists 784 × 1568 px as the largest 1:2 size it does
#: *not* resize; that is the largest area of its table (1:1 is 1092 × 1092 = 1,192,464 px²), so
#: the cap is put there: no size the guide lists as kept is under-counted, and an image the API
#: shrinks to ~1.19 MP is over-counted by at most ~3 %.
ANTHROPIC_MAX_IMAGE_PIXELS = 784 * 1568  # 1,229,312 px²
#: Most tokens an image can cost: ceil(1,229,312 / 750) = ceil(1639.08) = 1640 (the long-edge
#: limit alone would allow 1568 × 1568 / 750 → 3279, but the area limit comes first for any
#: image whose short side is over 784 px). Used when the size cannot be read.
ANTHROPIC_MAX_IMAGE_TOKENS = -(-ANTHROPIC_MAX_IMAGE_PIXELS // ANTHROPIC_PIXELS_PER_TOKEN)  # 1640

# --- Everything else ------------------------------------------------------------------------
#: Characters of base64 (or of compact JSON) per token for blocks no published rule prices.
PAYLOAD_CHARS_PER_TOKEN = 4

_DETAILS = frozenset({"low", "high", "auto"})

# Block types. A mapping with a string "text" field is a text block whatever its type: the
# caller counts its text (shared_core.tokens.content_text includes it).
_OPENAI_IMAGE_TYPES = frozenset({"image_url", "input_image"})
_TOOL_CALL_TYPES = frozenset({
    "tool_use", "server_tool_use", "tool_call", "tool_call_chunk", "invalid_tool_call",
    "server_tool_call", "function_call",
})
_TOOL_RESULT_TYPES = frozenset({"tool_result", "server_tool_result", "function_call_output"})
_TEXT_FIELDS = ("thinking", "reasoning", "refusal")  # text carried under another name
_PAYLOAD_FIELDS = ("base64", "data", "file_data")

# Header reading. PNG, GIF and WebP sizes sit in the first 30 bytes; JPEG's sits in its SOFn
# segment, reached by hopping over the segments before it (at most _JPEG_MAX_SEGMENTS hops).
_HEADER_BYTES = 32
_JPEG_MAX_SEGMENTS = 512
# SOFn markers: C0–CF except C4 (DHT), C8 (JPG extension) and CC (DAC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0–7: no length field
# Base64 text is read in place: bytes [i, i+n) are decoded from characters [4·⌊i/3⌋,
# 4·⌈(i+n)/3⌉), so a 10 MB payload costs a few small decodes. Line-wrapped text is read from a
# prefix of at most _PREFIX_CHARS characters with its whitespace taken out.
_PROBE_CHARS = 4096
_PREFIX_CHARS = 1 << 20
_B64_PLAIN = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_URLSAFE = str.maketrans("-_", "+/")
_WHITESPACE = " \t\r\n"
_DATA_URL_HEADER = 512  # characters searched for the "," that ends a data URL's header

_Reader = Callable[[int, int], bytes]  # (offset, n) → up to n bytes from offset ("" past the end)


# ---------------------------------------------------------------------------------------------
# Image sizes from headers


def image_size(data: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """(width, height) in pixels read from the header of PNG, JPEG, GIF or WebP bytes.

    PNG: the IHDR chunk; JPEG: the first SOFn segment (segments before it are skipped by their
    lengths, never decoded); GIF: the logical screen size; WebP: the VP8 (lossy), VP8L
    (lossless) or VP8X (extended, canvas size) chunk. Returns None for any other format, for
    truncated or corrupt headers, for zero sizes and for anything that is not bytes-like; never
    raises and never decodes pixel data.
    """
    if isinstance(data, memoryview):
        try:
            data = data.cast("B")
        except (TypeError, ValueError):
            return None
    elif not isinstance(data, (bytes, bytearray)):
        return None
    return _size(lambda offset, n: bytes(data[offset:offset + n]))


def _size(read: _Reader) -> tuple[int, int] | None:
    head = read(0, _HEADER_BYTES)
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        if len(head) < 24 or head[12:16] != b"IHDR":
            return None
        return _positive(int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"))
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(read)
    if head[:6] in (b"GIF87a", b"GIF89a"):
        if len(head) < 10:
            return None
        return _positive(int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little"))
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp_size(head)
    return None


def _positive(width: int, height: int) -> tuple[int, int] | None:
    return (width, height) if width > 0 and height > 0 else None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk, payload = head[12:16], head[20:]
    if chunk == b"VP8 ":
        # Frame tag (3 bytes, bit 0 clear on a key frame), start code 9D 01 2A, then 14-bit
        # width and height (the top 2 bits of each are a scaling hint).
        if len(payload) < 10 or payload[0] & 1 or payload[3:6] != b"\x9d\x01\x2a":
            return None
        return _positive(int.from_bytes(payload[6:8], "little") & 0x3FFF,
                         int.from_bytes(payload[8:10], "little") & 0x3FFF)
    if chunk == b"VP8L":
        # Signature 0x2F, then width − 1 and height − 1 as two 14-bit little-endian fields.
        if len(payload) < 5 or payload[0] != 0x2F:
            return None
        bits = int.from_bytes(payload[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        # Flags (1 byte), reserved (3), canvas width − 1 and height − 1 (24-bit little-endian).
        if len(payload) < 10:
            return None
        return int.from_bytes(payload[4:7], "little") + 1, int.from_bytes(payload[7:10], "little") + 1
    return None


def _jpeg_size(read: _Reader) -> tuple[int, int] | None:
    pos = 2  # after SOI
    for _ in range(_JPEG_MAX_SEGMENTS):
        head = read(pos, 4)  # FF, marker, 16-bit big-endian length (which counts itself)
        if len(head) < 2 or head[0] != 0xFF:
            return None
        marker = head[1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (0xD8, 0xD9, 0xDA) or len(head) < 4:  # SOI again, EOI or scan before SOF
            return None
        length = int.from_bytes(head[2:4], "big")
        if length < 2:
            return None
        if marker in _JPEG_SOF:
            frame = read(pos + 4, 5)  # precision (1), height (2), width (2)
            if len(frame) < 5:
                return None
            return _positive(int.from_bytes(frame[3:5], "big"), int.from_bytes(frame[1:3], "big"))
        pos += 2 + length
    return None


# ---------------------------------------------------------------------------------------------
# Image sizes from base64 text, decoding only what the header needs


def _base64_size(text: str, start: int = 0) -> tuple[int, int] | None:
    """Image size from the base64 text at text[start:], or None when unreadable."""
    end = len(text)
    while end > start and text[end - 1] in _WHITESPACE:
        end -= 1
    if end <= start:
        return None
    probe_end = min(end, start + _PROBE_CHARS)
    if _decode_plain(text[start:probe_end], final=probe_end == end) is not None:
        return _size(_InPlace(text, start, end, final=True))
    # Line-wrapped (MIME) base64: read a prefix with the whitespace taken out, a short one first,
    # then, for JPEG only (its SOFn segment may follow large EXIF or ICC segments), a long one.
    for limit in (_PROBE_CHARS, _PREFIX_CHARS):
        stop = min(end, start + limit)
        prefix = text[start:stop]
        for space in _WHITESPACE:
            if space in prefix:
                prefix = prefix.replace(space, "")
        read = _InPlace(prefix, 0, len(prefix), final=stop == end)
        size = _size(read)
        if size is not None or stop == end or read(0, 2) != b"\xff\xd8":
            return size
    return None


class _InPlace:
    """Reader of the bytes of plain base64 text, decoding each window on its own."""

    def __init__(self, text: str, start: int, end: int, final: bool) -> None:
        self._text, self._start, self._end, self._final = text, start, end, final

    def __call__(self, offset: int, n: int) -> bytes:
        first, last = offset // 3, -(-(offset + n) // 3)
        a = self._start + 4 * first
        b = min(self._start + 4 * last, self._end)
        if b == self._end and not self._final:
            b -= (b - self._start) % 4  # a prefix: leave out its last, cut 4-character group
        if a >= b:
            return b""
        decoded = _decode_plain(self._text[a:b], final=b == self._end and self._final)
        if decoded is None:  # a stray character on the way: give up
            return b""
        skip = offset - 3 * first
        return decoded[skip:skip + n]


def _decode_plain(chunk: str, final: bool) -> bytes | None:
    """Bytes of a run of plain base64 (standard or URL-safe alphabet), None if it is not one."""
    if "-" in chunk or "_" in chunk:
        chunk = chunk.translate(_URLSAFE)
    if final and len(chunk) % 4:
        chunk += "=" * (-len(chunk) % 4)  # unpadded base64 is common with the URL-safe alphabet
    if len(chunk) % 4 or not _B64_PLAIN.fullmatch(chunk):
        return None
    try:
        return binascii.a2b_base64(chunk)
    except (binascii.Error, ValueError):
        return None


def _data_url_size(url: str) -> tuple[int, int] | None:
    """Image size of a `data:<mime>;base64,<data>` URL, None for other URLs."""
    comma = url.find(",", 0, _DATA_URL_HEADER)
    if comma < 0 or ";base64" not in url[:comma].lower():
        return None
    return _base64_size(url, comma + 1)


# ---------------------------------------------------------------------------------------------
# Provider rules


def _pixels(width: Any, height: Any) -> tuple[int, int]:
    w, h = operator.index(width), operator.index(height)
    if isinstance(width, bool) or isinstance(height, bool) or w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive integers, got {width!r} × {height!r}")
    return w, h


def openai_image_tokens(width: int, height: int, detail: str | None = "auto") -> int:
    """Input tokens of a width × height px image for OpenAI GPT-4o-class models.

    OpenAI's published rule (vision guide, "Calculating costs",
    https://platform.openai.com/docs/guides/images-vision): detail "low" costs 85 tokens
    whatever the size. Otherwise ("high"; "auto", which may pick high, is priced as high) the
    image is scaled to fit within 2048 × 2048 px keeping its aspect ratio, then, if its shortest
    side is over 768 px, scaled so that side is 768 px; it costs 85 + 170 × (number of 512 px
    tiles) = 85 + 170 × ceil(w/512) × ceil(h/512). Examples from the guide: 1024 × 1024 → 768 ×
    768 → 4 tiles → 765; 2048 × 4096 → 1024 × 2048 → 768 × 1536 → 6 tiles → 1105.

    Scaled sizes are kept exact (fractions, not rounded pixels). Models that bill by 32 px
    patches or multiply image tokens (gpt-4o-mini, gpt-4.1-mini, o4-mini) are not covered.
    Raises ValueError for non-positive sizes or an unknown detail (None means "auto").
    """
    w, h = _pixels(width, height)
    detail = "auto" if detail is None else detail
    if detail not in _DETAILS:
        raise ValueError(f"detail must be 'low', 'high' or 'auto', got {detail!r}")
    if detail == "low":
        return OPENAI_LOW_DETAIL_TOKENS
    fw, fh = Fraction(w), Fraction(h)
    longest = max(fw, fh)
    if longest > _OPENAI_FIT:
        fw, fh = fw * _OPENAI_FIT / longest, fh * _OPENAI_FIT / longest
    shortest = min(fw, fh)
    if shortest > _OPENAI_SHORT:
        fw, fh = fw * _OPENAI_SHORT / shortest, fh * _OPENAI_SHORT / shortest
    tiles = math.ceil(fw / _OPENAI_TILE) * math.ceil(fh / _OPENAI_TILE)
    return OPENAI_BASE_TOKENS + OPENAI_TILE_TOKENS * tiles


def anthropic_image_tokens(width: int, height: int) -> int:
    """Input tokens of a width × height px image for Anthropic Claude models.

    Anthropic's published rule (vision guide, https://docs.anthropic.com/en/docs/build-with-
    claude/vision): an image whose long edge is over 1568 px, or of more than ~1,600 tokens, is
    first scaled down keeping its aspect ratio; it then costs width × height / 750 tokens,
    rounded up here. The "~1,600 tokens" limit is taken as an area of at most
    ANTHROPIC_MAX_IMAGE_PIXELS = 784 × 1568 px², the largest size the guide lists as not resized
    (see that constant), so the result is at most ANTHROPIC_MAX_IMAGE_TOKENS = 1640. Examples
    from the guide: 200 × 200 → 54, 1000 × 1000 → 1334, 1092 × 1092 → 1590.

    Scaled sizes are kept exact (fractions, not rounded pixels). Raises ValueError for
    non-positive sizes.
    """
    w, h = _pixels(width, height)
    area = Fraction(w * h)
    longest = max(w, h)
    if longest > ANTHROPIC_MAX_LONG_EDGE:
        area = area * ANTHROPIC_MAX_LONG_EDGE ** 2 / longest ** 2
    area = min(area, Fraction(ANTHROPIC_MAX_IMAGE_PIXELS))
    return math.ceil(area / ANTHROPIC_PIXELS_PER_TOKEN)


# ---------------------------------------------------------------------------------------------
# Content blocks


def block_tokens(
    block: Mapping[str, Any], count_text: Callable[[str], int], image_rule: str | None = None
) -> int | None:
    """Input tokens of one non-text content block; None for a text block (the caller counts text).

    A text block is a string, or a mapping with a string "text" field whatever its "type"
    (shared_core.tokens.content_text includes its text and count_message_tokens counts it
    there). `count_text` counts the tokens of a string (the message's encoding). Other blocks:

    Images — OpenAI {"type": "image_url" | "input_image", "image_url": {"url", "detail"} | url},
    LangChain standard blocks v0 {"type": "image", "source_type": "base64" | "url" | "id",
    "data" | "url" | "id"} and v1 {"type": "image", "base64" | "url" | "file_id"}, and
    Anthropic {"type": "image", "source": {"type": "base64", "data"} | {"type": "url", "url"}}.
    The size is read from the header of base64 data (raw or a data: URL; only the header is
    decoded) and priced by the provider's rule that `image_rule` names ("openai" or "anthropic":
    the API the candidate's client speaks, which converts blocks of any shape to its own), or,
    when it is None, by the rule the block's shape implies: `anthropic_image_tokens` for
    Anthropic-shaped blocks (a "source" mapping), `openai_image_tokens` (with the block's detail;
    unknown → "auto") for all others. When the size cannot be read (http URL, file id, unreadable data) the image counts
    the most its rule gives: OPENAI_MAX_IMAGE_TOKENS (1445; 85 at detail "low") or
    ANTHROPIC_MAX_IMAGE_TOKENS (1640). An image block with no image at all counts 0.

    Tool blocks — tool_use / tool_call / function_call: count_text(name) + count_text(input as
    compact JSON; a string input as is). tool_result / function_call_output: its content — a
    string by count_text, a list block by block (text by count_text, others by this function),
    anything else as compact JSON.

    Anything else (audio "input_audio" / "audio", "file" / "input_file" / "document" such as
    PDFs, unknown types) — no provider publishes a rule this module can apply, so:
    if the block carries text (a document whose source is {"type": "text", "data"} or
    {"type": "content", "content": [blocks]}, or a "thinking" / "reasoning" / "refusal" field),
    that text is counted with count_text; otherwise its base64 payload (a "base64", "data" or
    "file_data" field of the block, of its "source" or of the mapping under its type; the part
    after the comma of a data: URL) counts ceil(characters / 4) tokens (bytes count as their
    base64 length); with no payload, the block serialised as compact JSON counts
    ceil(characters / 4) tokens. PAYLOAD_CHARS_PER_TOKEN = 4 is the text average, an upper
    bound of sorts for media (OpenAI bills audio per second, Anthropic PDFs per page).
    """
    if isinstance(block, str):
        return None
    if not isinstance(block, Mapping):
        return 0  # not a content block; content_text skips it too
    if isinstance(block.get("text"), str):
        return None
    kind = block.get("type")
    if not isinstance(kind, str):
        kind = None
    if kind in _OPENAI_IMAGE_TYPES:
        return _image_tokens(_openai_image_ref(block), image_rule)
    if kind == "image":
        if isinstance(block.get("source"), Mapping):
            return _image_tokens(_anthropic_image_ref(block["source"]), image_rule)
        return _image_tokens(_langchain_image_ref(block), image_rule)
    if kind in _TOOL_CALL_TYPES:
        return _tool_call_tokens(block, count_text)
    if kind in _TOOL_RESULT_TYPES:
        content = block.get("content", block.get("output"))
        return _content_tokens(content, count_text, image_rule)
    return _other_tokens(block, count_text)


def _detail(*candidates: Any) -> str:
    for value in candidates:
        if value is not None:
            return value if isinstance(value, str) and value in _DETAILS else "auto"
    return "auto"


def _openai_priced(source: Any, detail: str) -> int:
    if detail == "low":
        return OPENAI_LOW_DETAIL_TOKENS
    size = _source_size(source)
    return OPENAI_MAX_IMAGE_TOKENS if size is None else openai_image_tokens(*size, detail)


def _anthropic_priced(source: Any) -> int:
    size = _source_size(source)
    return ANTHROPIC_MAX_IMAGE_TOKENS if size is None else anthropic_image_tokens(*size)


def _source_size(source: Any) -> tuple[int, int] | None:
    """Size of an image given as raw base64, a data: URL or bytes; None for anything else."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return image_size(source)
    if not isinstance(source, str):
        return None
    if source[:5].lower() == "data:":
        return _data_url_size(source)
    if source[:8].lower().startswith(("http://", "https://")):
        return None
    return _base64_size(source)


# An image block's reference: (source — base64, a data: URL, a URL, bytes or None when its size
# cannot be known —, detail, the rule its own shape implies), or None when it carries no image.
_ImageRef = tuple[Any, str, str]


def _openai_image_ref(block: Mapping[str, Any]) -> _ImageRef | None:
    ref = block.get("image_url")
    detail = block.get("detail")
    if isinstance(ref, Mapping):
        detail = _detail(ref.get("detail"), detail)
        ref = ref.get("url")
    else:
        detail = _detail(detail)
    if ref:
        return ref, detail, "openai"
    if block.get("file_id"):  # Responses API input_image by file id: size unknown
        return None, detail, "openai"
    return None


def _langchain_image_ref(block: Mapping[str, Any]) -> _ImageRef | None:
    detail = _detail(block.get("detail"))
    source_type = block.get("source_type")
    if source_type is not None:  # v0
        key = {"base64": "data", "url": "url", "id": "id"}.get(source_type, "data") if isinstance(
            source_type, str) else "data"
        ref = block.get(key)
        if not ref:
            return None
        return (None if source_type == "id" else ref), detail, "openai"
    for key in ("base64", "url"):  # v1
        if block.get(key):
            return block[key], detail, "openai"
    return (None, detail, "openai") if block.get("file_id") else None


def _anthropic_image_ref(source: Mapping[str, Any]) -> _ImageRef:
    kind = source.get("type")
    ref = source.get("data") if kind == "base64" else source.get("url") if kind == "url" else None
    return ref, "auto", "anthropic"  # a file id or an unknown source: size unknown


def _image_tokens(ref: _ImageRef | None, rule: str | None) -> int:
    if ref is None:
        return 0
    source, detail, native = ref
    if (rule or native) == "anthropic":
        return _anthropic_priced(source)
    return _openai_priced(source, detail)


def _json(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    except (TypeError, ValueError):  # non-string keys, circular references
        return repr(value)


def _tool_call_tokens(block: Mapping[str, Any], count_text: Callable[[str], int]) -> int:
    total = 0
    name = block.get("name")
    if isinstance(name, str):
        total += count_text(name)
    for key in ("input", "args", "arguments"):
        if key in block:
            value = block[key]
            total += count_text(value if isinstance(value, str) else _json(value))
            break
    return total


def _content_tokens(content: Any, count_text: Callable[[str], int], image_rule: str | None = None) -> int:
    """Tokens of a tool result's content: a string, blocks, or anything else as compact JSON."""
    if content is None:
        return 0
    if isinstance(content, str):
        return count_text(content)
    if isinstance(content, Iterable) and not isinstance(content, (Mapping, bytes, bytearray)):
        total = 0
        for block in content:
            if isinstance(block, str):
                total += count_text(block)
            elif isinstance(block, Mapping) and isinstance(block.get("text"), str):
                total += count_text(block["text"])
            else:
                total += block_tokens(block, count_text, image_rule) or 0
        return total
    if isinstance(content, Mapping) and "type" in content:  # a single block
        return _content_tokens([content], count_text, image_rule)
    return count_text(_json(content))


def _other_tokens(block: Mapping[str, Any], count_text: Callable[[str], int]) -> int:
    source = block.get("source")
    if isinstance(source, Mapping):
        if source.get("type") == "text" and isinstance(source.get("data"), str):
            return count_text(source["data"])
        if source.get("type") == "content":
            return _content_tokens(source.get("content"), count_text)
    for field in _TEXT_FIELDS:
        if isinstance(block.get(field), str):
            return count_text(block[field])
    payload = _payload(block)
    if payload is None:
        return -(-len(_json(block)) // PAYLOAD_CHARS_PER_TOKEN)
    if isinstance(payload, str):
        chars = len(payload)
        if payload[:5].lower() == "data:":
            chars -= payload.find(",", 0, _DATA_URL_HEADER) + 1
    else:
        chars = 4 * -(-len(payload) // 3)  # raw bytes: the length of their base64
    return -(-chars // PAYLOAD_CHARS_PER_TOKEN)


def _payload(block: Mapping[str, Any]) -> str | bytes | bytearray | memoryview | None:
    kind = block.get("type")
    nested = block.get(kind) if isinstance(kind, str) else None
    for holder in (block, block.get("source"), nested):
        if isinstance(holder, Mapping):
            for field in _PAYLOAD_FIELDS:
                value = holder.get(field)
                if isinstance(value, (str, bytes, bytearray, memoryview)) and value:
                    return value
    return None
