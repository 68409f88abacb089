"""Tools' annotations as data: described to the host (for typed clients) and checked on calls.

:func:`describe` turns an annotation into a JSON *type* the host's code generator maps to an
Effect Schema; anything it cannot map is ``{"kind": "unknown", "annotation": ..., "reason": ...}``,
never a guess. :func:`check` tests an argument against a type and converts what the host cannot
send as such (a dict into the dataclass, NamedTuple or pydantic model the tool declares, a list
into a tuple, an Arrow table into a pandas DataFrame, a string into a Decimal or UUID).

Kinds: ``int float str bool bytes none any unknown datetime date decimal uuid ndarray table``,
``list`` (``items``), ``dict`` (``values``), ``tuple`` (``items``: a list), ``union``
(``members``), ``literal`` (``values``), ``object`` (``name``, ``fields``: name, type, required).
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import datetime as _dt
import inspect
import sys
import types
import typing
import uuid
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

Type = dict[str, Any]

# The Python class behind an object type (for conversion); never sent to the host.
_CLASS = "_class"

_SIMPLE: dict[Any, str] = {
    int: "int",
    float: "float",
    str: "str",
    bool: "bool",
    bytes: "bytes",
    bytearray: "bytes",
    type(None): "none",
    None: "none",
    _dt.datetime: "datetime",
    _dt.date: "date",
    Decimal: "decimal",
    uuid.UUID: "uuid",
}

_ITERATORS = (cabc.Iterator, cabc.Iterable, cabc.Generator, cabc.AsyncIterator, cabc.AsyncIterable, cabc.AsyncGenerator)


def _unknown(annotation: Any, reason: str) -> Type:
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    return {"kind": "unknown", "annotation": text, "reason": reason}


def _is_typed_dict(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, dict) and hasattr(annotation, "__total__")


def _is_named_tuple(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, tuple) and hasattr(annotation, "_fields")


def _is_pydantic(annotation: Any) -> bool:
    base = getattr(sys.modules.get("pydantic"), "BaseModel", None)
    return isinstance(annotation, type) and isinstance(base, type) and issubclass(annotation, base)


def _class_named(annotation: Any, module: str, name: str) -> bool:
    return isinstance(annotation, type) and any(
        k.__module__.split(".")[0] == module and k.__name__ == name for k in annotation.__mro__
    )


def _hints(owner: Any) -> dict[str, Any]:
    """The resolved annotations of a function or class; one that does not resolve stays text."""
    try:
        return typing.get_type_hints(owner)
    except Exception:  # NameError, or whatever a broken annotation raises: resolve one by one
        pass
    raw = dict(getattr(owner, "__annotations__", {}))
    module = sys.modules.get(getattr(owner, "__module__", ""), None)
    namespace = dict(getattr(owner, "__globals__", None) or vars(module) if module else {})
    for name, annotation in raw.items():
        if isinstance(annotation, str):
            try:
                raw[name] = eval(annotation, namespace)  # what get_type_hints does, one at a time
            except Exception:
                continue
    return raw


def _object(annotation: type, seen: frozenset[Any]) -> Type:
    fields: list[dict[str, Any]] = []
    if _is_pydantic(annotation):
        for name, info in annotation.model_fields.items():  # type: ignore[attr-defined]
            fields.append({"name": name, "type": describe(info.annotation, seen), "required": bool(info.is_required())})
    elif dataclasses.is_dataclass(annotation):
        hints = _hints(annotation)
        for f in dataclasses.fields(annotation):
            has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            fields.append(
                {"name": f.name, "type": describe(hints.get(f.name, f.type), seen), "required": not has_default}
            )
    elif _is_named_tuple(annotation):
        hints = _hints(annotation)
        defaults = getattr(annotation, "_field_defaults", {})
        for name in annotation._fields:  # type: ignore[attr-defined]
            fields.append(
                {"name": name, "type": describe(hints.get(name, Any), seen), "required": name not in defaults}
            )
    else:  # a TypedDict
        hints = _hints(annotation)
        required = getattr(annotation, "__required_keys__", frozenset(hints))
        for name, hint in hints.items():
            fields.append({"name": name, "type": describe(hint, seen), "required": name in required})
    return {"kind": "object", "name": annotation.__name__, "fields": fields, _CLASS: annotation}


def describe(annotation: Any, seen: frozenset[Any] = frozenset()) -> Type:
    """The type of ``annotation`` (``inspect.Parameter.empty`` and ``Any`` are ``any``)."""
    if annotation is inspect.Parameter.empty or annotation is Any or annotation is object:
        return {"kind": "any"}
    if isinstance(annotation, str):
        return _unknown(annotation, "a forward reference that does not resolve")
    simple = _SIMPLE.get(annotation) if isinstance(annotation, type) or annotation is None else None
    if simple is not None:
        return {"kind": simple}
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return describe(args[0], seen)
    if origin is typing.Literal:
        values = list(args)
        if all(v is None or isinstance(v, (str, int, float, bool)) for v in values):
            return {"kind": "literal", "values": values}
        return _unknown(annotation, "a Literal of values JSON cannot carry")
    if origin is typing.Union or origin is types.UnionType:
        return {"kind": "union", "members": [describe(a, seen) for a in args]}
    if origin in (list, set, frozenset, cabc.Sequence, cabc.Set, cabc.MutableSequence, cabc.Collection):
        return {"kind": "list", "items": describe(args[0], seen) if args else {"kind": "any"}}
    if origin in (dict, cabc.Mapping, cabc.MutableMapping):
        if args and args[0] is not str:
            return _unknown(annotation, "a dict with non-string keys")
        return {"kind": "dict", "values": describe(args[1], seen) if args else {"kind": "any"}}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"kind": "list", "items": describe(args[0], seen)}
        if args == ((),):
            return {"kind": "tuple", "items": []}
        return {"kind": "tuple", "items": [describe(a, seen) for a in args]}
    if annotation in (list, set, frozenset, tuple):
        return {"kind": "list", "items": {"kind": "any"}}
    if annotation is dict:
        return {"kind": "dict", "values": {"kind": "any"}}
    if _class_named(annotation, "numpy", "ndarray") or _class_named(typing.get_origin(annotation), "numpy", "ndarray"):
        return {"kind": "ndarray"}
    if _class_named(annotation, "pandas", "DataFrame") or _class_named(annotation, "pyarrow", "Table"):
        return {"kind": "table", _CLASS: annotation}
    if _class_named(annotation, "numpy", "floating") or _class_named(annotation, "numpy", "integer"):
        return {"kind": "float" if _class_named(annotation, "numpy", "floating") else "int"}
    if isinstance(annotation, type) and (
        _is_typed_dict(annotation)
        or _is_named_tuple(annotation)
        or dataclasses.is_dataclass(annotation)
        or _is_pydantic(annotation)
    ):
        if annotation in seen:
            return _unknown(annotation, "a recursive type")
        return _object(annotation, seen | {annotation})
    return _unknown(annotation, "no mapping for this annotation")


def stream_item(annotation: Any) -> Type:
    """What a generator tool annotated ``Iterator[T]`` (or Generator, AsyncIterator...) yields."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in _ITERATORS and args:
        return describe(args[0])
    if annotation is inspect.Parameter.empty:
        return {"kind": "any"}
    return _unknown(annotation, "a streaming tool's return annotation should be Iterator[T] or AsyncIterator[T]")


