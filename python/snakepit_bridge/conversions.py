"""Rich values at the boundary: what a tool may return (and receive) beyond JSON.

The full table is in docs/values.md. To the host:

* numpy scalars become numbers (``.item()``); a bool/int/uint/float ``ndarray`` becomes an
  ``ndarray`` tagged value whose bytes travel raw (an ``NDArray`` on the host);
* pandas ``DataFrame``, pyarrow ``Table`` / ``RecordBatch`` become Arrow IPC streams (an
  apache-arrow ``Table`` on the host); a DataFrame needs pyarrow in the worker;
* ``datetime`` / ``date`` become a ``datetime`` tagged value (a ``Date``; naive means UTC);
* ``Decimal`` and ``UUID`` become strings, ``Enum`` members their value, sets and frozensets
  arrays, dataclasses, NamedTuples and pydantic models plain objects.

From the host, ``ndarray`` values arrive as numpy arrays (raw ``bytes`` without numpy), Arrow
tables as pyarrow Tables (the IPC stream's ``bytes`` without pyarrow), ``datetime`` values as
timezone-aware UTC ``datetime`` objects.

numpy, pandas, pyarrow and pydantic are never imported here to encode: an object of theirs
can only exist when its module is loaded already. Decoding imports numpy or pyarrow on first use.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import sys
import uuid
from decimal import Decimal
from typing import Any, Protocol

TAG = "__snakepit__"

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)

# Array kinds that travel raw: bool, signed and unsigned integers, floats (numpy's dtype.kind).
_RAW_KINDS = frozenset("biuf")
_DTYPE_NAMES = frozenset(
    {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64"}
)


class Unconvertible(TypeError):
    """An object that has no conversion (or one that refuses it), with why."""


class TooLarge(ValueError):
    """A conversion that would build a value over the message limit."""


class Blobs(Protocol):
    """The part of the encoder a conversion needs: where raw bytes go, and the size limit."""

    limit: int | None
    tagged: bool

    def blob(self, data: bytes | bytearray | memoryview) -> int: ...


def _type_name(obj: object) -> str:
    klass = type(obj)
    return f"{klass.__module__}.{klass.__qualname__}"


def _guard(obj: object, size: int, encoder: Blobs) -> None:
    if encoder.limit is not None and size > encoder.limit:
        raise TooLarge(
            f"a {_type_name(obj)} of {size} bytes is over the limit of {encoder.limit} bytes (maxMessageBytes)"
        )


def _tag(encoder: Blobs, kind: str, **fields: Any) -> dict[str, Any]:
    encoder.tagged = True
    return {TAG: kind, **fields}


def _datetime_ms(value: _dt.datetime | _dt.date) -> float:
    if isinstance(value, _dt.datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=_dt.timezone.utc)
        delta = aware - _EPOCH
    else:
        delta = _dt.datetime(value.year, value.month, value.day, tzinfo=_dt.timezone.utc) - _EPOCH
    # Whole days, seconds and microseconds, so that the milliseconds are exact.
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds / 1000


def _is_instance_of(obj: object, module: str, name: str) -> bool:
    """``isinstance(obj, module.name)`` when ``module`` is loaded, without importing it."""
    loaded = sys.modules.get(module)
    klass = getattr(loaded, name, None) if loaded is not None else None
    return isinstance(klass, type) and isinstance(obj, klass)


def _ndarray(array: Any, encoder: Blobs) -> dict[str, Any]:
    import numpy as np

    dtype = array.dtype
    if dtype.kind not in _RAW_KINDS or dtype.name not in _DTYPE_NAMES:
        raise Unconvertible(
            f"a numpy.ndarray of dtype {dtype} cannot be sent to the host: only bool, int, uint and float "
            f"arrays travel (use .tolist() or .astype(...))"
        )
    _guard(array, int(array.nbytes), encoder)
    if dtype.byteorder == ">" or (dtype.byteorder == "=" and sys.byteorder == "big"):
        array = array.astype(dtype.newbyteorder("<"))
    array = np.ascontiguousarray(array)
    data = memoryview(array).cast("B") if array.size else b""
    return _tag(encoder, "ndarray", dtype=dtype.name, shape=list(array.shape), blob=encoder.blob(data))


def _arrow_ipc(table: Any, encoder: Blobs) -> dict[str, Any]:
    import pyarrow as pa

    _guard(table, int(table.nbytes), encoder)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    buffer = sink.getvalue()
    _guard(table, buffer.size, encoder)
    return _tag(encoder, "arrow", blob=encoder.blob(memoryview(buffer)))


def _dataframe(frame: Any, encoder: Blobs) -> dict[str, Any]:
    try:
        import pyarrow as pa
    except ImportError as exc:
        raise Unconvertible(
            "a pandas.DataFrame travels as Arrow, which needs pyarrow in the worker's Python "
            "(pip install pyarrow), or send .to_dict('records')"
        ) from exc
    _guard(frame, int(frame.memory_usage(index=True, deep=False).sum()), encoder)
    return _arrow_ipc(pa.Table.from_pandas(frame), encoder)


def to_wire(obj: Any, encoder: Blobs) -> Any:
    """What ``obj`` (which JSON cannot carry itself) becomes; raises Unconvertible or TooLarge."""
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return _tag(encoder, "datetime", ms=_datetime_ms(obj))
    if isinstance(obj, (Decimal, uuid.UUID)):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if "numpy" in sys.modules:
        import numpy as np

        if isinstance(obj, np.ndarray):
            return _ndarray(obj, encoder)
        if isinstance(obj, np.generic):
            item = obj.item()
            if type(item) is type(obj):
                raise Unconvertible(f"a {_type_name(obj)} has no plain Python value to send")
            return item
    if _is_instance_of(obj, "pandas", "DataFrame"):
        return _dataframe(obj, encoder)
    if _is_instance_of(obj, "pyarrow", "Table"):
        return _arrow_ipc(obj, encoder)
    if _is_instance_of(obj, "pyarrow", "RecordBatch"):
        import pyarrow as pa

        return _arrow_ipc(pa.Table.from_batches([obj]), encoder)
    if _is_instance_of(obj, "pydantic", "BaseModel"):
        dump = getattr(obj, "model_dump", None) or obj.dict
        return dump()
    raise Unconvertible(f"a {_type_name(obj)} cannot be sent to the host")


# -- the way in ------------------------------------------------------------ #


def decode_bytes(obj: dict[str, Any], blobs: list[bytes]) -> bytes:
    index = obj["blob"]
    if type(index) is not int or not 0 <= index < len(blobs):
        raise IndexError(f"no blob {index!r}")
    return blobs[index]


def decode_ndarray(obj: dict[str, Any], blobs: list[bytes]) -> Any:
    """A numpy array (writable, its own memory), or the raw bytes when numpy is not installed."""
    data = decode_bytes(obj, blobs)
    dtype, shape = obj["dtype"], obj["shape"]
    if dtype not in _DTYPE_NAMES:
        raise TypeError(f"unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise TypeError(f"shape {shape!r} is not a list of sizes")
    try:
        import numpy as np
    except ImportError:
        return data
    array = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"))
    count = 1
    for n in shape:
        count *= n
    if array.size != count:
        raise TypeError(f"{len(data)} bytes do not make a {dtype} array of shape {shape}")
    return array.reshape(shape).astype(np.dtype(dtype), copy=True)


def decode_arrow(obj: dict[str, Any], blobs: list[bytes]) -> Any:
    """A pyarrow Table, or the Arrow IPC stream's bytes when pyarrow is not installed."""
    data = decode_bytes(obj, blobs)
    try:
        import pyarrow as pa
    except ImportError:
        return data
    try:
        return pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    except pa.ArrowInvalid as exc:
        raise TypeError(f"not an Arrow IPC stream: {exc}") from exc


def decode_datetime(obj: dict[str, Any], _blobs: list[bytes]) -> _dt.datetime:
    """A timezone-aware UTC datetime."""
    ms = obj["ms"]
    if type(ms) not in (int, float):
        raise TypeError(f"ms {ms!r} is not a number")
    try:
        return _EPOCH + _dt.timedelta(milliseconds=ms)
    except OverflowError as exc:
        raise TypeError(f"{ms} ms is out of datetime's range") from exc
