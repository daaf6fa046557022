"""The Patchscopes benchmark's sizes (`BenchConfig`: the world suite's, its quick smoke run, the real suite's per
registered model) and the layers a patched sweep reads (`sweep_layers`)."""

from __future__ import annotations

from dataclasses import dataclass

from attrilens.errors import AttrilensError


@dataclass
class BenchConfig:
    """Sizes of the benchmark (the quick variant is a smoke run)."""

    n_fit_texts: int = 400
    n_eval_seqs: int = 125
    positions_per_seq: int = 8
    max_tokens: int = 64
    tuned_steps: int = 400
    tuned_batch_tokens: int = 512
    tuned_lr: float = 0.5
    chunk_size: int = 128
    layer_step: int = 1  # patched sweeps (token identity, attribute extraction) read layers 0, k, 2k, ... and L
    affine: bool = True  # also score least-squares affine maps into the last layer
    n_affine_texts: int | None = None  # fit texts the affine maps are fitted on (None: all)
    queries_per_call: int = 1024  # token-identity queries per Patchscope call (bounds the [n, V] logits held)
    max_facts_per_relation: int | None = None  # real suite: test facts per relation (None: all the model knows)
    speed_prompt_tokens: int | None = None  # speed sweep prompt length (None: the longest eval row)
    speed_rows: int = 16  # rows of the plain vs patched forward
    seed: int = 0

    @classmethod
    def quick(cls) -> BenchConfig:
        return cls(n_fit_texts=60, n_eval_seqs=20, positions_per_seq=5, tuned_steps=40)

    @classmethod
    def real(cls, model: str, quick: bool = False) -> BenchConfig:
        """Sizes of the real-model suite for a registered model (others: SmolLM2's), chosen to keep a run within
        ~20 minutes on 2 CPU cores; `quick` is a smoke run of a few minutes."""
        if quick:
            return cls(n_fit_texts=24, n_eval_seqs=6, positions_per_seq=4, max_tokens=32, tuned_steps=4,
                       tuned_batch_tokens=16, chunk_size=64, layer_step=6, affine=False, queries_per_call=256,
                       max_facts_per_relation=4, speed_prompt_tokens=4, speed_rows=2)
        return cls(**REAL_SIZES.get(model, REAL_SIZES["smollm2-135m-instruct"]))


def sweep_layers(n_layers: int, step: int) -> list[int]:
    """Layers 0, step, 2·step, ... and always the last one (patched sweeps cost one target row per layer)."""
    if step < 1:
        raise AttrilensError(f"layer_step must be at least 1, got {step}. Pass 1 to read every layer.")
    return sorted(set(range(0, n_layers + 1, step)) | {n_layers})


# Sizes of the real-model suite (BenchConfig.real): the unembedding (vocabulary × width) dominates every part, so
# Gemma-3 (262k vocabulary) gets fewer pairs and tuned-lens tokens than SmolLM2 (49k).
REAL_SIZES: dict[str, dict] = {
    "smollm2-135m-instruct": {"n_fit_texts": 100, "n_eval_seqs": 60, "positions_per_seq": 8, "max_tokens": 64,
                              "tuned_steps": 60, "tuned_batch_tokens": 32, "chunk_size": 64, "layer_step": 2,
                              "affine": False, "queries_per_call": 512, "max_facts_per_relation": None,
                              "speed_prompt_tokens": 8, "speed_rows": 4},
    # lr 0.05: with TunedLens.train's default 0.5 the lens ends worse than where it starts (the logit lens) on
    # Gemma-3, whose residual stream reaches RMS ~1500 (16 steps x 24 tokens: held-out mean KL 45.6 -> 78, last
    # training batch 75); with 0.05 it falls to 37, lower at every layer
    "gemma3-270m": {"n_fit_texts": 40, "n_eval_seqs": 30, "positions_per_seq": 8, "max_tokens": 64,
                    "tuned_steps": 24, "tuned_batch_tokens": 24, "tuned_lr": 0.05, "chunk_size": 32, "layer_step": 3,
                    "affine": False, "queries_per_call": 256, "max_facts_per_relation": 30,
                    "speed_prompt_tokens": 6, "speed_rows": 2},
}
