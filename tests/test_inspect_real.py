"""Patchscopes on the two real models (converted once from PyPI, cached): the last-layer logit lens is the model's own
distribution, the identity Patchscope reproduces the clean logits, patched generation is a full patched re-run,
positions index the user's prompt with the chat template on (and no template token is read when it is off, the
default), and texts are read with the model's BOS (Gemma without it is far off its training distribution)."""

from __future__ import annotations

import os

import pytest
import torch

from attrilens.bench.patchscopes import fact_target, pydoc_paragraphs, pydoc_split, sweep_layers
from attrilens.demo.countries import RELATIONS
from attrilens.errors import AttrilensError
from attrilens.lm import LM, Patch
from attrilens.metrics import next_token_agreement
from attrilens.patchscopes import Patchscope, presets
from attrilens.patchscopes.mappings import collect_states, token_rows
from attrilens.patchscopes.patchscope import encode_target, source_prompt
from attrilens.testing import assert_greedy_continuation

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT = "The capital of France is the city of"
TEXT = ("When a name is not bound, an attempt to evaluate it raises a NameError exception, and the interpreter "
        "prints the traceback of the frames that were active.")


@pytest.fixture(scope="module", params=["smollm2-135m-instruct", "gemma3-270m"])
def real(request) -> LM:
    return LM.from_pretrained(request.param)


def plain(lm: LM, text: str) -> list[int]:
    return lm.encode_prompt(text, chat_template=False)


@torch.no_grad()
def own_logprobs(lm: LM, ids: list[int]) -> torch.Tensor:
    """The model's own next-token log-probabilities at every position, straight from the HF model (no hooks)."""
    return torch.log_softmax(lm.model(torch.tensor([ids])).logits[0].float(), -1)


def test_last_layer_logit_lens_is_the_models_own_distribution(real: LM):
    ids = plain(real, TEXT)
    want = own_logprobs(real, ids)
    hs, _ = real.hidden_states([ids], [real.n_layers])
    with torch.no_grad():
        got = torch.log_softmax(real.unembed(hs[real.n_layers][0]).float(), -1)
    assert (got - want).abs().max().item() <= 1e-4
    # the preset's top tokens at layer L carry the same probabilities
    grid = presets.run("logit-lens", real, ids, layer=real.n_layers, top_k=3)
    for cell in grid.cells:
        top = want[cell.position].exp().topk(3)
        assert [t["prob"] for t in cell.top_tokens] == pytest.approx(top.values.tolist(), abs=1e-4)
    hit, surprisal, kl = next_token_agreement(real.unembed(hs[real.n_layers][0]), want)
    assert hit.min().item() == 1.0 and kl.abs().max().item() <= 1e-4
    assert surprisal.tolist() == pytest.approx((-want.max(-1).values).tolist(), abs=1e-4)


