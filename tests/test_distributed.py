"""The index on Ray (a local 2-worker cluster): the same shards and traces as the local build, TrackStar's R from
the reduced second moments, resume after a killed worker or an interrupted driver, corpus formats, bad input."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import random
import sys

import numpy as np
import pytest
import torch

from attrilens.errors import AttrilensError
from attrilens.testing import save_with_adam_moments, tiny_lm
from attrilens.training import distributed
from attrilens.training.corpus import read_documents
from attrilens.training.index import build_index
from attrilens.training.preconditioning import Whitening, fit_whitening, fit_whitening_moments, moment_sum

ray = pytest.importorskip("ray")
torch.set_num_threads(1)  # the actors run with 1 thread each: the local builds compared with them do too

WORDS = "the capital of velmora is quenth . who founded the bank ? answer : zorvia currency lumen founder ada".split()
QUERIES = [{"prompt": "who founded the bank ?", "target": " ada"}, {"prompt": "the capital of zorvia", "target": " is quenth"},
           {"prompt": "answer : the currency", "target": " lumen"}]
BUILD = {"block_len": 12, "shard_size": 16, "progress": False}


def _docs(n=60, seed=0):
    rng = random.Random(seed)
    return [{"id": f"doc-{i:03d}", "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))} for i in range(n)]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return save_with_adam_moments(tiny_lm("llama", seed=11), tmp_path_factory.mktemp("model"), seed=5)


def _files(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.glob("shards/*.npy"))} | {
        "preconditioner": (path / "preconditioner.safetensors").read_bytes()
        if (path / "preconditioner.safetensors").is_file() else b""}


@pytest.fixture(scope="module")
def local_builds(lm, tmp_path_factory):
    """Local builds to compare with: grad-cos (no fit) and TrackStar with eval queries (R fitted)."""
    root = tmp_path_factory.mktemp("local")
    docs = _docs()
    return {m: build_index(lm, docs, root / m, method=m, proj_dim=32, eval_queries=QUERIES, **BUILD)
            for m in ("grad-cos", "trackstar")}


def test_ray_trackstar_build_equals_the_local_build_byte_for_byte_and_traces_agree(cluster, lm, local_builds, tmp_path):
    """R from the reduced second moments on both paths; grad-cos (no fit): the resume test below."""
    method = "trackstar"
    local = local_builds[method]
    assert len(local) > 32  # TrackStar: N ≥ d, so both builds fit R from the reduced second moments
    idx = build_index(lm, _docs(), tmp_path / "ray", method=method, proj_dim=32, eval_queries=QUERIES, ray="local",
                      ray_workers=2, **BUILD)
    assert _files(idx.path) == _files(local.path)
    assert len(idx.manifest["shards"]) == len(local.manifest["shards"]) > 2
    assert [s["start"] for s in idx.manifest["shards"]] == sorted(s["start"] for s in idx.manifest["shards"])
    assert not (idx.path / "raw").exists()
    assert idx.manifest["lambda"] == local.manifest["lambda"] and idx.manifest["r_fit"] == "second-moment reduction"
    assert 0 < idx.manifest["lambda"] < 1
    for prompt, target in [(q["prompt"], q["target"]) for q in QUERIES]:
        a = local.trace(prompt, target=target, top_k=5)
        b = idx.trace(prompt, target=target, top_k=5)
        c = local.trace(prompt, target=target, top_k=5, ray="local")  # map (top-k per shard) → reduce
        assert [(h.id, h.block, h.score) for h in a.proponents] == [(h.id, h.block, h.score) for h in b.proponents]
        assert [(h.id, h.block) for h in a.proponents + a.opponents] == [(h.id, h.block) for h in c.proponents + c.opponents]
        assert [h.score for h in c.proponents] == pytest.approx([h.score for h in a.proponents], abs=1e-6)
        assert c.cost.extra["search"] == "ray map-reduce (exact)"


def test_worker_reduction_survives_a_restarted_actor_and_agrees_with_the_local_build(cluster, lm, local_builds,
                                                                                     tmp_path, monkeypatch):
    """reduce="worker": a running Σ ΦᵀΦ per actor. The actor killed on shard 3 comes back with an empty sum; the
    driver recomputes the shards no sum covers, so R equals the local build's to float64 summation order."""
    from safetensors.torch import load_file

    monkeypatch.setattr(distributed, "KILL_ONCE_AT_SHARD", 3)
    real_map, descs = distributed._Pool.map, []
    monkeypatch.setattr(distributed._Pool, "map", lambda self, jobs, desc, *a: (descs.append((desc, [j[1] for j in
                        jobs])) or real_map(self, jobs, desc, *a)))
    local = local_builds["trackstar"]
    idx = build_index(lm, _docs(), tmp_path / "ray", method="trackstar", proj_dim=32, eval_queries=QUERIES, ray="local",
                      ray_workers=1, ray_reduce="worker", **BUILD)
    assert (tmp_path / "ray" / ".kill-once-3").exists() and idx.manifest["moments_reduce"] == "worker"
    # one actor, two shards in flight: at least two of shards 0-2 were in its sum when it died on shard 3 (which
    # Ray ran again on the restarted actor); those are recomputed, so the sum adds in another order than local's
    again = [shards for desc, shards in descs if desc == "second moments again"]
    assert len(again) == 1 and len(again[0]) >= 2 and set(again[0]) <= {0, 1, 2}
    assert idx.manifest["lambda"] == pytest.approx(local.manifest["lambda"], rel=1e-9)
    wa, wb = (Whitening.from_tensors({k.split(".", 1)[1]: v for k, v in load_file(i.path / "preconditioner.safetensors")
                                      .items() if k.startswith("whitening.")}) for i in (local, idx))
    x = torch.randn(9, 32, generator=torch.Generator().manual_seed(4))  # the operator (eigenvectors may rotate
    ya, yb = wa.apply(x), wb.apply(x)                                    # inside a degenerate eigenspace)
    assert torch.allclose(ya, yb, rtol=1e-5, atol=1e-6 * float(ya.abs().max()))
    assert [s["file"] for s in local.manifest["shards"]] == [s["file"] for s in idx.manifest["shards"]]
    for s in local.manifest["shards"]:
        x, y = (torch.from_numpy(np.load(p / s["file"]).astype(np.float32)) for p in (local.path, idx.path))
        assert torch.allclose(x, y, rtol=2e-3, atol=1e-3)  # float16 rows: at most a unit in the last place
    for q in QUERIES:
        ta, tb = (i.trace(q["prompt"], target=q["target"], top_k=5) for i in (local, idx))
        assert [h.id for h in ta.proponents + ta.opponents] == [h.id for h in tb.proponents + tb.opponents]


