"""values.py: JSON with raw binary blobs beside it, and tagged objects."""

from __future__ import annotations

import json
import math
import unittest
from typing import Any

from snakepit_bridge.values import MAX_DEPTH, TAG, BadValue, ValueEncoder, decode_tagged


def round_trip(value: Any) -> tuple[Any, ValueEncoder, bytes]:
    encoder = ValueEncoder()
    text = encoder.dumps(value)
    blobs = [bytes(b) for b in encoder.blobs]
    decoded = decode_tagged(json.loads(text), blobs) if encoder.tagged else json.loads(text)
    return decoded, encoder, text


def nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


class EncodeTest(unittest.TestCase):
    def test_plain_json_has_no_tags_and_no_blobs(self) -> None:
        value = {"a": [1, 2.5, "x", None, True], "b": {"c": []}}
        decoded, encoder, text = round_trip(value)
        self.assertEqual(decoded, value)
        self.assertFalse(encoder.tagged)
        self.assertEqual(encoder.blobs, [])
        # Compact: no spaces the host would have to skip.
        self.assertEqual(text, b'{"a":[1,2.5,"x",null,true],"b":{"c":[]}}')

    def test_bytes_anywhere_round_trip_as_raw_blobs(self) -> None:
        payload = bytes(range(256)) * 4
        value = {"top": b"\x00\x01", "list": [bytearray(b"ba"), memoryview(b"mv")], "deep": {"x": [{"y": payload}]}}
        decoded, encoder, text = round_trip(value)
        self.assertTrue(encoder.tagged)
        self.assertEqual(len(encoder.blobs), 4)
        # The JSON holds tags, never the content (no base64, no arrays of numbers).
        self.assertNotIn(b"\\u0000", text)
        self.assertLess(len(text), 200)
        self.assertEqual(json.loads(text)["top"], {TAG: "bytes", "blob": 0})
        self.assertEqual(
            decoded,
            {"top": b"\x00\x01", "list": [b"ba", b"mv"], "deep": {"x": [{"y": payload}]}},
        )
        self.assertIsInstance(decoded["list"][0], bytes)

    def test_empty_bytes(self) -> None:
        decoded, encoder, _ = round_trip([b""])
        self.assertEqual(decoded, [b""])
        self.assertTrue(encoder.tagged)

    def test_values_json_cannot_carry_are_refused(self) -> None:
        for value in (1j, object(), {"nan": math.nan}, [math.inf], 1j):
            with self.subTest(value=repr(value)), self.assertRaises((TypeError, ValueError)):
                ValueEncoder().dumps(value)

    def test_the_refusal_names_the_type(self) -> None:
        with self.assertRaisesRegex(TypeError, "builtins.complex cannot be sent to the host"):
            ValueEncoder().dumps({"s": 1j})

    def test_results_deeper_than_the_argument_limit_still_cross(self) -> None:
        # MAX_DEPTH bounds what the host sends; results are bounded only by Python's own
        # recursion limit, and the host reads whatever JSON.parse accepts.
        encoder = ValueEncoder()
        encoder.dumps(nested(MAX_DEPTH + 10, b"leaf"))
        self.assertEqual(len(encoder.blobs), 1)

    def test_values_beyond_the_recursion_limit_are_refused(self) -> None:
        with self.assertRaises(RecursionError):
            ValueEncoder().dumps(nested(100_000, b"leaf"))

    def test_values_at_the_depth_limit_cross(self) -> None:
        decoded, _, _ = round_trip(nested(MAX_DEPTH, b"leaf"))
        self.assertEqual(decoded, nested(MAX_DEPTH, b"leaf"))


class DecodeTest(unittest.TestCase):
    def test_unknown_kind_is_refused_with_its_path(self) -> None:
        with self.assertRaises(BadValue) as raised:
            decode_tagged({"x": [1, {TAG: "numpy", "blob": 0}]}, [b""])
        self.assertIn("unknown value kind 'numpy'", str(raised.exception))
        self.assertEqual(raised.exception.path, "args.x[1]")

    def test_malformed_bytes_values_are_refused(self) -> None:
        for tagged in (
            {TAG: "bytes"},
            {TAG: "bytes", "blob": 5},
            {TAG: "bytes", "blob": "0"},
            {TAG: "bytes", "blob": None},
        ):
            with self.subTest(tagged=tagged), self.assertRaisesRegex(BadValue, "malformed bytes value"):
                decode_tagged({"v": tagged}, [b"only"])

    def test_a_negative_blob_index_is_refused(self) -> None:
        # Python would index from the end; the host refuses it; so must the worker.
        for index in (-1, True):
            with self.subTest(index=index), self.assertRaises(BadValue):
                decode_tagged({"v": {TAG: "bytes", "blob": index}}, [b"first", b"last"])

    def test_depth_limit(self) -> None:
        self.assertEqual(decode_tagged(nested(MAX_DEPTH, 1), []), nested(MAX_DEPTH, 1))
        with self.assertRaisesRegex(BadValue, f"nested deeper than {MAX_DEPTH} levels"):
            decode_tagged(nested(MAX_DEPTH + 2, 1), [])
        deep_dict: Any = 1
        for _ in range(MAX_DEPTH + 2):
            deep_dict = {"k": deep_dict}
        with self.assertRaises(BadValue) as raised:
            decode_tagged(deep_dict, [])
        self.assertTrue(raised.exception.path.startswith("args.k.k.k"))

    def test_values_without_tags_are_unchanged(self) -> None:
        value = {"a": [1, {"b": "c"}], "d": None}
        self.assertEqual(decode_tagged(value, []), {"a": [1, {"b": "c"}], "d": None})
        self.assertEqual(decode_tagged("scalar", []), "scalar")


if __name__ == "__main__":
    unittest.main()
