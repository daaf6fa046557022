"""Ground-truth checks of the LM adapter on every architecture's tiny random config (fp32, fresh inputs)."""

from __future__ import annotations

import os

import pytest
import torch

from attrilens.errors import AttrilensError
from attrilens.lm import LM, Patch
from attrilens.testing import ARCHS, assert_greedy_continuation, random_ids, tiny_lm

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module", params=ARCHS)
def lm(request) -> LM:
    return tiny_lm(request.param, seed=hash(request.param) % 1000)


def _pairs(lm: LM, seed: int, n: int = 4):
    g = torch.Generator().manual_seed(seed)
    lens_p = torch.randint(3, 20, (n,), generator=g).tolist()
    lens_r = torch.randint(1, 8, (n,), generator=g).tolist()
    return [random_ids(lm, a, generator=g) for a in lens_p], [random_ids(lm, b, generator=g) for b in lens_r]


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_batched_logprobs_equal_unbatched(lm: LM, padding_side: str):
    prompts, responses = _pairs(lm, seed=11)
    batched = lm.logprobs_ids(prompts, responses, batch_size=4, padding_side=padding_side)
    for p, r, b in zip(prompts, responses, batched, strict=True):
        single = lm.logprobs_ids([p], [r], batch_size=1)[0]
        assert b.shape == (len(r),)
        assert torch.allclose(b, single, atol=1e-5), (b - single).abs().max()
        assert (single < 0).all()


def test_logprobs_match_manual_forward(lm: LM):
    prompts, responses = _pairs(lm, seed=5, n=1)
    ids = torch.tensor([prompts[0] + responses[0]])
    logits = lm.model(input_ids=ids).logits.float()
    logp = torch.log_softmax(logits, -1)[0]
    n = len(prompts[0])
    manual = torch.stack([logp[n - 1 + t, tok] for t, tok in enumerate(responses[0])])
    assert torch.allclose(lm.logprobs_ids(prompts, responses)[0], manual, atol=1e-5)


def test_prefix_cache_continuation_equals_full_forward(lm: LM):
    g = torch.Generator().manual_seed(7)
    prefix = random_ids(lm, 24, generator=g)
    keep = [24, 10, 17, 3]
    suffixes = [random_ids(lm, n, generator=g) for n in (5, 9, 2, 12)]
    cached = lm.prefix_cache(prefix)
    ext = lm.extend(cached, keep, suffixes)
    for r, (k, s) in enumerate(zip(keep, suffixes, strict=True)):
        full = lm.run([prefix[:k] + s]).logits[0, k:]
        assert torch.allclose(ext.logits[r, : len(s)], full, atol=1e-5), (ext.logits[r, : len(s)] - full).abs().max()
    # the cached prefix is not modified by extending it
    again = lm.extend(cached, [24], [suffixes[0]])
    assert torch.allclose(again.logits[0], ext.logits[0, : len(suffixes[0])], atol=1e-5)


def test_identity_patch_reproduces_clean_logits(lm: LM):
    g = torch.Generator().manual_seed(3)
    seqs = [random_ids(lm, n, generator=g) for n in (12, 7, 15)]
    layers = list(range(lm.n_layers + 1))
    clean = lm.run(seqs, read_layers=layers, padding_side="left")
    patches = []
    for row, seq in enumerate(seqs):
        for layer in layers:
            pos = (row * 3 + layer) % len(seq)
            col = clean.offsets[row] + pos
            patches.append(Patch(row, layer, pos, clean.hidden[layer][row, col]))
    patched = lm.run(seqs, patches=patches, padding_side="left")
    mask = clean.attention_mask.bool()
    assert torch.allclose(patched.logits[mask], clean.logits[mask], atol=1e-6)


def test_patch_changes_nothing_before_its_position(lm: LM):
    g = torch.Generator().manual_seed(9)
    seq = random_ids(lm, 14, generator=g)
    clean = lm.run([seq]).logits[0]
    for layer in (0, 1, lm.n_layers):
        pos = 6
        noise = torch.randn(lm.d_model, generator=g) * 5
        patched = lm.run([seq], patches=[Patch(0, layer, pos, noise)]).logits[0]
        assert torch.allclose(patched[:pos], clean[:pos], atol=1e-6)
        assert not torch.allclose(patched[pos:], clean[pos:], atol=1e-3)


def test_last_layer_patch_equals_unembed(lm: LM):
    g = torch.Generator().manual_seed(21)
    seq = random_ids(lm, 10, generator=g)
    h = torch.randn(lm.d_model, generator=g)
    patched = lm.run([seq], patches=[Patch(0, lm.n_layers, 4, h)]).logits[0, 4]
    assert torch.allclose(patched, lm.unembed(h[None])[0], atol=1e-5)


def test_generation_with_patch_matches_manual_greedy(lm: LM):
    g = torch.Generator().manual_seed(13)
    prompts = [random_ids(lm, 8, generator=g), random_ids(lm, 5, generator=g)]
    h = torch.randn(lm.d_model, generator=g) * 3
    patch = Patch(1, 1, 2, h)
    out = lm.generate_ids(prompts, max_new_tokens=5, patches=[patch], stop_at_eos=False)

    # reference: a full re-run of the sequence at every step (no cache), with the patch on row 1 only
    assert len(out[1]) == len(out[0]) == 5
    assert_greedy_continuation(lm, prompts[1], out[1], [Patch(0, 1, 2, h)])
    assert_greedy_continuation(lm, prompts[0], out[0])  # the patch of row 1 does not leak into row 0


