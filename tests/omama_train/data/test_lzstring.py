"""LZString URI-component codec: round trips, agreement with the reference package, errors."""

from __future__ import annotations

import json

import lzstring
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omama_train.data.lzstring import (
    URI_ALPHABET,
    compress_to_encoded_uri_component,
    decompress_from_encoded_uri_component,
)
from runtime import rle
from runtime.errors import OmamaError

REFERENCE = lzstring.LZString()

# Characters the reference package handles like JavaScript: one UTF-16 unit each.
bmp_text = st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",)))
# COCO compressed RLE counts use ASCII 48..111; repetitive text grows the dictionary.
rle_like = st.lists(
    st.sampled_from(["0", "1O", "N2", "O1O1", "00000", "M3", "j0", "VO8", "`"]), max_size=400
).map("".join)


def _gt_counts(eval_fixture_dir) -> list[str]:
    gt = json.loads((eval_fixture_dir / "exo2egoGT.json").read_text())
    counts = [
        rle_dict["counts"]
        for take in gt["annotations"].values()
        for cams in take["masks"].values()
        for frames in cams.values()
        for rle_dict in frames.values()
    ]
    assert len(counts) > 10
    return counts


def _pack(values_and_widths: list[tuple[int, int]]) -> str:
    """Hand-built stream: values LSB first, grouped in 6 bits, zero padded."""
    bits = "".join(format(v, f"0{n}b")[::-1] for v, n in values_and_widths)
    bits += "0" * (-len(bits) % 6)
    return "".join(URI_ALPHABET[int(bits[i : i + 6], 2)] for i in range(0, len(bits), 6))


@settings(max_examples=150, deadline=None)
@given(st.text())
def test_round_trip_any_text(text):
    encoded = compress_to_encoded_uri_component(text)
    assert set(encoded) <= set(URI_ALPHABET)
    assert decompress_from_encoded_uri_component(encoded) == text


@settings(max_examples=150, deadline=None)
@given(st.one_of(bmp_text, rle_like))
def test_matches_reference_package_both_ways(text):
    ours = compress_to_encoded_uri_component(text)
    assert ours == REFERENCE.compressToEncodedURIComponent(text)
    assert REFERENCE.decompressFromEncodedURIComponent(ours) == text
    assert decompress_from_encoded_uri_component(ours) == text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=URI_ALPHABET + "$", min_size=1, max_size=40))
def test_arbitrary_input_decodes_like_reference_or_raises(data):
    try:
        ours = decompress_from_encoded_uri_component(data)
    except OmamaError:
        return
    try:
        reference = REFERENCE.decompressFromEncodedURIComponent(data)
    except IndexError:  # the package reads one character ahead of the stream's end
        return
    assert ours == reference


def test_known_values():
    # Values of the JavaScript library (the empty text still holds an end code).
    assert compress_to_encoded_uri_component("") == "Q"
    assert compress_to_encoded_uri_component("a") == "IZA"
    assert decompress_from_encoded_uri_component("Q") == ""
    assert decompress_from_encoded_uri_component("IZA") == "a"
    text = "Ego-Exo4D + relations"
    spaced = compress_to_encoded_uri_component(text).replace("+", " ")
    assert decompress_from_encoded_uri_component(spaced) == text


def test_non_bmp_characters_use_surrogate_pairs():
    text = "mask \U0001f600 \U00010348"
    encoded = compress_to_encoded_uri_component(text)
    assert decompress_from_encoded_uri_component(encoded) == text
    # Same bits as the UTF-16 code units would give (what JavaScript sees).
    units = "mask \ud83d\ude00 \ud800\udf48"
    assert encoded == REFERENCE.compressToEncodedURIComponent(units)


def test_real_rle_counts_round_trip_and_match_reference(eval_fixture_dir):
    total_in = total_out = 0
    for counts in _gt_counts(eval_fixture_dir):
        encoded = compress_to_encoded_uri_component(counts)
        assert encoded == REFERENCE.compressToEncodedURIComponent(counts)
        total_in += len(counts)
        total_out += len(encoded)
        decoded = decompress_from_encoded_uri_component(encoded)
        assert decoded == counts
        assert (
            decompress_from_encoded_uri_component(REFERENCE.compressToEncodedURIComponent(counts))
            == counts
        )
    assert total_out < 0.8 * total_in  # long RLE texts repeat runs: they must compress


def test_decoded_mask_is_the_original(eval_fixture_dir):
    gt = json.loads((eval_fixture_dir / "exo2egoGT.json").read_text())
    take = next(iter(gt["annotations"].values()))
    obj_masks = next(iter(take["masks"].values()))
    rle_dict = next(iter(next(iter(obj_masks.values())).values()))
    encoded_mask = REFERENCE.compressToEncodedURIComponent(rle_dict["counts"])
    counts = decompress_from_encoded_uri_component(encoded_mask)
    mask = rle.decode({"size": rle_dict["size"], "counts": counts})
    assert mask.shape == tuple(rle_dict["size"])
    assert np.array_equal(mask, rle.decode(rle_dict))
    assert mask.sum() == rle.area(rle_dict) > 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("", "empty"),
        ("IZ!A", "outside the alphabet"),
        ("IZA=", "outside the alphabet"),
        ("$10g", "outside the alphabet"),  # "$" is in the JavaScript table but never emitted
        ("B", "ends before"),  # new-char code but no 8 bits after it
        (_pack([(3, 2)]), "does not start"),
        (_pack([(0, 2), (97, 8), (7, 3)]), "past the dictionary"),
        (_pack([(0, 2), (97, 8), (3, 3)]), "ends before"),  # valid codes, no end code
    ],
)
def test_corrupt_input_raises(data, message):
    with pytest.raises(OmamaError, match=message):
        decompress_from_encoded_uri_component(data)


def test_truncated_real_data_raises(eval_fixture_dir):
    for counts in _gt_counts(eval_fixture_dir)[:10]:
        encoded = compress_to_encoded_uri_component(counts)
        with pytest.raises(OmamaError, match="ends before"):
            decompress_from_encoded_uri_component(encoded[: len(encoded) // 2])


def test_non_string_input_raises():
    with pytest.raises(OmamaError):
        decompress_from_encoded_uri_component(b"IZA")  # type: ignore[arg-type]
    with pytest.raises(OmamaError):
        compress_to_encoded_uri_component(None)  # type: ignore[arg-type]
