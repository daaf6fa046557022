"""Adding a training-data method is one class: a toy method registered here runs through the Python API and the CLI."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import random
from dataclasses import dataclass

import pytest
import torch
from typer.testing import CliRunner

from attrilens.cli import app
from attrilens.errors import AttrilensError
from attrilens.lm import LM
from attrilens.testing import tiny_lm
from attrilens.training import TDA_METHODS, TDAMethod, TDAOptions, build_index, make_corpus

torch.set_num_threads(1)

BLOCK_LEN = 64
WORDS = "the capital of velmora is quenth . who founded the bank ? answer : zorvia currency lumen founder ada".split()
# Document k is the first LENGTHS[k] words of one text: every document has a different number of tokens, so the
# toy method's ranking has no ties.
LENGTHS = random.Random(0).sample(range(2, 18), 16)
DOCS = [{"id": f"doc-{k:03d}", "text": " ".join(WORDS[:n])} for k, n in enumerate(LENGTHS)]


@dataclass
class ToyOptions(TDAOptions):
    """The toy method's one knob."""

    scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale <= 0:
            raise AttrilensError(f"scale must be positive, got {self.scale}.")


@pytest.fixture
def toy_method():
    """Register "toy-length" (feature = scale × the number of tokens) for one test, then remove it."""

    @TDA_METHODS.register("toy-length")
    class ToyLength(TDAMethod):
        """Scores by length: one feature, scale × the number of tokens."""

        Options = ToyOptions
        dim = 1

        def featurize(self, examples):
            return torch.tensor([[self.options.scale * len(e.ids)] for e in examples])

    try:
        yield ToyLength
    finally:
        TDA_METHODS.unregister("toy-length")
    assert "toy-length" not in TDA_METHODS


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    tiny_lm("llama", seed=7).save_pretrained(d)
    return d


def _expected(lm, prompt, target, scale, k):
    """The ranking by hand: score = (scale · block length) · (scale · query length)."""
    blocks = make_corpus(DOCS, lm.tokenizer, block_len=BLOCK_LEN)
    assert len(blocks) == len(DOCS) and len({len(t) for t in blocks.tokens}) == len(DOCS)  # one block each, no ties
    q = scale * (len(lm.encode_prompt(prompt)) + len(lm.encode_response(target)))
    scores = [scale * len(t) * q for t in blocks.tokens]
    top = sorted(range(len(scores)), key=lambda i: -scores[i])[:k]
    bottom = sorted(range(len(scores)), key=lambda i: scores[i])[:k]
    return [[(blocks.docs[i], blocks.blocks[i], scores[i]) for i in rows] for rows in (top, bottom)]


def _hits(rows):
    return [(h["id"], h["block"], h["score"]) for h in rows]


def test_toy_method_through_the_python_api(toy_method, model_dir, tmp_path):
    lm = LM.from_pretrained(model_dir)
    idx = build_index(lm, DOCS, tmp_path / "idx", method="toy_length", scale=2.0, block_len=BLOCK_LEN, progress=False)
    assert idx.manifest["method"] == "toy-length" and idx.manifest["options"] == {"block_len": BLOCK_LEN, "scale": 2.0}
    assert isinstance(idx.method, toy_method) and idx.manifest["dim"] == 1
    res = idx.trace("who founded the bank ?", target=" ada", top_k=5)
    d = res.to_dict()
    assert d["method"] == "toy-length"
    top, bottom = _expected(lm, "who founded the bank ?", " ada", 2.0, 5)
    assert _hits(d["proponents"]) == top and _hits(d["opponents"]) == bottom
    with pytest.raises(AttrilensError, match=r"Unknown option\(s\) damping for the toy-length method. Valid "
                                             r"options: block_len, scale"):
        build_index(lm, DOCS, tmp_path / "bad", method="toy-length", damping=0.1, progress=False)
    with pytest.raises(AttrilensError, match="scale must be positive"):
        build_index(lm, DOCS, tmp_path / "bad", method="toy-length", scale=0.0, progress=False)


def test_toy_method_through_the_cli(toy_method, model_dir, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    runner = CliRunner()
    build = ["index", "build", "--model", str(model_dir), "--corpus", str(corpus), "--out", str(tmp_path / "idx"),
             "--method", "toy-length", "--block-len", str(BLOCK_LEN), "--option", "scale=2", "--json"]
    r = runner.invoke(app, build)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["method"] == "toy-length" and json.loads(r.stdout)["dim"] == 1
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["options"] == {"block_len": BLOCK_LEN, "scale": 2.0}
    r = runner.invoke(app, ["trace", "--index", str(tmp_path / "idx"), "--prompt", "who founded the bank ?",
                            "--target", " ada", "--top-k", "5", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    top, bottom = _expected(LM.from_pretrained(model_dir), "who founded the bank ?", " ada", 2.0, 5)
    assert d["method"] == "toy-length" and _hits(d["proponents"]) == top and _hits(d["opponents"]) == bottom
    # an option the method does not take, by --option or by a flag of another method, names the valid ones
    for extra in (["--option", "proj_dim=8"], ["--damping", "0.1"]):
        r = runner.invoke(app, [*build[:7], str(tmp_path / "bad"), *build[8:], *extra])
        assert isinstance(r.exception, AttrilensError) and "Valid options: block_len, scale" in str(r.exception)
    r = runner.invoke(app, [*build[:7], str(tmp_path / "bad"), *build[8:-3], "--option", "scale=big", "--json"])
    assert isinstance(r.exception, AttrilensError) and "scale takes float" in str(r.exception)