def public(t: Any) -> Any:
    """A type without its Python-only parts, for JSON."""
    if isinstance(t, dict):
        return {k: public(v) for k, v in t.items() if k != _CLASS}
    if isinstance(t, list):
        return [public(v) for v in t]
    return t


def tool_types(func: Callable[..., Any], parameters: list[str], streaming: bool) -> dict[str, Any]:
    """``{"params": {name: type}, "returns": type}`` of a tool (``returns``: what it yields, for a stream)."""
    signature = inspect.signature(func)
    hints = _hints(func)
    params = {name: describe(hints.get(name, signature.parameters[name].annotation)) for name in parameters}
    returned = hints.get("return", signature.return_annotation)
    return {"params": params, "returns": stream_item(returned) if streaming else describe(returned)}


# -- checking --------------------------------------------------------------- #


class Mismatch(TypeError):
    """An argument that does not fit its annotation, with where it is."""

    def __init__(self, path: str, expected: str, got: Any, message: str | None = None) -> None:
        super().__init__(message or f"expected {expected}, got {_what(got)}")
        self.path = path


def _what(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, _Missing):
        return "nothing"
    return type(value).__name__


def expected(t: Type) -> str:
    """``t`` as a person reads it."""
    kind = t["kind"]
    if kind == "list":
        return f"list[{expected(t['items'])}]"
    if kind == "dict":
        return f"dict[str, {expected(t['values'])}]"
    if kind == "tuple":
        return f"tuple[{', '.join(expected(i) for i in t['items'])}]"
    if kind == "union":
        return " | ".join(expected(m) for m in t["members"])
    if kind == "literal":
        return f"Literal[{', '.join(repr(v) for v in t['values'])}]"
    if kind == "object":
        return str(t["name"])
    if kind == "table":
        return "an Arrow table"
    return {"none": "None", "ndarray": "numpy.ndarray"}.get(kind, str(kind))


