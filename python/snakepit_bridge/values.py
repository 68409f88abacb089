"""Values at the boundary: JSON, with binary values carried raw beside it.

A value crosses as JSON text plus a list of binary blobs. Where the JSON holds
something JSON cannot, it holds a *tagged object* ``{"__snakepit__": kind, ...}``
instead, and the frame says so, so that the reader knows to walk the value:

* ``{"__snakepit__": "bytes", "blob": i}``: ``bytes`` (Python) / ``Uint8Array`` (host),
  whose content is blob ``i``.

Converters for more types (numpy arrays, Arrow tables, dates) register with
:func:`register_encoder` and :func:`register_decoder`. A dict whose only job is
to look like a tagged object is not supported: the key ``__snakepit__`` is reserved.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

TAG = "__snakepit__"

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
    """Encodes one frame's values; collects the blobs they refer to."""

    __slots__ = ("blobs", "tagged")

    def __init__(self) -> None:
        self.blobs: list[bytes | bytearray | memoryview] = []
        self.tagged = False

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
        raise TypeError(f"a {type(obj).__module__}.{type(obj).__qualname__} cannot be sent to the host")

    def dumps(self, value: Any) -> bytes:
        """JSON of ``value``; raises TypeError/ValueError/RecursionError when it cannot cross."""
        text: str = json.dumps(value, default=self.default, allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8")


def _decode_bytes(obj: dict[str, Any], blobs: list[bytes]) -> bytes:
    index = obj["blob"]
    if type(index) is not int or not 0 <= index < len(blobs):
        raise IndexError(f"no blob {index!r}")
    return blobs[index]


register_decoder("bytes", _decode_bytes)


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
