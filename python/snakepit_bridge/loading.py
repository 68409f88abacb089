"""Importing an adapter named ``module[:Class]``."""

from __future__ import annotations

import importlib
from typing import Any

from .adapter import BaseAdapter


def load_adapter_class(spec: str) -> type[BaseAdapter]:
    """Import ``module[:Class]``; without a class, the module's one BaseAdapter subclass."""
    module_name, _, class_name = spec.partition(":")
    module = importlib.import_module(module_name)
    if class_name:
        obj: Any = module
        for part in class_name.split("."):
            obj = getattr(obj, part)
        if not (isinstance(obj, type) and issubclass(obj, BaseAdapter)):
            raise TypeError(f"{spec} is not a BaseAdapter subclass")
        return obj
    candidates = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, BaseAdapter)
        and obj is not BaseAdapter
        and obj.__module__ == module.__name__
    ]
    if len(candidates) != 1:
        names = ", ".join(sorted(c.__qualname__ for c in candidates)) or "none"
        raise LookupError(
            f"module {module_name} must define exactly one BaseAdapter subclass "
            f"(found: {names}); name one with --adapter {module_name}:Class"
        )
    return candidates[0]
