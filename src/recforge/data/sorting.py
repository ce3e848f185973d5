"""Fast exact replacements for ``np.lexsort`` and ``np.isin`` on tens of millions of rows.

``np.lexsort`` and ``np.argsort`` move 8-byte indices around by random access and take 10-20 s for 20M rows
on a small CPU, while ``np.sort`` of plain 64-bit integers runs vectorised in well under a second. So
:func:`lexsort` turns every key into an unsigned integer of known width, concatenates their bits (the last
key most significant, as in ``np.lexsort``) and sorts that bit string in a few ``np.sort`` passes, least
significant part first, over 64-bit words whose low bits hold each row's position in the previous pass: equal
words keep their previous order, which is what makes the result identical to ``np.lexsort`` (stable), ties and
all.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


def sort_word(values: np.ndarray) -> tuple[np.ndarray, int]:
    """``values`` as unsigned integers in the same order (equal values equal), and how many bits they use.

    Integers are offset by their minimum; floats are mapped bit for bit to an order-preserving integer
    (``-0.0`` equals ``0.0`` and every NaN sorts last, as in NumPy).
    """
    values = np.asarray(values)
    if len(values) == 0:
        return np.zeros(0, np.uint64), 0
    if values.dtype.kind == "f":
        floats = values.astype(np.float64) + 0.0                     # -0.0 -> 0.0
        floats[np.isnan(floats)] = np.nan                            # one NaN, the positive one: after +inf
        bits = floats.view(np.uint64)
        words = np.where(bits >> np.uint64(63), ~bits, bits | np.uint64(1 << 63))
    elif values.dtype.kind in "iub":
        words = values.astype(np.int64 if values.dtype.kind != "u" else np.uint64, copy=False)
    else:
        raise TypeError(f"lexsort: keys must be numbers, not {values.dtype}")
    low = words.min()
    words = (words - low).astype(np.uint64) if words.dtype != np.uint64 else words - low
    return words, int(words.max()).bit_length()


def lexsort(keys: Sequence[np.ndarray]) -> np.ndarray:
    """``np.lexsort(keys)``: the indices that sort by the last key, then the one before it, ..., ties in their
    original order; the same result, several times faster on millions of rows."""
    n = len(keys[0])
    position_bits = max(int(n - 1).bit_length(), 1)
    room = 64 - position_bits
    parts = [sort_word(key) for key in keys]                         # least significant first
    total = sum(bits for _, bits in parts)
    order = None
    positions = np.arange(n, dtype=np.uint64)
    mask = np.uint64((1 << position_bits) - 1)
    start = 0
    while start < total or order is None:                            # one pass per `room` bits of the bit string
        word = _bits(parts, start, min(room, total - start))
        if order is not None:
            word = word[order]
        word = (word << np.uint64(position_bits)) | positions
        word.sort()
        step = (word & mask).astype(np.int64)
        order = step if order is None else order[step]
        start += room
    return order


def sort_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(np.sort(keys), lexsort([keys]))`` for non-negative int64 keys: the sorted keys and the stable order, from
    one sort of words that carry both when they fit in 64 bits (no gather of the keys by the order)."""
    position_bits = max(int(len(keys) - 1).bit_length(), 1)
    if len(keys) == 0 or int(keys.max()).bit_length() + position_bits > 64 or keys.min() < 0:
        order = lexsort([keys])
        return keys[order], order
    word = (keys.astype(np.uint64) << np.uint64(position_bits)) | np.arange(len(keys), dtype=np.uint64)
    word.sort()
    order = (word & np.uint64((1 << position_bits) - 1)).astype(np.int64)
    return (word >> np.uint64(position_bits)).astype(np.int64), order


def _bits(parts: list[tuple[np.ndarray, int]], start: int, width: int) -> np.ndarray:
    """Bits ``start .. start + width`` of the concatenation of ``parts`` (the first part lowest)."""
    out = np.zeros(len(parts[0][0]), np.uint64)
    offset = 0
    for words, bits in parts:
        lo, hi = max(start, offset), min(start + width, offset + bits)
        if lo < hi:
            piece = (words >> np.uint64(lo - offset)) & np.uint64((1 << (hi - lo)) - 1)
            out |= piece << np.uint64(lo - start)
        offset += bits
    return out


def isin(values: np.ndarray, members: np.ndarray) -> np.ndarray:
    """``np.isin(values, members)``, by binary search of the sorted values in the sorted members (NumPy's
    search is fast for sorted queries; NumPy 2.4's hash-based ``isin`` can be far slower on large int64 keys)."""
    if len(members) == 0 or len(values) == 0:
        return np.zeros(len(values), bool)
    sorted_values, order = sort_keys(values) if values.dtype.kind == "i" else (None, lexsort([values]))
    out = np.empty(len(values), bool)
    out[order] = _found(np.sort(members), values[order] if sorted_values is None else sorted_values)
    return out


def count_in(values: np.ndarray, members: np.ndarray) -> int:
    """How many of ``values`` are in ``members`` (``isin(values, members).sum()``), from both sorted."""
    if len(members) == 0 or len(values) == 0:
        return 0
    return int(np.count_nonzero(_found(np.sort(members), np.sort(values))))


def _found(sorted_members: np.ndarray, queries: np.ndarray) -> np.ndarray:
    pos = np.minimum(np.searchsorted(sorted_members, queries), len(sorted_members) - 1)
    return sorted_members[pos] == queries


def dense_codes(values: np.ndarray | pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """``pd.factorize(values, sort=True)``: int64 codes into the sorted distinct values, and those values.

    Integer ids within a range a few times the row count are coded by counting (no hashing, no sort); anything
    else goes to pandas.
    """
    if isinstance(values.dtype, np.dtype) and values.dtype.kind in "iu" and len(values):
        ints = np.asarray(values)
        low, high = int(ints.min()), int(ints.max())
        if high - low <= 4 * len(ints) + 1024:
            offset = (ints - low).astype(np.intp)
            present = np.bincount(offset, minlength=high - low + 1) > 0
            code_of = np.cumsum(present) - 1
            return code_of[offset], (np.flatnonzero(present) + low).astype(ints.dtype)
    codes, uniques = pd.factorize(values, sort=True)
    return codes.astype(np.int64, copy=False), np.asarray(uniques)
