"""Config identity: equal configs get one hash, different ones never collide."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import identity


def builder(data, seed, *, rate: float = 0.5, layers: int = 3, name: str = "cnn", sizes=(3, 5), extra=None):
    return rate, layers


def test_defaults_are_merged_and_keys_sorted():
    assert identity.normalize(builder, {"layers": 4}) == {
        "extra": None,
        "layers": 4,
        "name": "cnn",
        "rate": 0.5,
        "sizes": [3, 5],
    }


def test_int_given_for_a_float_parameter_gets_the_same_hash_as_the_float():
    one = identity.normalize(builder, {"rate": 1})
    other = identity.normalize(builder, {"rate": 1.0})
    assert one["rate"] == 1.0 and isinstance(one["rate"], float)
    assert identity.config_hash(one) == identity.config_hash(other)


def test_omitted_and_spelled_out_defaults_and_key_order_give_one_hash():
    a = identity.normalize(builder, {})
    b = identity.normalize(builder, {"sizes": (3, 5), "name": "cnn", "rate": 0.5, "layers": 3, "extra": None})
    assert identity.config_hash(a) == identity.config_hash(b)


def test_numpy_scalars_hash_like_python_numbers():
    a = identity.normalize(builder, {"layers": np.int64(4), "rate": np.float32(0.25)})
    b = identity.normalize(builder, {"layers": 4, "rate": 0.25})
    assert identity.config_hash(a) == identity.config_hash(b)


@pytest.mark.parametrize(
    "left, right",
    [(1, 1.0), (1, "1"), (1, True), (None, "None"), ({}, []), (0, False), ("", None), ([1], [1.0])],
)
def test_values_of_different_types_never_collide(left, right):
    assert identity.config_hash({"x": left}) != identity.config_hash({"x": right})


def test_builder_name_is_part_of_the_hash():
    assert identity.config_hash({"x": 1}, builder="a") != identity.config_hash({"x": 1}, builder="b")


def test_hash_is_32_hex_digits_and_stable():
    assert identity.config_hash({"b": [1, 2.5, "x"], "a": {"c": None}}) == identity.config_hash(
        {"a": {"c": None}, "b": [1, 2.5, "x"]}
    )
    assert len(identity.config_hash({})) == 32


def test_unknown_config_key_is_an_error_naming_it():
    with pytest.raises(identity.ConfigError, match=r"does not take config key\(s\) \['lr'\]"):
        identity.normalize(builder, {"lr": 0.1})


def test_string_for_an_int_parameter_is_an_error():
    with pytest.raises(identity.ConfigError, match=r"builder.layers = '4' has type str \(expected int\)"):
        identity.normalize(builder, {"layers": "4"})


def test_bool_for_an_int_parameter_is_an_error():
    with pytest.raises(identity.ConfigError, match="expected int"):
        identity.normalize(builder, {"layers": True})


def test_missing_required_key_is_an_error():
    def needs(*, size):
        return size

    with pytest.raises(identity.ConfigError, match="needs config key 'size'"):
        identity.normalize(needs, {})


def test_unregistered_short_name_does_not_resolve():
    with pytest.raises(identity.UnknownBuilderError, match="model builder 'no_such_model' does not resolve"):
        identity.resolve("model", "no_such_model")


def test_dotted_path_to_a_missing_function_does_not_resolve():
    with pytest.raises(identity.UnknownBuilderError, match="has no function 'nope'"):
        identity.resolve("model", "pipeline.identity.nope")


def test_registered_builder_resolves_by_short_name():
    @identity.register("testkind", "tiny")
    def tiny(*, k: int = 1):
        return k

    assert identity.resolve("testkind", "tiny") is tiny
    assert "tiny" in identity.registered("testkind")
