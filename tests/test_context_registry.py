"""Adding a context method is one file: toy estimators registered inside these tests run through the Python API,
the CLI, the wrappers (cached, hierarchical, proxy) and the benchmark grid, with no package file touched."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
import torch
from typer.testing import CliRunner

from attrilens.context import (
    CONTEXT_METHODS,
    CONTEXT_WRAPPERS,
    AttributionRun,
    ContextAttributor,
    ContextMethod,
    ContextResult,
    Estimate,
    parse_method,
)
from attrilens.context.scorers import Scorer
from attrilens.errors import AttrilensError
from attrilens.results import Cost
from attrilens.spans import Sources
from attrilens.testing import random_context as _random_context
from attrilens.testing import tiny_lm

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class ToyOptions:
    """weight: the score the first source gets."""

    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise AttrilensError(f"weight must be positive, got {self.weight}. Pass weight > 0.")


@pytest.fixture
def toy_first():
    """The docs example: all credit to the first source, additive over the response tokens."""

    @CONTEXT_METHODS.register("toy-first")
    class ToyFirst(ContextMethod):
        """Toy: the first source gets `weight`, the others 0."""

        summary = "toy: the first source gets weight, the others 0"
        Options = ToyOptions

        def estimate(self, run: AttributionRun) -> Estimate:
            contrib = torch.zeros(len(run.sources), len(run.response_ids))
            contrib[0] = self.options.weight / len(run.response_ids)  # per response token; sums to weight
            return Estimate.additive(contrib)

    try:
        yield ToyFirst
    finally:
        CONTEXT_METHODS.unregister("toy-first")


@pytest.fixture
def toy_loo():
    """A toy estimator that ablates sources (LOO written again from a scorer), so the drop wrappers apply."""

    @CONTEXT_METHODS.register("toy-loo")
    class ToyLOO(ContextMethod):
        """Toy: leave-one-out written out by hand; counts its calls."""

        summary = "toy: leave-one-out by hand"
        uses_scorer = True
        ablates_sources = True
        calls: list[int] = []

        def drops(self, scorer: Scorer, sources: Sources, *, base_drop: Sequence[int] = (),
                  candidates: Sequence[int] | None = None) -> torch.Tensor:
            self.calls.append(len(sources))
            cand = [i for i in (range(len(sources)) if candidates is None else candidates) if i not in base_drop]
            base = scorer.base(sources.ablate(base_drop))
            out = torch.full((len(sources), len(scorer.response_ids)), float("nan"))
            if cand:
                out[cand] = base[None, :] - scorer.score([sources.ablate([*base_drop, i]) for i in cand])
            return out

    try:
        yield ToyLOO
    finally:
        CONTEXT_METHODS.unregister("toy-loo")


@pytest.fixture(scope="module")
def llama():
    return tiny_lm("llama", seed=17)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_lm("llama", seed=41).save_pretrained(path)
    return path


def _cli(model_dir, tmp_path, *args: str):
    from attrilens.cli import app

    ctx = tmp_path / "ctx.txt"
    ctx.write_text(random_context(5), encoding="utf-8")
    return CliRunner().invoke(app, ["context", "--model", str(model_dir), "--context-file", str(ctx),
                                    "--query", "bank?", *args])


# ---------------------------------------------------------------------------------------------- one-file methods
def test_a_registered_estimator_runs_through_the_attributor(llama, toy_first):
    r = ContextAttributor(llama, method="toy-first").attribute(random_context(1), "bank?", " ada tolm")
    assert r.method == "toy-first" and r.scores == pytest.approx([1.0, 0, 0, 0, 0, 0])
    covered = sum(1 for a, b in r.token_offsets if a < 4 and b > 0 and b > a)  # the tokens of " ada"
    assert r.for_response_span(0, 4).scores == pytest.approx([covered / len(r.token_offsets), 0, 0, 0, 0, 0])
    assert "toy-first: toy: the first source gets weight" in CONTEXT_METHODS.describe()
    doubled = ContextAttributor(llama, method="toy_first", weight=2.0).attribute(random_context(1), "bank?", " ada")
    assert doubled.method == "toy-first" and doubled.scores[0] == pytest.approx(2.0)


def test_a_registered_estimator_runs_through_the_cli(model_dir, tmp_path, toy_first):
    for spelling in ("toy-first", "toy_first"):
        result = _cli(model_dir, tmp_path, "--response", " ada", "--method", spelling, "--json")
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert doc["method"] == "toy-first" and [s["score"] for s in doc["sources"]] == pytest.approx([1, 0, 0, 0, 0, 0])


def test_an_estimator_that_ablates_sources_composes_with_the_wrappers(llama, toy_loo):
    context, proxy = random_context(7, paragraphs=4), tiny_lm("llama", seed=99)
    for method, builtin, kw in [("toy-loo", "cached", {}), ("loo+toy-loo", "loo", {}),
                                ("cached+hierarchical+toy-loo", "cached+hierarchical", {"top_k": 1}),
                                ("proxy+toy-loo", "proxy", {}),
                                ("hierarchical+proxy-pruning+toy-loo", "hierarchical+proxy-pruning",
                                 {"top_k": 2, "paragraph_k": 2})]:
        toy_loo.calls.clear()
        model_proxy = proxy if "proxy" in method else None
        ours = ContextAttributor(llama, model_proxy, method=method, **kw).attribute(context, "bank?", " ada")
        ref = ContextAttributor(llama, model_proxy, method=builtin, **kw).attribute(context, "bank?", " ada")
        assert ours.method == parse_method(method).name and ours.method.endswith("toy-loo")
        assert ours.method.replace("+toy-loo", "").replace("naive", "loo") == ref.method
        assert [s is None for s in ours.scores] == [s is None for s in ref.scores]
        assert max(abs(a - b) for a, b in zip(ours.scores, ref.scores, strict=True) if a is not None) <= 1e-5
        assert ours.cost.forward_passes == ref.cost.forward_passes and toy_loo.calls
    assert parse_method("toy-loo+hierarchical").hierarchical and parse_method("naive+toy-loo").name == "naive+toy-loo"


def test_combination_rules_come_from_the_declared_capabilities(llama, toy_first):
    with pytest.raises(AttrilensError, match="toy-first cannot be combined with hierarchical; use method='toy-first'"):
        parse_method("toy-first+hierarchical")
    with pytest.raises(AttrilensError, match="toy-first cannot be combined with cached"):
        parse_method("cached+toy-first")
    with pytest.raises(AttrilensError, match="names two estimators"):
        parse_method("toy-first+contextcite")
    with pytest.raises(AttrilensError, match="asks for both proxy and proxy-pruning"):
        parse_method("proxy+proxy-pruning")
    with pytest.raises(AttrilensError, match="contextcite cannot be combined with proxy"):
        parse_method("contextcite+proxy")
    assert parse_method("toy-first").name == "toy-first" and not parse_method("toy-first").cached
    assert {"naive", "cached", "knockout", "hierarchical", "proxy", "proxy-pruning", "attention-pruning"} == set(
        CONTEXT_WRAPPERS.names())


# ---------------------------------------------------------------------------------------------- options
def test_options_go_to_the_components_that_take_them(llama, toy_first):
    with pytest.raises(AttrilensError, match=r"top_k=5 does not apply to method 'cached'.*hierarchical, attention-pruning, proxy-pruning"):
        ContextAttributor(llama, method="cached", top_k=5)
    ContextAttributor(llama, method="cached", top_k=3, n_ablations=64)  # the defaults: nothing asked, accepted
    with pytest.raises(AttrilensError, match="weight=2.0 does not apply to method 'cached'; drop it, or use a method "
                                             "with toy-first"):
        ContextAttributor(llama, method="cached", weight=2.0)
    with pytest.raises(AttrilensError, match="weight must be positive"):
        ContextAttributor(llama, method="toy-first", weight=0.0)
    with pytest.raises(AttrilensError, match="Unknown option 'colour'"):
        ContextAttributor(llama, method="toy-first", colour=1)
    with pytest.raises(AttrilensError, match="n_ablations must be at least 2"):
        ContextAttributor(llama, method="contextcite", n_ablations=1)
    with pytest.raises(AttrilensError, match="max_new_tokens must be at least 1"):
        ContextAttributor(llama, max_new_tokens=0)
    cc = ContextAttributor(llama, method="contextcite", n_ablations=16, alpha=1e-3, seed=4).pipeline.method.options
    assert (cc.n_ablations, cc.alpha, cc.seed) == (16, 1e-3, 4)


def test_paragraph_k_sets_the_paragraphs_hierarchical_keeps(llama):
    r = ContextAttributor(llama, method="hierarchical", top_k=3, paragraph_k=1).attribute(
        random_context(8, paragraphs=3), "bank?", " ada")
    assert len(r.details["kept_paragraphs"]) == 1


# ---------------------------------------------------------------------------------------------- results and CLI
def test_the_json_keeps_the_whole_cost_record():
    cost = Cost(3, 40, 0.5, extra={"flops": 1.5e6, "proxy_forward_passes": 2})
    r = ContextResult("cached", "q?", " a", [], cost)
    d = r.to_dict()
    assert d["cost"] == {"forward_passes": 3, "tokens_computed": 40, "seconds": 0.5, "flops": 1.5e6,
                         "proxy_forward_passes": 2}
    back = ContextResult.from_json(r.to_json())
    assert back.cost == cost and back.to_dict() == d


def test_cli_help_lists_the_registered_names_and_takes_underscores(model_dir, tmp_path):
    from attrilens.cli import app

    help_text = CliRunner().invoke(app, ["context", "--help"], terminal_width=200).output
    for name in (*CONTEXT_METHODS.names(), *CONTEXT_WRAPPERS.names(), "--max-new-tokens"):
        assert name in help_text, name
    result = _cli(model_dir, tmp_path, "--response", " ada", "--method", "loo+proxy_pruning", "--proxy", str(model_dir),
                  "--top-k", "2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["method"] == "loo+proxy-pruning"


def test_cli_caps_the_generated_response_with_max_new_tokens(model_dir, tmp_path):
    from attrilens.lm import LM

    result = _cli(model_dir, tmp_path, "--max-new-tokens", "2", "--json")
    assert result.exit_code == 0, result.output
    lm = LM.from_pretrained(model_dir)
    capped = ContextAttributor(lm, max_new_tokens=2).generate(random_context(5), "bank?")
    assert json.loads(result.stdout)["response"] == capped
    assert capped != ContextAttributor(lm).generate(random_context(5), "bank?")  # the default 32 tokens say more
    prompt = ContextAttributor(lm).prompt("bank?")(random_context(5))
    assert len(lm.generate_ids([lm.encode_prompt(prompt)], max_new_tokens=2)[0]) <= 2
    bad = _cli(model_dir, tmp_path, "--max-new-tokens", "0", "--json")
    assert isinstance(bad.exception, AttrilensError) and "max_new_tokens must be at least 1" in str(bad.exception)


# ---------------------------------------------------------------------------------------------- benchmark
def test_the_benchmark_grid_reads_one_pass_estimators_from_the_registry(toy_first):
    from attrilens.bench.context import budget_table, default_settings, settings_table

    quick = default_settings(quick=True)
    assert [s.label for s in quick][-3:] == ["attention", "gradient-norm", "toy-first"]
    assert [s.label for s in default_settings()][:2] == ["loo (naive, exact)", "cached (exact)"]
    row = {"setting": "x", "method": "cached", "mAP": 1.0, "spearman": 1.0, "drop@1": 1.0, "drop@3": 1.0, "hit@1": 1.0,
           "passes": 10.0, "passes_ratio": 1.0, "tokens_ratio": 1.0, "flops_ratio": 1.0, "seconds_ratio": 1.0,
           "attr_over_gen": 1.0}
    summary = [row, {**row, "setting": "cc", "method": "naive+contextcite", "passes": 16.0, "mAP": 0.5},
               {**row, "setting": "a", "method": "attention", "passes": 1.0}]
    assert list(settings_table(summary)["setting"]) == ["x", "cc", "a"]
    budget = budget_table(summary).to_dict(orient="records")
    assert budget == [{"budget (passes)": 16.0, "baseline": "cc", "baseline mAP": 0.5,
                       "best LOO-family setting within budget": "x", "its passes": 10.0, "its mAP": 1.0}]


def random_context(seed: int, paragraphs: int = 3) -> str:
    return _random_context(seed, paragraphs, sentences=2, words=3)
