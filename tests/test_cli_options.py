"""`--option NAME=VALUE` on every verb that takes a method reaches that method's own options (an effect seen in the
output or the built index), agrees with the verb's named flags or is refused, and an unknown name is one line and
exit 2 naming the method's valid options; `attrilens methods` lists every registered method with its options."""

from __future__ import annotations

import json
import os
import sys

import pytest

from attrilens.app.methods import methods
from attrilens.context import CONTEXT_METHODS, CONTEXT_WRAPPERS, ContextAttributor
from attrilens.patchscopes import presets
from attrilens.testing import random_context, tiny_lm
from attrilens.training import TDA_METHODS

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REGISTRIES = {"context": [CONTEXT_METHODS, CONTEXT_WRAPPERS], "training": [TDA_METHODS],
              "patchscopes": [presets.PRESETS]}
CONTEXT = random_context(8, 3, sentences=2, words=3)
DOCS = [{"id": f"d{i}", "text": f"the capital of velmora {i} is quenth and ada founded the bank {i}"} for i in range(6)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_lm("llama", seed=41).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    (d / "ctx.txt").write_text(CONTEXT, encoding="utf-8")
    (d / "c.jsonl").write_text("".join(json.dumps(x) + "\n" for x in DOCS), encoding="utf-8")
    return d


@pytest.fixture()
def cli(monkeypatch, capsys):
    """Run the CLI's entry point: (exit code, stdout, the stderr lines starting with 'error: ')."""
    from attrilens.cli.app import main

    def run(*argv: str) -> tuple[int, str, list[str]]:
        monkeypatch.setattr(sys, "argv", ["attrilens", *map(str, argv)])
        with pytest.raises(SystemExit) as stop:
            main()
        out = capsys.readouterr()
        return stop.value.code, out.out, [x for x in out.err.splitlines() if x.startswith("error: ")]

    return run


def _refused(result, *fragments: str) -> None:
    code, _, errors = result
    assert code == 2 and len(errors) == 1, (code, errors)
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


# ---------------------------------------------------------------------------------------------- attrilens methods
def test_methods_lists_every_registered_method_with_a_summary_and_every_option_with_help(cli):
    code, out, _ = cli("methods", "--json")
    assert code == 0
    rows = json.loads(out)["methods"]
    assert rows == json.loads(json.dumps(methods()))  # the Python API gives the same rows
    for lens, registries in REGISTRIES.items():
        listed = [r["name"] for r in rows if r["lens"] == lens]
        assert listed == [n for reg in registries for n in reg.names()], lens
    for r in rows:
        cls = next(reg.get(r["name"]) for reg in REGISTRIES[r["lens"]] if r["name"] in reg)
        assert r["summary"], f"{r['name']} has no summary: set `summary` or a docstring"
        assert [o["name"] for o in r["options"]] == cls.option_names()
        for o in r["options"]:
            assert o["help"] and "\n" not in o["help"], f"{r['name']}.{o['name']} has no one-line help: use option()"
            assert o["type"] and o["default"] == json.loads(json.dumps(o["default"]))
    code, text, _ = cli("methods")
    assert code == 0
    for r in rows:
        assert f"  {r['name']}: {r['summary']}" in text
        for o in r["options"]:
            assert f"    {o['name']}: {o['type']} = " in text and o["help"] in text


@pytest.mark.parametrize(("lens", "want"), [("context", "context"), ("training", "training"), ("trace", "training"),
                                            ("index", "training"), ("patchscopes", "patchscopes"),
                                            ("inspect", "patchscopes")])
def test_methods_takes_a_lens_or_the_verbs_name_for_it(cli, lens, want):
    code, out, _ = cli("methods", lens, "--json")
    assert code == 0 and {r["lens"] for r in json.loads(out)["methods"]} == {want}
    assert json.loads(out)["methods"] == json.loads(json.dumps(methods(want)))


def test_methods_with_an_unknown_lens_is_one_line(cli):
    _refused(cli("methods", "vision"), "Unknown lens 'vision'", "context, training, patchscopes")


def test_a_method_registered_later_is_listed_with_its_options(cli):
    from dataclasses import dataclass

    from attrilens.context import ContextMethod
    from attrilens.options import option

    @dataclass(frozen=True)
    class Opts:
        weight: float = option(1.0, help="the first source's score")

    @CONTEXT_METHODS.register("toy-listed")
    class ToyListed(ContextMethod):
        """Toy: listed by `attrilens methods`."""

        Options = Opts

    try:
        code, out, _ = cli("methods", "context", "--json")
        row = next(r for r in json.loads(out)["methods"] if r["name"] == "toy-listed")
        assert row["summary"] == "Toy: listed by `attrilens methods`." and row["options"][0]["help"] == (
            "the first source's score")
    finally:
        CONTEXT_METHODS.unregister("toy-listed")


# ---------------------------------------------------------------------------------------------- context
def test_context_option_reaches_a_wrappers_own_option(cli, model_dir, files):
    base = ["context", "--model", model_dir, "--context-file", files / "ctx.txt", "--query", "bank?",
            "--response", " ada", "--method", "hierarchical", "--json"]
    code, out, _ = cli(*base, "--option", "paragraph_k=1")
    assert code == 0
    doc = json.loads(out)
    from attrilens.lm import LM

    want = ContextAttributor(LM.from_pretrained(model_dir), method="hierarchical", paragraph_k=1).attribute(
        CONTEXT, "bank?", " ada")
    assert [s["score"] is None for s in doc["sources"]] == [s is None for s in want.scores]
    assert sum(s["score"] is not None for s in doc["sources"]) < len(doc["sources"])  # only one paragraph kept
    assert [s["score"] for s in doc["sources"]] == pytest.approx(want.scores)
    assert cli(*base, "--option", "top_k=3", "--top-k", "3")[0] == 0  # the same value both ways is one value
    _refused(cli(*base, "--option", "top_k=1", "--top-k", "2"), "top_k is given twice with different values")
    _refused(cli(*base, "--option", "colour=red"), "Unknown option(s) colour for method 'cached+hierarchical'",
             "Valid options: top_k, paragraph_k")
    _refused(cli(*base, "--option", "paragraph_k=some"), "paragraph_k takes int | None")
    _refused(cli(*base, "--option", "paragraph_k"), "--option takes NAME=VALUE")


# ---------------------------------------------------------------------------------------------- inspect
def test_inspect_option_reaches_a_presets_own_option(cli, model_dir):
    base = ["inspect", "--model", model_dir, "--prompt", "the capital of velmora", "--json"]
    code, out, _ = cli(*base, "--preset", "custom", "--option", "target_layers=0", "--layer", "1")
    assert code == 0
    doc = json.loads(out)
    assert doc["preset"] == "custom" and {(c["layer"], c["target_layer"]) for c in doc["cells"]} == {(1, 0)}
    code, out, _ = cli(*base, "--option", "positions=0,-1", "--option", "top_k=2")
    cells = json.loads(out)["cells"]
    assert code == 0 and {c["position"] for c in cells} == {0, len(json.loads(out)["source"]["tokens"]) - 1}
    assert {len(c["top_tokens"]) for c in cells} == {2}
    _refused(cli(*base, "--option", "layers=2", "--layer", "1"), "layers is given twice with different values")
    _refused(cli(*base, "--option", "relation=capital"), "Unknown option(s) relation for the logit-lens preset",
             "Valid options: layers, positions, top_k")
    _refused(cli(*base, "--preset", "cross-model", "--option", "target_model=x"), "cannot be given as text")


# ---------------------------------------------------------------------------------------------- index build
def test_index_build_option_reaches_a_methods_own_option(cli, model_dir, files, tmp_path):
    def build(out, *extra):
        return cli("index", "build", "--model", model_dir, "--corpus", files / "c.jsonl", "--out", tmp_path / out,
                   "--block-len", "12", "--json", *extra)

    code, _, _ = build("ts", "--method", "trackstar", "--proj-dim", "64", "--option", "weights=linear",
                       "--option", "moment_eps=0.01", "--option", "second_moments=estimate", "--option",
                       "moment_sample=4", "--damping", "0.5", "--option", "damping=0.5")
    assert code == 0
    options = json.loads((tmp_path / "ts" / "manifest.json").read_text())["options"]
    assert (options["weights"], options["moment_eps"], options["moment_sample"], options["damping"]) == (
        "linear", 0.01, 4, 0.5)
    assert build("gd", "--method", "grad-dot", "--option", "proj_dim=32")[0] == 0  # the flag's own option, by name
    assert json.loads((tmp_path / "gd" / "manifest.json").read_text())["options"]["proj_dim"] == 32
    _refused(build("x1", "--method", "grad-dot", "--proj-dim", "64", "--option", "proj_dim=32"), "given twice")
    _refused(build("x2", "--method", "grad-dot", "--option", "damping=1"),
             "Unknown option(s) damping for the grad-dot method", "Valid options: block_len, proj_dim, seed, allocation")
    _refused(build("x3", "--method", "trackstar", "--option", "weights=every"), "weights takes one of auto, linear, lora")
    assert not (tmp_path / "x1").exists() and not (tmp_path / "x2").exists()


# ---------------------------------------------------------------------------------------------- train --capture
def test_train_capture_option_reaches_the_captured_methods_option(cli, files, tmp_path):
    train = ["train", "--corpus", files / "c.jsonl", "--layers", "1", "--width", "32", "--epochs", "2",
             "--target-recall", "0"]
    code, _, err = cli(*train, "--out", tmp_path / "m", "--capture", tmp_path / "cap", "--capture-method", "grad-dot",
                       "--option", "allocation=equal", "--option", "proj_dim=64")
    assert code == 0, err
    options = json.loads((tmp_path / "cap" / "manifest.json").read_text())["options"]
    assert (options["allocation"], options["proj_dim"]) == ("equal", 64)
    _refused(cli(*train, "--out", tmp_path / "m2", "--capture", tmp_path / "cap2", "--capture-method", "grad-dot",
                 "--option", "moment_kind=adam"), "Unknown option(s) moment_kind for the grad-dot method")
    _refused(cli(*train, "--out", tmp_path / "m3", "--capture", tmp_path / "cap3", "--capture-proj-dim", "32",
                 "--option", "proj_dim=64"), "proj_dim is given twice with different values")
    _refused(cli(*train, "--out", tmp_path / "m4", "--option", "seed=1"), "Pass --capture DIR too")
