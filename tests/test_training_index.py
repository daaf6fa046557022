"""Lens 2 index: build/resume/atomicity, invariances, errors, every method through `trace`, DataInf, TracIn, CLI."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import errno
import json
import random
import shutil
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.testing import save_with_adam_moments, tiny_lm
from attrilens.training import store
from attrilens.training.corpus import make_corpus
from attrilens.training.gradients import Example, Featurizer
from attrilens.training.index import TrainingIndex, build_index
from attrilens.training.result import TraceResult

torch.set_num_threads(1)  # small ops: 2 threads on a loaded 2-core VM are far slower

WORDS = "the capital of velmora is quenth . who founded the bank ? answer : zorvia currency lumen founder ada".split()


def _docs(n=24, seed=0):
    rng = random.Random(seed)
    return [{"id": f"doc-{i:03d}", "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))} for i in range(n)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny llama saved like the trainer does: weights, tokenizer, optimizer second moments, a checkpoint."""
    d = tmp_path_factory.mktemp("model")
    save_with_adam_moments(tiny_lm("llama", seed=7), d, seed=3)
    ck = tiny_lm("llama", seed=8)
    ck.model.save_pretrained(d / "checkpoints" / "step-5")
    info = {"checkpoints": [{"step": 5, "lr": 2e-3, "path": "checkpoints/step-5"}],
            "optimizer": {"final_lr": 5e-4, "eps": 1e-8}}
    (d / "training.json").write_text(json.dumps(info))
    return d


@pytest.fixture(scope="module")
def lm(model_dir):
    return LM.from_pretrained(model_dir)


QUERIES = [{"prompt": "who founded the bank ?", "target": " ada"}, {"prompt": "the capital of zorvia", "target": " is quenth"},
           {"prompt": "answer : the currency", "target": " lumen"}]


def _shard_bytes(path):
    return {p.name: p.read_bytes() for p in sorted((path / "shards").glob("*.npy"))}


def test_every_method_traces_with_the_v1_schema(lm, model_dir, tmp_path):
    docs = _docs()
    for method in ("trackstar", "grad-dot", "grad-cos", "tracin", "bm25"):
        idx = build_index(lm, docs, tmp_path / method, method=method, proj_dim=256, block_len=12, shard_size=10,
                          eval_queries=QUERIES, progress=False)
        res = idx.trace("who founded the bank ?", target=" ada", top_k=4, neighbours=True)
        d = json.loads(res.to_json())
        assert list(d) == ["schema", "method", "prompt", "target", "tokens", "proponents", "opponents", "cost"]
        assert d["schema"] == "attrilens/training/v1" and d["method"] == method
        assert [p["rank"] for p in d["proponents"]] == [1, 2, 3, 4]
        scores = [p["score"] for p in d["proponents"]]
        assert scores == sorted(scores, reverse=True)
        assert set(d["proponents"][0]) >= {"rank", "id", "block", "text", "score", "neighbours"}
        assert d["cost"]["examples_scored"] == len(idx) and d["cost"]["seconds"] > 0
        full = idx.scores(Example.response(lm.encode_prompt(QUERIES[0]["prompt"]), lm.encode_response(" ada"))
                          if method != "bm25" else "who founded the bank ? ada")
        assert scores[0] == pytest.approx(float(full.max()), rel=1e-5)
        if method != "bm25":
            assert d["opponents"][0]["score"] == pytest.approx(float(full.min()), rel=1e-5)
        assert TraceResult.from_json(res.to_json()).to_dict() == d
        assert len(res.to_frame()) == len(d["proponents"]) + len(d["opponents"])
    man = json.loads((tmp_path / "trackstar" / "manifest.json").read_text())
    assert 0 < man["lambda"] < 1 and man["options"]["seed"] == 0 and man["model"]["fingerprint"] == lm.fingerprint()
    assert not (tmp_path / "trackstar" / "raw").exists()  # raw fp32 features are removed after R


