"""The bench's data rows: the same data as numpy / Arrow (raw bytes) and as JSON (lists, records)."""

from __future__ import annotations

from typing import Any

from snakepit_bridge import BaseAdapter, tool


class DataTools(BaseAdapter):
    @tool
    def echo(self, value: Any) -> Any:
        return value

    @tool
    def frame(self, rows: int) -> Any:
        import numpy as np
        import pandas as pd

        i = np.arange(rows)
        return pd.DataFrame({"id": i, "x": i * 0.5, "y": i * 2.0, "flag": i % 2 == 0, "name": [f"row{n}" for n in i]})

    @tool
    def records(self, rows: int) -> Any:
        return self.frame(rows).to_dict("records")
