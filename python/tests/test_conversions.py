"""conversions.py and typeinfo.py with the standard library only (numpy & co: packages/core/test/Values.test.ts)."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import unittest
import uuid
from collections.abc import Iterator
from typing import Any, Literal, NamedTuple, TypedDict

from snakepit_bridge import errors, typeinfo
from snakepit_bridge.values import TAG, ValueEncoder, decode_tagged, locate


class Pair(NamedTuple):
    left: int
    right: str = "r"


@dataclasses.dataclass
class Point:
    x: float
    pair: Pair


class Color(enum.Enum):
    RED = "red"


class Opts(TypedDict, total=False):
    depth: int


def encode(value: Any) -> tuple[Any, ValueEncoder]:
    encoder = ValueEncoder()
    return json.loads(encoder.dumps(value)), encoder


class ToHostTest(unittest.TestCase):
    def test_plain_conversions(self) -> None:
        out, encoder = encode(
            {
                "d": decimal.Decimal("1.10"),
                "u": uuid.UUID(int=1),
                "s": frozenset([3]),
                "e": Color.RED,
                "p": Point(1.5, Pair(2)),
                "t": [Pair(1, "a"), (1, 2)],
            }
        )
        self.assertEqual(
            out,
            {
                "d": "1.10",
                "u": "00000000-0000-0000-0000-000000000001",
                "s": [3],
                "e": "red",
                "p": {"x": 1.5, "pair": {"left": 2, "right": "r"}},
                "t": [{"left": 1, "right": "a"}, [1, 2]],
            },
        )
        self.assertFalse(encoder.tagged)

    def test_dates_are_exact_milliseconds_naive_as_utc(self) -> None:
        out, encoder = encode(
            [
                datetime.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
                datetime.datetime(1969, 12, 31, 23, 59, 59, 999000),
                datetime.date(2024, 1, 2),
            ]
        )
        self.assertTrue(encoder.tagged)
        self.assertEqual([v["ms"] for v in out], [1704157445678, -1, 1704153600000])
        back = decode_tagged(out, [])
        self.assertEqual(back[0], datetime.datetime(2024, 1, 2, 1, 4, 5, 678000, tzinfo=datetime.timezone.utc))

    def test_a_failure_names_the_type_and_the_path(self) -> None:
        value = {"ok": [1], "bad": [2, {"deep": object()}]}
        with self.assertRaises(TypeError):
            ValueEncoder().dumps(value)
        found = locate(value, "result")
        assert found is not None
        self.assertEqual(found.path, "result.bad[1].deep")
        failure = errors.unsendable("t", TypeError("x"), value, None)
        self.assertEqual(failure.path, "result.bad[1].deep")
        self.assertIn("builtins.object cannot be sent", failure.message)

    def test_without_numpy_an_ndarray_arrives_as_bytes(self) -> None:
        tagged = {TAG: "ndarray", "dtype": "float64", "shape": [1], "blob": 0}
        try:
            import numpy  # noqa: F401
        except ImportError:
            self.assertEqual(decode_tagged({"a": tagged}, [b"\0" * 8]), {"a": b"\0" * 8})
        with self.assertRaises(ValueError):
            decode_tagged({TAG: "ndarray", "dtype": "object", "shape": [1], "blob": 0}, [b""])


class TypeInfoTest(unittest.TestCase):
    def test_describes_and_checks(self) -> None:
        def tool(a: int, p: Point, mode: Literal["x"], o: Opts, n: int | None = None) -> dict[str, Pair]:
            return {}

        types = typeinfo.tool_types(tool, ["a", "p", "mode", "o", "n"], False)
        public = typeinfo.public(types)
        self.assertEqual(public["params"]["n"], {"kind": "union", "members": [{"kind": "int"}, {"kind": "none"}]})
        self.assertEqual(
            public["params"]["o"]["fields"], [{"name": "depth", "type": {"kind": "int"}, "required": False}]
        )
        self.assertEqual(public["returns"]["values"]["name"], "Pair")
        point = typeinfo.check(types["params"]["p"], {"x": 1, "pair": {"left": 1}}, "args.p")
        self.assertEqual(point, Point(1, Pair(1)))
        with self.assertRaises(typeinfo.Mismatch) as caught:
            typeinfo.check(types["params"]["p"], {"x": 1, "pair": {"left": "no"}}, "args.p")
        self.assertEqual(caught.exception.path, "args.p.pair.left")
        self.assertEqual(str(caught.exception), "expected int, got str")
        with self.assertRaises(typeinfo.Mismatch):
            typeinfo.check(types["params"]["a"], True, "args.a")

    def test_streams_and_unknowns(self) -> None:
        def gen(n: int) -> Iterator[complex]:
            yield 1j

        types = typeinfo.public(typeinfo.tool_types(gen, ["n"], True))
        self.assertEqual(types["returns"]["kind"], "unknown")
        self.assertEqual(types["returns"]["annotation"], "complex")
