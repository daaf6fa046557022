"""Patchscopes against ground truth on every architecture's tiny config: identity, logit lens, batching, errors."""

from __future__ import annotations

import os

import pytest
import torch

from attrilens.errors import AttrilensError
from attrilens.lm import LM, Patch
from attrilens.patchscopes import InspectResult, Patchscope, fit_affine, presets, sweep
from attrilens.patchscopes.mappings import AffineMap, TunedLens
from attrilens.patchscopes.patchscope import Query
from attrilens.testing import ARCHS, assert_greedy_continuation, random_ids, tiny_lm

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="module", params=ARCHS)
def lm(request) -> LM:
    return tiny_lm(request.param, seed=hash(request.param) % 997 + 1)


def _ids(lm: LM, n: int, seed: int) -> list[int]:
    return random_ids(lm, n, generator=torch.Generator().manual_seed(seed))


def test_identity_configuration_reproduces_clean_logits(lm: LM):
    """S = T, ℓ = ℓ*, i = i*, f = identity: every cell reads the clean logits (both the full and the KV-prefix path)."""
    ids = _ids(lm, 14, seed=1)
    clean = lm.run([ids]).logits[0].float()
    ps = Patchscope(lm, progress=False)
    everything = [ps.query(ids, layer, i) for layer in range(lm.n_layers + 1) for i in range(14)]
    late = [ps.query(ids, layer, i, read_position=-1) for layer in range(lm.n_layers + 1) for i in range(6, 14)]
    for queries in (everything, late):  # position 0 in the first forces a full pass; the second shares a prefix
        got = ps.logits(queries)
        want = torch.stack([clean[q.read_position] for q in queries])
        assert (got - want).abs().max().item() <= 1e-6


def test_patch_into_last_layer_equals_logit_lens(lm: LM):
    """Patching h_ℓ into layer L at the same position gives final-norm + unembedding of h_ℓ (the logit lens)."""
    ids = _ids(lm, 11, seed=2)
    hs, _ = lm.hidden_states([ids])
    ps = Patchscope(lm, progress=False)
    queries = [ps.query(ids, layer, i, target_layer=lm.n_layers) for layer in range(lm.n_layers + 1) for i in (0, 4, -1)]
    got = ps.logits(queries)
    with torch.no_grad():
        want = torch.stack([lm.unembed(hs[q.layer][0, q.position]) for q in queries]).float()
    assert (got - want).abs().max().item() <= 1e-5
    grid = presets.logit_lens(lm, ids)  # the fast preset agrees with the patched path, including layer L (final norm once)
    probs = {(c.layer, c.position): c.top_tokens[0]["prob"] for c in grid.cells}
    for q, row in zip(queries, torch.softmax(want, -1), strict=True):
        assert abs(probs[(q.layer, q.position)] - row.max().item()) <= 1e-5


def test_batched_equals_unbatched_under_left_padding(lm: LM):
    """Rows with different target prompts, lengths, layers and positions in one padded batch = each run alone."""
    src = _ids(lm, 9, seed=3)
    targets = [_ids(lm, n, seed=10 + n) for n in (3, 8, 13, 6)]
    ps = Patchscope(lm, progress=False)
    queries = [ps.query(src, layer, pos, target_prompt=t, target_layer=tl, target_position=tp)
               for (layer, pos, tl, tp), t in zip([(0, 2, 1, 0), (1, -1, 0, -2), (2, 4, 2, 5), (1, 0, 2, -1)], targets, strict=True)]
    batched = ps.logits(queries)
    alone = torch.stack([ps.logits([q])[0] for q in queries])
    assert (batched - alone).abs().max().item() <= 1e-5
    # and against a hand-built single forward with the patch
    hs, _ = lm.hidden_states([src])
    for q, row in zip(queries, batched, strict=True):
        manual = lm.run([list(q.target_ids)], patches=[Patch(0, q.target_layer, q.target_position, hs[q.layer][0, q.position])])
        assert (manual.logits[0, q.read_position].float() - row).abs().max().item() <= 1e-5


