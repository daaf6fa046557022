"""FAISS indexes over the shards: flat is exact, ivf-pq and hnsw are approximate (recall checked against exact
search on fresh clustered features), their parameters are recorded, and a trace says which search it used."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import random
import sys

import numpy as np
import pytest
import torch

from attrilens.errors import AttrilensError
from attrilens.testing import tiny_lm
from attrilens.training.ann import AnnIndex, build_ann, faiss_params
from attrilens.training.index import build_index
from attrilens.training.search import search_dot

faiss = pytest.importorskip("faiss")
torch.set_num_threads(1)


def _clustered(n, d, seed, clusters=40, rank=16):
    """Unit rows near a low-rank subspace around cluster centres (what projected gradients look like), fp16."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((rank, d))
    centres = rng.standard_normal((clusters, rank)) * 2
    x = (centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, rank))) @ basis
    x += 0.3 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


@pytest.fixture(scope="module")
def shards():
    x = _clustered(6000, 64, seed=random.randrange(1 << 30))
    return [(0, x[:2500]), (2500, x[2500:])]


@pytest.mark.parametrize("kind,min_recall", [("flat", 1.0), ("hnsw", 0.9), ("ivf-pq", 0.8)])
def test_faiss_kinds_against_exact_search(shards, tmp_path, kind, min_recall):
    entry = build_ann(tmp_path, shards, 64, kind, {"m": 16, "nlist": 64, "nprobe": 8} if kind == "ivf-pq" else None)
    assert entry["kind"] == kind and entry["approximate"] == (kind != "flat") and entry["params"] == \
        faiss_params(kind, 6000, 64, {"m": 16, "nlist": 64, "nprobe": 8} if kind == "ivf-pq" else None)
    ann = AnnIndex(tmp_path, json.loads(json.dumps(entry)))
    assert ann.label == f"faiss-{kind} ({'approximate' if kind != 'flat' else 'exact'})"
    rng = np.random.default_rng(random.randrange(1 << 30))
    recalls = []
    rows = np.concatenate([a for _, a in shards]).astype(np.float32)
    for qi in rng.choice(6000, 20, replace=False):
        q = rows[qi] + 0.1 * rng.standard_normal(64)
        bi, bs, wi, ws = search_dot(shards, torch.from_numpy(q.astype(np.float32)), 10)
        ai, as_, aw, aws = ann.search(q, 10, shards)
        recalls.append(len(set(ai) & set(bi)) / 10)
        if kind == "flat":
            assert list(ai) == list(bi) and list(aw) == list(wi)
        exact = {int(i): float(s) for i, s in zip(bi, bs, strict=True)}
        for i, s in zip(ai, as_, strict=True):  # reported scores are exact (re-scored), not the PQ estimate
            if int(i) in exact:
                assert s == pytest.approx(exact[int(i)], abs=1e-5)
        assert list(as_) == sorted(as_, reverse=True) and list(aws) == sorted(aws)
    assert np.mean(recalls) >= min_recall


def test_faiss_params_defaults_and_bad_options():
    p = faiss_params("ivf-pq", 100_000, 4096)
    assert p["nlist"] == 256 and p["m"] == 256 and p["nbits"] == 8 and p["nprobe"] == 32 and p["train_rows"] == 16384
    assert faiss_params("ivf-pq", 200, 64)["nlist"] == 5  # at least 39 training rows per cell
    assert faiss_params("hnsw", 10, 8) == {"M": 32, "ef_construction": 80, "ef_search": 128, "rerank": 1}
    for kind, opts, msg in [("ivfpq", None, "Unknown FAISS kind"), ("hnsw", {"nprobe": 3}, "Unknown FAISS option"),
                            ("ivf-pq", {"m": 48}, "must divide"), ("hnsw", {"M": "x"}, "positive integer"),
                            ("hnsw", {"M": 0}, "at least 1")]:
        with pytest.raises(AttrilensError, match=msg):
            faiss_params(kind, 1000, 64, opts)


WORDS = "the capital of velmora is quenth . who founded the bank ? answer : zorvia currency lumen founder ada".split()


