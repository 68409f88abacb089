"""Values at the boundary: JSON, with binary values carried raw beside it.

A value crosses as JSON text plus a list of binary blobs. Where the JSON holds
something JSON cannot, it holds a *tagged object* ``{"__snakepit__": kind, ...}``
instead, and the frame says so, so that the reader knows to walk the value:

* ``{"__snakepit__": "bytes", "blob": i}``: ``bytes`` (Python) / ``Uint8Array`` (host),
  whose content is blob ``i``;
* ``ndarray``, ``arrow`` and ``datetime``: see conversions.py, which also turns numpy
  scalars, ``Decimal``, ``UUID``, sets, dataclasses, NamedTuples and pydantic models into JSON.

Converters for more types register with :func:`register_encoder` and
:func:`register_decoder`. A dict whose only job is to look like a tagged object is not
supported: the key ``__snakepit__`` is reserved.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from . import conversions
from .conversions import TAG, TooLarge, Unconvertible

__all__ = ["MAX_DEPTH", "TAG", "BadValue", "TooLarge", "ValueEncoder", "decode_tagged", "locate"]

# Deepest nesting accepted in either direction; the host uses the same limit.
MAX_DEPTH = 256


class BadValue(ValueError):
    """A value that cannot cross, with where it is."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


Encoder = Callable[[Any, "ValueEncoder"], "dict[str, Any] | None"]
Decoder = Callable[[dict[str, Any], "list[bytes]"], Any]

_encoders: list[Encoder] = []
_decoders: dict[str, Decoder] = {}


def register_encoder(encoder: Encoder) -> None:
    """Add a converter: given an object JSON cannot carry, return its tagged form or None."""
    _encoders.append(encoder)


def register_decoder(kind: str, decoder: Decoder) -> None:
    """Add the reader of tagged objects of ``kind``."""
    _decoders[kind] = decoder


class ValueEncoder:
    """Encodes one frame's values; collects the blobs they refer to.

    ``limit`` (the message limit, when known) lets a conversion refuse to build a value that
    could not be sent anyway, before it copies anything.
    """

    __slots__ = ("blobs", "limit", "tagged")

    def __init__(self, limit: int | None = None) -> None:
        self.blobs: list[bytes | bytearray | memoryview] = []
        self.tagged = False
        self.limit = limit

    def blob(self, data: bytes | bytearray | memoryview) -> int:
        self.blobs.append(data)
        return len(self.blobs) - 1

    def default(self, obj: Any) -> Any:
        """``json.dumps``'s hook: called only for objects JSON cannot carry itself."""
        if isinstance(obj, (bytes, bytearray, memoryview)):
            self.tagged = True
            return {TAG: "bytes", "blob": self.blob(obj)}
        for encoder in _encoders:
            tagged = encoder(obj, self)
            if tagged is not None:
                self.tagged = True
                return tagged
        converted = conversions.to_wire(obj, self)
        # JSON encodes tuples itself, so a NamedTuple inside a converted object needs this too.
        return _named_tuples_as_objects(converted, 0) if type(converted) is dict else converted

    def dumps(self, value: Any) -> bytes:
        """JSON of ``value``; raises TypeError/ValueError/RecursionError when it cannot cross."""
        text: str = json.dumps(
            _named_tuples_as_objects(value, 0), default=self.default, allow_nan=False, separators=(",", ":")
        )
        return text.encode("utf-8")


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _named_tuples_as_objects(value: Any, depth: int) -> Any:
    """``value`` with NamedTuples replaced by objects (JSON would make them arrays).

    Copies only what changes. A list of scalars costs one ``set(map(type, ...))``, in C.
    """
    kind = type(value)
    if kind in _SCALARS or depth > MAX_DEPTH:
        return value
    if kind is dict:
        changed: dict[str, Any] | None = None
        for key, item in value.items():
            if type(item) in _SCALARS:
                continue
            out = _named_tuples_as_objects(item, depth + 1)
            if out is not item:
                if changed is None:
                    changed = dict(value)
                changed[key] = out
        return value if changed is None else changed
    if kind is list or kind is tuple:
        if set(map(type, value)) <= _SCALARS:
            return value
        items = [_named_tuples_as_objects(item, depth + 1) for item in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return {key: _named_tuples_as_objects(item, depth + 1) for key, item in value._asdict().items()}
    return value


def locate(value: Any, path: str, limit: int | None = None) -> BadValue | None:
    """Where in ``value`` (found at ``path``) the first thing that cannot cross is, and why.

    Run after encoding failed (JSON's hook cannot say where it was), so it may be slow.
    """
    encoder = ValueEncoder(limit)

    def walk(item: Any, where: str, depth: int) -> BadValue | None:
        if depth > MAX_DEPTH:
            return BadValue(f"nested deeper than {MAX_DEPTH} levels", where)
        kind = type(item)
        if kind in _SCALARS:
            if kind is float and (item != item or item in (float("inf"), float("-inf"))):
                return BadValue(f"{item} is not representable in JSON", where)
            return None
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, (str, int, float, bool)) and key is not None:
                    return BadValue(f"a dict key of type {type(key).__name__} cannot be sent", where)
                found = walk(child, f"{where}.{key}", depth + 1)
                if found is not None:
                    return found
            return None
        if isinstance(item, tuple) and hasattr(item, "_asdict"):
            return walk(item._asdict(), where, depth)
        if isinstance(item, (list, tuple)):
            for index, child in enumerate(item):
                found = walk(child, f"{where}[{index}]", depth + 1)
                if found is not None:
                    return found
            return None
        try:
            converted = encoder.default(item)
        except (Unconvertible, TooLarge, TypeError, ValueError) as exc:
            return BadValue(str(exc), where)
        if isinstance(converted, dict) and TAG in converted:
            return None
        return walk(converted, where, depth + 1)

    return walk(value, path, 0)


register_decoder("bytes", conversions.decode_bytes)
register_decoder("ndarray", conversions.decode_ndarray)
register_decoder("arrow", conversions.decode_arrow)
register_decoder("datetime", conversions.decode_datetime)


def decode_tagged(value: Any, blobs: list[bytes], path: str = "args", depth: int = 0) -> Any:
    """``value`` with every tagged object replaced by what it stands for."""
    if depth > MAX_DEPTH:
        raise BadValue(f"nested deeper than {MAX_DEPTH} levels", path)
    if isinstance(value, dict):
        kind = value.get(TAG)
        if kind is not None:
            decoder = _decoders.get(kind)
            if decoder is None:
                raise BadValue(f"unknown value kind {kind!r}", path)
            try:
                return decoder(value, blobs)
            except (KeyError, IndexError, TypeError) as exc:
                raise BadValue(f"malformed {kind} value: {exc}", path) from exc
        for key, item in value.items():
            if isinstance(item, (dict, list)):
                value[key] = decode_tagged(item, blobs, f"{path}.{key}", depth + 1)
        return value
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, (dict, list)):
                value[index] = decode_tagged(item, blobs, f"{path}[{index}]", depth + 1)
    return value
