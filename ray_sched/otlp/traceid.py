"""Hashes of trace ids that every process agrees on: which processor owns a trace, and the
value the probabilistic sampler compares with its probability.

Both read all 16 bytes of the id. The W3C Trace Context only promises randomness in the
rightmost 7 bytes, and not every client honours even that (a load generator that numbers
its traces, an SDK that counts), so a keep-if-the-low-bits-are-small rule can keep 80% of
the traces where 10% was asked. Mixing the whole id (splitmix64's finaliser) keeps the
shares right for any id, and stays deterministic across processes and restarts (unlike
Python's ``hash`` of a str, which is salted per process).

Example:
    >>> partition_of(pa.array(["0af7651916cd43dd8448eb211c80319c"]), 4)   # doctest: +SKIP
    >>> sampling_value(np.array(["0af7651916cd43dd8448eb211c80319c"], dtype=object))
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

#: The sampling value has this many bits (as the W3C random part and OTel's consistent
#: sampling thresholds).
SAMPLING_BITS = 56
_MASK64 = (1 << 64) - 1
_HEX_VALUE = np.zeros(256, dtype=np.uint64)
_HEX_VALUE[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10, dtype=np.uint64)
_HEX_VALUE[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16, dtype=np.uint64)
_HEX_VALUE[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint64)
_SHIFTS = np.uint64(4) * np.arange(15, -1, -1, dtype=np.uint64)
#: Distinct seeds, so that which processor owns a trace says nothing about its sampling.
_PARTITION_SEED, _SAMPLING_SEED = 0x243F6A8885A308D3, 0x13198A2E03707344


def _mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _strings(trace_ids) -> tuple[np.ndarray, np.ndarray, int]:
    """(bytes, offsets, count) of trace ids given as an Arrow string array (chunked or
    dictionary too) or a sequence of str."""
    if isinstance(trace_ids, pa.ChunkedArray):
        trace_ids = trace_ids.combine_chunks()
    if isinstance(trace_ids, pa.Array):
        if pa.types.is_dictionary(trace_ids.type):
            trace_ids = trace_ids.dictionary_decode()
        n = len(trace_ids)
        if n == 0:
            return np.zeros(0, np.uint8), np.zeros(1, np.int64), 0
        _, offsets, data = trace_ids.buffers()
        offsets = np.frombuffer(offsets, np.int32)[trace_ids.offset:trace_ids.offset + n + 1]
        return np.frombuffer(data, np.uint8), offsets.astype(np.int64), n
    ids = list(trace_ids)
    encoded = [i.encode("utf-8", "replace") for i in ids]
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), np.uint8), offsets, len(ids)


def _hashed(trace_ids, seed: int) -> np.ndarray:
    data, offsets, n = _strings(trace_ids)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    if (np.diff(offsets) == 32).all():
        digits = _HEX_VALUE[data[offsets[0] + np.arange(32 * n)].reshape(n, 32)]
        high = np.bitwise_or.reduce(digits[:, :16] << _SHIFTS, axis=1)
        low = np.bitwise_or.reduce(digits[:, 16:] << _SHIFTS, axis=1)
    else:  # off-schema ids (the reference decoder takes any length): a digest of the text
        texts = [data[offsets[i]:offsets[i + 1]].tobytes() for i in range(n)]
        high = np.array([int.from_bytes(hashlib.blake2b(t, digest_size=8).digest(), "little")
                         for t in texts], dtype=np.uint64)
        low = np.zeros(n, dtype=np.uint64)
    return _mix(high ^ _mix(low ^ np.uint64(seed)))


def partition_of(trace_ids, partitions: int) -> np.ndarray:
    """The processor (0 .. partitions - 1) of each trace id; int64 array of shape (n,)."""
    mixed = _hashed(trace_ids, _PARTITION_SEED)
    return ((mixed >> np.uint64(32)) % np.uint64(partitions)).astype(np.int64)


def sampling_value(trace_ids) -> np.ndarray:
    """Each trace id's sampling value, uniform in [0, 2**56) for any ids; uint64, (n,)."""
    return _hashed(trace_ids, _SAMPLING_SEED) >> np.uint64(64 - SAMPLING_BITS)


def sampling_value_of(trace_id: str) -> int:
    """:func:`sampling_value` of one 32-hex-digit id, in plain Python (a reference)."""
    def mix(x: int) -> int:
        x ^= x >> 30
        x = (x * 0xBF58476D1CE4E5B9) & _MASK64
        x ^= x >> 27
        x = (x * 0x94D049BB133111EB) & _MASK64
        return x ^ (x >> 31)
    high, low = int(trace_id[:16], 16), int(trace_id[16:], 16)
    return mix(high ^ mix(low ^ _SAMPLING_SEED)) >> (64 - SAMPLING_BITS)
