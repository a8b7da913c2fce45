"""Tests for fedrec.common.data.features: user attribute encoding and item genre/text blocks."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.common.data.features import (
    append_item_block,
    encode_item_features,
    encode_user_features,
)

# ---------------------------------------------------------------- user features


def test_user_features_hand_computed() -> None:
    meta = {
        "1": {"age": "24", "gender": "M", "zip": "85711", "score": "10"},
        "2": {"age": "53", "gender": "F", "zip": "94043", "score": "30"},
        "3": {"age": "", "gender": "M", "zip": "T8H1N", "score": "20"},
    }
    feats, names = encode_user_features(meta, ["1", "2", "3"])
    # keys sorted: age, gender, score, zip
    assert names == (
        "age/100",
        "gender=F",
        "gender=M",
        "score(scaled)",
        *[f"zip={d}" for d in "0123456789"],
        "zip=other",
    )
    assert feats.dtype == np.float32
    assert feats.shape == (3, 1 + 2 + 1 + 11)
    col = {n: j for j, n in enumerate(names)}
    # age/100: 24 -> 0.24, 53 -> 0.53, missing -> 0
    np.testing.assert_allclose(feats[:, col["age/100"]], [0.24, 0.53, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(feats[:, col["gender=F"]], [0, 1, 0])
    np.testing.assert_array_equal(feats[:, col["gender=M"]], [1, 0, 1])
    # min-max: 10 -> 0, 30 -> 1, 20 -> (20 - 10) / (30 - 10) = 0.5
    np.testing.assert_allclose(feats[:, col["score(scaled)"]], [0.0, 1.0, 0.5])
    # zip first character: "8", "9", and "T" -> other
    assert feats[0, col["zip=8"]] == 1 and feats[1, col["zip=9"]] == 1
    assert feats[2, col["zip=other"]] == 1
    zip_cols = [col[n] for n in names if n.startswith("zip=")]
    np.testing.assert_array_equal(feats[:, zip_cols].sum(axis=1), [1, 1, 1])


def test_a_decoded_row_encodes_back_to_itself() -> None:
    """A data set's user becoming a device (fedrec deploy local) keeps its feature row."""
    from fedrec.common.data.features import UserFeatureSchema

    meta = {
        "1": {"age": "24", "gender": "M", "zip": "85711", "score": "10"},
        "2": {"age": "35-44", "gender": "F", "zip": "T8H1N", "score": "30"},
        "3": {"age": "", "gender": "", "zip": "", "score": "20"},
    }
    schema = UserFeatureSchema.fit(meta, ["1", "2", "3"])
    rows = schema.encode(meta, ["1", "2", "3"])
    decoded = [schema.decode_one(row) for row in rows]
    assert decoded[0]["gender"] == "M" and decoded[1]["zip"] == "other"
    assert float(decoded[1]["age"]) == pytest.approx(39.5)
    assert "gender" not in decoded[2]  # missing stays missing
    for row, attributes in zip(rows, decoded, strict=True):
        np.testing.assert_array_equal(schema.encode_one(attributes), row)
    with pytest.raises(ValueError, match="width 3, the schema has 15"):
        schema.decode_one(np.zeros(3))


def test_user_features_row_order_follows_user_ids() -> None:
    meta = {"a": {"gender": "F"}, "b": {"gender": "M"}}
    fa, _ = encode_user_features(meta, ["a", "b"])
    fb, _ = encode_user_features(meta, ["b", "a"])
    np.testing.assert_array_equal(fa, fb[::-1])


def test_missing_text_value_is_an_all_zero_row_and_values_are_stripped() -> None:
    meta = {"1": {"occupation": " writer "}, "2": {}, "3": {"occupation": "artist"}}
    feats, names = encode_user_features(meta, ["1", "2", "3", "4"])  # "4" has no meta at all
    assert names == ("occupation=artist", "occupation=writer")
    np.testing.assert_array_equal(feats, [[0, 1], [0, 0], [1, 0], [0, 0]])


def test_constant_numeric_column_scales_to_zero() -> None:
    meta = {"1": {"n": "7"}, "2": {"n": "7.0"}}
    feats, names = encode_user_features(meta, ["1", "2"])
    assert names == ("n(scaled)",)
    np.testing.assert_array_equal(feats, [[0.0], [0.0]])


def test_no_user_meta_gives_zero_width() -> None:
    feats, names = encode_user_features({}, ["1", "2", "3"])
    assert feats.shape == (3, 0)
    assert feats.dtype == np.float32
    assert names == ()


def test_user_features_are_finite_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    meta = {
        str(u): {
            "age": str(int(rng.integers(1, 90))),
            "zip": str(int(rng.integers(0, 99999))).zfill(5),
            "occupation": str(rng.choice(["a", "b", "c"])),
        }
        for u in range(50)
    }
    ids = [str(u) for u in range(50)]
    a, names_a = encode_user_features(meta, ids)
    b, names_b = encode_user_features(meta, ids)
    np.testing.assert_array_equal(a, b)
    assert names_a == names_b
    assert np.isfinite(a).all()
    assert ((a >= 0) & (a <= 1)).all()


# ---------------------------------------------------------------- item features


def test_item_genres_multi_hot() -> None:
    genres = ("Action", "Comedy", "Drama")
    meta = {
        "10": {"title": "x", "genres": ["Drama", "Action"]},
        "11": {"title": "y", "genres": []},
        "12": {"title": "z", "genres": ["Comedy", "Unknown"]},  # unknown genre ignored
    }
    feats, names = encode_item_features(meta, ["10", "11", "12", "13"], genres)  # 13: no meta
    assert names == ("genre=Action", "genre=Comedy", "genre=Drama")
    assert feats.dtype == np.float32
    np.testing.assert_array_equal(feats, [[1, 0, 1], [0, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_item_features_without_genres() -> None:
    feats, names = encode_item_features({"1": {"genres": ["Drama"]}}, ["1", "2"], ())
    assert feats.shape == (2, 0)
    assert names == ()


def test_append_item_block() -> None:
    feats = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    names = ("genre=A", "genre=B")
    block = np.arange(9, dtype=np.float64).reshape(3, 3)
    out, out_names = append_item_block(feats, names, block, "text")
    assert out.shape == (3, 5)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[:, :2], feats)
    np.testing.assert_array_equal(out[:, 2:], block)
    assert out_names == ("genre=A", "genre=B", "text[0]", "text[1]", "text[2]")


def test_append_item_block_rejects_wrong_row_count() -> None:
    feats = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="2 rows, the catalog has 3"):
        append_item_block(feats, ("a", "b"), np.zeros((2, 4)), "text")


def test_an_age_band_is_its_midpoint_and_a_suppressed_age_is_missing() -> None:
    """`fedrec data prepare` writes ages as bands ("20-29") and suppressed values as "*"."""
    meta = {"a": {"age": "20-29"}, "b": {"age": "*"}, "c": {"age": "41"}}
    feats, names = encode_user_features(meta, ["a", "b", "c"])
    assert names == ("age/100",)
    np.testing.assert_allclose(feats[:, 0], [0.245, 0.0, 0.41], rtol=1e-6)  # (20+29)/2/100
