"""Lens 2 maths: fast = vmap features, projections keep inner products, R^(-1/2), λ, DataInf and TracIn formulas."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from attrilens.errors import AttrilensError
from attrilens.testing import ARCHS, random_ids, tiny_lm
from attrilens.training.corpus import make_corpus, read_documents
from attrilens.training.gradients import Example, FactoredScale, Featurizer, weight_modules
from attrilens.training.methods.trackstar import TrackStarOptions
from attrilens.training.moments import estimate_second_moments, moment_scales
from attrilens.training.preconditioning import fit_whitening, mixing_lambda
from attrilens.training.projection import (
    LayerProjection,
    allocate,
    default_proj_dim,
    gaussian,
    make_projections,
    project_full,
    side_length,
)

torch.set_num_threads(1)  # small ops: 2 threads on a loaded 2-core VM are far slower


def _examples(lm, lengths, seed):
    g = torch.Generator().manual_seed(seed)
    return [Example.block(random_ids(lm, n, generator=g), f"ex-{i}") for i, n in enumerate(lengths)]


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("arch", ARCHS)
def test_fast_path_equals_vmap_reference(arch):
    lm = tiny_lm(arch, seed=11, attn_implementation="eager")
    examples = _examples(lm, [5, 11, 8, 13, 6], seed=int(torch.randint(0, 10_000, (1,))))
    modules = weight_modules(lm.model)
    g = torch.Generator().manual_seed(5)
    scales = {n: torch.rand(Featurizer(lm, proj_dim=None).shapes[n], generator=g) + 0.5 for n in modules}
    shapes = Featurizer(lm, proj_dim=None).shapes
    factored = {n: FactoredScale(torch.rand(shapes[n][0], generator=g) + 0.5, torch.rand(shapes[n][1], generator=g) + 0.5)
                for n in modules}
    for proj_dim, sc in ((None, None), (300, None), (300, scales), (300, factored), (None, factored)):
        f = Featurizer(lm, proj_dim=proj_dim, seed=3, scales=sc)
        fast = f.features(examples, batch_size=2)
        ref = f.features_vmap(examples, batch_size=5)
        assert fast.shape == ref.shape == (5, f.dim)
        assert float(ref.norm()) > 0
        assert _rel(fast, ref) <= 1e-4, (arch, proj_dim, type(sc))
    # the factored scale is the dense one r cᵀ: same features through the elementwise path
    dense = Featurizer(lm, proj_dim=300, seed=3, scales={n: s.full() for n, s in factored.items()})
    assert _rel(Featurizer(lm, proj_dim=300, seed=3, scales=factored).features(examples), dense.features(examples)) <= 1e-4


def test_large_layer_projection_order_gives_the_same_product():
    g = torch.Generator().manual_seed(int(torch.randint(0, 10_000, (1,))))
    grad = torch.randn(2, 3000, 60, generator=g)
    proj = LayerProjection(torch.randn(1500, 3000, generator=g) / 40, torch.randn(7, 60, generator=g) / 3)
    want = torch.einsum("ko,boi,ji->bkj", proj.left.double(), grad.double(), proj.right.double()).reshape(2, -1)
    assert 1500 * 3000 * 60 > 2**28  # takes the P_R-first branch
    assert _rel(project_full(grad, proj).double(), want) < 1e-5


def _batch_gradients(f, batch):
    """Reference: the gradient of the batch's mean token loss, from the vmap per-example gradients."""
    full = f.full_gradients(batch)
    tokens = sum(sum(e.mask[1:]) for e in batch)
    return {n: g.double().sum(0) / tokens for n, g in full.items()}


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_estimated_second_moments_match_squared_batch_gradients(arch):
    lm = tiny_lm(arch, seed=5, attn_implementation="eager")
    examples = _examples(lm, [7, 12, 5, 9, 10], seed=int(torch.randint(0, 10_000, (1,))))
    f = Featurizer(lm, proj_dim=None)
    for batch_size in (2, 1):  # per-batch gradients, and per-example ones
        batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
        want = {n: sum(_batch_gradients(f, b)[n] ** 2 for b in batches) / len(batches) for n in f.modules}
        adam = estimate_second_moments(f, examples, kind="adam", batch_size=batch_size)
        fact = estimate_second_moments(f, examples, kind="adafactor", batch_size=batch_size)
        for n in f.modules:
            assert float(want[n].norm()) > 0
            assert _rel(adam[n].double(), want[n]) <= 1e-4, (arch, n, batch_size)
            assert _rel(fact[n][0].double(), want[n].mean(1)) <= 1e-4 and _rel(fact[n][1].double(), want[n].mean(0)) <= 1e-4
    with pytest.raises(AttrilensError, match="Unknown second-moment estimate 'shampoo'"):
        estimate_second_moments(f, examples, kind="shampoo")


