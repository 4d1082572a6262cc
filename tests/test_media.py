"""Image sizes from headers, the providers' image token rules, and non-text blocks in messages."""

from __future__ import annotations

import base64
import io
import json
import math
import struct
import time
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared_core.media import (
    ANTHROPIC_MAX_IMAGE_TOKENS,
    OPENAI_LOW_DETAIL_TOKENS,
    OPENAI_MAX_IMAGE_TOKENS,
    anthropic_image_tokens,
    block_tokens,
    image_size,
    openai_image_tokens,
)
from shared_core.tokens import content_text, count_message_tokens, count_tokens

# --- Headers built by hand ------------------------------------------------------------------


def png(width: int, height: int) -> bytes:
    """A whole, valid 8-bit grey PNG (signature, IHDR, one IDAT, IEND)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height)) if width * height <= 1 << 16 else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def jpeg(width: int, height: int, *, sof: int = 0xC0, app_bytes: int = 16) -> bytes:
    """Baseline JPEG header: SOI, APP0 (JFIF), an APP1 of `app_bytes`, DQT, SOFn, SOS, EOI."""

    def segment(marker: int, body: bytes) -> bytes:
        return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body

    jfif = b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    dqt = b"\x00" + bytes(range(1, 65))
    frame = struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00"  # 8 bit, 1 component
    scan = b"\x01\x01\x00\x00\x3f\x00"
    return (b"\xff\xd8" + segment(0xE0, jfif) + segment(0xE1, b"\x00" * app_bytes) + segment(0xDB, dqt)
            + segment(sof, frame) + segment(0xDA, scan) + b"\x00" * 8 + b"\xff\xd9")


def gif(width: int, height: int) -> bytes:
    """GIF89a: logical screen descriptor (no global colour table), one 1×1 image, trailer."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return screen + image + b"\x3b"


def webp(chunk: bytes, body: bytes) -> bytes:
    data = chunk + struct.pack("<I", len(body)) + body + b"\x00" * (len(body) % 2)
    return b"RIFF" + struct.pack("<I", 4 + len(data)) + b"WEBP" + data


def webp_vp8x(width: int, height: int) -> bytes:
    """Extended WebP: flags, 3 reserved bytes, canvas width − 1 and height − 1 (24-bit LE)."""
    return webp(b"VP8X", b"\x10\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little"))


def webp_vp8l(width: int, height: int) -> bytes:
    """Lossless WebP: signature 0x2F, then 14-bit width − 1 and height − 1, alpha bit, version 0."""
    bits = (width - 1) | (height - 1) << 14
    return webp(b"VP8L", b"\x2f" + bits.to_bytes(4, "little") + b"\x00" * 8)


def webp_vp8(width: int, height: int) -> bytes:
    """Lossy WebP: key-frame tag, start code 9D 01 2A, 14-bit width and height."""
    return webp(b"VP8 ", b"\x50\x02\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", width, height) + b"\x00" * 8)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{b64(data)}"


BUILDERS = {"png": png, "jpeg": jpeg, "gif": gif, "webp_vp8x": webp_vp8x, "webp_vp8l": webp_vp8l, "webp_vp8": webp_vp8}


# --- image_size -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(BUILDERS))
@pytest.mark.parametrize("size", [(1, 1), (1024, 1024), (2048, 4096), (3000, 17), (16383, 5)])
def test_sizes_are_read_from_headers(kind, size):
    data = BUILDERS[kind](*size)
    assert image_size(data) == size
    assert image_size(bytearray(data)) == size
    assert image_size(memoryview(data)) == size


def test_jpeg_size_is_found_after_large_segments_and_in_every_sof_flavour():
    assert image_size(jpeg(640, 480, app_bytes=65_000)) == (640, 480)
    for sof in (0xC1, 0xC2, 0xC3, 0xC9, 0xCA, 0xCB):  # extended, progressive, lossless, arithmetic
        assert image_size(jpeg(33, 44, sof=sof)) == (33, 44)
    # Fill bytes before a marker are allowed.
    assert image_size(jpeg(12, 34).replace(b"\xff\xdb", b"\xff\xff\xff\xdb", 1)) == (12, 34)


