"""Adding a Patchscope preset is one class: a toy preset registered inside the test runs through `presets.run` and
the `inspect` verb; names take either spelling; options are checked with one-line errors."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

import pytest
from typer.testing import CliRunner

from attrilens.cli import app
from attrilens.errors import AttrilensError
from attrilens.patchscopes import InspectResult, presets
from attrilens.testing import tiny_lm

os.environ["HF_HUB_OFFLINE"] = "1"
PROMPT = "the capital of velmora"


@pytest.fixture(scope="module")
def lm():
    return tiny_lm("llama", seed=11)


@pytest.fixture(scope="module")
def model_dir(lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    lm.save_pretrained(out)
    return out


@pytest.fixture
def toy_preset():
    """A preset defined here, not in the package: the logit lens at the last layer only, with one option."""

    @presets.PRESETS.register("toy-last-layer")
    class ToyLastLayer(presets.Preset):
        """The logit lens at the last layer only."""

        @dataclass
        class Options:
            top_k: int = 3

            def __post_init__(self) -> None:
                if self.top_k < 1:
                    raise AttrilensError(f"top_k must be at least 1, got {self.top_k}. Pass --top-k 1 or more.")

        def run(self, lm, prompt, options) -> InspectResult:
            return presets.logit_lens(lm, prompt, layers=[lm.n_layers], top_k=options.top_k)

    try:
        yield ToyLastLayer
    finally:
        presets.PRESETS.unregister("toy-last-layer")


def _cells(doc: dict) -> list[tuple]:
    return [(c["layer"], c["position"], c["target_layer"], [t["token"] for t in c["top_tokens"]]) for c in doc["cells"]]


def _probs(doc: dict) -> list[float]:
    return [t["prob"] for c in doc["cells"] for t in c["top_tokens"]]


def test_a_preset_registered_in_a_test_runs_through_the_api_and_the_cli(toy_preset, lm, model_dir):
    want = presets.logit_lens(lm, PROMPT, layers=[lm.n_layers], top_k=2).to_dict()
    assert "toy-last-layer" in presets.PRESETS and "toy_last_layer" in presets.PRESETS
    res = presets.run("toy-last-layer", lm, PROMPT, top_k=2)
    assert res.preset == "toy-last-layer" and res.to_dict()["cells"] == want["cells"]
    assert {c.layer for c in res.cells} == {lm.n_layers} and len(res.cells) == len(res.source_tokens)
    assert presets.run("toy_last_layer", lm, PROMPT, top_k=2).to_dict()["cells"] == want["cells"]
    with pytest.raises(AttrilensError, match=r"Unknown option\(s\) relation for the toy-last-layer preset. "
                                             r"Valid options: top_k"):
        presets.run("toy-last-layer", lm, PROMPT, relation="capital")

    out = CliRunner().invoke(app, ["inspect", "--model", str(model_dir), "--prompt", PROMPT, "--preset", "toy-last-layer",
                                   "--top-k", "2", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["preset"] == "toy-last-layer" and _cells(doc) == _cells(want)
    assert _probs(doc) == pytest.approx(_probs(want), abs=1e-5)
    bad = CliRunner().invoke(app, ["inspect", "--model", str(model_dir), "--prompt", PROMPT, "--preset", "toy-last-layer",
                                   "--top-k", "0"])
    assert isinstance(bad.exception, AttrilensError) and "top_k must be at least 1" in str(bad.exception)


def test_the_toy_preset_is_gone_after_the_test():
    assert "toy-last-layer" not in presets.PRESETS
    with pytest.raises(AttrilensError, match="Unknown preset 'toy-last-layer'. Choose one of logit-lens, "):
        presets.PRESETS.get("toy-last-layer")


def test_underscore_and_hyphen_spellings_give_the_same_result(model_dir):
    runs = [CliRunner().invoke(app, ["inspect", "--model", str(model_dir), "--prompt", PROMPT, "--preset", name,
                                     "--layer", "1", "--json"]) for name in ("logit_lens", "logit-lens")]
    assert all(r.exit_code == 0 for r in runs), [r.output for r in runs]
    underscore, hyphen = (json.loads(r.stdout) for r in runs)
    assert underscore["preset"] == hyphen["preset"] == "logit-lens"
    assert underscore["cells"] == hyphen["cells"] and {c["layer"] for c in hyphen["cells"]} == {1}


def test_run_takes_the_cli_option_names(lm):
    """`layer`/`position` fill a preset's list options; no name picks logit-lens (custom with a target)."""
    grid = presets.run(None, lm, PROMPT, layer=2, position=-1, top_k=3)
    assert grid.preset == "logit-lens" and [(c.layer, c.position) for c in grid.cells] == [(2, len(grid.source_tokens) - 1)]
    assert grid.to_dict()["cells"] == presets.logit_lens(lm, PROMPT, layers=[2], positions=[-1], top_k=3).to_dict()["cells"]
    custom = presets.run(None, lm, PROMPT, target_prompt="cat -> cat\n?", layer=1, target_layer=0)
    assert custom.preset == "custom" and {c.target_layer for c in custom.cells} == {0}
    attr = presets.run("attribute_extraction", lm, "velmora", layer=1, max_new_tokens=2)  # relation: the default
    assert attr.preset == "attribute-extraction" and attr.target_prompt == "The capital of x is"
    own = presets.run("attribute-extraction", lm, "velmora", relation="realm", relations={"realm": "x is a realm of"},
                      layer=1, max_new_tokens=0)
    assert own.target_prompt == "x is a realm of" and own.cells[0].generation is None


def test_every_preset_has_a_summary_and_an_options_dataclass():
    assert presets.PRESETS.names()[:4] == ["logit-lens", "tuned-lens", "token-identity", "token-identity-bare"]
    for name, cls in presets.PRESETS.items():
        assert cls.name == name and cls.summary and dataclasses.is_dataclass(cls.Options)


@pytest.mark.parametrize(("name", "options", "message"), [
    ("logit-lens", {"top_k": 0}, "top_k must be at least 1"),
    ("logit-lens", {"layers": []}, "layers is empty"),
    ("logit-lens", {"layers": "12"}, "layers must be a list of integers"),
    ("tuned-lens", {}, "needs lens"),
    ("attribute-extraction", {"relation": "capital", "target_prompt": "The capital of x is"}, "exactly one of relation"),
    ("attribute-extraction", {"relation": "birthplace"}, "Unknown relation 'birthplace'"),
    ("entity-description", {"shots": [("Paris",)]}, "shots must be"),
    ("cross-model", {}, "needs target_model"),
    ("multi-hop", {"target_prompt": "The currency of x is"}, "needs target_prompt"),
    ("custom", {"max_new_tokens": -1}, "max_new_tokens must be at least 0"),
    ("xray", {}, "Unknown preset 'xray'"),
])
def test_bad_options_name_the_option(lm, name, options, message):
    with pytest.raises(AttrilensError, match=message):
        presets.run(name, lm, PROMPT, **options)
