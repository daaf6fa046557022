"""Lens 2 benchmark (thin wrapper): `python benchmarks/training.py [--model DIR --world DIR] [--quick] [--out F]`.

Same code as `attrilens bench training` (attrilens.bench.training.run_benchmark); prints one table per metric.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: demo target or bench model)")
    parser.add_argument("--world", type=Path, default=None, help="fact world directory of that model")
    parser.add_argument("--quick", action="store_true", help="fewer queries and dimensions")
    parser.add_argument("--out", type=Path, default=None, help="also write the tables as JSON")
    args = parser.parse_args()
    from attrilens.bench.training import run_benchmark, write_tables

    write_tables(run_benchmark(model=args.model, world=args.world, quick=args.quick), args.out)


if __name__ == "__main__":
    main()