def test_shared_prefix_path_matches_full_forward_with_real_patches(lm: LM):
    """Rows sharing a target prompt (KV-cached prefix) give the same logits as full patched forwards."""
    src, tgt = _ids(lm, 10, seed=4), _ids(lm, 12, seed=5)
    ps = Patchscope(lm, progress=False)
    queries = [ps.query(src, layer, i, target_prompt=tgt, target_layer=layer, target_position=p)
               for layer, i, p in [(0, 3, 7), (1, 9, 5), (2, 0, 11), (2, 6, 8)]]
    got = ps.logits(queries)
    hs, _ = lm.hidden_states([src])
    clean = lm.run([tgt]).logits[0, -1].float()
    for q, row in zip(queries, got, strict=True):
        full = lm.run([tgt], patches=[Patch(0, q.target_layer, q.target_position, hs[q.layer][0, q.position])]).logits[0, -1]
        assert (full.float() - row).abs().max().item() <= 1e-5
    assert (got - clean).abs().max().item() > 1e-4  # the patches really changed the read-out


def test_patched_generation_equals_rerunning_the_patched_sequence(lm: LM):
    """Greedy generation with the patch at prefill = argmax of a full patched re-run at every step.

    Up to float noise: the lm fixture's weights change from run to run, and a random tiny model can tie two
    next-token logits.
    """
    src, tgt = _ids(lm, 8, seed=6), _ids(lm, 7, seed=7)
    ps = Patchscope(lm, progress=False)
    q = ps.query(src, 1, 3, target_prompt=tgt, target_layer=1, target_position=2)
    ids = lm.generate_ids([tgt], max_new_tokens=4, patches=[Patch(0, 1, 2, ps.source_states([q])[0])], stop_at_eos=False)[0]
    h = lm.hidden_states([src], [1])[0][1][0, 3]
    assert len(ids) == 4
    assert_greedy_continuation(lm, tgt, ids, [Patch(0, 1, 2, h)])
    text = ps.generate([q], max_new_tokens=4, stop_strings=())[0]
    eos = lm.tokenizer.eos_token_id
    until_eos = ids[: ids.index(eos)] if eos in ids else ids  # Patchscope generation stops at EOS (drawn weights may emit it)
    assert text == lm.tokenizer.decode(until_eos, clean_up_tokenization_spaces=False)


def test_negative_positions_count_from_the_end(lm: LM):
    ids = _ids(lm, 9, seed=8)
    ps = Patchscope(lm, progress=False)
    assert ps.query(ids, 1, -1) == ps.query(ids, 1, 8)
    assert ps.query(ids, 1, -9).position == 0


def test_bad_input_errors(lm: LM):
    ids = _ids(lm, 6, seed=9)
    ps = Patchscope(lm, progress=False)
    with pytest.raises(AttrilensError, match="source position 6 is beyond the prompt's 6 tokens"):
        ps.query(ids, 1, 6)
    with pytest.raises(AttrilensError, match="target position -8 is beyond"):
        ps.query(ids, 1, 0, target_prompt=ids[:4], target_position=-8)
    with pytest.raises(AttrilensError, match=f"Layer {lm.n_layers + 1} is out of range"):
        ps.query(ids, lm.n_layers + 1, 0)
    with pytest.raises(AttrilensError, match="target layer|Layer -9 is out of range"):
        ps.query(ids, 0, 0, target_layer=-9)
    with pytest.raises(AttrilensError, match="before the patched position"):
        ps.query(ids, 0, 0, target_prompt=ids, target_position=4, read_position=2)
    # a patch aimed beyond the target prompt is an error even if built by hand, never a silent no-op
    bad = Query(tuple(ids), 1, 2, tuple(ids[:3]), 1, 5, 2)
    with pytest.raises(AttrilensError, match="Patch position 5 is beyond row 0's 3 tokens"):
        ps.logits([bad])


def test_width_mismatch_and_mapping_shape_errors():
    small, wide = tiny_lm("llama", seed=1), tiny_lm("llama", seed=2, width=48)
    with pytest.raises(AttrilensError, match="width 32 differs from the target's 48 and no mapping"):
        Patchscope(small, wide)
    g = torch.Generator().manual_seed(0)
    wrong = AffineMap(torch.randn(40, 32, generator=g), torch.randn(40, generator=g))
    with pytest.raises(AttrilensError, match="out width is 40 but the target model's width is 48"):
        Patchscope(small, wide, wrong)
    ps = Patchscope(small, wide, lambda h: h[:, :5], progress=False)  # a user callable of the wrong shape
    ids = _ids(small, 5, seed=1)
    with pytest.raises(AttrilensError, match=r"not \(1, 48\)"):
        ps.logits([ps.query(ids, 1, 0, target_prompt=ids)])
    with pytest.raises(AttrilensError, match="takes vectors of width 32 but got width 7"):
        AffineMap(torch.randn(48, 32, generator=g), torch.randn(48, generator=g))(torch.randn(2, 7, generator=g))