def test_moment_scales_are_the_damped_inverse_square_roots():
    g = torch.Generator().manual_seed(3)
    v = {"a": torch.rand(6, 4, generator=g) ** 4, "b": torch.rand(3, 5, generator=g) ** 4}
    v["a"][0] = 0.0  # a row the sample never moved: finite, capped by ε·mean(v)
    mean = (v["a"].sum() + v["b"].sum()) / (24 + 15)
    s = moment_scales(v, 1e-3)
    for n in v:
        assert torch.allclose(s[n], (v[n] + 1e-3 * mean).rsqrt(), rtol=1e-5)
    assert torch.isfinite(s["a"]).all() and float(s["a"][0].max()) == pytest.approx(float((1e-3 * mean).rsqrt()), rel=1e-5)
    r, c = torch.rand(6, generator=g) + 0.1, torch.rand(4, generator=g) + 0.1
    fs = moment_scales({"a": (r, c)}, 1e-3)["a"]
    assert isinstance(fs, FactoredScale)
    floor = 1e-3 * float(c.mean())  # the mean of r cᵀ / mean(r) is mean(c)
    rr, cc = r + floor, c + floor
    assert torch.allclose(fs.full(), (rr[:, None] * cc[None, :] / rr.mean()).rsqrt(), rtol=1e-5)
    with pytest.raises(AttrilensError, match="moment_eps must be positive"):
        moment_scales(v, 0.0)


def test_default_projection_size_rule():
    assert default_proj_dim(211) == 2**16  # SmolLM2-135M: 30 layers × 7 + the unembedding
    assert default_proj_dim(127) == 2**15  # Gemma-3-270M: 18 × 7 + 1
    assert default_proj_dim(29) == 2**13  # the demo target: 4 × 7 + 1
    assert default_proj_dim(3) == 2**12 and default_proj_dim(10_000) == 2**16
    with pytest.raises(AttrilensError, match="no weight matrices"):
        default_proj_dim(0)
    with pytest.raises(AttrilensError, match="Unknown second_moments 'adam'.*--second-moments"):
        TrackStarOptions(second_moments="adam")
    with pytest.raises(AttrilensError, match="Unknown moment_kind"):
        TrackStarOptions(moment_kind="sgd")


def test_gpt2_conv1d_weights_use_out_in_orientation():
    lm = tiny_lm("gpt2", seed=2, attn_implementation="eager")
    f = Featurizer(lm, proj_dim=None)
    assert f.shapes["transformer.h.0.attn.c_attn"] == (96, 32)  # Conv1D weight is stored (in, out) = (32, 96)
    ex = _examples(lm, [9], seed=4)
    grads = f.full_gradients(ex)
    # autograd on the model's own parameter agrees after transposing
    ids = torch.tensor([ex[0].ids])
    lm.model.zero_grad()
    logits = lm.model(input_ids=ids).logits
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
    loss.backward()
    w = lm.model.get_submodule("transformer.h.0.attn.c_attn").weight
    assert torch.allclose(grads["transformer.h.0.attn.c_attn"][0], w.grad.T, rtol=1e-4, atol=1e-6)
    lm.model.zero_grad()


