"""`python -m attrilens.bench.training`: prepare (train once, cache) the toy benchmark's model and fact world."""

import json
import sys

from attrilens.bench.training.fact_world import prepare_bench_model

if __name__ == "__main__":  # pragma: no cover - convenience: prepare the cached model
    m, w = prepare_bench_model()
    print(json.dumps({"model": str(m), "world": str(w)}), file=sys.stderr)