def test_trackstar_scores_match_the_formula(lm, model_dir, tmp_path):
    docs = _docs(12)
    idx = build_index(lm, docs, tmp_path / "ts", method="trackstar", proj_dim=200, block_len=16, eval_queries=QUERIES,
                      dtype="float32", progress=False)
    gm = idx.method
    blocks = idx.corpus
    raw = gm.featurize([Example.block(t) for t in blocks.tokens])
    evr = gm.featurize([Example.response(lm.encode_prompt(q["prompt"]), lm.encode_response(q["target"])) for q in QUERIES])
    lam = idx.manifest["lambda"]
    r = (1 - lam) * raw.double().T @ raw.double() / len(raw) + lam * evr.double().T @ evr.double() / len(evr)
    delta = idx.manifest["options"]["damping"] * float(torch.trace(r)) / min(r.shape[0], len(raw) + len(evr))
    e, v = torch.linalg.eigh(r)
    w = (v * (e.clamp(min=0) + delta).rsqrt()) @ v.T
    q = Example.response(lm.encode_prompt("who founded the bank ?"), lm.encode_response(" ada"))
    qf = torch.nn.functional.normalize(gm.featurize([q]).double() @ w, dim=1)[0]
    tf = torch.nn.functional.normalize(raw.double() @ w, dim=1)
    assert np.allclose(idx.scores(q), (tf @ qf).numpy(), rtol=1e-4, atol=1e-5)


def test_scores_invariant_to_batch_and_shard_size(lm, tmp_path):
    docs = _docs()
    a = build_index(lm, docs, tmp_path / "a", method="grad-dot", proj_dim=300, block_len=12, batch_size=3, shard_size=7,
                    dtype="float32", progress=False)
    b = build_index(lm, docs, tmp_path / "b", method="grad-dot", proj_dim=300, block_len=12, batch_size=16,
                    shard_size=100, dtype="float32", progress=False)
    q = Example.response(lm.encode_prompt("the capital of zorvia"), lm.encode_response(" is quenth"))
    sa, sb = a.scores(q), b.scores(q)
    assert len(a.shards) > len(b.shards) >= 1
    assert np.allclose(sa, sb, rtol=1e-4, atol=1e-4 * np.abs(sb).max())


class _Boom(Exception):
    pass


def _fail_on_write(monkeypatch, n_ok, exc):
    calls = {"n": 0}
    real = store.write_array

    def write(f, array):
        calls["n"] += 1
        if calls["n"] > n_ok:
            f.write(b"\x93NUMPY partial")  # a torn write: some bytes reach the temporary file
            raise exc
        real(f, array)

    monkeypatch.setattr(store, "write_array", write)


@pytest.mark.parametrize("n_ok", [1, 4])  # killed while featurising, and while applying R^-1/2
def test_resumed_build_is_byte_identical(lm, tmp_path, monkeypatch, n_ok):
    docs = _docs(12)
    kw = dict(method="trackstar", proj_dim=128, block_len=12, shard_size=6, eval_queries=QUERIES, progress=False)
    clean = build_index(lm, docs, tmp_path / "clean", **kw)
    _fail_on_write(monkeypatch, n_ok, _Boom())
    with pytest.raises(_Boom):
        build_index(lm, docs, tmp_path / "resumed", **kw)
    monkeypatch.undo()
    assert not list((tmp_path / "resumed").rglob("*.tmp"))
    with pytest.raises(AttrilensError, match="incomplete"):
        TrainingIndex.open(tmp_path / "resumed", lm)
    resumed = build_index(lm, docs, tmp_path / "resumed", **kw)
    assert _shard_bytes(tmp_path / "resumed") == _shard_bytes(tmp_path / "clean")
    assert len(_shard_bytes(tmp_path / "clean")) == len(clean.shards) >= 4
    q = Example.response(lm.encode_prompt("who founded the bank ?"), lm.encode_response(" ada"))
    assert np.array_equal(resumed.scores(q), clean.scores(q))