def test_pillow_agrees_on_real_files():
    Image = pytest.importorskip("PIL.Image")
    for fmt, options in [("PNG", {}), ("JPEG", {}), ("JPEG", {"progressive": True}), ("GIF", {}),
                         ("WEBP", {"lossless": True}), ("WEBP", {"quality": 80})]:
        for size in [(1, 1), (1024, 768), (3000, 17)]:
            buf = io.BytesIO()
            Image.new("RGB", size, (10, 20, 30)).save(buf, fmt, **options)
            assert image_size(buf.getvalue()) == size, (fmt, options, size)
    buf = io.BytesIO()
    Image.new("RGBA", (300, 200), (1, 2, 3, 4)).save(buf, "WEBP")  # alpha: a VP8X container
    assert buf.getvalue()[12:16] == b"VP8X" and image_size(buf.getvalue()) == (300, 200)


@pytest.mark.parametrize("data", [
    b"", b"\x89PNG\r\n\x1a\n", png(10, 10)[:20], png(0, 10), jpeg(10, 10)[:30], jpeg(0, 10),
    b"\xff\xd8\xff\xd9", b"\xff\xd8" + b"\xff" * 5000, gif(10, 10)[:8], gif(0, 3), webp_vp8x(5, 5)[:25],
    webp(b"VP8 ", b"\x51\x02\x00\x9d\x01\x2a\x05\x00\x05\x00"), webp(b"VP8L", b"\x00" * 5), b"BM" + b"\x00" * 40,
    b"<svg xmlns='http://www.w3.org/2000/svg'/>", "not bytes", None, 12,
])
def test_unreadable_or_unknown_headers_give_none(data):
    assert image_size(data) is None


SIGNATURES = [b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR", b"\xff\xd8", b"\xff\xd8\xff\xe0", b"GIF89a",
              b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"RIFF\x00\x00\x00\x00WEBPVP8L", b"RIFF\x00\x00\x00\x00WEBPVP8X"]


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=300)
       | st.builds(lambda sig, tail: sig + tail, st.sampled_from(SIGNATURES), st.binary(max_size=300)))
def test_image_size_never_raises(data):
    size = image_size(data)
    assert size is None or (len(size) == 2 and min(size) > 0)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200), prefix=st.sampled_from(["", "iVBORw0KGgo", "/9j/", "R0lGOD", "UklGR"]))
