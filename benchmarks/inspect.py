"""Patchscopes benchmark: `python benchmarks/inspect.py [--model DIR] [--world DIR] [--quick] [--json] [--save-lens F]`."""

from __future__ import annotations

import sys

# This file is named like the standard library's `inspect`: keep its folder off the import path.
sys.path[:] = [p for p in sys.path if p not in ("", __import__("os").path.dirname(__file__) or ".")]

import argparse  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def cli() -> None:
    """Parse arguments and run the same code as `attrilens bench inspect`."""
    from attrilens.eval.inspect import main

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, default=None, help="model directory (default: the demo target model)")
    ap.add_argument("--world", type=Path, default=None, help="fact-world directory (default: the demo world)")
    ap.add_argument("--quick", action="store_true", help="smoke-run sizes")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    ap.add_argument("--save-lens", type=Path, default=None, help="write the trained tuned lens here (safetensors)")
    a = ap.parse_args()
    main(model=a.model, world=a.world, quick=a.quick, as_json=a.json, lens_out=a.save_lens)


if __name__ == "__main__":
    cli()