def test_query_mask_counts_only_chosen_response_tokens():
    lm = tiny_lm("llama", seed=1)
    g = torch.Generator().manual_seed(9)
    p, r = random_ids(lm, 6, generator=g), random_ids(lm, 4, generator=g)
    ex = Example.response(p, r, tokens=[1, -1])
    assert ex.mask == [0.0] * 6 + [0, 1, 0, 1]
    with pytest.raises(AttrilensError, match="outside the response's 4 tokens"):
        Example.response(p, r, tokens=[4])
    f = Featurizer(lm, proj_dim=200)
    full = f.features([Example.response(p, r)])
    part = f.features([ex])
    assert _rel(part, full) > 1e-3  # the selection changes the gradient


def test_projection_preserves_inner_products_in_expectation():
    g = torch.Generator().manual_seed(int(torch.randint(0, 10_000, (1,))))
    a = torch.randn(1, 40, 30, generator=g)
    b = a + 0.5 * torch.randn(1, 40, 30, generator=g)
    true = float((a * b).sum())
    est = []
    for seed in range(300):
        proj = make_projections({"w": (40, 30)}, 64, seed)["w"]
        est.append(float((project_full(a, proj) * project_full(b, proj)).sum()))
    est = torch.tensor(est)
    assert abs(float(est.mean()) - true) < 4 * float(est.std()) / len(est) ** 0.5 + 1e-6
    assert abs(float(est.mean()) / true - 1) < 0.05  # right JL scale (1/k per side would be off by ~8×)


def test_projection_is_seeded_and_sized():
    shapes = {"a": (64, 32), "b": (300, 32)}
    s = side_length(shapes, 1024)
    assert sum(min(o, s) * min(i, s) for o, i in shapes.values()) <= 1024
    assert sum(min(o, s + 1) * min(i, s + 1) for o, i in shapes.values()) > 1024
    assert torch.equal(gaussian(8, 5, 1, "a", "left"), gaussian(8, 5, 1, "a", "left"))
    assert not torch.equal(gaussian(8, 5, 1, "a", "left"), gaussian(8, 5, 2, "a", "left"))
    with pytest.raises(AttrilensError, match="smaller than the 2 weight matrices"):
        side_length(shapes, 1)


def test_proportional_allocation_follows_weight_size():
    shapes = {"attn": (128, 128), "mlp": (352, 128), "unembed": (2048, 128)}
    sides = allocate(shapes, 4096)
    total = sum(a * b for a, b in sides.values())
    assert 0.9 * 4096 < total <= 4096
    share = {n: a * b / total for n, (a, b) in sides.items()}
    size = {n: o * i / sum(o * i for o, i in shapes.values()) for n, (o, i) in shapes.items()}
    for n in shapes:  # features in proportion to weights (up to rounding of the side lengths)
        assert abs(share[n] - size[n]) < 0.1 * size[n] + 0.02
    assert sides["unembed"][0] > 4 * allocate(shapes, 4096, "equal")["unembed"][0]  # LoGra: 36 × 36 for all
    assert all(a >= 1 and b >= 1 for a, b in allocate(shapes, 3).values())
    with pytest.raises(AttrilensError, match="allocation 'even'"):
        allocate(shapes, 4096, "even")


def _dense_inv_sqrt(r, delta):
    e, v = torch.linalg.eigh(r.double())
    return (v * (e.clamp(min=0) + delta).rsqrt()) @ v.T


@pytest.mark.parametrize("damping", [0.2, 1e-2, 1e-4])  # 1e-2: the default; 1e-4: a ridge far below the spectrum
@pytest.mark.parametrize("n_train", [10, 80])  # fewer rows than dims (thin path) and more (d × d path)
def test_whitening_matches_dense_inverse_square_root(n_train, damping):
    g = torch.Generator().manual_seed(n_train)
    d = 24
    train = torch.randn(n_train, d, generator=g) * torch.linspace(0.1, 3, d)
    ev = torch.randn(7, d, generator=g)
    w = fit_whitening(train, ev, lam=0.3, damping=damping)
    r = 0.7 * train.double().T @ train.double() / n_train + 0.3 * ev.double().T @ ev.double() / 7
    delta = damping * float(torch.trace(r)) / min(d, n_train + 7)  # mean non-zero eigenvalue (rank = rows or d)
    x = torch.randn(5, d, generator=g)
    assert torch.allclose(w.apply(x).double(), x.double() @ _dense_inv_sqrt(r, delta), rtol=1e-4, atol=1e-5)