def test_identity_patchscope_reproduces_the_clean_logits(real: LM):
    ids = plain(real, TEXT)
    want = own_logprobs(real, ids)
    ps = Patchscope(real, progress=False)
    n, L = len(ids), real.n_layers
    queries = [ps.query(ids, layer, i) for layer in (0, L // 2, L) for i in (0, n // 2, n - 1)]
    # a KV-shared prefix: rows read the last token with the patch at a late position
    queries += [ps.query(ids, layer, i, read_position=-1) for layer, i in ((2, n - 5), (L - 1, n - 2))]
    got = torch.log_softmax(ps.logits(queries), -1)
    for q, row in zip(queries, got, strict=True):
        assert (row - want[q.read_position]).abs().max().item() <= 1e-4, (q.layer, q.position, q.read_position)


def test_patched_generation_is_a_full_patched_rerun(real: LM):
    tids, tpos = presets.placeholder_target(real, fact_target("capital"))
    src = plain(real, "Few maps show the borders of Japan")
    ps = Patchscope(real, progress=False)
    layer = real.n_layers // 3
    q = ps.query(src, layer, -1, target_prompt=tids, target_layer=layer, target_position=tpos)
    h = real.hidden_states([src], [layer])[0][layer][0, -1]
    patch = Patch(0, layer, tpos, h)
    ids = real.generate_ids([tids], max_new_tokens=5, patches=[patch], stop_at_eos=False)[0]
    assert len(ids) == 5
    assert_greedy_continuation(real, tids, ids, [patch])
    assert ps.generate([q], max_new_tokens=5, stop_strings=())[0] == real.tokenizer.decode(
        ids, clean_up_tokenization_spaces=False)
    clean = real.generate_ids([tids], max_new_tokens=5, stop_at_eos=False)[0]
    assert clean != ids  # the patch changed what the target says


def test_positions_index_the_users_prompt_under_the_chat_template(real: LM):
    if not real.tokenizer.chat_template:
        with pytest.raises(AttrilensError, match="chat template was asked for"):
            presets.run("logit-lens", real, PROMPT, chat_template=True)
        return
    ids, start, end = real.prompt_span(PROMPT, chat_template=True)
    assert start > 0 and end < len(ids)  # the template wraps the prompt on both sides
    tok = real.tokenizer
    assert tok.decode(ids[start:end]) == PROMPT
    res = presets.run("logit-lens", real, PROMPT, chat_template=True, layer=real.n_layers, top_k=1)
    assert res.source_tokens == [tok.decode([t]) for t in ids]
    assert [c.position for c in res.cells] == list(range(start, end))  # every position is the user's
    for position, want in ((0, start), (-1, end - 1)):
        res = presets.run("logit-lens", real, PROMPT, chat_template=True, layer=real.n_layers, position=position)
        assert [c.position for c in res.cells] == [want]
        assert res.source_tokens[want] == tok.decode([ids[want]])
        assert ids[want] not in tok.all_special_ids
    assert tok.decode([ids[start]]).strip() == "The" and tok.decode([ids[end - 1]]).strip() == "of"
    # a patched preset reads the same state: token identity from the user's last token = a hand-made patch
    res = presets.run("token-identity", real, PROMPT, chat_template=True, layer=3, position=-1, top_k=1)
    h = real.hidden_states([ids], [3])[0][3][0, end - 1]
    tids = encode_target(real, presets.TOKEN_IDENTITY)
    logits = real.run([tids], patches=[Patch(0, 3, len(tids) - 1, h)]).logits[0, -1]
    assert res.cells[0].position == end - 1
    assert res.cells[0].top_tokens[0]["prob"] == pytest.approx(torch.softmax(logits.float(), -1).max().item(), abs=1e-5)
    assert source_prompt(real.with_chat_template(True), PROMPT).resolve(-1) == end - 1


def test_inspect_reads_no_template_token_by_default(real: LM):
    from attrilens.cli.patchscopes import run_inspect

    ids = plain(real, PROMPT)
    for res in (presets.run("logit-lens", real, PROMPT, layer=1), run_inspect(real, PROMPT, "logit-lens", layer=1)):
        assert res.source_tokens == [real.tokenizer.decode([t]) for t in ids]
        assert [c.position for c in res.cells] == list(range(len(ids)))
    template = set(real.tokenizer.all_special_ids) - {real.tokenizer.bos_token_id}
    assert not template & set(ids)
    assert real.tokenizer.decode([t for t in ids if t != real.tokenizer.bos_token_id]) == PROMPT


def test_texts_are_read_with_the_models_bos(real: LM):
    """Tuned lenses, affine maps and the benchmark read texts as the model reads a plain prompt (Gemma: BOS first)."""
    rows = token_rows(real, [TEXT, PROMPT], max_tokens=16)
    assert rows == [plain(real, TEXT)[:16], plain(real, PROMPT)]
    if real.tokenizer("x")["input_ids"][0] == real.tokenizer.bos_token_id:
        assert rows[0][0] == real.tokenizer.bos_token_id
        without = real.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
        ids = plain(real, TEXT)
        nll_bos = -own_logprobs(real, ids)[torch.arange(1, len(ids) - 1), ids[2:]].mean()
        nll_none = -own_logprobs(real, without)[torch.arange(0, len(without) - 1), without[1:]].mean()
        assert nll_bos < nll_none - 1.0  # the same tokens are far more likely with the BOS the model was trained with
    states = collect_states(real, rows[1:], [1])
    assert torch.equal(states[1], real.hidden_states([rows[1]], [1])[0][1][0])


def test_real_benchmark_targets_and_text(real: LM):
    for relation in RELATIONS:
        tids, pos = presets.placeholder_target(real, fact_target(relation))
        assert real.tokenizer.decode([tids[pos]]).strip() == "x"
        assert pos >= 1 + (tids[0] == real.tokenizer.bos_token_id)  # never the first token (SmolLM2's attention sink)
    fit, held = pydoc_split(40, 20, seed=0)
    assert len(fit) == 40 and len(held) == 20 and not set(fit) & set(held)
    topic_of = {p: t for t, ps in pydoc_paragraphs().items() for p in ps}
    assert not {topic_of[p] for p in fit} & {topic_of[p] for p in held}  # held-out topics, not just paragraphs
    assert sweep_layers(real.n_layers, 4)[-1] == real.n_layers and sweep_layers(real.n_layers, 1) == list(
        range(real.n_layers + 1))


def test_bench_inspect_picks_the_real_suite_for_registered_models(tmp_path):
    from attrilens.bench.patchscopes import choose_suite

    assert choose_suite("gemma3-270m", None, None) == "real"
    assert choose_suite(None, None, None) == "world" and choose_suite("gemma3-270m", tmp_path, None) == "world"
    assert choose_suite(tmp_path, None, "real") == "real"
    with pytest.raises(AttrilensError, match="Unknown benchmark suite 'facts'"):
        choose_suite("gemma3-270m", None, "facts")
    with pytest.raises(AttrilensError, match="not a fact world"):
        choose_suite("gemma3-270m", tmp_path, "real")
    with pytest.raises(AttrilensError, match="needs a real model"):
        choose_suite(None, None, "real")


def test_next_token_agreement_by_hand():
    """precision@1, surprisal and KL(final ‖ read-out) of `bench.metrics` against a hand computation."""
    final = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]]), -1)
    readout = torch.tensor([[0.0, 5.0, 1.0], [1.0, 4.0, 0.0]])
    hit, surprisal, kl = next_token_agreement(readout, final)
    assert hit.tolist() == [0.0, 1.0]
    assert surprisal.tolist() == pytest.approx([-final[0, 1].item(), -final[1, 1].item()])
    q = torch.log_softmax(readout, -1)
    want = [sum(final[r, v].exp().item() * (final[r, v] - q[r, v]).item() for v in range(3)) for r in range(2)]
    assert kl.tolist() == pytest.approx(want, abs=1e-6)
    with pytest.raises(AttrilensError, match="differ in shape"):
        next_token_agreement(readout[:1], final)
