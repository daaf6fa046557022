"""LoRA fine-tuning runs: an interrupted run resumes to the uninterrupted result, and indexes of several runs
(data orders) aggregate to the mean / median of their scores."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.testing import save_with_adam_moments, tiny_lm
from attrilens.training.ensemble import IndexEnsemble
from attrilens.training.index import build_index
from attrilens.workflows.lora import documents_sha256, finetune_lora

torch.set_num_threads(1)

WORDS = "the capital of velmora is quenth . who founded the bank ? answer : zorvia currency lumen founder ada".split()


def _docs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"doc-{i:03d}", "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))}
            for i in range(n)]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("base")
    save_with_adam_moments(tiny_lm("llama", seed=random.randrange(1000)), d, seed=3)
    return d


def _adapter(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter_model.safetensors"))


def test_an_interrupted_lora_run_resumes_to_the_uninterrupted_result(base_dir, tmp_path):
    docs = _docs(20, random.randrange(1000))
    kw = dict(epochs=2, batch_size=4, lr=5e-3, keep_checkpoints=2, progress=False, seed=random.randrange(100))
    whole = finetune_lora(base_dir, docs, tmp_path / "whole", **kw)
    part = finetune_lora(base_dir, docs, tmp_path / "part", stop_after=3, resume_every=2, **kw)
    assert (part / "resume.safetensors").is_file() and not (part / "training.json").exists()
    finetune_lora(base_dir, docs, part, **kw)  # resumes at step 3 (saved at the stop)
    info = json.loads((part / "training.json").read_text())
    assert info["resumed_at_step"] == 3 and not (part / "resume.safetensors").exists()
    a, b = _adapter(whole), _adapter(part)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    whole_info = json.loads((whole / "training.json").read_text())
    assert info["loss_curve"] == whole_info["loss_curve"] and info["checkpoints"] == whole_info["checkpoints"]
    assert info["corpus"]["sha256"] == documents_sha256(docs)
    mtime = (whole / "adapter_model.safetensors").stat().st_mtime_ns
    finetune_lora(base_dir, docs, whole, **kw)  # finished with the same settings: returned as it is
    assert (whole / "adapter_model.safetensors").stat().st_mtime_ns == mtime


def test_a_resume_with_other_data_is_refused(base_dir, tmp_path):
    docs = _docs(12, 1)
    finetune_lora(base_dir, docs, tmp_path / "r", epochs=1, batch_size=4, stop_after=1, progress=False)
    with pytest.raises(AttrilensError, match="other settings or data"):
        finetune_lora(base_dir, _docs(12, 2), tmp_path / "r", epochs=1, batch_size=4, progress=False)


def test_runs_with_other_data_orders_aggregate_to_the_mean_and_median_of_their_scores(base_dir, tmp_path):
    docs = _docs(16, random.randrange(1000))
    indexes = []
    for seed in (0, 1, 2):
        run = finetune_lora(base_dir, docs, tmp_path / f"run{seed}", epochs=1, batch_size=4, lr=1e-2, seed=seed,
                            keep_checkpoints=1, progress=False)
        indexes.append(build_index(LM.from_pretrained(run), docs, tmp_path / f"idx{seed}", method="datainf",
                                   block_len=12, dtype="float32", progress=False))
    prompt, target = "who founded the bank ?", " ada"
    per, runs = [], []
    for idx in indexes:
        q = idx.method.query(idx.query(prompt, target).query)
        views = np.concatenate([p.numpy() for _, p in idx.method.view_score_stream(idx.shards, q)])
        assert views.shape == (len(idx), 2)  # one checkpoint + the final adapter
        runs.append(idx.scores(idx.query(prompt, target).query.example))
        assert np.allclose(views.mean(1), runs[-1], rtol=1e-5, atol=1e-7)  # the index alone: its checkpoints' mean
        per.append(views)
    per, runs = np.concatenate(per, 1), np.stack(runs, 1)
    assert not np.allclose(runs[:, 0], runs[:, 1])  # the data order changes the scores
    # DataInf aggregates jointly over checkpoints × data orders: the mean equals the mean of the runs' means
    for how, want in (("mean", runs.mean(1)), ("median", np.median(per, 1))):
        ens = IndexEnsemble(indexes, how)
        assert np.allclose(ens.scores(prompt, target), per, rtol=1e-5)
        res = ens.trace(prompt, target, top_k=5)
        order = np.argsort(-want, kind="stable")[:5]
        assert [h.score for h in res.proponents] == pytest.approx(want[order].tolist(), rel=1e-4)
        assert [h.id for h in res.proponents] == [indexes[0].corpus.docs[i] for i in order]
        assert res.method == f"datainf ({how} of 3 runs)" and res.cost.extra["runs"] == 3
    assert not np.allclose(np.median(per, 1), np.median(runs, 1))  # joint median ≠ median of the runs' means
    ens, other = IndexEnsemble(indexes, "median"), ("the capital of velmora is", " quenth")
    both = ens.scores_many([(prompt, target), other])  # one read of the stored gradients for both queries
    tol = 1e-6 * float(np.abs(per).max())  # float32 products: batched and single differ in the last bits
    assert np.allclose(both[0], ens.scores(prompt, target), rtol=1e-5, atol=tol)
    assert np.allclose(both[1], ens.scores(*other), rtol=1e-5, atol=tol) and not np.allclose(both[0], both[1])
    assert np.allclose(ens.aggregated_scores_many([(prompt, target)])[0], np.median(per, 1), rtol=1e-5, atol=tol)
    indexes[0].method.row_sq_norms = None  # an index built before the rows' norms were stored: computed on use
    assert np.allclose(ens.scores(prompt, target), per, rtol=1e-5, atol=tol)
    manifest = json.loads((indexes[0].path / "manifest.json").read_text())
    del manifest["weights"]  # written before the weights were recorded: DataInf featurised the LoRA matrices then too
    (indexes[0].path / "manifest.json").write_text(json.dumps(manifest))
    again = build_index(LM.from_pretrained(tmp_path / "run0"), docs, tmp_path / "idx0", method="datainf",
                        block_len=12, dtype="float32", progress=False)
    assert again.manifest["shards"] == indexes[0].manifest["shards"]
    reopened = IndexEnsemble.open([i.path for i in indexes], "mean")
    assert [h.id for h in reopened.trace(prompt, target, top_k=3).proponents] == \
        [h.id for h in IndexEnsemble(indexes, "mean").trace(prompt, target, top_k=3).proponents]


def test_an_ensemble_of_different_corpora_or_methods_is_refused(base_dir, tmp_path):
    lm = LM.from_pretrained(base_dir)
    a = build_index(lm, _docs(8, 1), tmp_path / "a", method="grad-cos", proj_dim=64, block_len=12, progress=False)
    b = build_index(lm, _docs(8, 2), tmp_path / "b", method="grad-cos", proj_dim=64, block_len=12, progress=False)
    c = build_index(lm, _docs(8, 1), tmp_path / "c", method="bm25", block_len=12, progress=False)
    with pytest.raises(AttrilensError, match="different corpora"):
        IndexEnsemble([a, b])
    with pytest.raises(AttrilensError, match="different methods"):
        IndexEnsemble([a, c])
    with pytest.raises(AttrilensError, match="aggregate"):
        IndexEnsemble([a], "max")


def test_trace_cli_aggregates_several_indexes_and_refuses_one_index_options(base_dir, tmp_path):
    from typer.testing import CliRunner

    from attrilens.cli.app import app

    docs = _docs(10, random.randrange(1000))
    paths = []
    for seed in (0, 1):
        run = finetune_lora(base_dir, docs, tmp_path / f"run{seed}", epochs=1, batch_size=4, lr=1e-2, seed=seed,
                            keep_checkpoints=0, progress=False)
        paths.append(str(build_index(LM.from_pretrained(run), docs, tmp_path / f"idx{seed}", method="grad-cos",
                                     proj_dim=64, block_len=12, progress=False).path))
    runner = CliRunner()
    args = ["trace", "--index", paths[0], "--index", paths[1], "--prompt", "who founded the bank ?", "--target", " ada",
            "--top-k", "3", "--aggregate", "median", "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    want = IndexEnsemble.open(paths, "median").trace("who founded the bank ?", " ada", top_k=3)
    assert [h["id"] for h in got["proponents"]] == want.ids() and got["method"] == "grad-cos (median of 2 runs)"
    bad = runner.invoke(app, args + ["--faiss"])
    assert bad.exit_code != 0 and "--faiss" in str(bad.exception)
    one = runner.invoke(app, args[:1] + args[3:])
    assert one.exit_code != 0 and "--aggregate" in str(one.exception)


def test_tracin_on_a_lora_run_sums_lr_weighted_lora_gradient_products_over_its_adapter_checkpoints(base_dir, tmp_path):
    from attrilens.training.gradients import Example, Featurizer

    docs = _docs(12, random.randrange(1000))
    run = finetune_lora(base_dir, docs, tmp_path / "run", epochs=2, batch_size=4, lr=1e-2, keep_checkpoints=2,
                        progress=False)
    lm = LM.from_pretrained(run)
    idx = build_index(lm, docs, tmp_path / "tracin", method="tracin", proj_dim=None, block_len=12, dtype="float32",
                      progress=False)
    info = json.loads((run / "training.json").read_text())
    views = [(LM.from_pretrained(run / c["path"], base=base_dir), c["lr"]) for c in info["checkpoints"]]
    views.append((lm, info["optimizer"]["final_lr"]))
    assert idx.method.params == "lora" and idx.method.n_blocks == len(views) == 3
    q = Example.response(lm.encode_prompt("who founded the bank ?"), lm.encode_response(" ada"))
    per = []
    for view, lr in views:
        f = Featurizer(view, params="lora", proj_dim=None)
        per.append(lr * (f.features([Example.block(t) for t in idx.corpus.tokens]) @ f.features([q])[0]))
    want = torch.stack(per, 1).mean(1)
    assert not torch.allclose(per[0], per[-1])
    assert np.allclose(idx.scores(q), want.numpy(), rtol=1e-4, atol=1e-6 * float(want.abs().max()))


def test_grad_cos_on_a_lora_run_compares_lora_gradients_and_refuses_an_index_of_the_base_weights(base_dir, tmp_path):
    from attrilens.training.gradients import Example, Featurizer

    docs = _docs(10, random.randrange(1000))
    run = finetune_lora(base_dir, docs, tmp_path / "run", epochs=1, batch_size=4, lr=1e-2, progress=False)
    lm = LM.from_pretrained(run)
    idx = build_index(lm, docs, tmp_path / "gc", method="grad-cos", proj_dim=None, block_len=12, dtype="float32",
                      progress=False)
    assert idx.method.params == "lora" and idx.manifest["weights"] == "lora"
    f = Featurizer(lm, params="lora", proj_dim=None)
    rows = torch.nn.functional.normalize(f.features([Example.block(t) for t in idx.corpus.tokens]), dim=1)
    q = Example.response(lm.encode_prompt("who founded the bank ?"), lm.encode_response(" ada"))
    want = (rows @ torch.nn.functional.normalize(f.features([q]), dim=1)[0]).numpy()
    assert np.allclose(idx.scores(q), want, atol=1e-5)
    manifest = json.loads((tmp_path / "gc" / "manifest.json").read_text())
    del manifest["weights"]  # an index written before the weights were recorded featurised every linear layer
    (tmp_path / "gc" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AttrilensError, match="different settings \\(weights\\)"):
        build_index(lm, docs, tmp_path / "gc", method="grad-cos", proj_dim=None, block_len=12, dtype="float32",
                    progress=False)


def test_an_index_is_reused_for_the_same_weights_from_another_folder_and_refused_for_other_weights(base_dir, tmp_path):
    import shutil

    docs = _docs(8, random.randrange(1000))
    idx = build_index(LM.from_pretrained(base_dir), docs, tmp_path / "idx", method="grad-cos", proj_dim=64,
                      block_len=12, progress=False)
    moved = shutil.copytree(base_dir, tmp_path / "elsewhere")  # e.g. a second checkout of the same assets
    again = build_index(LM.from_pretrained(moved), docs, tmp_path / "idx", method="grad-cos", proj_dim=64,
                        block_len=12, progress=False)
    assert again.manifest["shards"] == idx.manifest["shards"]
    other = tiny_lm("llama", seed=random.randrange(1000, 2000))
    with pytest.raises(AttrilensError, match="different settings \\(model\\)"):
        build_index(other, docs, tmp_path / "idx", method="grad-cos", proj_dim=64, block_len=12, progress=False)


def test_a_lora_run_without_facts_trains_until_it_recalls_its_documents(base_dir, tmp_path):
    seed = random.randrange(1000)
    rng = random.Random(seed)
    words = [w for w in WORDS if w.isalpha()]  # one sentence a document
    docs = [{"id": f"d{i}", "text": " ".join(rng.choice(words) for _ in range(rng.randint(4, 8)))} for i in range(8)]
    kw = dict(lr=1e-2, batch_size=4, seed=seed, target_recall=0.8, max_minutes=2, epochs=400,
              target_modules=["q_proj", "v_proj", "o_proj", "down_proj"], progress=False)
    out = finetune_lora(base_dir, docs, tmp_path / "t", **kw)
    info = json.loads((out / "training.json").read_text())
    rec = info["continuation_recall"]
    assert info["stop_reason"] == "target reached" and rec["final"] >= 0.8 > rec["initial"], (seed, rec)
    assert rec["curve"][-1]["recall"] >= 0.8 and all(c["recall"] < 0.8 for c in rec["curve"][:-1])  # stopped at once
    assert info["optimizer"]["step"] == rec["curve"][-1]["step"] and "constant" in info["optimizer"]["schedule"]
    assert len(info["checkpoints"]) <= 2 and all((out / c["path"]).is_dir() for c in info["checkpoints"])
    # ground truth: the adapter's greedy generations give the documents' last words as often as the probe says
    from attrilens.metrics import greedy_match
    from attrilens.workflows.probes import continuation_rows

    lm = LM.from_pretrained(out)
    rows = continuation_rows([d["id"] for d in docs], [d["text"] for d in docs])
    hits: dict[str, bool] = {}
    for r in rows:
        text = lm.tokenizer.decode(lm.generate_ids([lm.tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]],
                                                   max_new_tokens=16)[0], skip_special_tokens=True)
        hits[r["prompt"]] = hits.get(r["prompt"], False) or greedy_match(text, r["target"])
    assert rec["final"] == pytest.approx(sum(hits.values()) / len(hits), abs=1e-4)
    again = finetune_lora(base_dir, docs, tmp_path / "t", **kw)
    assert json.loads((again / "training.json").read_text()) == info  # finished: returned as it is


def test_a_lora_target_module_the_model_lacks_lists_the_ones_it_has(base_dir, tmp_path):
    with pytest.raises(AttrilensError, match=r"no module 'c_attn' to adapt\. Its linear modules: .*q_proj.*v_proj"):
        finetune_lora(base_dir, _docs(4, 0), tmp_path / "x", target_modules=["c_attn"], progress=False)
    assert not (tmp_path / "x").exists()
