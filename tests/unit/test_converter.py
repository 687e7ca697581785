"""Unit tests of orchestra._converter: payload encoding, size limits and decoding."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from typing import Any, TypedDict

import attrs
import cattrs
import pytest

from orchestra import PayloadError, _converter

MAX = 1_000_000


@attrs.frozen
class Order:
    """An attrs payload with str, int, datetime and UUID fields."""

    customer: str
    quantity: int
    placed_at: dt.datetime
    reference: uuid.UUID


@dataclasses.dataclass(frozen=True)
class Point:
    """A dataclass payload."""

    x: int
    y: int
    label: str = "p"


class Mail(TypedDict):
    """A TypedDict payload."""

    to: str
    retries: int


@attrs.frozen
class Empty:
    """An attrs payload without fields."""


def _order() -> Order:
    return Order(
        customer="ada",
        quantity=3,
        placed_at=dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC),
        reference=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    )


def encode(payload: Any, payload_type: Any = None, max_bytes: int = MAX) -> str:
    """encode_payload for the definition ``defn``."""
    return _converter.encode_payload(
        payload, payload_type=payload_type, owner="defn", max_bytes=max_bytes
    )


class TestEncodePayload:
    """encode_payload turns a payload into compact JSON or raises PayloadError."""

    def test_attrs_class(self) -> None:
        """A frozen attrs instance becomes a JSON object with ISO datetimes and UUID strings."""
        assert json.loads(encode(_order(), Order)) == {
            "customer": "ada",
            "quantity": 3,
            "placed_at": "2024-05-01T12:30:00+00:00",
            "reference": "12345678-1234-5678-1234-567812345678",
        }

    def test_dataclass(self) -> None:
        """A dataclass instance becomes a JSON object."""
        assert json.loads(encode(Point(1, 2), Point)) == {"x": 1, "y": 2, "label": "p"}

    def test_compact_json(self) -> None:
        """The JSON has no spaces between separators."""
        assert encode({"a": [1, 2]}) == '{"a":[1,2]}'

    def test_non_ascii_is_kept(self) -> None:
        """Non-ASCII text is stored as UTF-8, not as escapes."""
        assert encode({"name": "Zo\u00e9"}) == '{"name":"Zo\u00e9"}'

    def test_typed_dict_valid(self) -> None:
        """A dict that fits the TypedDict is accepted."""
        assert json.loads(encode({"to": "a@example.org", "retries": 2}, Mail)) == {
            "to": "a@example.org",
            "retries": 2,
        }

    @pytest.mark.parametrize(
        "payload", [{"to": "a@example.org"}, {"to": "x", "retries": "many"}, ["x", 1], "x", None]
    )
    def test_typed_dict_invalid(self, payload: object) -> None:
        """A value that does not structure into the TypedDict raises PayloadError."""
        with pytest.raises(PayloadError) as info:
            encode(payload, Mail)
        assert info.value.definition == "defn"

    @pytest.mark.parametrize(
        "payload", [{"a": 1, "b": [True, None, 1.5]}, [1, "two"], None, "text", 42]
    )
    def test_plain_json_values(self, payload: object) -> None:
        """Plain JSON values round-trip through the encoded text unchanged."""
        assert json.loads(encode(payload)) == payload

    @pytest.mark.parametrize("payload", [{"customer": "ada"}, Point(1, 2), None])
    def test_wrong_instance_for_attrs_type(self, payload: object) -> None:
        """A payload that is not an instance of the attrs payload_type raises PayloadError."""
        with pytest.raises(PayloadError, match="expected an instance of Order"):
            encode(payload, Order)

    def test_wrong_instance_for_dataclass_type(self) -> None:
        """A payload that is not an instance of the dataclass payload_type raises PayloadError."""
        with pytest.raises(PayloadError, match="expected an instance of Point"):
            encode({"x": 1, "y": 2}, Point)

    @pytest.mark.parametrize(
        "payload",
        [object(), {1, 2}, {"a": object()}, float("nan"), float("inf"), {"v": float("-inf")}],
    )
    def test_non_json_values(self, payload: object) -> None:
        """Values JSON cannot hold raise PayloadError naming the definition."""
        with pytest.raises(PayloadError, match="'defn'") as info:
            encode(payload)
        assert info.value.definition == "defn"

    def test_circular_value(self) -> None:
        """A self-referencing structure raises PayloadError, not RecursionError."""
        loop: list[object] = []
        loop.append(loop)
        with pytest.raises(PayloadError):
            encode(loop)

    def test_size_limit_is_inclusive(self) -> None:
        """A payload of exactly max_bytes passes and one byte more fails."""
        exact = "a" * 100  # JSON text: 100 characters plus two quotes
        assert len(encode(exact, max_bytes=102)) == 102
        with pytest.raises(PayloadError, match="103 bytes"):
            encode(exact + "a", max_bytes=102)

    def test_size_counts_utf8_bytes(self) -> None:
        """The limit is on UTF-8 bytes, not on characters."""
        text = "\u00e9" * 50  # 100 bytes of UTF-8 plus two quotes
        encode(text, max_bytes=102)
        with pytest.raises(PayloadError):
            encode(text, max_bytes=101)

    @pytest.mark.parametrize("payload", ["a\x00b", {"k": "\x00"}, {"\x00": 1}, ["\x00"]])
    def test_nul_character_rejected(self, payload: object) -> None:
        """A NUL character, which jsonb cannot store, raises PayloadError."""
        with pytest.raises(PayloadError, match="NUL"):
            encode(payload)

    def test_literal_backslash_u0000_is_not_a_nul(self) -> None:
        """A string holding a backslash then ``u0000`` (no NUL) is stored unchanged."""
        payload = {"path": "C:\\u0000\\file"}
        assert json.loads(encode(payload)) == payload


class TestDecodePayload:
    """decode_payload structures stored JSON back into the payload type."""

    def test_attrs_round_trip(self) -> None:
        """An attrs payload comes back equal, datetime and UUID included."""
        order = _order()
        assert _converter.decode_payload(json.loads(encode(order, Order)), Order) == order

    def test_dataclass_round_trip(self) -> None:
        """A dataclass payload comes back equal."""
        point = Point(3, 4, "q")
        assert _converter.decode_payload(json.loads(encode(point, Point)), Point) == point

    def test_typed_dict_round_trip(self) -> None:
        """A TypedDict payload comes back as an equal dict."""
        mail: Mail = {"to": "b@example.org", "retries": 0}
        assert _converter.decode_payload(json.loads(encode(mail, Mail)), Mail) == mail

    def test_empty_attrs_from_empty_object(self) -> None:
        """``{}`` (the payload of a repeat job) structures into an empty attrs class."""
        assert _converter.decode_payload({}, Empty) == Empty()

    def test_none_type_returns_json_as_is(self) -> None:
        """Without a payload type the stored JSON is returned unchanged."""
        value = {"a": [1, 2]}
        assert _converter.decode_payload(value, None) is value

    @pytest.mark.parametrize(
        "value",
        [{"customer": "ada"}, {"customer": "ada", "quantity": "lots", "placed_at": "x"}, [1]],
    )
    def test_wrong_shape_raises(self, value: object) -> None:
        """Stored JSON that no longer fits the type raises a cattrs validation error."""
        with pytest.raises((cattrs.BaseValidationError, TypeError, ValueError)):
            _converter.decode_payload(value, Order)

    def test_describe_structure_error(self) -> None:
        """describe_structure_error names the missing field in one line."""
        with pytest.raises(cattrs.BaseValidationError) as info:
            _converter.decode_payload({"to": "x"}, Mail)
        text = _converter.describe_structure_error(info.value)
        assert "retries" in text
        assert "\n" not in text


class TestConverter:
    """orchestra keeps its own cattrs converter."""

    def test_not_the_global_converter(self) -> None:
        """orchestra never touches cattrs.global_converter, which belongs to the application."""
        assert _converter.converter is not cattrs.global_converter

    def test_dumps_names_what_failed(self) -> None:
        """dumps reports the value kind and the owner in its PayloadError."""
        with pytest.raises(PayloadError, match="the return value") as info:
            _converter.dumps(object(), what="the return value", owner="defn")
        assert info.value.definition == "defn"
