"""Peers: context attribution as other packages compute it, run on an `LM` so a benchmark can compare in one run.

- captum (0.9) `FeatureAblation` through `LLMAttribution` over sentence features with the empty baseline: naive
  exact LOO as a captum user runs it (one forward per ablation). It forwards by sequence (`forward_in_tokens=False`):
  its default token-by-token path mis-scores every response token after the first under transformers 5.
- the `context-cite` package (0.0.4) `ContextCiter`, handed our sentence partition (its nltk splitter wants
  `punkt_tab`, which it cannot download offline) and the response to explain (instead of generating one).

Both build the prompt exactly as the context lens does (template, chat template, `Sources.ablate`), so their
scores compare with ours source by source. They are optional: `PeerUnavailable` names the package to install.
"""

from __future__ import annotations

import contextlib
import copy
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.spans import Sources


class PeerUnavailable(AttrilensError):
    """A peer package is not installed (or cannot run this setting)."""


@dataclass
class PeerResult:
    """A peer's scores (one per source), its wall time, its forward passes and tokens, and checks on its inputs."""

    scores: list[float]
    seconds: float
    forward_passes: int
    tokens: int
    details: dict[str, Any] = field(default_factory=dict)


def prompt_tokens(lm: LM, prompt: Callable[[str], str], contexts: Sequence[str], n_response: int) -> int:
    """Tokens of prompt + response over the given contexts (what a peer that runs every prompt pushes through)."""
    return sum(len(lm.encode_prompt(prompt(c))) + n_response for c in contexts)


def captum_loo(lm: LM, prompt: Callable[[str], str], sources: Sources, response_ids: Sequence[int]) -> PeerResult:
    """Naive LOO by captum: FeatureAblation over the sources (baseline: the source removed), by-sequence forward."""
    try:
        from captum.attr import FeatureAblation, LLMAttribution, TextTemplateInput
    except ImportError:
        raise PeerUnavailable("captum is not installed. Run pip install 'attrilens[bench]'.") from None

    def template(*values: str) -> str:
        # captum puts its baseline "" in place of an absent feature; sources are never empty
        return lm.format_prompt(prompt(sources.ablate(i for i, v in enumerate(values) if v == "")))

    inp = TextTemplateInput(template, values=[s.text for s in sources])
    attribution = LLMAttribution(FeatureAblation(lm.model), lm.tokenizer)
    target = torch.as_tensor(list(response_ids), dtype=torch.long)
    captum_ids = lm.tokenizer.encode(template(*inp.values))  # as captum tokenises the prompt text
    t0 = time.perf_counter()
    result = attribution.attribute(inp, target=target, forward_in_tokens=False)
    seconds = time.perf_counter() - t0
    contexts = [sources.context] + [sources.ablate([i]) for i in range(len(sources))]
    return PeerResult([float(x) for x in result.seq_attr.tolist()], seconds, len(contexts),
                      prompt_tokens(lm, prompt, contexts, len(response_ids)),
                      {"same_prompt_ids": list(captum_ids) == lm.encode_prompt(prompt(sources.context))})


def _import_context_cite() -> Any:
    """The context_cite module, imported with its failing `nltk.download("punkt_tab")` chatter silenced."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            import context_cite
            from context_cite import context_partitioner
    except ImportError:
        raise PeerUnavailable("context-cite is not installed. Run pip install 'attrilens[bench]'.") from None
    return context_cite, context_partitioner


def contextcite_package(lm: LM, template: str, query: str, sources: Sources, response: str, *,
                        n_ablations: int = 64, batch_size: int = 8, alpha: float = 0.01) -> PeerResult:
    """ContextCite by the context-cite package on our sources and response (masks: its seeds 0..n-1).

    `template` is the context lens's prompt template ({context}, {question}); the package always wraps the prompt
    in the model's chat template, so `lm` must use one.
    """
    if not lm.use_chat_template:
        raise PeerUnavailable("The context-cite package always applies the chat template; run with the chat "
                              "template on (a chat model, --chat-template).")
    package, partitioners = _import_context_cite()
    from context_cite.solver import LassoRegression

    class SourcesPartitioner(partitioners.BaseContextPartitioner):
        """Our sources as the package's partition: the same ablated contexts as `Sources.ablate`."""

        @property
        def num_sources(self) -> int:
            return len(sources)

        def split_context(self) -> None:
            """Already split (our sources)."""

        def get_source(self, index: int) -> str:
            return sources[index].text

        def get_context(self, mask: Any = None) -> str:
            if mask is None:
                return sources.context
            return sources.ablate(i for i, keep in enumerate(mask) if not keep)

    tokenizer = copy.deepcopy(lm.tokenizer)  # the package sets left padding (and a pad token) on it
    tokenizer.padding_side = "left"
    citer = package.ContextCiter(lm.model, tokenizer, sources.context, query, num_ablations=int(n_ablations),
                                 batch_size=int(batch_size), solver=LassoRegression(alpha),
                                 prompt_template=template.replace("{question}", "{query}"),
                                 partitioner=SourcesPartitioner(sources.context))
    chat_prompt = lm.format_prompt(template.format(context=sources.context, question=query))
    citer._cache["output"] = chat_prompt + response  # explain our response instead of generating one
    response_ids = lm.encode_response(response)
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bar and CPU-autocast warnings
        scores = citer.get_attributions(verbose=False)
    seconds = time.perf_counter() - t0
    masks = citer._masks
    contexts = [sources.ablate(i for i, keep in enumerate(m) if not keep) for m in masks]
    prompt = lambda c: template.format(context=c, question=query)  # noqa: E731
    return PeerResult([float(x) for x in scores], seconds, len(contexts),
                      prompt_tokens(lm, prompt, contexts, len(response_ids)),
                      {"same_response_ids": list(citer._response_ids) == response_ids,
                       "same_prompt_ids": citer._get_prompt_ids() == lm.encode_prompt(prompt(sources.context))})