def _cli(argv, monkeypatch, capsys):
    from attrilens.cli.app import main

    monkeypatch.setattr(sys, "argv", ["attrilens", *argv])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_index_build_and_trace_with_faiss_kinds_cli(tmp_path, monkeypatch, capsys):
    d = tmp_path / "model"
    tiny_lm("llama", seed=4).save_pretrained(d)
    rng = random.Random(1)
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": " ".join(
        rng.choice(WORDS) for _ in range(rng.randint(3, 12)))}) + "\n" for i in range(40)))
    base = ["index", "build", "--model", str(d), "--corpus", str(tmp_path / "c.jsonl"), "--method", "grad-cos",
            "--proj-dim", "64", "--block-len", "12", "--threads", "1"]
    code, _, err = _cli([*base, "--out", str(tmp_path / "i"), "--faiss", "ivf-pq", "--faiss-option", "m=8",
                         "--faiss-option", "nprobe=2", "--faiss-option", "nbits=4"], monkeypatch, capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "i" / "manifest.json").read_text())
    assert manifest["faiss"]["kind"] == "ivf-pq" and manifest["faiss"]["params"]["nprobe"] == 2
    assert manifest["faiss"]["params"]["m"] == 8 and manifest["faiss"]["approximate"]
    code, out, err = _cli(["trace", "--index", str(tmp_path / "i"), "--prompt", "who founded the bank ?", "--target",
                           " ada", "--faiss", "--json"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["cost"]["search"] == "faiss-ivf-pq (approximate)"
    for extra, msg in [(["--faiss", "annoy"], "Unknown FAISS kind"),
                       (["--faiss", "hnsw", "--faiss-option", "nprobe=2"], "Unknown FAISS option"),
                       (["--faiss", "hnsw", "--faiss-option", "M"], "takes KEY=VALUE")]:
        code, _, err = _cli([*base, "--out", str(tmp_path / "bad"), *extra], monkeypatch, capsys)
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert code == 2 and len(lines) == 1 and msg in lines[0], err
        assert not (tmp_path / "bad" / "shards").exists()  # refused before featurising


def test_a_legacy_exact_faiss_entry_still_opens_and_hnsw_traces_say_approximate(tmp_path):
    lm = tiny_lm("llama", seed=9)
    rng = random.Random(2)
    docs = [{"id": f"d{i}", "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))} for i in range(30)]
    idx = build_index(lm, docs, tmp_path / "h", method="grad-cos", proj_dim=64, block_len=12, use_faiss="hnsw",
                      progress=False)
    a = idx.trace("who founded the bank ?", target=" ada", top_k=5)
    b = idx.trace("who founded the bank ?", target=" ada", top_k=5, use_faiss=True)
    assert b.cost.extra["search"] == "faiss-hnsw (approximate)" and "search" not in a.cost.extra
    assert [h.id for h in a.proponents] == [h.id for h in b.proponents]  # a 60-row graph finds them all
    flat = build_ann(tmp_path / "h", idx.shards, idx.manifest["dim"], "flat", name="old.index")
    legacy = AnnIndex(tmp_path / "h", flat["file"])  # manifests before the kinds stored just the file name
    assert legacy.label == "faiss-flat (exact)"
    q = idx.method.query(_query(idx))
    assert list(legacy.search(q.numpy(), 5)[0]) == list(search_dot(idx.shards, q, 5)[0])


def _query(idx):
    from attrilens.training.gradients import Example
    from attrilens.training.methods import Query

    lm = idx.lm
    return Query(example=Example.response(lm.encode_prompt("who founded the bank ?"), lm.encode_response(" ada")))


def test_scale_benchmark_measures_recall_against_its_own_exact_search(monkeypatch, capsys):
    from attrilens.bench import scale

    rep = scale.ann_benchmark([3000], 64, kinds=["flat", "ivf-pq"], n_queries=10, seed=random.randrange(1000))
    t = rep.tables["FAISS recall@10 and latency"]
    assert list(t["kind"][:2]) == ["exact (blocked, fp16)", "flat"]
    assert (t["recall@10"][:2] == 1.0).all()  # flat is exact: it must match the benchmark's own truth
    assert ((t["recall@10"] >= 0) & (t["recall@10"] <= 1)).all() and len(t) == 2 + len(scale.SEARCH_SWEEP["ivf-pq"])
    cost = scale.cost_model().tables["TrackStar at 8B parameters, 160B tokens, d = 2^16"].set_index("quantity")["value"]
    assert cost["forward+backward FLOPs"] == 6 * 8e9 * 160e9
    assert cost["H100 SXM GPU-days"] == pytest.approx(cost["total featurising FLOPs"] / (989e12 * 0.4) / 86400)
    assert cost["feature storage, TB"] == pytest.approx(160e9 / 2048 * 2**16 * 2 / 1e12)
    code, _, err = _cli(["bench", "scale", "--part", "ann", "--kind", "annoy"], monkeypatch, capsys)
    assert code == 2 and "Unknown FAISS kind" in err
