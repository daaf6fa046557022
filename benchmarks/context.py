"""Context-attribution benchmark: `python benchmarks/context.py [--model DIR] [--proxy DIR] [--world DIR] [--quick]`.

The same code as `attrilens bench context` (attrilens.bench.context); prints the table of faithfulness to exact
target LOO and cost ratios against naive LOO measured in the same run.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from attrilens.bench.context import run_benchmark

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None, help="target model directory (default: demo target)")
    p.add_argument("--proxy", type=Path, default=None, help="proxy model directory (default: demo proxy)")
    p.add_argument("--world", type=Path, default=None, help="world directory (default: demo world)")
    p.add_argument("--episodes", type=int, default=50, help="held-out episodes with >= 20 sentences")
    p.add_argument("--quick", action="store_true", help="6 episodes, fewer settings")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=None, help="also write context-bench.md/.json here")
    a = p.parse_args()
    run_benchmark(model=a.model, proxy=a.proxy, world=a.world, n_episodes=a.episodes, quick=a.quick, out=a.out,
                  threads=a.threads)


if __name__ == "__main__":
    main()