def test_bad_patches_raise(lm: LM):
    seq = [5, 6, 7, 8]
    with pytest.raises(AttrilensError, match="beyond row 0's 4 tokens"):
        lm.run([seq], patches=[Patch(0, 1, 4, torch.randn(lm.d_model))])
    with pytest.raises(AttrilensError, match="out of range"):
        lm.run([seq], patches=[Patch(0, lm.n_layers + 1, 1, torch.randn(lm.d_model))])
    with pytest.raises(AttrilensError, match="residual width"):
        lm.run([seq], patches=[Patch(0, 1, 1, torch.randn(lm.d_model + 1))])


def test_negative_positions_count_from_end(lm: LM):
    g = torch.Generator().manual_seed(4)
    seq = random_ids(lm, 9, generator=g)
    h = torch.randn(lm.d_model, generator=g)
    a = lm.run([seq], patches=[Patch(0, 1, -1, h)]).logits
    b = lm.run([seq], patches=[Patch(0, 1, 8, h)]).logits
    assert torch.equal(a, b)


def test_bad_text_input_errors():
    lm = tiny_lm("gpt2")
    with pytest.raises(AttrilensError, match="prompt is empty"):
        lm.logprobs("", "x")
    with pytest.raises(AttrilensError, match="longer than the model's context"):
        lm.encode_prompt("the " * 400)
    with pytest.raises(AttrilensError, match="Got 2 prompts but 1 responses"):
        lm.logprobs(["a", "b"], ["c"])


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(AttrilensError, match="does not exist"):
        LM.from_pretrained(tmp_path / "nope")
    with pytest.raises(AttrilensError, match="no config.json"):
        LM.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "vit"}')
    with pytest.raises(AttrilensError, match="not a causal LM"):
        LM.from_pretrained(tmp_path)


def test_save_load_roundtrip_and_fingerprint(tmp_path):
    lm = tiny_lm("llama", seed=1)
    lm.save_pretrained(tmp_path)
    back = LM.from_pretrained(tmp_path)
    assert back.fingerprint() == lm.fingerprint()
    assert tiny_lm("llama", seed=2).fingerprint() != lm.fingerprint()
    out = back.logprobs("the capital of", " velmora")[0]
    assert torch.allclose(out, lm.logprobs("the capital of", " velmora")[0], atol=1e-6)


def test_unknown_layout_gets_clear_error():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "oddball", "num_hidden_layers": 3})()

        def get_output_embeddings(self):
            return None

    with pytest.raises(AttrilensError, match="'oddball'"):
        LM(Odd(), tiny_lm("gpt2").tokenizer)


def test_chat_template_applied_when_present_and_can_be_turned_off():
    import copy

    base = tiny_lm("llama", seed=3)
    tok = copy.deepcopy(base.tokenizer)
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
    with_template = LM(base.model, tok)
    assert with_template.use_chat_template
    assert with_template.format_prompt("the cat") == "<user>the cat<a>"
    ids = with_template.encode_prompt("the cat")
    assert tok.decode(ids) == "<user>the cat<a>"
    plain = LM(base.model, tok, chat_template=False)
    assert plain.format_prompt("the cat") == "the cat"
    a = with_template.logprobs("the cat", " is")[0]
    b = plain.logprobs("the cat", " is")[0]
    assert a.shape == b.shape and not torch.allclose(a, b)
    with pytest.raises(AttrilensError, match="has no chat template"):
        LM(base.model, base.tokenizer, chat_template=True)


def test_response_that_does_not_round_trip_is_rejected():
    import copy

    from tokenizers import normalizers

    base = tiny_lm("gpt2")
    tok = copy.deepcopy(base.tokenizer)
    tok.backend_tokenizer.normalizer = normalizers.Lowercase()
    lm = LM(base.model, tok)
    assert lm.encode_response(" the cat")
    with pytest.raises(AttrilensError, match="does not round-trip"):
        lm.encode_response(" The Cat")
    with pytest.raises(AttrilensError, match="cannot be tokenized"):
        base.encode_response("caf\udce9")


@pytest.mark.parametrize("arch", ARCHS)
def test_early_exit_is_the_logit_lens_at_its_layer(arch: str):
    lm = tiny_lm(arch, seed=5, layers=3)
    g = torch.Generator().manual_seed(len(arch))
    rows = [random_ids(lm, 9, generator=g), random_ids(lm, 6, generator=g)]
    for k in (1, 2):
        proxy = lm.early_exit(k)
        assert proxy.n_layers == k and proxy.exit_layer == k and lm.n_layers == 3
        hs, _ = lm.hidden_states(rows, [k])
        out = proxy.run(rows)
        for r, ids in enumerate(rows):
            want = lm.unembed(hs[k][r, : len(ids)])
            assert (out.logits[r, : len(ids)] - want).abs().max() <= 1e-4
        # the view shares weights and caches like any LM: prefix + extension equals a full pass
        prefix = proxy.prefix_cache(rows[0][:5])
        ext = proxy.extend(prefix, [3], [rows[0][3:]])
        assert (ext.logits[0] - out.logits[0, 3:9]).abs().max() <= 1e-4
    assert lm.run(rows).logits.shape == out.logits.shape  # the original model still has all its blocks
    with pytest.raises(AttrilensError, match="keeps 1..2 of this model's 3 blocks"):
        lm.early_exit(3)
