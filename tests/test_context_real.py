"""The context lens on SmolLM2-135M-Instruct (converted once, cached): the early-exit proxy end to end through the
CLI with its faithfulness report, and the peers — captum's FeatureAblation equals our naive LOO, the context-cite
package equals our contextcite — on a short context (a few seconds each)."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from attrilens.context import ContextAttributor
from attrilens.lm import LM
from attrilens.spans import Sources

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = "smollm2-135m-instruct"
CONTEXT = ("In Tosfo, the capital city is Piler. Every banner of Tosfo carries the image of the Tesken. "
           "The main export of Tosfo is kasmu.\n\n"
           "In Bazan, the common tongue is Zonfes. The flag of Bazan shows the Gudor. Merchants in Bazan count "
           "their money in the Vusbun.")
QUERY, GOLD = "Which tongue is spoken in Bazan?", 3


@pytest.fixture(scope="module")
def smol() -> LM:
    return LM.from_pretrained(MODEL)


@pytest.fixture(scope="module")
def response(smol: LM) -> str:
    text = ContextAttributor(smol).generate(CONTEXT, QUERY)
    assert "Zonfes" in text  # the model reads the context (greedy, chat template)
    return text


@pytest.mark.parametrize("k", [1, 10])
def test_cli_early_exit_proxy_pruning_reports_faithfulness(smol: LM, response: str, tmp_path, k: int):
    from attrilens.cli import app

    ctx = tmp_path / "ctx.txt"
    ctx.write_text(CONTEXT, encoding="utf-8")
    result = CliRunner().invoke(app, ["context", "--model", MODEL, "--proxy", f"early-exit:{k}", "--method",
                                      "proxy-pruning", "--top-k", "1", "--context-file", str(ctx), "--query", QUERY,
                                      "--response", response, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    f = doc["faithfulness"]
    assert doc["method"] == "cached+proxy-pruning" and len(f["kept_sources"]) == 1
    assert [s["index"] for s in doc["sources"] if s["score"] is not None] == f["kept_sources"]
    # the answer's name is only in the gold sentence: the kept sentence supports the response iff it is that one
    assert f["supported"] is (f["kept_sources"] == [GOLD])
    assert (f["warning"] is None) is f["supported"] and (("WARNING: " in result.stderr) is (not f["supported"]))
    full = smol.logprobs([ContextAttributor(smol).prompt(QUERY)(CONTEXT)], [response])[0].sum()
    assert f["ll_full"] == pytest.approx(float(full), abs=1e-3)


def test_peers_equal_ours(smol: LM, response: str):
    pytest.importorskip("captum")
    pytest.importorskip("context_cite")
    from attrilens.context.peers import captum_loo, contextcite_package

    attributor = ContextAttributor(smol, method="loo")
    src = Sources.split(CONTEXT, "sentence")
    exact = attributor.attribute(CONTEXT, QUERY, response).scores
    captum = captum_loo(smol, attributor.prompt(QUERY), src, smol.encode_response(response))
    assert captum.details["same_prompt_ids"]
    assert max(abs(a - b) for a, b in zip(captum.scores, exact, strict=True)) <= 1e-3
    ours = ContextAttributor(smol, method="contextcite", n_ablations=8).attribute(CONTEXT, QUERY, response).scores
    package = contextcite_package(smol, attributor.template, QUERY, src, response, n_ablations=8)
    assert package.details == {"same_response_ids": True, "same_prompt_ids": True}
    assert max(abs(a - b) for a, b in zip(package.scores, ours, strict=True)) <= 1e-3
    assert max(abs(x) for x in ours) > 1.0  # the package's units: nats of the response's logit, not per token