def test_disk_full_leaves_no_partial_shard(lm, tmp_path, monkeypatch):
    docs = _docs(20)
    kw = dict(method="grad-cos", proj_dim=128, block_len=12, shard_size=8, progress=False)
    _fail_on_write(monkeypatch, 1, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(AttrilensError, match="Disk full while writing .*shard-00001.npy.*rerun the same build"):
        build_index(lm, docs, tmp_path / "idx", **kw)
    monkeypatch.undo()
    files = sorted(p.name for p in (tmp_path / "idx" / "shards").iterdir())
    assert files == ["shard-00000.npy"]  # the torn shard-00001 never got its final name
    man = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert not man["complete"] and [s["file"] for s in man["shards"]] == ["shards/shard-00000.npy"]
    with pytest.raises(AttrilensError, match="incomplete"):
        TrainingIndex.open(tmp_path / "idx", lm)
    done = build_index(lm, docs, tmp_path / "idx", **kw)
    clean = build_index(lm, docs, tmp_path / "clean", **kw)
    assert _shard_bytes(tmp_path / "idx") == _shard_bytes(tmp_path / "clean") and len(done) == len(clean)


def test_mismatched_model_corpus_and_settings_are_errors(lm, tmp_path):
    docs = _docs(10)
    build_index(lm, docs, tmp_path / "idx", method="grad-cos", proj_dim=64, block_len=12, progress=False)
    with pytest.raises(AttrilensError, match="built with another model"):
        TrainingIndex.open(tmp_path / "idx", tiny_lm("llama", seed=99))
    changed = [dict(d) for d in docs]
    changed[3]["text"] += " ada"
    with pytest.raises(AttrilensError, match="corpus has changed"):
        TrainingIndex.open(tmp_path / "idx", lm, corpus=changed)
    TrainingIndex.open(tmp_path / "idx", lm, corpus=docs)  # the same corpus is fine
    with pytest.raises(AttrilensError, match="different settings"):
        build_index(lm, docs, tmp_path / "idx", method="grad-cos", proj_dim=96, block_len=12, progress=False)
    with pytest.raises(AttrilensError, match="not an attrilens index"):
        TrainingIndex.open(tmp_path, lm)
    with pytest.raises(AttrilensError, match="Unknown training-data method 'lissa'"):
        build_index(lm, docs, tmp_path / "x", method="lissa")
    with pytest.raises(AttrilensError, match="Unknown option.* projdim"):
        build_index(lm, docs, tmp_path / "x", method="grad-dot", projdim=8)


def test_bad_queries_are_errors(lm, tmp_path):
    idx = build_index(lm, _docs(8), tmp_path / "idx", method="grad-dot", proj_dim=64, block_len=12, progress=False)
    with pytest.raises(AttrilensError, match="prompt is empty"):
        idx.trace("  ", target=" ada")
    with pytest.raises(AttrilensError, match="exactly one of a target"):
        idx.trace("who", target=None)
    with pytest.raises(AttrilensError, match="target cannot be tokenised"):
        idx.trace("who", target="\ud800")
    with pytest.raises(AttrilensError, match="outside the response"):
        idx.trace("who", target=" ada", tokens=[5])
    with pytest.raises(AttrilensError, match="not inside the 4-character response"):
        idx.trace("who", target=" ada", span=(2, 9))
    res = idx.trace("who founded", target=" the bank", span=(5, 9))
    assert res.tokens and all(0 <= t < len(lm.encode_response(" the bank")) for t in res.tokens)
    assert res.tokens != list(range(len(lm.encode_response(" the bank"))))
    gen = idx.trace("who founded", generate=True, top_k=2)
    assert gen.target and len(gen.proponents) == 2


def test_fp16_overflow_names_the_example(lm, model_dir, tmp_path):
    bad = tmp_path / "model"
    bad.mkdir()
    for f in model_dir.iterdir():
        if f.is_file():
            (bad / f.name).write_bytes(f.read_bytes())
    (bad / "training.json").write_text(json.dumps({"optimizer": {"eps": 1e-30}}))
    save_file({f"exp_avg_sq.{n}": torch.zeros(p.shape) for n, p in lm.model.named_parameters()},
              str(bad / "optimizer.safetensors"))
    with pytest.raises(AttrilensError, match=r"features of example doc-000#0 overflow float16.*float32"):
        build_index(lm, _docs(4), tmp_path / "idx", method="trackstar", proj_dim=64, block_len=12, use_r=False,
                    unit_norm=False, model_dir=bad, progress=False)
    idx = build_index(lm, _docs(4), tmp_path / "idx32", method="trackstar", proj_dim=64, block_len=12, use_r=False,
                      unit_norm=False, model_dir=bad, dtype="float32", progress=False)
    assert np.isfinite(np.load(tmp_path / "idx32" / "shards" / "shard-00000.npy")).all() and len(idx) >= 4


def test_tracin_aggregates_checkpoints(lm, model_dir, tmp_path):
    docs = _docs(10)
    q = Example.response(lm.encode_prompt("who founded the bank ?"), lm.encode_response(" ada"))
    ck = LM(tiny_lm("llama", seed=8).model, lm.tokenizer)
    blocks = make_corpus(docs, lm.tokenizer, block_len=12)
    per = []
    for view, lr in ((ck, 2e-3), (lm, 5e-4)):
        f = Featurizer(view, proj_dim=128)
        t = f.features([Example.block(x) for x in blocks.tokens])
        per.append(lr * (t @ f.features([q])[0]))
    per = torch.stack(per, 1)
    for agg in ("mean", "median"):
        idx = build_index(lm, docs, tmp_path / agg, method="tracin", proj_dim=128, block_len=12, aggregate=agg,
                          dtype="float32", progress=False)
        want = per.mean(1) if agg == "mean" else (per[:, 0] + per[:, 1]) / 2  # median of two: their mean
        assert np.allclose(idx.scores(q), want.numpy(), rtol=1e-4, atol=1e-6)


def test_datainf_matches_closed_form_and_lora_finetune(lm, model_dir, tmp_path):
    from attrilens.workflows.lora import finetune_lora

    docs = _docs(12)
    out = finetune_lora(model_dir, docs, tmp_path / "lora", epochs=1, batch_size=4, keep_checkpoints=2, progress=False)
    info = json.loads((out / "training.json").read_text())
    assert (out / "adapter_model.safetensors").is_file() and (out / "optimizer.safetensors").is_file()
    assert info["checkpoints"] and (out / info["checkpoints"][0]["path"] / "adapter_config.json").is_file()
    llm = LM.from_pretrained(out)
    assert llm.fingerprint() != lm.fingerprint()
    q = Example.response(llm.encode_prompt("who founded the bank ?"), llm.encode_response(" ada"))
    views = [LM.from_pretrained(out / c["path"], base=model_dir) for c in info["checkpoints"]] + [llm]
    for agg in ("median", "mean"):
        idx = build_index(llm, docs, tmp_path / f"di-{agg}", method="datainf", block_len=12, shard_size=5,
                          dtype="float32", aggregate=agg, progress=False)
        assert len(idx.shards) > 1 and len(idx.method.views) == len(views) == 3
        per = []
        for c, view in enumerate(views):  # DataInf's closed form at each checkpoint, written out
            f = idx.method.views[c][0]
            assert f.lm is view or f.lm.fingerprint() == view.fingerprint()
            g = f.features([Example.block(t) for t in idx.corpus.tokens]).double()
            v = f.features([q])[0].double()
            want = torch.zeros(len(g), dtype=torch.float64)
            n = len(g)
            for a, b in idx.method.layer_groups()[: len(idx.method.layer_groups()) // len(views)]:
                gl, vl = g[:, a:b], v[a:b]
                lam = 0.1 * gl.pow(2).sum(1).mean() / (b - a)
                r = sum(vl - (vl @ gl[i]) / (lam + gl[i] @ gl[i]) * gl[i] for i in range(n)) / (n * lam)
                want += gl @ r
            per.append(want)
        per = torch.stack(per, 1)
        assert not torch.allclose(per[:, 0], per[:, 2])  # the checkpoints differ
        want = per.mean(1) if agg == "mean" else per.median(1).values
        assert np.allclose(idx.scores(q), want.numpy(), rtol=1e-4, atol=1e-6 * float(want.abs().max()))


def test_faiss_search_matches_exact_search(lm, tmp_path):
    idx = build_index(lm, _docs(16), tmp_path / "f", method="grad-cos", proj_dim=128, block_len=12, use_faiss=True,
                      progress=False)
    a = idx.trace("who founded the bank ?", target=" ada", top_k=5)
    b = idx.trace("who founded the bank ?", target=" ada", top_k=5, use_faiss=True)
    # exact search multiplies fp16 unit-norm features in fp16 (scores rounded to ~1e-4); FAISS works in fp32
    assert [p.score for p in a.proponents] == pytest.approx([p.score for p in b.proponents], abs=2e-3)
    assert [p.score for p in a.opponents] == pytest.approx([p.score for p in b.opponents], abs=2e-3)
    assert {p.id for p in a.proponents[:2]} == {p.id for p in b.proponents[:2]}


def test_bm25_finds_the_document_with_the_words(lm, tmp_path):
    docs = _docs(20) + [{"id": "doc-gold", "text": "velmora founder ada velmora founder ada"}]
    idx = build_index(lm, docs, tmp_path / "bm", method="bm25", block_len=64, progress=False)
    res = idx.trace("velmora founder", target=" ada", top_k=3)
    assert res.proponents[0].id == "doc-gold" and res.opponents == []


def test_cli_index_build_and_trace(model_dir, tmp_path, monkeypatch, capsys):
    from attrilens.cli import main

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in _docs(10)))

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["attrilens", *args])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, err = run("index", "build", "--model", str(model_dir), "--corpus", str(corpus), "--out",
                         str(tmp_path / "i"), "--method", "grad-cos", "--proj-dim", "64", "--block-len", "12", "--threads", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["examples"] > 0
    code, out, err = run("index", "build", "--model", str(model_dir), "--corpus", str(corpus), "--out",
                         str(tmp_path / "t"), "--proj-dim", "64", "--block-len", "12", "--damping", "0.05", "--json")
    assert code == 0, err
    man = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert man["options"]["damping"] == 0.05 and man["chat_template"] is False  # how queries were encoded
    bare = tmp_path / "bare"  # a downloaded checkpoint: no optimizer state
    bare.mkdir()
    for f in model_dir.iterdir():
        if f.is_file() and f.name != "optimizer.safetensors":
            (bare / f.name).write_bytes(f.read_bytes())
    code, out, err = run("index", "build", "--model", str(bare), "--corpus", str(corpus), "--out", str(tmp_path / "e"),
                         "--proj-dim", "64", "--block-len", "12", "--second-moments", "estimate", "--option",
                         "moment_kind=adafactor", "--option", "moment_sample=4", "--json")
    assert code == 0, err
    assert json.loads(out)["second_moments"]["source"] == "estimated"
    sm = json.loads((tmp_path / "e" / "manifest.json").read_text())["second_moments"]
    assert sm["kind"] == "adafactor" and sm["sample"] == 4
    code, out, err = run("index", "build", "--model", str(bare), "--corpus", str(corpus), "--out", str(tmp_path / "o"),
                         "--proj-dim", "64", "--block-len", "12", "--second-moments", "optimizer")
    assert code == 2 and "--second-moments estimate" in err and "--no-correction" in err
    code, out, err = run("trace", "--index", str(tmp_path / "i"), "--prompt", "who founded", "--target", " ada",
                         "--top-k", "3", "--tokens", "0", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["schema"] == "attrilens/training/v1" and d["tokens"] == [0] and len(d["proponents"]) == 3
    code, out, err = run("trace", "--index", str(tmp_path / "i"), "--prompt", "who founded", "--top-k", "3")
    assert code == 2 and "exactly one of --target T or --generate" in err and out == ""
    code, out, err = run("trace", "--index", str(tmp_path / "i"), "--prompt", "who", "--target", " a", "--tokens", "x")
    assert code == 2 and "--tokens must be comma-separated integers" in err


@pytest.fixture(scope="module")
def bare_dir(model_dir, tmp_path_factory):
    """The same model as a downloaded checkpoint: weights and tokenizer, no optimizer state, no training.json."""
    d = tmp_path_factory.mktemp("bare")
    for f in model_dir.iterdir():
        if f.is_file() and f.name not in ("optimizer.safetensors", "training.json"):
            (d / f.name).write_bytes(f.read_bytes())
    return d


@pytest.mark.parametrize("kind", ["adam", "adafactor"])
def test_trackstar_estimates_second_moments_without_optimizer_state(lm, bare_dir, model_dir, tmp_path, monkeypatch, kind):
    from attrilens.training import moments as mom
    from attrilens.training.methods import trackstar

    docs = _docs(14)
    kw = dict(method="trackstar", proj_dim=200, block_len=16, model_dir=bare_dir, dtype="float32", use_r=False,
              unit_norm=False, moment_kind=kind, moment_sample=6, moment_batch=4, progress=False)
    idx = build_index(lm, docs, tmp_path / "est", **kw)
    man = idx.manifest
    assert man["second_moments"] == {"source": "estimated", "kind": kind, "sample": 6, "batch_size": 4, "eps": 1e-3,
                                     "gradient": "per-batch", "loss": "mean token loss"}
    assert man["options"]["second_moments"] == "auto"
    # ground truth: the seeded sample's moments (rounded as stored) → 1/√(v + ε·v̄) → the corrected features
    blocks = idx.corpus
    rows = np.random.default_rng(0).permutation(len(blocks))[:6].tolist()
    f = Featurizer(lm, proj_dim=200)
    v = mom.estimate_second_moments(f, [Example.block(blocks.tokens[r]) for r in rows], kind=kind, batch_size=4)
    f.set_scales(mom.moment_scales(mom.round_moments(v), 1e-3))
    want = f.features([Example.block(t) for t in blocks.tokens])
    got = np.load(tmp_path / "est" / "shards" / "shard-00000.npy")
    assert np.allclose(got, want.numpy(), rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    plain = Featurizer(lm, proj_dim=200).features([Example.block(t) for t in blocks.tokens])
    assert not np.allclose(got, plain.numpy(), rtol=1e-2)  # the correction changed the features
    # reopening restores the stored moments (no new estimate), even where "auto" would now find optimizer state
    q = Example.response(lm.encode_prompt("who founded the bank ?"), lm.encode_response(" ada"))
    monkeypatch.setattr(trackstar, "estimate_second_moments", lambda *a, **k: pytest.fail("estimated again"))
    for mdir in (bare_dir, model_dir):
        again = TrainingIndex.open(tmp_path / "est", lm, model_dir=mdir)
        assert np.array_equal(again.scores(q), idx.scores(q))
    pre = (tmp_path / "est" / "preconditioner.safetensors").stat().st_size
    n_weights = sum(o * i for o, i in f.shapes.values())
    assert pre < 4 * n_weights if kind == "adafactor" else 2 * n_weights <= pre < 3 * n_weights  # bf16 per parameter


def test_second_moments_auto_uses_the_optimizer_state_when_present(lm, model_dir, bare_dir, tmp_path):
    docs = _docs(10)
    kw = dict(method="trackstar", proj_dim=128, block_len=12, eval_queries=QUERIES, progress=False)
    auto = build_index(lm, docs, tmp_path / "auto", model_dir=model_dir, **kw)
    build_index(lm, docs, tmp_path / "opt", model_dir=model_dir, second_moments="optimizer", **kw)
    assert auto.manifest["second_moments"] == {"source": "optimizer", "kind": "adam", "file": "optimizer.safetensors"}
    assert _shard_bytes(tmp_path / "auto") == _shard_bytes(tmp_path / "opt")
    est = build_index(lm, docs, tmp_path / "est", model_dir=model_dir, second_moments="estimate", **kw)
    assert est.manifest["second_moments"]["source"] == "estimated"
    assert _shard_bytes(tmp_path / "est") != _shard_bytes(tmp_path / "opt")
    off = build_index(lm, docs, tmp_path / "off", model_dir=bare_dir, correction=False, **kw)
    assert off.manifest["second_moments"] == {"source": None}
    with pytest.raises(AttrilensError, match=r"No optimizer.safetensors in .*--second-moments estimate.*"
                                             r"second_moments=\"estimate\".*--no-correction.*correction=False"):
        build_index(lm, docs, tmp_path / "x", model_dir=bare_dir, second_moments="optimizer", **kw)
    with pytest.raises(AttrilensError, match="--second-moments estimate"):
        build_index(LM(lm.model, lm.tokenizer, name="no directory"), docs, tmp_path / "y", second_moments="optimizer", **kw)


def test_build_resumed_after_the_estimate_is_byte_identical(lm, bare_dir, tmp_path, monkeypatch):
    from attrilens.training.methods import trackstar

    docs = _docs(12)
    kw = dict(method="trackstar", proj_dim=128, block_len=12, shard_size=6, eval_queries=QUERIES, model_dir=bare_dir,
              moment_sample=8, progress=False)
    build_index(lm, docs, tmp_path / "clean", **kw)
    _fail_on_write(monkeypatch, 1, _Boom())  # the moments are saved, the first raw shard too, then it dies
    with pytest.raises(_Boom):
        build_index(lm, docs, tmp_path / "resumed", **kw)
    monkeypatch.undo()
    assert json.loads((tmp_path / "resumed" / "manifest.json").read_text())["prepared"]
    monkeypatch.setattr(trackstar, "estimate_second_moments", lambda *a, **k: pytest.fail("estimated again"))
    build_index(lm, docs, tmp_path / "resumed", **kw)
    assert _shard_bytes(tmp_path / "resumed") == _shard_bytes(tmp_path / "clean")


def test_default_projection_size_follows_the_model(lm, tmp_path):
    from attrilens.training.methods.gradient import GradientMethod
    from attrilens.training.projection import default_proj_dim

    idx = build_index(lm, _docs(6), tmp_path / "d", method="grad-cos", block_len=12, progress=False)
    n_weights = len(Featurizer(lm, proj_dim=None).modules)
    assert idx.manifest["options"]["proj_dim"] == default_proj_dim(n_weights) == GradientMethod.default_proj_dim(lm)
    assert 0.9 * default_proj_dim(n_weights) <= idx.manifest["dim"] <= default_proj_dim(n_weights)
    with pytest.raises(AttrilensError, match="proj_dim must be a positive integer, None or 'auto'"):
        build_index(lm, _docs(6), tmp_path / "e", method="grad-cos", proj_dim="big", block_len=12, progress=False)


def test_a_half_precision_optimizer_state_that_lost_its_range_is_refused(lm, model_dir, tmp_path):
    """Second moments saved in float16 underflow to 0 below 6e-8; TrackStar must not divide by √ε for them."""
    from attrilens.demo.paths import demo_model_dir
    from attrilens.training.preconditioning import adam_scales, optimizer_state_problem

    assert optimizer_state_problem(model_dir) is None  # float32 moments: trusted
    bad = tmp_path / "fp16-model"
    shutil.copytree(model_dir, bad)
    g = torch.Generator().manual_seed(5)
    save_file({f"exp_avg_sq.{n}": (torch.rand(p.shape, generator=g) * 1e-7).half()  # most fall below fp16's range
               for n, p in lm.model.named_parameters()}, str(bad / "optimizer.safetensors"))
    problem = optimizer_state_problem(bad)
    assert problem and "half precision" in problem and "underflowed to 0" in problem
    with pytest.raises(AttrilensError, match="underflowed to 0.*float32.*--second-moments estimate"):
        adam_scales(bad, lm.model, {"lm_head": lm.model.lm_head})
    kw = dict(method="trackstar", proj_dim=128, block_len=12, eval_queries=QUERIES, progress=False)
    with pytest.raises(AttrilensError, match="underflowed to 0"):
        build_index(lm, _docs(10), tmp_path / "opt", model_dir=bad, second_moments="optimizer", **kw)
    auto = build_index(lm, _docs(10), tmp_path / "auto", model_dir=bad, **kw)  # auto: estimated, and says why
    moments = auto.manifest["second_moments"]
    assert moments["source"] == "estimated" and "underflowed" in moments["optimizer_state_refused"]
    # the shipped demo models' float16 moments (81 % zeros) were dropped: their indexes estimate, and say so
    for name in ("target", "proxy"):
        assert not (demo_model_dir(name) / "optimizer.safetensors").exists()
    from attrilens.demo.index import DEMO_INDEX

    shipped = json.loads((DEMO_INDEX / "manifest.json").read_text())["second_moments"]
    assert shipped["source"] == "estimated" and "optimizer_state_refused" not in shipped


def test_packaged_demo_models_keep_float32_second_moments(tmp_path):
    from attrilens.demo.build import package_model
    from attrilens.training.preconditioning import optimizer_state_problem

    src = tmp_path / "run"
    lm = tiny_lm("llama", seed=11)
    lm.save_pretrained(src)
    save_file({f"exp_avg_sq.{n}": torch.rand(p.shape) * 1e-9 for n, p in lm.model.named_parameters()},
              str(src / "optimizer.safetensors"))
    (src / "training.json").write_text(json.dumps({"optimizer": {"final_lr": 1e-4, "eps": 1e-8}}))
    package_model(src, tmp_path / "packaged")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "packaged" / "optimizer.safetensors"), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
    assert optimizer_state_problem(tmp_path / "packaged") is None


def test_default_shard_size_keeps_a_shard_of_wide_features_within_a_gib():
    from attrilens.training.index import SHARD_BYTES, default_shard_size

    assert default_shard_size(0) == default_shard_size(2 ** 16) == 1024  # BM25 and TrackStar's largest: unchanged
    rows = default_shard_size(7_464_960)  # DataInf on SmolLM2's LoRA (q, v, o, down; r 16) over 3 checkpoints
    assert rows == 35 and rows * 7_464_960 * 4 <= SHARD_BYTES < (rows + 1) * 7_464_960 * 4
    assert default_shard_size(10 ** 10) == 1


def test_trackstar_on_a_lora_adapter_featurises_the_lora_matrices_with_their_optimizer_state(model_dir, tmp_path):
    """auto: an adapter's LoRA matrices (what was trained, and all its optimizer state covers); linear: every base
    weight, which that state does not cover (a one-line error naming the fix)."""
    from attrilens.training.methods import TDA_METHODS
    from attrilens.workflows.lora import finetune_lora

    docs = _docs(12, seed=random.randrange(1000))
    out = finetune_lora(model_dir, docs, tmp_path / "lora", epochs=1, batch_size=4, keep_checkpoints=0, progress=False)
    lm = LM.from_pretrained(out)
    idx = build_index(lm, docs, tmp_path / "idx", method="trackstar", proj_dim=64, progress=False)
    assert idx.manifest["weights"] == "lora" and idx.manifest["second_moments"]["source"] == "optimizer"
    assert set(idx.manifest["layers"]) and all(".lora_" in name for name in idx.manifest["layers"])
    trackstar = TDA_METHODS.get("trackstar")
    assert trackstar.default_params(lm) == "lora" and trackstar.default_params(LM.from_pretrained(model_dir)) == "linear"
    with pytest.raises(AttrilensError, match="no second moment for .*base_layer"):
        build_index(lm, docs, tmp_path / "idx-linear", method="trackstar", proj_dim=64, weights="linear",
                    second_moments="optimizer", progress=False)
    with pytest.raises(AttrilensError, match="Unknown weights"):
        build_index(lm, docs, tmp_path / "idx-bad", method="trackstar", proj_dim=64, weights="all", progress=False)