def test_base64_text_of_any_kind_never_raises(text, prefix):
    for block in ({"type": "image_url", "image_url": {"url": "data:image/png;base64," + prefix + text}},
                  {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": prefix + text}},
                  {"type": "image", "base64": prefix + text}):
        assert 0 <= block_tokens(block, len) <= max(OPENAI_MAX_IMAGE_TOKENS, ANTHROPIC_MAX_IMAGE_TOKENS)


# --- Provider rules -------------------------------------------------------------------------


def test_openai_tile_rule():
    assert openai_image_tokens(1024, 1024, "high") == 765  # → 768 × 768: 2 × 2 tiles; 85 + 4 × 170
    assert openai_image_tokens(1024, 1024) == 765  # "auto" is priced as high
    assert openai_image_tokens(1024, 1024, "low") == OPENAI_LOW_DETAIL_TOKENS == 85
    assert openai_image_tokens(4096, 8192, "low") == 85
    # 2048 × 4096: fit within 2048 × 2048 → 1024 × 2048; shortest side 1024 > 768 → 768 × 1536;
    # tiles ceil(768/512) × ceil(1536/512) = 2 × 3 = 6 → 85 + 170 × 6 = 1105.
    assert openai_image_tokens(2048, 4096, "high") == 1105
    assert openai_image_tokens(512, 512, "high") == 255  # one tile, never scaled up
    assert openai_image_tokens(513, 100, "high") == 425  # 2 × 1 tiles
    assert openai_image_tokens(10, 10, None) == 255
    # The upper bound is reached: 768 × 2048 keeps its size, 2 × 4 tiles.
    assert openai_image_tokens(768, 2048) == OPENAI_MAX_IMAGE_TOKENS == 1445


def test_anthropic_rule():
    assert anthropic_image_tokens(200, 200) == 54  # 40,000 / 750 = 53.3
    assert anthropic_image_tokens(1000, 1000) == 1334  # 1,333.3
    assert anthropic_image_tokens(1092, 1092) == 1590  # the guide's largest unresized square
    assert anthropic_image_tokens(1024, 1024) == 1399  # 1,048,576 / 750 = 1,398.1
    # 3136 × 1568: long edge → 1568 × 784 = 1,229,312 px² → 1639.08.
    assert anthropic_image_tokens(3136, 1568) == anthropic_image_tokens(784, 1568) == 1640
    # 4000 × 4000: long edge → 1568 × 1568 (3,279 tokens), over the area cap → 1640.
    assert anthropic_image_tokens(4000, 4000) == ANTHROPIC_MAX_IMAGE_TOKENS == 1640
    assert anthropic_image_tokens(5000, 100) == 66  # long edge → 1568 × 31.36 = 49,172.48 px² → 65.6


@settings(max_examples=500, deadline=None)
@given(w=st.integers(1, 20_000), h=st.integers(1, 20_000))
def test_rules_never_exceed_their_upper_bounds(w, h):
    assert 85 + 170 <= openai_image_tokens(w, h, "high") <= OPENAI_MAX_IMAGE_TOKENS
    assert 1 <= anthropic_image_tokens(w, h) <= ANTHROPIC_MAX_IMAGE_TOKENS
    assert openai_image_tokens(w, h) == openai_image_tokens(h, w)


@pytest.mark.parametrize("call", [lambda: openai_image_tokens(0, 10), lambda: anthropic_image_tokens(10, -1),
                                  lambda: openai_image_tokens(10, 10, "ultra"), lambda: openai_image_tokens(True, 3)])
def test_rules_reject_bad_arguments(call):
    with pytest.raises(ValueError):
        call()


# --- Image blocks ---------------------------------------------------------------------------

IMAGE = png(1024, 1024)


@pytest.mark.parametrize("block, expected", [
    ({"type": "image_url", "image_url": {"url": data_url(IMAGE), "detail": "high"}}, 765),
    ({"type": "image_url", "image_url": {"url": data_url(IMAGE), "detail": "low"}}, 85),
    ({"type": "image_url", "image_url": {"url": data_url(IMAGE)}}, 765),
    ({"type": "image_url", "image_url": data_url(IMAGE)}, 765),
    ({"type": "image_url", "image_url": {"url": data_url(png(2048, 4096), "image/png"), "detail": "auto"}}, 1105),
    ({"type": "input_image", "image_url": data_url(jpeg(512, 512), "image/jpeg"), "detail": "high"}, 255),
    ({"type": "image", "source_type": "base64", "data": b64(IMAGE), "mime_type": "image/png"}, 765),
    ({"type": "image", "base64": b64(gif(1024, 1024)), "mime_type": "image/gif"}, 765),
    ({"type": "image", "base64": b64(webp_vp8x(512, 512)), "mime_type": "image/webp"}, 255),
    ({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(IMAGE)}}, 1399),
    ({"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": b64(jpeg(200, 200))}}, 54),
])
def test_image_blocks_are_priced_by_their_size(block, expected):
    assert block_tokens(block, count_tokens) == expected


