"""LZString ``compressToEncodedURIComponent`` and its inverse, as Ego-Exo4D uses them.

Ego-Exo4D stores each relation mask as ``encodedMask`` =
``compressToEncodedURIComponent(<COCO RLE counts string>)``. This module implements the
format from its specification:

- The text is seen as UTF-16 code units (as JavaScript strings are).
- LZW-style coding: the dictionary starts with three reserved codes (0: next unit is a new
  8-bit character, 1: next unit is a new 16-bit character, 2: end of stream); every new
  character and every phrase ``w + c`` gets the next code. Codes are written with a width
  that starts at 2 bits (encoder) and grows by one bit each time the dictionary passes a
  power of two.
- Every value is written least-significant bit first into a bit stream; the stream is
  cut into 6-bit groups (most significant bit first) mapped onto the URI-safe alphabet
  ``A-Z a-z 0-9 + -``. After the end code the last group is padded with zero bits,
  and a stream that ends exactly on a group boundary still gets one all-zero group.

Decoding runs on every mask of the dataset, so it works on a precomputed string of bits
(one slice and one ``int(..., 2)`` per code) instead of shifting bit by bit.
"""

from __future__ import annotations

from runtime.errors import OmamaError

# 64 symbols, one per 6-bit value. (The JavaScript table has a 65th, "$", that the encoder
# never produces; here it is rejected like any other foreign character.)
URI_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+-"
BITS_PER_CHAR = 6

_NEW_CHAR_8 = 0
_NEW_CHAR_16 = 1
_END_OF_STREAM = 2

# Each alphabet character as its 6 bits in stream order, reversed, so that the reversed bit
# string of a whole input can be sliced directly into integer values (see _BitReader).
_CHAR_TO_REVERSED_BITS = {ch: format(i, "06b")[::-1] for i, ch in enumerate(URI_ALPHABET)}


def _to_code_units(text: str) -> str:
    """Characters outside the BMP become UTF-16 surrogate pairs (one char per code unit)."""
    if text.isascii() or max(text) <= "\uffff":
        return text
    data = text.encode("utf-16-le", "surrogatepass")
    return "".join(chr(int.from_bytes(data[i : i + 2], "little")) for i in range(0, len(data), 2))


def _from_code_units(units: str) -> str:
    """Inverse of :func:`_to_code_units`: join surrogate pairs; lone surrogates stay as they are."""
    if units.isascii() or not any("\ud800" <= ch <= "\udfff" for ch in units):
        return units
    return units.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


def compress_to_encoded_uri_component(text: str) -> str:
    """Compress ``text`` into LZString's URI-safe form (identical to the JavaScript library).

    Returns a string over ``A-Z a-z 0-9 + -``; the empty string compresses to ``"Q"``.
    """
    if not isinstance(text, str):
        raise OmamaError(f"LZString compresses text, got {type(text).__name__}")
    units = _to_code_units(text)
    bits: list[str] = []  # pieces of the bit stream, in stream order
    dictionary: dict[str, int] = {}
    pending_new: set[str] = set()  # single characters whose code has not been emitted yet
    next_code = 3
    width = 2  # bits per code
    enlarge_in = 2  # codes left before the width grows

    def put(value: int, n_bits: int) -> None:
        bits.append(format(value, f"0{n_bits}b")[::-1])  # least significant bit first

    def emit(phrase: str) -> None:
        nonlocal width, enlarge_in
        if phrase in pending_new:
            code_unit = ord(phrase)
            if code_unit < 256:
                put(_NEW_CHAR_8, width)
                put(code_unit, 8)
            else:
                put(_NEW_CHAR_16, width)
                put(code_unit, 16)
            enlarge_in -= 1
            if enlarge_in == 0:
                enlarge_in = 1 << width
                width += 1
            pending_new.discard(phrase)
        else:
            put(dictionary[phrase], width)
        enlarge_in -= 1
        if enlarge_in == 0:
            enlarge_in = 1 << width
            width += 1

    w = ""
    for c in units:
        if c not in dictionary:
            dictionary[c] = next_code
            next_code += 1
            pending_new.add(c)
        wc = w + c
        if wc in dictionary:
            w = wc
            continue
        emit(w)
        dictionary[wc] = next_code
        next_code += 1
        w = c
    if w:
        emit(w)
    put(_END_OF_STREAM, width)

    stream = "".join(bits)
    stream += "0" * (BITS_PER_CHAR - len(stream) % BITS_PER_CHAR)
    return "".join(
        URI_ALPHABET[int(stream[i : i + BITS_PER_CHAR], 2)]
        for i in range(0, len(stream), BITS_PER_CHAR)
    )


class _BitReader:
    """Reads little-endian values of n bits from the stream of a URI-safe LZString."""

    __slots__ = ("_reversed", "_end")

    def __init__(self, data: str) -> None:
        try:
            # Reversing the whole stream turns "LSB first" values into plain binary slices.
            self._reversed = "".join([_CHAR_TO_REVERSED_BITS[ch] for ch in reversed(data)])
        except KeyError as exc:
            raise OmamaError(
                f"not an LZString URI-component string: character {exc.args[0]!r} is outside "
                "the alphabet A-Z a-z 0-9 + -"
            ) from None
        self._end = len(self._reversed)  # stream position p maps to reversed index end - p

    def read(self, n_bits: int) -> int:
        stop = self._end
        start = stop - n_bits
        if start < 0:
            raise OmamaError("corrupt LZString data: the stream ends before its end-of-stream code")
        self._end = start
        return int(self._reversed[start:stop], 2)


def decompress_from_encoded_uri_component(data: str) -> str:
    """Inverse of :func:`compress_to_encoded_uri_component`.

    Spaces are read as ``+`` (as the JavaScript library does, since URL decoding turns
    ``+`` into a space). Raises :class:`OmamaError` on empty, truncated or corrupt input
    instead of returning partial text.
    """
    if not isinstance(data, str):
        raise OmamaError(f"LZString data must be a string, got {type(data).__name__}")
    if not data:
        raise OmamaError("empty LZString data (a compressed string has at least one character)")
    reader = _BitReader(data.replace(" ", "+"))
    read = reader.read

    first = read(2)
    if first == _END_OF_STREAM:
        return ""
    if first == _NEW_CHAR_8:
        w = chr(read(8))
    elif first == _NEW_CHAR_16:
        w = chr(read(16))
    else:
        raise OmamaError("corrupt LZString data: the stream does not start with a character")

    entries: list[str] = ["", "", "", w]  # codes 0..2 are reserved
    out: list[str] = [w]
    width = 3
    enlarge_in = 4
    while True:
        code = read(width)
        if code <= _END_OF_STREAM:
            if code == _END_OF_STREAM:
                return _from_code_units("".join(out))
            entries.append(chr(read(8 if code == _NEW_CHAR_8 else 16)))
            code = len(entries) - 1
            enlarge_in -= 1
            if enlarge_in == 0:
                enlarge_in = 1 << width
                width += 1
        n_entries = len(entries)
        if code < n_entries:
            entry = entries[code]
        elif code == n_entries:  # the LZW special case: the phrase being defined right now
            entry = w + w[0]
        else:
            raise OmamaError(
                f"corrupt LZString data: code {code} refers past the dictionary ({n_entries})"
            )
        out.append(entry)
        entries.append(w + entry[0])
        w = entry
        enlarge_in -= 1
        if enlarge_in == 0:
            enlarge_in = 1 << width
            width += 1