def test_the_reduction_kind_is_chosen_by_the_size_of_one_statistic():
    assert distributed.resolve_reduce("auto", 4096) == "shard" and distributed.resolve_reduce("auto", 8192) == "worker"
    assert distributed.resolve_reduce("worker", 32) == "worker"
    with pytest.raises(AttrilensError, match="Unknown Ray reduction 'tree'. Use one of: auto, shard, worker"):
        build_index(None, [], "unused", ray="local", ray_reduce="tree")


@pytest.mark.parametrize("n,d", [(40, 96), (300, 64)])
def test_r_from_reduced_second_moments_equals_the_fit_on_the_features(n, d):
    """Thin form (n < d) and full form (n ≥ d) from the features vs Σ per-shard ΦᵀΦ: the same (R + δI)^(-1/2)."""
    g = torch.Generator().manual_seed(n + d)
    train = torch.randn(n, 6, generator=g) @ torch.randn(6, d, generator=g) + 0.2 * torch.randn(n, d, generator=g)
    evals = torch.randn(9, d, generator=g)
    for e in (None, evals):
        a = fit_whitening(train, e, damping=1e-2)
        b = fit_whitening_moments(sum(moment_sum(train[i : i + 17]) for i in range(0, n, 17)), n, e, damping=1e-2)
        assert a.lam == pytest.approx(b.lam, abs=1e-9) and a.k == b.k and a.tail == pytest.approx(b.tail, rel=1e-9)
        if e is not None:
            assert 0 < b.lam < 1
        x = torch.randn(7, d, generator=g)
        ya, yb = a.apply(x), b.apply(x)
        assert torch.allclose(ya, yb, rtol=1e-5, atol=1e-5 * float(ya.abs().max()))
        assert not torch.allclose(ya, x * a.tail, rtol=1e-2)  # R does something


