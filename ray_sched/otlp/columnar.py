"""Columnar decode of OTLP/protobuf trace requests: many bodies, one vectorised pass.

:func:`decode_traces` turns a list of request bodies into one Arrow table of spans
(``SPAN_BATCH_SCHEMA``, the layout of ``schema.SPAN_FIELDS`` with the per-resource columns
dictionary-encoded), without a Python object per span: every span of every body is walked
at once, field by field, with numpy.

How: the real ``ExportTraceServiceRequest`` parse validates each body exactly as the
specification's ``FromString`` does (upb, in C). A lean twin of the request type, whose
``ScopeSpans.spans`` are plain ``bytes``, hands out each span's wire bytes; those are
concatenated and read by :func:`walk`, which advances one field of *every* span per numpy
pass (a span has about 15 fields plus its attributes, so a batch of thousands of spans
costs a few dozen passes). The status is walked the same way. An attribute written the
usual way (key, then one string, integer or boolean value) is read from fixed places, and
the ``attributes`` column (JSON text) is one gather of byte ranges from a copy of the wire
bytes whose framing bytes are overwritten with the JSON punctuation beside them (see
:func:`_attributes_json`), plus integer texts from Arrow's cast.

What is not common is not made fast: a body whose spans break a rule (a bad id, an end
before the start: a partial success with messages), repeat a singular field, or carry more
than ``MAX_FIELDS`` fields is left to the reference decoder (``decode.decode_request``);
attribute values other than strings, integers and booleans, and text that JSON must
escape, are turned into JSON one attribute at a time by the reference decoder's
``_member``. The output is the same either way (tests compare them).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from ray_sched.errors import InvalidPayloadError
from ray_sched.otlp import decode as reference
from ray_sched.otlp.schema import SPAN_FIELDS

#: Spans (and nested messages) with more fields than this go to the reference decoder: each
#: field is one numpy pass over the spans still being read.
MAX_FIELDS = 256

#: The in-memory layout of span batches: SPAN_FIELDS, with the columns that repeat per
#: resource or scope dictionary-encoded (a resource's attributes are held once, not per span).
DICTIONARY_COLUMNS = ("service", "scope", "resource_attributes")
SPAN_BATCH_SCHEMA = pa.schema([
    pa.field(f.name, pa.dictionary(pa.int32(), pa.string()))
    if f.name in DICTIONARY_COLUMNS else f for f in SPAN_FIELDS])

_LEAN_TYPE = reference._lean_request_type(ExportTraceServiceRequest, {
    "ResourceSpans": ("resource",), "ScopeSpans": ("scope", "spans")})

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
#: Zero bytes after the data, so that fixed-width reads near the end stay in the buffer.
_PAD = 16
_TEN = np.arange(10, dtype=np.int64)
_SEVEN_BITS = (7 * _TEN).astype(np.uint64)
_HEX_PAIRS = np.frombuffer("".join(f"{b:02x}" for b in range(256)).encode(),
                           dtype=np.uint8).reshape(256, 2)


@dataclasses.dataclass
class Fields:
    """Every field occurrence of a set of messages, in wire order within each message.

    Arrays of shape (n_occurrences,): ``message`` (index of the message), ``number`` (field
    number), ``wire`` (wire type), ``start``/``length`` (the payload of a length-delimited
    field, in the buffer) and ``value`` (a varint or fixed-width value, uint64).
    """

    message: np.ndarray
    number: np.ndarray
    wire: np.ndarray
    start: np.ndarray
    length: np.ndarray
    value: np.ndarray

    def select(self, mask: np.ndarray) -> Fields:
        return Fields(*(getattr(self, f.name)[mask] for f in dataclasses.fields(self)))


class _Unusual(Exception):
    """A body the vectorised path does not decode; the reference decoder does."""


def _varints(buf: np.ndarray, pos: np.ndarray, limit: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """The varints at ``pos``: (values as uint64, sizes in bytes); size 0 where a varint is
    longer than 10 bytes or runs past ``limit``. Most varints (tags, short lengths) are one
    byte: only the others read a 10-byte window."""
    first = buf[pos]
    values = first.astype(np.uint64)
    size = np.ones(len(pos), dtype=np.int64)
    long = np.flatnonzero(first >= 0x80)
    if len(long):
        window = buf[pos[long, None] + _TEN]
        last = window < 0x80
        size[long] = np.where(last.any(axis=1), np.argmax(last, axis=1) + 1, 0)
        bits = (window & 0x7F).astype(np.uint64) << _SEVEN_BITS
        bits[_TEN >= size[long, None]] = 0
        values[long] = np.bitwise_or.reduce(bits, axis=1)
    size[pos + size > limit] = 0
    return values, size


def _words(buf: np.ndarray) -> np.ndarray:
    """The little-endian uint64 starting at every byte offset of ``buf`` (an unaligned
    view, no copy): ``_words(buf)[i]`` reads bytes i..i+7."""
    return np.ndarray((len(buf) - 7,), dtype="<u8", buffer=buf, offset=0, strides=(1,))


def _next_fields(buf: np.ndarray, words: np.ndarray, pos: np.ndarray, end: np.ndarray
                 ) -> tuple:
    """The field at each ``pos`` (messages ending at ``end``): (number, wire type, payload
    start, payload length, value, where the next field starts). Any wire format.

    Raises:
        _Unusual: a malformed field.
    """
    tag, tag_size = _varints(buf, pos, end)
    at = pos + tag_size
    wire = (tag & np.uint64(7)).astype(np.int64)
    number = (tag >> np.uint64(3)).astype(np.int64)
    value = np.zeros(len(pos), dtype=np.uint64)
    length = np.zeros(len(pos), dtype=np.int64)
    start = at.copy()
    after = np.full(len(pos), -1, dtype=np.int64)
    ok = (tag_size > 0) & (number > 0)
    for kind in (_VARINT, _LEN):
        rows = np.flatnonzero(ok & (wire == kind))
        if len(rows):
            read, size = _varints(buf, at[rows], end[rows])
            good = size > 0
            if kind == _VARINT:
                value[rows] = read
                after[rows[good]] = at[rows[good]] + size[good]
            else:
                fits = good & (read <= (end[rows] - at[rows] - size).astype(np.uint64))
                rows, size, read = rows[fits], size[fits], read[fits].astype(np.int64)
                start[rows] = at[rows] + size
                length[rows] = read
                after[rows] = start[rows] + read
    for kind, width, mask in ((_I64, 8, ~np.uint64(0)), (_I32, 4, np.uint64(0xFFFFFFFF))):
        rows = np.flatnonzero(ok & (wire == kind))
        if len(rows):
            value[rows] = words[at[rows]] & mask
            after[rows] = at[rows] + width
    ok &= (after >= 0) & (after <= end)
    if not ok.all():
        raise _Unusual("malformed field")
    return number, wire, start, length, value, after


_WIRE_WIDTH = np.array([0, 8, 0, 0, 0, 4, 0, 0], dtype=np.int64)   # fixed-width payloads
_KNOWN_WIRE = np.array([True, True, True, False, False, True, False, False])
_LOW_32 = np.uint64(0xFFFFFFFF)


def _next_fields_short(buf: np.ndarray, words: np.ndarray, pos: np.ndarray,
                       end: np.ndarray) -> tuple | None:
    """:func:`_next_fields` for the usual case, in fewer numpy passes: every tag one byte,
    every varint (value or length) at most two. None when a field is otherwise (or
    malformed): the caller reads the pass with :func:`_next_fields`."""
    tag = buf[pos].astype(np.int64)
    wire = tag & 7
    b1 = buf[pos + 1].astype(np.int64)
    b2 = buf[pos + 2].astype(np.int64)
    one = b1 < 0x80
    varint = np.where(one, b1, (b1 & 0x7F) | (b2 << 7))
    size = np.where(one, 1, 2)
    is_var, is_len = wire == _VARINT, wire == _LEN
    if (tag >= 0x80).any() or (tag < 8).any() or not _KNOWN_WIRE[wire].all() or (
            (is_var | is_len) & ~one & (b2 >= 0x80)).any():
        return None
    at = pos + 1
    start = np.where(is_len, at + size, at)
    length = np.where(is_len, varint, 0)
    fixed = words[at] & np.where(wire == _I32, _LOW_32, ~np.uint64(0))
    value = np.where(is_var, varint.astype(np.uint64), np.where(is_len, 0, fixed))
    after = np.where(is_var, at + size, start + length + _WIRE_WIDTH[wire])
    if (after > end).any():
        return None
    return tag >> 3, wire, start, length, value, after


def walk(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray,
         max_fields: int = MAX_FIELDS) -> Fields:
    """Read every field of the messages at ``buf[starts[i]:ends[i]]``, all messages at once.

    Args:
        buf: uint8 array, followed by at least ``_PAD`` bytes of zeros.
        starts, ends: int64 arrays of shape (n_messages,).
        max_fields: most fields read per message.

    Raises:
        _Unusual: a malformed message (the caller's reference path says why), or one with
            more than ``max_fields`` fields.
    """
    words = _words(buf)
    active = np.flatnonzero(starts < ends)
    cursor = starts.astype(np.int64, copy=True)
    parts: list[tuple] = []
    for _ in range(max_fields):
        if not len(active):
            break
        pos, end = cursor[active], ends[active]
        fields = _next_fields_short(buf, words, pos, end)
        if fields is None:
            fields = _next_fields(buf, words, pos, end)
        number, wire, start, length, value, after = fields
        parts.append((active, number, wire, start, length, value))
        cursor[active] = after
        active = active[after < end]
    if len(active):
        raise _Unusual(f"a message with more than {max_fields} fields")
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return Fields(empty, empty, empty, empty, empty, np.zeros(0, dtype=np.uint64))
    columns = [np.concatenate(column) for column in zip(*parts)]
    order = np.argsort(columns[0], kind="stable")  # by message; wire order within one
    return Fields(*(column[order] for column in columns))


def _singular(fields: Fields, number: int, wire: int, n: int) -> np.ndarray:
    """Index into ``fields`` of each message's one occurrence of field ``number``, -1 where
    absent. A repeated singular field (legal, but no encoder writes it) or a wrong wire type
    is left to the reference decoder."""
    rows = np.flatnonzero(fields.number == number)
    if not len(rows):
        return np.full(n, -1, dtype=np.int64)
    if (fields.wire[rows] != wire).any():
        raise _Unusual(f"field {number} with wire type other than {wire}")
    messages = fields.message[rows]
    if len(messages) > 1 and (messages[1:] == messages[:-1]).any():
        raise _Unusual(f"field {number} repeated")
    at = np.full(n, -1, dtype=np.int64)
    at[messages] = rows
    return at


def _bytes_of(fields: Fields, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of a length-delimited field per message (length 0 where absent)."""
    present = at >= 0
    if not present.any():
        return np.zeros(len(at), dtype=np.int64), np.zeros(len(at), dtype=np.int64)
    start = np.where(present, fields.start[np.maximum(at, 0)], 0)
    length = np.where(present, fields.length[np.maximum(at, 0)], 0)
    return start, length


def _value_of(fields: Fields, at: np.ndarray) -> np.ndarray:
    if not (at >= 0).any():
        return np.zeros(len(at), dtype=np.uint64)
    return np.where(at >= 0, fields.value[np.maximum(at, 0)], np.uint64(0))


def _int32(values: np.ndarray) -> np.ndarray:
    """An enum's value as upb reads it: the low 32 bits, signed."""
    return (values & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.int32).astype(np.int64)


def _ranges(source: np.ndarray, starts: np.ndarray, lengths: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """The byte ranges ``source[starts[i]:starts[i] + lengths[i]]`` one after another:
    (bytes, offsets of shape (n + 1,))."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    index = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
    return source[index], offsets


def _string_array(data: np.ndarray, offsets: np.ndarray) -> pa.Array:
    return pa.Array.from_buffers(pa.string(), len(offsets) - 1,
                                 [None, pa.py_buffer(offsets.astype(np.int32)),
                                  pa.py_buffer(np.ascontiguousarray(data))])


def _slices(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> pa.Array:
    return _string_array(*_ranges(buf, starts, lengths))


def _hex(buf: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """Lowercase hex of ``width`` bytes at each start: uint8 array of shape (n, 2 * width)."""
    raw = buf[starts[:, None] + np.arange(width)]
    return _HEX_PAIRS[raw].reshape(len(starts), 2 * width)


def _string_buffers(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, offsets of shape (n + 1,) starting at 0) of a string array, without copies
    where possible."""
    if len(array) == 0:
        return np.zeros(0, dtype=np.uint8), np.zeros(1, dtype=np.int64)
    _, offsets, data = array.buffers()
    offsets = np.frombuffer(offsets, dtype=np.int32)[array.offset:array.offset + len(array) + 1]
    data = np.frombuffer(data, dtype=np.uint8)[offsets[0]:offsets[-1]]
    return data, (offsets - offsets[0]).astype(np.int64)


def _fixed_strings(chars: np.ndarray) -> pa.Array:
    n, width = chars.shape
    return _string_array(chars.ravel(), np.arange(n + 1, dtype=np.int64) * width)


# -- attributes as JSON -------------------------------------------------------------------

#: Literal pieces of the attribute JSON: name -> bytes; laid out in one buffer (_LITERALS) at
#: the offsets of _LITERAL_AT.
_LITERAL_TEXT = {"close": b"}", "open_bare": b"{", "comma_bare": b",", "empty": b"{}"}
_LITERALS = b"".join(_LITERAL_TEXT.values())
_LITERAL_AT = dict(zip(_LITERAL_TEXT, np.cumsum([0] + [len(t) for t in _LITERAL_TEXT.values()])))


def _has_escape(escapes: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Whether each byte range holds one of the ``escapes`` positions (sorted)."""
    return np.searchsorted(escapes, starts + lengths) > np.searchsorted(escapes, starts)


def _check_distinct_keys(buf: np.ndarray, owner: np.ndarray, starts: np.ndarray,
                         lengths: np.ndarray) -> None:
    """Raise _Unusual when a key repeats within a span (the reference keeps its first place
    and its last value). Keys are told apart by span, length and last 8 bytes first; only
    the rare look-alikes are compared in full."""
    last = np.maximum(starts + lengths - 8, 0)
    tail = _words(buf)[last]
    short = lengths < 8
    tail[short] = (tail[short] >> (np.uint64(8) * (8 - lengths[short]).astype(np.uint64))
                   if short.any() else tail[short])
    fingerprint = (tail ^ (lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
                   ^ (owner.astype(np.uint64) * np.uint64(0xD6E8FEB86659FD93)))
    order = np.argsort(fingerprint)
    alike = np.flatnonzero(fingerprint[order][1:] == fingerprint[order][:-1])
    raw = buf.tobytes() if len(alike) else b""
    for a, b in zip(order[alike].tolist(), order[alike + 1].tolist()):
        if owner[a] == owner[b] and (raw[starts[a]:starts[a] + lengths[a]]
                                     == raw[starts[b]:starts[b] + lengths[b]]):
            raise _Unusual("an attribute key repeated within a span")


def _check_slow_keys_distinct(raw: bytes, owner: np.ndarray, fast: np.ndarray,
                              key_start: np.ndarray, key_length: np.ndarray,
                              slow_rows: np.ndarray, slow_keys: list[str]) -> None:
    """Raise _Unusual when a key of an attribute made the reference way repeats within its
    span (among all of that span's keys, fast ones included)."""
    keys: dict[int, list[str]] = {}
    for row, key in zip(slow_rows.tolist(), slow_keys):
        keys.setdefault(int(owner[row]), []).append(key)
    for row in np.flatnonzero(fast & np.isin(owner, list(keys))).tolist():
        start = int(key_start[row])
        keys[int(owner[row])].append(raw[start:start + int(key_length[row])].decode())
    if any(len(set(names)) < len(names) for names in keys.values()):
        raise _Unusual("an attribute key repeated within a span")


def _attributes_json(buf: np.ndarray, spans: Fields, n_spans: int, raw_bytes: bytes,
                     escapes: np.ndarray) -> pa.Array:
    """The ``attributes`` column: each span's KeyValues (field 9) as one JSON object text,
    as the reference decoder writes it.

    A KeyValue written the usual way (key, then a value holding one string, bool or int,
    with no text JSON must escape) is read from fixed places; any other is turned into its
    JSON member by the reference decoder.
    """
    kvs = spans.select(spans.number == 9)
    if len(kvs.wire) and (kvs.wire != _LEN).any():
        raise _Unusual("attributes with a wire type other than length-delimited")
    m = len(kvs.start)
    owner = kvs.message                                   # span of each attribute, in order
    limit = len(buf) - _PAD
    start, end = kvs.start, kvs.start + kvs.length

    def varint_at(pos):
        pos = np.minimum(pos, limit)
        value, size = _varints(buf, pos, end)
        return np.minimum(value, np.uint64(limit)).astype(np.int64), size, pos + size

    key_length, size, key_start = varint_at(start + 1)
    fast = (kvs.length > 0) & (buf[np.minimum(start, limit)] == 0x0A) & (size > 0)
    value_tag_at = np.minimum(key_start + key_length, limit)
    any_length, size, any_start = varint_at(value_tag_at + 1)
    fast &= (buf[value_tag_at] == 0x12) & (size > 0) & (any_length > 0)
    fast &= any_start + any_length == end
    any_tag = buf[np.minimum(any_start, limit)]
    inner, size, inner_start = varint_at(any_start + 1)
    text = fast & (any_tag == 0x0A) & (size > 0) & (inner_start + inner == end)
    integer = fast & ((any_tag == 0x10) | (any_tag == 0x18)) & (size > 0) & (inner_start == end)
    fast = text | integer
    text_start = np.where(text, inner_start, 0)
    text_length = np.where(text, inner, 0)
    fast &= ~_has_escape(escapes, key_start, np.where(fast, key_length, 0))
    fast &= ~_has_escape(escapes, text_start, text_length)
    text &= fast
    integer &= fast
    _check_distinct_keys(buf, owner[fast], key_start[fast], key_length[fast])

    # The JSON is one gather of byte ranges from a patched copy of the wire bytes, where
    # each KeyValue's own framing bytes are overwritten by the JSON punctuation next to
    # them: the two bytes before its key (tag and key length) become `{"` or `,"`; the
    # three before a text value (the value's tag and length, the AnyValue's tag and the
    # text's length) `":"`, and the byte after it `"` (`"}` for a span's last attribute:
    # the bytes after a KeyValue are the next field's, which no range reads, or the pad).
    # So a text attribute is two ranges, key and value, each with its punctuation.
    # Integers and booleans: `":` goes over the AnyValue's length and tag, the number is
    # text from Arrow's cast (with `}` when last). Other attributes: whole members made
    # the reference way, between literal pieces.
    patched = buf.copy()
    first = np.ones(m, dtype=bool)
    first[1:] = owner[1:] != owner[:-1]
    last = np.ones(m, dtype=bool)
    last[:-1] = owner[1:] != owner[:-1]
    fast_rows = np.flatnonzero(fast)
    patched[key_start[fast_rows] - 2] = np.where(first[fast_rows], ord("{"), ord(","))
    patched[key_start[fast_rows] - 1] = ord('"')
    text_rows = np.flatnonzero(text)
    value_start = inner_start[text_rows]
    value_end = value_start + inner[text_rows]
    for offset, char in ((-3, '"'), (-2, ":"), (-1, '"')):
        patched[value_start + offset] = ord(char)
    patched[value_end] = ord('"')
    closing = last[text_rows]
    patched[value_end[closing] + 1] = ord("}")
    integer_rows = np.flatnonzero(integer)
    patched[any_start[integer_rows] - 1] = ord('"')
    patched[any_start[integer_rows]] = ord(":")

    values, _ = _varints(buf, np.minimum(any_start[integer_rows] + 1, limit), end[integer_rows])
    integer_text = pc.cast(pa.array(values.view(np.int64)), pa.string())
    is_bool = pa.array(any_tag[integer_rows] == 0x10)
    integer_text = pc.if_else(is_bool, pc.if_else(pa.array(values != 0), "true", "false"),
                              integer_text)
    integer_text = pc.binary_join_element_wise(
        integer_text, pc.if_else(pa.array(last[integer_rows]), "}", ""), "")
    integer_data, integer_offsets = _string_buffers(integer_text)
    slow_rows = np.flatnonzero(~fast)
    slow = [reference._member(raw_bytes[s:s + n])
            for s, n in zip(kvs.start[slow_rows].tolist(), kvs.length[slow_rows].tolist())]
    slow_members = [member.encode() for _, member in slow]
    if slow:
        _check_slow_keys_distinct(raw_bytes, owner, fast, key_start, key_length, slow_rows,
                                  [key for key, _ in slow])
    literal_at = limit + _PAD
    source = np.concatenate((patched, np.frombuffer(_LITERALS, np.uint8), integer_data,
                             np.frombuffer(b"".join(slow_members), np.uint8)))
    integer_at = literal_at + len(_LITERALS)
    slow_at = integer_at + len(integer_data)

    # Three pieces per attribute (unused ones empty).
    piece_start = np.zeros((m, 3), dtype=np.int64)
    piece_length = np.zeros((m, 3), dtype=np.int64)
    piece_start[fast_rows, 0] = key_start[fast_rows] - 2
    piece_length[fast_rows, 0] = key_length[fast_rows] + 2
    piece_start[text_rows, 1] = value_start - 3
    piece_length[text_rows, 1] = value_end - value_start + 4 + closing
    piece_start[integer_rows, 1] = any_start[integer_rows] - 1
    piece_length[integer_rows, 1] = 2
    piece_start[integer_rows, 2] = integer_at + integer_offsets[:-1]
    piece_length[integer_rows, 2] = np.diff(integer_offsets)

    def literal(rows, column, name):
        piece_start[rows, column] = literal_at + _LITERAL_AT[name]
        piece_length[rows, column] = len(_LITERAL_TEXT[name])

    literal(np.flatnonzero(~fast & first), 0, "open_bare")
    literal(np.flatnonzero(~fast & ~first), 0, "comma_bare")
    slow_lengths = np.fromiter(map(len, slow_members), dtype=np.int64, count=len(slow_members))
    slow_offsets = np.concatenate(([0], np.cumsum(slow_lengths)))
    piece_start[slow_rows, 1] = slow_at + slow_offsets[:-1]
    piece_length[slow_rows, 1] = slow_lengths
    literal(np.flatnonzero(~fast & last), 2, "close")

    # Spans without attributes get their `{}` piece in their place among the others.
    per_span = np.bincount(owner, minlength=n_spans)
    bare = np.flatnonzero(per_span == 0)
    if len(bare):
        attribute_rows = np.concatenate((np.repeat(owner, 3), bare))
        order = np.argsort(attribute_rows, kind="stable")
        starts = np.concatenate((piece_start.ravel(),
                                 np.full(len(bare), literal_at + _LITERAL_AT["empty"])))[order]
        lengths = np.concatenate((piece_length.ravel(), np.full(len(bare), 2)))[order]
        span_of_piece = attribute_rows[order]
    else:
        starts, lengths = piece_start.ravel(), piece_length.ravel()
        span_of_piece = np.repeat(owner, 3)
    data, offsets = _ranges(source, starts, lengths)
    span_first_piece = np.searchsorted(span_of_piece, np.arange(n_spans))
    return _string_array(data, np.append(offsets[span_first_piece], offsets[-1]))


# -- requests -------------------------------------------------------------------------------


@dataclasses.dataclass
class _Layout:
    """What the lean parse of the bodies gives, per span and per resource/scope."""

    span_bytes: list = dataclasses.field(default_factory=list)
    body_of: list = dataclasses.field(default_factory=list)        # per scope: body index
    scope_of_span: list = dataclasses.field(default_factory=list)  # per scope: span count
    scope_resource: list = dataclasses.field(default_factory=list)
    scope_names: list = dataclasses.field(default_factory=list)
    resources: list = dataclasses.field(default_factory=list)      # (json, service)


def _layout(bodies: list[bytes]) -> tuple[_Layout, list[dict]]:
    layout = _Layout()
    counts = []
    for b, body in enumerate(bodies):
        tally = reference._Tally()
        request = _LEAN_TYPE.FromString(body)
        scope_attributes = 0
        for resource_spans in request.resource_spans:
            layout.resources.append(tally.resource(Resource.FromString(resource_spans.resource)))
            for scope_spans in resource_spans.scope_spans:
                scope = InstrumentationScope.FromString(scope_spans.scope)
                scope_attributes += len(scope.attributes)
                spans = scope_spans.spans[:]
                layout.span_bytes.extend(spans)
                layout.body_of.append(b)
                layout.scope_of_span.append(len(spans))
                layout.scope_resource.append(len(layout.resources) - 1)
                layout.scope_names.append(scope.name)
        counts.append({"tally": tally, "scope_attributes": scope_attributes})
    return layout, counts


def _dictionary(indices: np.ndarray, values: list[str]) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(indices.astype(np.int32)),
                                          pa.array(values, type=pa.string()))


def _decode_spans(layout: _Layout) -> tuple[pa.Table, np.ndarray]:
    """The span table of the laid-out bodies and each span's attribute count."""
    lengths = np.fromiter(map(len, layout.span_bytes), dtype=np.int64,
                          count=len(layout.span_bytes))
    raw = b"".join(layout.span_bytes)
    buf = np.frombuffer(raw + bytes(_PAD), dtype=np.uint8)
    n = len(lengths)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    spans = walk(buf, starts, ends)
    # Where bytes JSON escapes are (json.encoder's ESCAPE for ensure_ascii=False).
    escapes = np.flatnonzero((buf < 0x20) | (buf == ord('"')) | (buf == ord("\\")))
    trace_start, trace_length = _bytes_of(spans, _singular(spans, 1, _LEN, n))
    span_start, span_length = _bytes_of(spans, _singular(spans, 2, _LEN, n))
    parent_start, parent_length = _bytes_of(spans, _singular(spans, 4, _LEN, n))
    name_start, name_length = _bytes_of(spans, _singular(spans, 5, _LEN, n))
    kind = _int32(_value_of(spans, _singular(spans, 6, _VARINT, n)))
    start_ns = _value_of(spans, _singular(spans, 7, _I64, n))
    end_ns = _value_of(spans, _singular(spans, 8, _I64, n))
    status_start, status_length = _bytes_of(spans, _singular(spans, 15, _LEN, n))
    status = walk(buf, status_start, status_start + status_length)
    message_start, message_length = _bytes_of(status, _singular(status, 2, _LEN, n))
    code = _int32(_value_of(status, _singular(status, 3, _VARINT, n)))

    valid = ((trace_length == 16) & (span_length == 8)
             & ((parent_length == 0) | (parent_length == 8))
             & (end_ns >= start_ns) & (end_ns <= np.uint64(2**63 - 1))
             & (kind >= 0) & (kind <= 5) & (code >= 0) & (code <= 2))
    if not valid.all():
        raise _Unusual("a span the specification rejects")
    trace_hex = _hex(buf, trace_start, 16)
    span_hex = _hex(buf, span_start, 8)
    if (trace_hex == ord("0")).all(axis=1).any() or (span_hex == ord("0")).all(axis=1).any():
        raise _Unusual("an all-zero id")
    parent_hex = _hex(buf, parent_start, 8)
    has_parent = (parent_length == 8) & ~(parent_hex == ord("0")).all(axis=1)
    parent_data = parent_hex[has_parent].ravel()
    parent_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.where(has_parent, 16, 0), out=parent_offsets[1:])

    scope_of_span = np.repeat(np.arange(len(layout.scope_of_span)), layout.scope_of_span)
    resource_of_span = np.asarray(layout.scope_resource, dtype=np.int64)[scope_of_span]
    resource_json, services = zip(*layout.resources) if layout.resources else ((), ())
    start_signed = start_ns.astype(np.int64)
    end_signed = end_ns.astype(np.int64)
    columns = {
        "trace_id": _fixed_strings(trace_hex),
        "span_id": _fixed_strings(span_hex),
        "parent_span_id": _string_array(parent_data, parent_offsets),
        "name": _slices(buf, name_start, name_length),
        "kind": pa.array(kind.astype(np.int8)),
        "start_ns": pa.array(start_signed),
        "end_ns": pa.array(end_signed),
        "duration_ns": pa.array(end_signed - start_signed),
        "status_code": pa.array(code.astype(np.int8)),
        "status_message": _slices(buf, message_start, message_length),
        "service": _dictionary(resource_of_span, list(services)),
        "scope": _dictionary(scope_of_span, layout.scope_names),
        "attributes": _attributes_json(buf, spans, n, raw, escapes),
        "resource_attributes": _dictionary(resource_of_span, list(resource_json)),
        "events": pa.array(np.bincount(spans.message[spans.number == 11],
                                       minlength=n).astype(np.int32)),
        "links": pa.array(np.bincount(spans.message[spans.number == 13],
                                      minlength=n).astype(np.int32)),
    }
    table = pa.Table.from_arrays([columns[name] for name in SPAN_BATCH_SCHEMA.names],
                                 schema=SPAN_BATCH_SCHEMA)
    attributes = np.bincount(spans.message[spans.number == 9], minlength=n)
    return table, attributes


def decode_traces(bodies: list[bytes]) -> tuple[pa.Table, list]:
    """Decode protobuf ``ExportTraceServiceRequest`` bodies (decompressed) into one table.

    Args:
        bodies: request bodies.

    Returns:
        (spans, results): ``spans`` holds the spans of every body decoded here, body after
        body, in ``SPAN_BATCH_SCHEMA``. ``results[i]`` is, for body i: a dict
        ``{"accepted", "rejected", "message", "resources", "attributes", "services",
        "body_bytes"}`` (``rejected`` is 0 here); None when the body is left to the
        reference decoder (:func:`ray_sched.otlp.decode.decode_request`, which also writes
        the partial-success messages); or an :class:`InvalidPayloadError` saying why the
        body is not a valid request (the other bodies are decoded all the same).
    """
    results: list = [None] * len(bodies)
    valid = []
    for b, body in enumerate(bodies):
        try:
            ExportTraceServiceRequest.FromString(body)
            valid.append(b)
        except DecodeError as error:
            results[b] = InvalidPayloadError(
                f"body is not a valid ExportTraceServiceRequest protobuf: {error}")
    try:
        table, decoded = _decode_bodies([bodies[b] for b in valid])
        groups = [(table, valid, decoded)]
    except _Unusual:  # find the unusual bodies: decode each alone (rare, as they are)
        groups = []
        for b in valid:
            try:
                table, decoded = _decode_bodies([bodies[b]])
                groups.append((table, [b], decoded))
            except _Unusual:
                pass
    for _, indices, decoded in groups:
        for b, summary in zip(indices, decoded):
            results[b] = summary
    tables = [table for table, _, _ in groups if table.num_rows]
    return (pa.concat_tables(tables) if tables else _empty()), results


def _decode_bodies(bodies: list[bytes]) -> tuple[pa.Table, list[dict]]:
    """The spans of valid bodies and each body's summary; raises _Unusual."""
    layout, counts = _layout(bodies)
    if not layout.span_bytes:
        table, attributes = _empty(), np.zeros(0, dtype=np.int64)
    else:
        table, attributes = _decode_spans(layout)
    scopes = np.asarray(layout.body_of, dtype=np.int64)
    spans_per_scope = np.asarray(layout.scope_of_span, dtype=np.int64)
    spans_per_body = np.bincount(scopes, weights=spans_per_scope, minlength=len(bodies))
    owner = np.repeat(scopes, spans_per_scope)
    attributes_per_body = np.bincount(owner, weights=attributes, minlength=len(bodies))
    summaries = []
    for b, count in enumerate(counts):
        tally = count["tally"]
        summaries.append({
            "accepted": int(spans_per_body[b]), "rejected": 0, "message": "",
            "resources": tally.resources,
            "attributes": tally.attributes + count["scope_attributes"]
            + int(attributes_per_body[b]),
            "services": list(tally.services), "body_bytes": len(bodies[b])})
    return table, summaries


def _empty() -> pa.Table:
    return SPAN_BATCH_SCHEMA.empty_table()


def to_batch_table(columns: dict) -> pa.Table:
    """Span columns of the reference decoder (``Decoded.columns``) in ``SPAN_BATCH_SCHEMA``."""
    arrays = []
    for f in SPAN_BATCH_SCHEMA:
        values = pa.array(columns[f.name], type=f.type.value_type
                          if pa.types.is_dictionary(f.type) else f.type)
        arrays.append(values.dictionary_encode() if pa.types.is_dictionary(f.type) else values)
    return pa.Table.from_arrays(arrays, schema=SPAN_BATCH_SCHEMA)
