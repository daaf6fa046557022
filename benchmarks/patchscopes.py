"""Patchscopes benchmark: `python benchmarks/patchscopes.py [--model DIR] [--world DIR] [--quick] [--json] [--save-lens F]`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def cli() -> None:
    """Parse arguments and run the same code as `attrilens bench inspect`."""
    from attrilens.bench.patchscopes import main

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
