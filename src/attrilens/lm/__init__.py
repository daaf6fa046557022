"""`LM`: the one adapter over any Hugging Face causal LM and its tokenizer.

Every lens talks to a model through this class and nothing else: teacher-forced scoring, prefix KV-cache
reuse, reading and overwriting the residual stream, and generation with patches. It is the only place that
knows where an architecture keeps its decoder blocks, final norm and unembedding.

Layer indexing (used everywhere in attrilens): layer 0 is the embedding output (the input of block 0),
layer l is the output of block l-1, and layer L = n_layers is the output of the last block *before* the
final norm. Positions are token indices inside a row's own sequence (padding excluded); negative positions
count from the end of that row's sequence.

The package splits `LM` by concern: architecture.py (where the parts of a model are), loading.py, prompts.py
(tokenisation and padded batches), forward.py (hooks, patches, hidden states), scoring.py (log-probabilities),
cache.py (prefix KV-cache reuse), generation.py, and model.py, where `LM` is composed of them.
"""

from attrilens.lm.architecture import ARCHITECTURES, Architecture
from attrilens.lm.forward import Patch, RunOutput
from attrilens.lm.loading import PICKLE_SUFFIXES, is_adapter_dir, refuse_pickled_weights
from attrilens.lm.model import LM
from attrilens.lm.prompts import Batch, length_batches

__all__ = [
    "ARCHITECTURES",
    "LM",
    "PICKLE_SUFFIXES",
    "Architecture",
    "Batch",
    "Patch",
    "RunOutput",
    "is_adapter_dir",
    "length_batches",
    "refuse_pickled_weights",
]
