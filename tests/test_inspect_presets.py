"""Patchscope presets, the `inspect` CLI verb and the benchmark's item builders (tiny models, tiny fact world)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from attrilens.demo.report import inspect_section
from attrilens.errors import AttrilensError
from attrilens.lm import Patch
from attrilens.patchscopes import InspectResult, presets
from attrilens.patchscopes.patchscope import Patchscope
from attrilens.testing import tiny_lm

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="module")
def lm():
    return tiny_lm("llama", seed=11)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from attrilens.workflows.world import make_world

    out = tmp_path_factory.mktemp("world")
    make_world(out, seed=3, n_entities=6, n_train_episodes=4, n_heldout_episodes=2, n_copy_docs=2, n_copy_eval=2)
    return out


def test_token_identity_and_bare_targets(lm):
    res = presets.token_identity(lm, "the capital of velmora", layers=[0, 2], positions=[-1, 1])
    assert res.preset == "token-identity" and res.target_prompt.endswith("hello -> hello\n?")
    assert [(c.layer, c.target_layer) for c in res.cells] == [(0, 0), (0, 0), (2, 2), (2, 2)]
    bare = presets.token_identity(lm, "the capital of velmora", bare=True, layers=[1], positions=[-1])
    assert bare.preset == "token-identity-bare" and bare.target_prompt == "?" and len(bare.cells) == 1


def test_attribute_extraction_patches_the_placeholder(lm):
    from attrilens.workflows.world import relation_template

    assert relation_template("capital") == "The capital of x is"
    tids, pos = presets.placeholder_target(lm, "The capital of x is")
    assert lm.tokenizer.decode([tids[pos]]).strip() == "x"
    res = presets.attribute_extraction(lm, "velmora", "capital", layers=[1], max_new_tokens=3)
    cell = res.cells[0]
    # ground truth: one hand-made patched run of the target, read at its last token
    h = lm.hidden_states([lm.encode_prompt("velmora")], [1])[0][1][0, -1]
    logits = lm.run([tids], patches=[Patch(0, 1, pos, h)]).logits[0, -1]
    assert abs(cell.top_tokens[0]["prob"] - torch.softmax(logits.float(), -1).max().item()) < 1e-5
    assert isinstance(cell.generation, str)
    with pytest.raises(AttrilensError, match="Unknown relation 'birthplace'"):
        presets.attribute_extraction(lm, "velmora", "birthplace")
    with pytest.raises(AttrilensError, match="no standalone 'x'"):
        presets.attribute_extraction(lm, "velmora", template="The capital of y is")
    with pytest.raises(AttrilensError, match="exactly one of relation"):
        presets.attribute_extraction(lm, "velmora")


def test_entity_description_uses_world_facts(lm, world):
    from attrilens.jsonl import load_jsonl
    from attrilens.workflows.world.generate import description_shots

    shots = description_shots(world)
    template = presets.description_template(shots)
    first = load_jsonl(world / "facts.jsonl", require=())[0]
    assert template.startswith(f"{first['entity']}: ") and template.endswith("\nx:")
    res = presets.entity_description(lm, "velmora", layers=[2], shots=shots, max_new_tokens=3)
    assert res.target_prompt == template and res.cells[0].generation is not None
    assert presets.description_template(None).startswith("Paris: ")


def test_multi_hop_single_cell(lm):
    res = presets.multi_hop(lm, "the capital of velmora is", "The currency of x is the", layer=2, target_layer=1)
    assert [(c.layer, c.target_layer) for c in res.cells] == [(2, 1)] and res.preset == "multi-hop"


def test_cross_model_fits_affine_maps_between_depths():
    small, big = tiny_lm("llama", seed=12, layers=2, width=32), tiny_lm("llama", seed=13, layers=4, width=48)
    texts = ["the capital of velmora is quenth . who founded the bank ? answer : ada tolm ostra kesh"] * 6
    maps = presets.fit_cross_model(small, big, texts)
    assert sorted(maps.maps) == [(0, 0), (1, 2), (2, 4)]
    res = presets.cross_model(small, big, "the capital of velmora", mapping=maps, positions=[-1])
    assert [(c.layer, c.target_layer) for c in res.cells] == [(0, 0), (1, 2), (2, 4)]
    with pytest.raises(AttrilensError, match="needs a fitted mapping or texts"):
        presets.cross_model(small, big, "the capital")
    with pytest.raises(AttrilensError, match="No map fitted from source layer 1 to target layer 1"):
        Patchscope(small, big, maps, progress=False).logits([Patchscope(small, big, maps).query("cat", 1, -1, target_layer=1)])


def test_demo_section_is_a_full_logit_lens_grid(lm):
    res = inspect_section(lm, "the capital of velmora is")
    assert isinstance(res, InspectResult) and res.preset == "logit-lens"
    assert len(res.cells) == (lm.n_layers + 1) * len(res.source_tokens)
    assert res.cost.forward_passes == 1
    grid = res.grid()
    assert grid.shape == (lm.n_layers + 1, len(res.source_tokens))


def test_cli_inspect_json_and_errors(tmp_path, lm):
    from typer.testing import CliRunner

    from attrilens.cli import app

    model_dir = tmp_path / "m"
    lm.save_pretrained(model_dir)
    runner = CliRunner()
    out = runner.invoke(app, ["inspect", "--model", str(model_dir), "--prompt", "the capital of velmora",
                              "--preset", "token_identity", "--layer", "1", "--position", "-1", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["schema"] == "attrilens/inspect/v1" and doc["preset"] == "token-identity"
    assert [(c["layer"], c["position"]) for c in doc["cells"]] == [(1, len(doc["source"]["tokens"]) - 1)]
    custom = runner.invoke(app, ["inspect", "--model", str(model_dir), "--prompt", "velmora", "--target-prompt",
                                 "cat -> cat\n?", "--layer", "2", "--target-layer", "0", "--json"])
    assert custom.exit_code == 0, custom.output
    assert {c["target_layer"] for c in json.loads(custom.stdout)["cells"]} == {0}
    bad = runner.invoke(app, ["inspect", "--model", str(model_dir), "--prompt", "velmora", "--preset", "xray"])
    assert isinstance(bad.exception, AttrilensError) and "Unknown preset 'xray'" in str(bad.exception)
    far = runner.invoke(app, ["inspect", "--model", str(model_dir), "--prompt", "velmora", "--position", "40"])
    assert isinstance(far.exception, AttrilensError) and "position 40 is beyond" in str(far.exception)


def test_multi_hop_items_put_the_bridge_entity_in_the_context(world):
    from attrilens.bench.patchscopes import multi_hop_items
    from attrilens.jsonl import load_jsonl

    facts = load_jsonl(world / "facts.jsonl", require=())
    items = multi_hop_items(facts, seed=0)
    assert items and all(it["relation"] != "founder" for it in items)
    for it in items:
        assert f"the capital city is {it['hop1_answer'].strip()}." in it["hop1"]
        assert it["hop2_template"].count(" x ") == 1 and it["answer"].startswith(" ")