def test_a_killed_worker_is_restarted_and_an_interrupted_build_resumes(cluster, lm, local_builds, tmp_path, monkeypatch):
    out = tmp_path / "ray"
    monkeypatch.setattr(distributed, "KILL_ONCE_AT_SHARD", 3)  # the worker dies (os._exit) on shard 3, once
    real_map = distributed._Pool.map
    seen = []

    def interrupted(self, jobs, *a, **k):  # the driver dies after two committed shards
        for n, (job, res) in enumerate(real_map(self, jobs, *a, **k)):
            seen.append(job[1])
            if n == 2:
                raise KeyboardInterrupt
            yield job, res

    monkeypatch.setattr(distributed._Pool, "map", interrupted)
    with pytest.raises(KeyboardInterrupt):  # one worker: fewer processes to start on a 2-core CI machine
        build_index(lm, _docs(), out, method="grad-cos", proj_dim=32, ray="local", ray_workers=1, **BUILD)
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and len(manifest["shards"]) == 2
    for s in manifest["shards"]:  # the manifest names only shards on disk, with their checksums
        assert (out / s["file"]).is_file()
    monkeypatch.setattr(distributed._Pool, "map", lambda self, jobs, *a, **k: (seen.append(j[1]) or (j, r)
                                                                               for j, r in real_map(self, jobs, *a, **k)))
    seen.clear()
    idx = build_index(lm, _docs(), out, method="grad-cos", proj_dim=32, ray="local", ray_workers=1, **BUILD)
    assert sorted(seen) == sorted(set(range(len(idx.manifest["shards"]))) - {s["start"] // 16 for s in manifest["shards"]})
    assert (out / ".kill-once-3").exists() and 3 in seen  # shard 3's worker died and Ray ran it again
    assert _files(idx.path) == _files(local_builds["grad-cos"].path)


def test_a_trackstar_build_interrupted_after_the_fit_resumes_with_the_saved_r(cluster, lm, local_builds, tmp_path,
                                                                              monkeypatch):
    out = tmp_path / "ray"
    real_map = distributed._Pool.map

    def interrupted(self, jobs, *a, **k):  # the driver dies after the fit, with two finished shards written
        for n, (job, res) in enumerate(real_map(self, jobs, *a, **k)):
            if job[0] == "finish" and n == 2:
                raise KeyboardInterrupt
            yield job, res

    monkeypatch.setattr(distributed._Pool, "map", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_index(lm, _docs(), out, method="trackstar", proj_dim=32, eval_queries=QUERIES, ray="local", **BUILD)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "finish" and len(manifest["shards"]) == 2 and manifest["raw_shards"]
    monkeypatch.setattr(distributed._Pool, "map", real_map)
    idx = build_index(lm, _docs(), out, method="trackstar", proj_dim=32, eval_queries=QUERIES, ray="local", **BUILD)
    assert _files(idx.path) == _files(local_builds["trackstar"].path) and not (out / "raw").exists()


def test_ray_data_reads_jsonl_parquet_and_a_datasets_folder_as_the_local_reader(cluster, lm, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = _docs(30, seed=3)
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    pq.write_table(pa.table({"id": [d["id"] for d in docs], "text": [d["text"] for d in docs]}), tmp_path / "c.parquet")
    want = read_documents(tmp_path / "c.jsonl")
    assert distributed.read_corpus(tmp_path / "c.jsonl") == want
    assert distributed.read_corpus(tmp_path / "c.parquet") == want
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(docs).save_to_disk(str(tmp_path / "hf"))
    assert distributed.read_corpus(tmp_path / "hf") == want
    pq.write_table(pa.table({"id": ["a"], "body": ["no text column"]}), tmp_path / "bad.parquet")
    with pytest.raises(AttrilensError, match="has no 'text' column .*body.*Name the column"):
        distributed.read_corpus(tmp_path / "bad.parquet")


def test_cli_bad_ray_input_is_one_line_and_exit_2(cluster, lm, tmp_path, monkeypatch, capsys):
    """An unreachable or malformed address, a corpus without a text column, an unknown reduction, more workers than
    the cluster can place (they would never start, and their shards wait for ever): one line, exit 2, no shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from attrilens.cli.app import main

    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "a", "text": "who founded the bank ?"}) + "\n")
    pq.write_table(pa.table({"id": ["a"], "body": ["x"]}), tmp_path / "bad.parquet")
    for corpus, ray_arg, msg in [("c.jsonl", "127.0.0.1:1", "Cannot reach the Ray cluster at '127.0.0.1:1'"),
                                 ("c.jsonl", "nowhere", "is not a cluster address"),
                                 ("bad.parquet", "local", "has no 'text' column"),
                                 ("c.jsonl", "local --ray-reduce tree", "Unknown Ray reduction 'tree'"),
                                 ("c.jsonl", "local --ray-workers 3", "--ray-workers 3 asks for 3 CPUs (1 torch "
                                  "thread(s) an actor), but the Ray cluster has 2. Pass --ray-workers 2 or fewer"),
                                 ("c.jsonl", "local --ray-workers 0", "--ray-workers must be at least 1, got 0")]:
        monkeypatch.setattr(sys, "argv", ["attrilens", "index", "build", "--model", lm.name, "--corpus",
                                          str(tmp_path / corpus), "--out", str(tmp_path / "o"), "--method", "grad-dot",
                                          "--ray", *ray_arg.split()])
        with pytest.raises(SystemExit) as exc:
            main()
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert exc.value.code == 2 and len(lines) == 1 and msg in lines[0], err
        assert not (tmp_path / "o" / "shards").exists()