def test_mixing_lambda_crosses_eigenvalue_curves():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(200, 16, generator=g) * torch.linspace(3, 0.2, 16)
    lam, k = mixing_lambda(base * 2.0, base, k=4)  # eval eigenvalues are 4× the train ones
    assert k == 4
    assert lam == pytest.approx(1 / 5, rel=1e-6)
    with pytest.raises(AttrilensError, match="λ must lie in"):
        fit_whitening(base, base, lam=1.5)
    with pytest.raises(AttrilensError, match="needs evaluation queries"):
        fit_whitening(base, None, lam=0.5)
    with pytest.raises(AttrilensError, match="damping must be positive"):
        TrackStarOptions(damping=0.0)


def test_corpus_blocks_have_stable_ids_and_errors_name_the_line(tmp_path):
    lm = tiny_lm("llama")
    text = " ".join(["the capital of velmora is quenth ."] * 12)
    c = make_corpus([{"id": "doc-00042", "text": text}, {"id": "doc-7", "text": "hello cat"}], lm.tokenizer, block_len=16)
    assert c.block_id(0) == "doc-00042#0" and c.block_id(1) == "doc-00042#1"
    assert all(len(t) <= 16 for t in c.tokens)
    assert c.tokens[-1][-1] == lm.tokenizer.eos_token_id and c.docs[-1] == "doc-7"
    assert c.neighbours(1) == [c.texts[0], c.texts[2]]
    again = make_corpus([{"id": "doc-00042", "text": text}, {"id": "doc-7", "text": "hello cat"}], lm.tokenizer, block_len=16)
    changed = make_corpus([{"id": "doc-00042", "text": text}, {"id": "doc-7", "text": "hello dog"}], lm.tokenizer, block_len=16)
    assert again.fingerprint == c.fingerprint != changed.fingerprint
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": "  "}\n')
    with pytest.raises(AttrilensError, match=r"c.jsonl:2 has no text"):
        read_documents(bad)
    bad.write_text('{"id": "a", "text": "fine"}\n{"id": "a", "text": "again"}\n')
    with pytest.raises(AttrilensError, match="occurs twice"):
        read_documents(bad)
    with pytest.raises(AttrilensError, match="does not exist"):
        read_documents(tmp_path / "missing.jsonl")


def test_nan_gradient_names_the_example():
    lm = tiny_lm("llama", seed=4)
    g = torch.Generator().manual_seed(2)
    ok = [Example.block(random_ids(lm, 8, generator=g), f"doc-{i}#0") for i in range(3)]
    poison = 250
    ok = [Example(e.ids[:-1] + [poison if i == 1 else 251 - 10], e.mask, e.name) for i, e in enumerate(ok)]
    with torch.no_grad():
        lm.arch.embed.weight[poison] = float("nan")
    with pytest.raises(AttrilensError, match=r"example doc-1#0 contains NaN or inf"):
        Featurizer(lm, proj_dim=100).features(ok, batch_size=3)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_exact_inner_products_from_token_grams_match_full_gradients(arch):
    from attrilens.training.fidelity import gram_inner_products

    lm = tiny_lm(arch, seed=6, attn_implementation="eager")
    a = _examples(lm, [6, 9, 4], seed=int(torch.randint(0, 10_000, (1,))))
    b = _examples(lm, [8, 5, 11, 7], seed=int(torch.randint(0, 10_000, (1,))))
    f = Featurizer(lm, proj_dim=None)
    g = torch.Generator().manual_seed(1)
    factored = {n: FactoredScale(torch.rand(o, generator=g) + 0.5, torch.rand(i, generator=g) + 0.5)
                for n, (o, i) in f.shapes.items()}
    for scales in (None, factored):
        f.set_scales(scales)
        want = f.features_vmap(a).double() @ f.features_vmap(b).double().T  # full (scaled) gradients, flattened
        got = gram_inner_products(f.captured_gradients(a), f.captured_gradients(b), scales)
        assert float(want.abs().max()) > 0
        assert _rel(got, want) <= 1e-5, (arch, scales is not None)
    with pytest.raises(AttrilensError, match="elementwise correction does not factor"):
        name = next(iter(f.shapes))
        gram_inner_products(f.captured_gradients(a), f.captured_gradients(b), {name: torch.ones(f.shapes[name])})