@pytest.mark.parametrize("block, expected", [
    ({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}, OPENAI_MAX_IMAGE_TOKENS),
    ({"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "high"}}, 1445),
    ({"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}}, 85),
    ({"type": "image_url", "image_url": "https://example.com/cat.png"}, 1445),
    ({"type": "image", "source_type": "url", "url": "https://example.com/cat.png"}, 1445),
    ({"type": "image", "source_type": "id", "id": "file-abc"}, 1445),
    ({"type": "image", "url": "https://example.com/cat.png", "mime_type": "image/png"}, 1445),
    ({"type": "image", "file_id": "file-abc"}, 1445),
    ({"type": "input_image", "file_id": "file-abc", "detail": "low"}, 85),
    ({"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}, ANTHROPIC_MAX_IMAGE_TOKENS),
    ({"type": "image", "source": {"type": "file", "file_id": "file_011"}}, 1640),
    # Readable data the header does not give a size for: the same bounds.
    ({"type": "image_url", "image_url": {"url": "data:image/svg+xml;utf8,<svg/>"}}, 1445),
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64,not*base64!!"}}, 1445),
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(b"\x00" * 300)}}, 1445),
    ({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "@@@@"}}, 1640),
    ({"type": "image", "base64": b64(jpeg(10, 10))[:40]}, 1445),  # cut before the SOF segment
])
def test_images_of_unknown_size_count_the_upper_bound(block, expected):
    assert block_tokens(block, count_tokens) == expected


def test_an_image_block_with_no_image_counts_nothing():
    assert block_tokens({"type": "image_url"}, count_tokens) == 0
    assert block_tokens({"type": "image", "mime_type": "image/png"}, count_tokens) == 0


def test_base64_variants_are_read():
    for text in (base64.encodebytes(IMAGE).decode(),  # line-wrapped (MIME)
                 base64.encodebytes(IMAGE).decode().replace("\n", "\r\n"),
                 base64.urlsafe_b64encode(IMAGE).decode().rstrip("="),  # URL-safe, unpadded
                 b64(IMAGE) + "\n"):
        assert block_tokens({"type": "image", "base64": text}, count_tokens) == 765
    # A JPEG whose SOF segment follows 200 KB of APPn segments, plain and line-wrapped.
    big = b"\xff\xd8" + (b"\xff\xe2\xff\xff" + b"\x00" * 65533) * 3 + jpeg(1024, 1024)[2:]
    assert image_size(big) == (1024, 1024)
    assert block_tokens({"type": "image", "base64": b64(big)}, count_tokens) == 765
    assert block_tokens({"type": "image", "base64": base64.encodebytes(big).decode()}, count_tokens) == 765


@pytest.mark.parametrize("wrap", [b64, lambda data: base64.encodebytes(data).decode()])
def test_a_10_mb_payload_counts_fast(wrap):
    payload = wrap(jpeg(1024, 1024, app_bytes=60_000) + b"\x00" * 10_000_000)
    blocks = [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + payload}},
              {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": payload}},
              {"type": "input_audio", "input_audio": {"data": payload, "format": "wav"}}]
    for block in blocks:
        block_tokens(block, count_tokens)
        best = min(_seconds(block_tokens, block, count_tokens) for _ in range(5))
        assert best < 0.010, (block["type"], best)
    assert block_tokens(blocks[0], count_tokens) == 765
    message = [{"role": "user", "content": [{"type": "text", "text": "What is in it?"}, blocks[0]]}]
    assert min(_seconds(count_message_tokens, message) for _ in range(5)) < 0.010


def _seconds(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


# --- Other blocks ---------------------------------------------------------------------------


def test_audio_and_files_count_their_payload_at_4_characters_per_token():
    audio = b64(b"\x01" * 3000)  # 4,000 characters
    assert block_tokens({"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}, count_tokens) == 1000
    assert block_tokens({"type": "audio", "source_type": "base64", "data": audio}, count_tokens) == 1000
    assert block_tokens({"type": "audio", "base64": audio + "AAA="}, count_tokens) == 1001
    pdf = "data:application/pdf;base64," + b64(b"%PDF" + b"\x00" * 2996)
    assert block_tokens({"type": "file", "file": {"file_data": pdf, "filename": "a.pdf"}}, count_tokens) == 1000
    assert block_tokens({"type": "input_file", "file_data": pdf}, count_tokens) == 1000
    assert block_tokens({"type": "file", "base64": audio, "mime_type": "application/pdf"}, count_tokens) == 1000
    anthropic_pdf = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": audio}}
    assert block_tokens(anthropic_pdf, count_tokens) == 1000
    assert block_tokens({"type": "audio", "base64": b"\x00" * 3000}, count_tokens) == 1000  # bytes: as base64


def test_blocks_that_carry_text_count_that_text():
    doc = "The quarterly report says revenue rose 12 percent."
    source = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": doc}}
    assert block_tokens(source, count_tokens) == count_tokens(doc)
    nested = {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": doc}]}}
    assert block_tokens(nested, count_tokens) == count_tokens(doc)
    thinking = {"type": "thinking", "thinking": doc, "signature": "x" * 400}
    assert block_tokens(thinking, count_tokens) == count_tokens(doc)
    # A block with a string "text" field is text, whatever its type: the caller counts it.
    assert block_tokens({"type": "text", "text": doc}, count_tokens) is None
    assert block_tokens({"type": "file", "source_type": "text", "text": doc}, count_tokens) is None
    assert block_tokens("a plain string part", count_tokens) is None


def test_blocks_without_payload_count_their_json_at_4_characters_per_token():
    for block in ({"type": "file", "file": {"file_id": "file-abc123"}},
                  {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}},
                  {"type": "video", "url": "https://example.com/v.mp4"},
                  {"type": "mystery"}):
        expected = math.ceil(len(json.dumps(block, separators=(",", ":"))) / 4)
        assert block_tokens(block, count_tokens) == expected


def test_tool_blocks_count_their_json():
    args = {"city": "Paris", "units": "metric"}
    compact = json.dumps(args, separators=(",", ":"))
    expected = count_tokens("get_weather") + count_tokens(compact)
    for call in ({"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": args},  # Anthropic
                 {"type": "tool_call", "id": "c1", "name": "get_weather", "args": args},  # LangChain
                 {"type": "function_call", "name": "get_weather", "arguments": compact}):  # OpenAI Responses
        assert block_tokens(call, count_tokens) == expected
    result = "18C and sunny"
    plain = {"type": "tool_result", "tool_use_id": "toolu_1", "content": result}
    assert block_tokens(plain, count_tokens) == count_tokens(result)
    with_image = {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
        {"type": "text", "text": result},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(IMAGE)}}]}
    assert block_tokens(with_image, count_tokens) == count_tokens(result) + 1399
    assert block_tokens({"type": "tool_result", "content": {"temp": 18}}, count_tokens) == count_tokens('{"temp":18}')


# --- Messages -------------------------------------------------------------------------------


def test_four_images_are_counted_in_messages():
    text = "Which of these four pictures shows a cat?"
    images = [{"type": "image_url", "image_url": {"url": data_url(IMAGE), "detail": "high"}} for _ in range(4)]
    message = [{"role": "user", "content": [{"type": "text", "text": text}, *images]}]
    counted = count_message_tokens(message)
    assert counted >= 4 * 765
    assert counted == count_message_tokens([{"role": "user", "content": text}]) + 4 * 765
    as_generator = [{"role": "user", "content": (block for block in message[0]["content"])}]
    assert count_message_tokens(as_generator) == counted


def test_content_text_leaves_out_images_and_their_base64():
    payload = b64(IMAGE)
    content = [{"type": "text", "text": "Describe"},
               {"type": "image_url", "image_url": {"url": "data:image/png;base64," + payload}},
               {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": payload}},
               {"type": "image", "source_type": "base64", "data": payload},
               {"type": "image", "base64": payload},
               {"type": "input_audio", "input_audio": {"data": payload, "format": "wav"}},
               {"type": "text", "text": "both."}]
    assert content_text(content) == "Describe\nboth."


def test_text_only_messages_count_as_before():
    """Values computed with count_message_tokens before images were priced (cl100k_base)."""
    tool = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    cases = {
        "plain": ([{"role": "system", "content": "You are a terse assistant."},
                   {"role": "user", "content": "What is the capital of France?\nAnswer in one word."}], 29, 50),
        "blocks": ([{"role": "user", "content": [{"type": "text", "text": "Describe the chart."},
                                                 {"type": "text", "text": "Then list three takeaways."}]}], 17, 38),
        "named_tools": ([{"role": "user", "name": "alice", "content": "Weather in Paris?"},
                         {"role": "assistant", "content": None, "tool_calls": [
                             {"id": "call_1", "type": "function",
                              "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                         {"role": "tool", "content": "18C and sunny", "name": "get_weather"}], 58, 79),
        "strings_in_list": ([{"role": "user", "content": ["first part", {"type": "text", "text": "second part"},
                                                          {"text": "untyped"}]}], 15, 36),
    }
    for name, (messages, plain, with_tool) in cases.items():
        assert count_message_tokens(messages) == plain, name
        assert count_message_tokens(messages, tools=[tool]) == with_tool, name


@pytest.mark.parametrize("block", [
    {"type": ["image"]}, {"type": {"a": 1}}, {"type": "image_url", "image_url": {"url": None, "detail": ["x"]}},
    {"type": "image", "source_type": ["url"]}, {"type": "input_image", "detail": {"x": 1}},
])
def test_malformed_blocks_never_raise(block):
    assert count_message_tokens([{"role": "user", "content": [block]}]) >= 7


def test_a_pathologically_nested_block_counts_as_the_largest_image():
    root = {"type": "tool_result", "content": []}
    node = root
    for _ in range(5_000):
        child = {"type": "tool_result", "content": []}
        node["content"].append(child)
        node = child
    empty = count_message_tokens([{"role": "user", "content": []}])
    assert count_message_tokens([{"role": "user", "content": [root]}]) == empty + OPENAI_MAX_IMAGE_TOKENS