_UNCHECKED = frozenset({"any", "unknown"})


def check(t: Type, value: Any, path: str) -> Any:
    """``value`` converted to ``t``'s Python form; raises :class:`Mismatch`."""
    kind = t["kind"]
    if kind in _UNCHECKED:
        return value
    if kind == "int":
        if type(value) is int:
            return value
    elif kind == "float":
        if type(value) in (int, float):
            return value
    elif kind == "str":
        if type(value) is str:
            return value
    elif kind == "bool":
        if type(value) is bool:
            return value
    elif kind == "bytes":
        if isinstance(value, (bytes, bytearray)):
            return value
    elif kind == "none":
        if value is None:
            return value
    elif kind in ("datetime", "date"):
        if isinstance(value, _dt.datetime):
            return value if kind == "datetime" else value.date()
    elif kind == "decimal":
        if type(value) in (str, int, float):
            try:
                return Decimal(str(value))
            except InvalidOperation:
                pass
    elif kind == "uuid":
        if type(value) is str:
            try:
                return uuid.UUID(value)
            except ValueError:
                pass
    elif kind == "ndarray":
        if _class_named(type(value), "numpy", "ndarray"):
            return value
    elif kind == "table":
        if _class_named(type(value), "pyarrow", "Table"):
            wanted = t.get(_CLASS)
            return value.to_pandas() if wanted is not None and _class_named(wanted, "pandas", "DataFrame") else value
    elif kind == "literal":
        for option in t["values"]:
            if value == option and type(value) is type(option):
                return value
    elif kind == "union":
        for member in t["members"]:
            try:
                return check(member, value, path)
            except Mismatch:
                continue
    elif kind == "list":
        if isinstance(value, list):
            return [check(t["items"], item, f"{path}[{i}]") for i, item in enumerate(value)]
    elif kind == "tuple":
        if isinstance(value, (list, tuple)) and len(value) == len(t["items"]):
            pairs = enumerate(zip(t["items"], value, strict=True))
            return tuple(check(it, item, f"{path}[{i}]") for i, (it, item) in pairs)
    elif kind == "dict":
        if isinstance(value, dict):
            return {k: check(t["values"], v, f"{path}.{k}") for k, v in value.items()}
    elif kind == "object":
        if isinstance(value, dict):
            return _check_object(t, value, path)
    raise Mismatch(path, expected(t), value)


def _check_object(t: Type, value: dict[str, Any], path: str) -> Any:
    fields = {f["name"]: f for f in t["fields"]}
    for name in value:
        if name not in fields:
            raise Mismatch(
                f"{path}.{name}", f"no field {name!r} ({t['name']} has {', '.join(fields) or 'none'})", value[name]
            )
    out: dict[str, Any] = {}
    for name, f in fields.items():
        if name in value:
            out[name] = check(f["type"], value[name], f"{path}.{name}")
        elif f["required"]:
            raise Mismatch(f"{path}.{name}", f"{expected(f['type'])} (a required field of {t['name']})", _Missing())
    klass = t.get(_CLASS)
    if klass is None or _is_typed_dict(klass):
        return out
    try:
        return klass.model_validate(out) if _is_pydantic(klass) else klass(**out)
    except (TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise Mismatch(path, str(t["name"]), value, f"{t['name']} refused it: {exc}") from exc


class _Missing:
    def __repr__(self) -> str:
        return "nothing"