def test_tail_patcher_estimated_moments_and_batched_steps_match_a_manual_adam_step():
    """`TailPatcher.from_estimate`: v = mean over minibatches of the squared gradient of each batch's mean token
    loss; `fill` (one step per block, shared by the queries) gives the Δ log p of an explicit AdamW-style step."""
    from attrilens.bench.training import TailPatcher

    lm = tiny_lm("llama", seed=4)
    g = torch.Generator().manual_seed(0)
    blocks = [random_ids(lm, n, generator=g) for n in (7, 5, 9)]
    lr = 1e-2
    patcher = TailPatcher.from_estimate(lm, blocks, lr=lr, batch_size=2)
    model = lm.model
    params = dict(model.named_parameters())

    def token_nll_sum(ids):  # Σ_t −log p(ids[t] | ids[:t]) of one block
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, :-1].float()
        return torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum")

    want = {n: torch.zeros_like(p) for n, p in params.items()}
    for batch in (blocks[:2], blocks[2:]):
        with torch.enable_grad():
            loss = sum(token_nll_sum(b) for b in batch) / sum(len(b) - 1 for b in batch)
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for n, gr in zip(params, grads, strict=True):
            if gr is not None:
                want[n] += gr.square() / 2
    for n in params:
        assert torch.allclose(patcher.v[n], want[n], rtol=1e-4, atol=1e-12 + 1e-5 * float(want[n].abs().max()))
    assert sum(float(v.abs().sum()) for v in patcher.v.values()) > 0

    prompts = [random_ids(lm, 4, generator=g) for _ in range(2)]
    target = random_ids(lm, 2, generator=g)
    pairs = [(("q", qi), prompts[qi], target, bi, blocks[bi]) for qi in range(2) for bi in (0, 2)]
    patcher.fill(pairs)
    for key, prompt, tgt, bi, block in pairs:
        with torch.enable_grad():
            loss = token_nll_sum(block) / (len(block) - 1)
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        stepped = {}
        for n, gr in zip(params, grads, strict=True):
            p = params[n].detach()
            if gr is None:
                stepped[n] = p
                continue
            v = 0.999 * patcher.v[n] + 0.001 * gr.square()
            stepped[n] = p - lr * 0.1 * gr / (v.sqrt() + 1e-8)

        def logp(ps, prompt=prompt, tgt=tgt):
            ids = torch.tensor([prompt + tgt])
            with torch.no_grad():
                out = torch.func.functional_call(model, ps, (ids,), {"use_cache": False}).logits[0].float()
            lp = torch.log_softmax(out, -1)
            return float(sum(lp[len(prompt) - 1 + j, t] for j, t in enumerate(tgt)))

        exact = logp(stepped) - logp({n: p.detach() for n, p in params.items()})
        assert abs(exact) > 1e-5  # the step moves the target's log-probability
        assert abs(patcher.cache[(key, bi)] - exact) <= 1e-4 * max(1.0, abs(exact))
        assert patcher.delta(key, prompt, tgt, bi, block) == patcher.cache[(key, bi)]
    assert len({patcher.cache[(p[0], p[3])] for p in pairs}) == 4  # distinct steps and queries differ