def test_cross_model_callable_mapping_patches_the_mapped_state():
    """A user callable maps a source state into a wider target; the target sees exactly f(h)."""
    small, wide = tiny_lm("gpt2", seed=3), tiny_lm("llama", seed=4, width=48)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(48, 32, generator=g) * 0.3
    ps = Patchscope(small, wide, lambda h: h @ w.T, progress=False)
    src, tgt = _ids(small, 7, seed=2), _ids(wide, 6, seed=3)
    q = ps.query(src, 2, 4, target_prompt=tgt, target_layer=1, target_position=3)
    h = small.hidden_states([src], [2])[0][2][0, 4]
    want = wide.run([tgt], patches=[Patch(0, 1, 3, h @ w.T)]).logits[0, -1].float()
    assert (ps.logits([q])[0] - want).abs().max().item() <= 1e-5


def test_fit_affine_recovers_a_planted_map():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(400, 12, generator=g)
    w, b = torch.randn(9, 12, generator=g), torch.randn(9, generator=g)
    m = fit_affine(x, x @ w.T + b)
    assert torch.allclose(m.weight, w, atol=1e-4) and torch.allclose(m.bias, b, atol=1e-4)
    with pytest.raises(AttrilensError, match="paired matrices"):
        fit_affine(x, x[:10])


def test_tuned_lens_starts_at_logit_lens_trains_and_round_trips(tmp_path):
    lm = tiny_lm("llama", seed=6)
    ids = _ids(lm, 10, seed=4)
    zero = TunedLens(lm.n_layers, lm.d_model, lm.fingerprint())
    a = presets.tuned_lens(lm, ids, zero)
    b = presets.logit_lens(lm, ids)
    assert [c.top_tokens for c in a.cells] == [c.top_tokens for c in b.cells]
    texts = ["the capital of velmora is quenth . who founded the bank ? answer : ada"] * 8
    lens = TunedLens.train(lm, texts, steps=30, batch_tokens=128, lr=0.5, progress=False)
    assert lens.weight.abs().sum() > 0 and lens.train_info["final_kl"] >= 0
    path = lens.save(tmp_path / "lens.safetensors")
    back = TunedLens.load(path, lm)
    assert torch.equal(back.weight, lens.weight) and torch.equal(back.bias, lens.bias)
    with pytest.raises(AttrilensError, match="trained for other weights"):
        TunedLens.load(path, tiny_lm("llama", seed=7))
    with pytest.raises(AttrilensError, match="maps into the last layer"):
        lens(torch.randn(2, lm.d_model), 0, 1)
    with pytest.raises(AttrilensError, match="does not exist"):
        TunedLens.load(tmp_path / "missing.safetensors")


def test_sweep_result_schema_and_round_trip():
    lm = tiny_lm("qwen2", seed=8)
    ps = Patchscope(lm, chunk_size=4, progress=False)  # many chunks: bounded memory
    res = sweep(ps, "the capital of velmora", presets.TOKEN_IDENTITY, top_k=3, max_new_tokens=2)
    n = len(res.source_tokens)
    assert len(res.cells) == (lm.n_layers + 1) * n
    assert {(c.layer, c.position) for c in res.cells} == {(a, i) for a in range(lm.n_layers + 1) for i in range(n)}
    d = res.to_dict()
    assert list(d) == ["schema", "preset", "source", "target", "cells", "cost"]
    assert d["schema"] == "attrilens/inspect/v1" and d["target"]["prompt"] == presets.TOKEN_IDENTITY
    assert set(d["cells"][0]) == {"layer", "position", "target_layer", "top_tokens", "generation"}
    assert set(d["cost"]) >= {"forward_passes", "seconds"} and d["cost"]["forward_passes"] > 1
    probs = [t["prob"] for t in d["cells"][0]["top_tokens"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < probs[-1] and sum(probs) <= 1 + 1e-6
    assert all(isinstance(c["generation"], str) for c in d["cells"])
    assert InspectResult.from_json(res.to_json()).to_dict() == d
    ll = sweep(ps, "the capital", over="layer_layer", positions=[-1])
    assert len(ll.cells) == (lm.n_layers + 1) ** 2
    with pytest.raises(AttrilensError, match="Expected a 'attrilens/inspect/v1' document"):
        InspectResult.from_json('{"schema": "attrilens/context/v1"}')
    with pytest.raises(AttrilensError, match="over must be"):
        sweep(ps, "the capital", over="diagonal")
