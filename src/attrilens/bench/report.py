"""`Report`: what every `run_benchmark` returns — named tables, the facts of the run, and how to print and save them."""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _plain(value: Any) -> Any:
    """JSON-safe values: NaN/inf as null, numpy scalars as Python numbers, anything else unknown as text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and callable(value.item):
        try:
            return _plain(value.item())
        except (ValueError, TypeError):
            return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def machine() -> dict[str, Any]:
    """Where a benchmark ran: processor, CPU count, torch threads and version, date (recorded in every report)."""
    import os

    import torch

    return {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()) + " UTC"}


@dataclass
class Report:
    """One benchmark run of one lens: `tables` (pandas DataFrames by name), `info` (settings, counts, machine)."""

    lens: str
    tables: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    header: str = ""

    def to_text(self) -> str:
        """Markdown: the header, then a `## name` section with each table."""
        parts = [self.header] if self.header else []
        for name, frame in self.tables.items():
            parts.append(f"## {name}\n\n{_whole_numbers_as_ints(frame).to_markdown(index=False, floatfmt='.4g')}")
        return "\n\n".join(parts) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "attrilens/bench/v1", "lens": self.lens, "header": self.header,
                "tables": {k: _plain(v.to_dict(orient="records")) for k, v in self.tables.items()},
                "info": _plain(self.info)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    def write(self, out: Path | str) -> list[Path]:
        """Save `<lens>-bench.md` and `<lens>-bench.json` into the directory `out` (created)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        md, js = out / f"{self.lens}-bench.md", out / f"{self.lens}-bench.json"
        md.write_text(self.to_text(), encoding="utf-8")
        js.write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return [md, js]


def _whole_numbers_as_ints(frame: Any) -> Any:
    """Float columns holding only whole numbers (counts that became floats beside a NaN) as nullable ints, so
    '.4g' does not print 20480 as 2.048e+04."""
    import pandas as pd

    out = frame.copy()
    for col in out.columns:
        values = out[col]
        if pd.api.types.is_float_dtype(values) and values.notna().any():
            finite = values.dropna()
            if ((finite % 1) == 0).all() and finite.abs().max() < 2**53:
                out[col] = values.astype("Int64")
    return out
