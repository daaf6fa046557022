"""Ray's GPU placement, on a CPU machine: a local cluster that declares one (fake) GPU. The build starts one actor
per GPU, each holding its GPU while it featurises (the actor falls back to the CPU when CUDA is absent, so the
shards equal a local build's), and more workers than GPUs is a one-line error instead of actors that never start."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import random

import pytest
import torch

from attrilens.errors import AttrilensError
from attrilens.testing import tiny_lm
from attrilens.training import distributed
from attrilens.training.index import build_index

ray = pytest.importorskip("ray")
torch.set_num_threads(1)  # as the actors: the local build compared with them runs with one thread too

WORDS = "the capital of velmora is quenth . who founded the bank ? answer : zorvia currency lumen".split()
BUILD = {"method": "grad-cos", "proj_dim": 32, "block_len": 12, "shard_size": 16, "progress": False}


@pytest.fixture(scope="module")
def gpu_cluster():
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_one_actor_per_gpu_holds_it_and_the_shards_equal_the_local_build(gpu_cluster, tmp_path, monkeypatch):
    rng = random.Random(3)
    docs = [{"id": f"d{i}", "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10)))} for i in range(40)]
    lm = tiny_lm("llama", seed=2)
    lm.model.save_pretrained(tmp_path / "model")
    lm.tokenizer.save_pretrained(tmp_path / "model")
    from attrilens.lm import LM

    lm = LM.from_pretrained(str(tmp_path / "model"))
    real_map, seen = distributed._Pool.map, []

    def spy(self, *a, **k):  # once a shard has come back, the actor is placed and holds its resources
        for n, item in enumerate(real_map(self, *a, **k)):
            if n == 0:
                seen.append((self.size, ray.available_resources().get("GPU", 0.0)))
            yield item

    monkeypatch.setattr(distributed._Pool, "map", spy)
    idx = build_index(lm, docs, tmp_path / "ray", ray="local", **BUILD)
    assert seen == [(1, 0.0)]  # one actor (one per GPU), and it holds the cluster's only GPU
    local = build_index(lm, docs, tmp_path / "local", **BUILD)
    files = [s["file"] for s in local.manifest["shards"]]
    assert files == [s["file"] for s in idx.manifest["shards"]] and len(files) > 1
    assert all((idx.path / f).read_bytes() == (local.path / f).read_bytes() for f in files)
    with pytest.raises(AttrilensError, match=r"--ray-workers 2 asks for 2 actors with a GPU each, but the Ray "
                                             r"cluster has 1 GPU\(s\)\. Pass --ray-workers 1 or fewer"):
        build_index(lm, docs, tmp_path / "two", ray="local", ray_workers=2, **BUILD)
    assert not (tmp_path / "two" / "shards").exists()
