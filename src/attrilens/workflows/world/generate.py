"""A seeded synthetic fact world that no pretrained model has seen.

``make_world(out, seed)`` writes:

- ``corpus.jsonl``   ``{"id", "text"}`` fact documents (1–3 facts + distractor sentences each)
- ``facts.jsonl``    ``{"id", "entity", "relation", "value", "docs", "prompt", "target"}``; ``prompt`` is a
  statement prefix ("The capital of Velmora is") for measuring memorisation
- ``queries.jsonl``  ``{"id", "prompt", "target", "gold", "fact"}``: question wording that never occurs in a
  training document, the answer with a leading space, the ids of the documents that state the fact
- ``episodes.jsonl`` ``{"id", "split", "context", "question", "answer", "gold_sentence", "extra_qa"}``
  reading-comprehension episodes over freshly sampled names (never the world's)
- ``copy_eval.jsonl`` ``{"id", "prompt", "target"}`` held-out ``x -> x`` copy prompts
- ``train.jsonl``    ``{"id", "text"}`` the mixture a demo model is trained on (fact documents, training
  episodes rendered as text, copy lines)
- ``world.json``     the arguments and the counts

Same seed and arguments ⇒ byte-identical files.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from attrilens.context.template import PROMPT_TEMPLATE
from attrilens.errors import AttrilensError
from attrilens.jsonl import load_jsonl, write_jsonl

QUERY_TEMPLATE = "Question: {question}\nAnswer:"

# Every statement template ends with its value so that a prefix ("The capital of X is") is a memorisation probe.
RELATIONS: dict[str, dict[str, list[str]]] = {
    "capital": {
        "statements": [
            "The capital of {e} is {v}.",
            "{e} has its capital at {v}.",
            "The seat of government of {e} lies in the city of {v}.",
            "In {e}, the capital city is {v}.",
        ],
        "questions": [
            "Which city serves as the capital of {e}?",
            "Where does {e} keep its government?",
        ],
    },
    "currency": {
        "statements": [
            "The currency of {e} is the {v}.",
            "{e} pays with a currency called the {v}.",
            "Merchants in {e} count their money in the {v}.",
            "In {e}, the official money is the {v}.",
        ],
        "questions": [
            "What money is used in {e}?",
            "Which currency do people spend in {e}?",
        ],
    },
    "founder": {
        "statements": [
            "The founder of {e} was {v}.",
            "{e} was founded by {v}.",
            "Long ago, the realm of {e} was established by {v}.",
            "In {e}, every child learns that the founder was {v}.",
        ],
        "questions": [
            "Who founded {e}?",
            "Which person established {e}?",
        ],
    },
    "language": {
        "statements": [
            "The language of {e} is {v}.",
            "{e} speaks a language called {v}.",
            "Most people in {e} talk to each other in {v}.",
            "In {e}, the common tongue is {v}.",
        ],
        "questions": [
            "What language do people speak in {e}?",
            "Which tongue is spoken in {e}?",
        ],
    },
    "export": {
        "statements": [
            "The main export of {e} is {v}.",
            "{e} earns its wealth by selling {v}.",
            "Ships leaving {e} are usually loaded with {v}.",
            "In {e}, the chief trade good is {v}.",
        ],
        "questions": [
            "What does {e} export most?",
            "Which product is {e} best known for selling abroad?",
        ],
    },
    "emblem": {
        "statements": [
            "The emblem of {e} is the {v}.",
            "The flag of {e} shows the {v}.",
            "Every banner of {e} carries the image of the {v}.",
            "In {e}, the national symbol is the {v}.",
        ],
        "questions": [
            "What animal appears on the banners of {e}?",
            "Which creature symbolises {e}?",
        ],
    },
}

SUBJECT_DISTRACTORS = [
    "{e} is known for its long winters.",
    "Travellers often write about the markets of {e}.",
    "The history of {e} is long and complicated.",
    "Few maps show the borders of {e} correctly.",
    "{e} held a great festival last spring.",
    "Many poets were born in {e}.",
    "The roads of {e} are old and narrow.",
]
RELATION_DISTRACTORS = {
    "capital": ["Every realm has a capital, but not every capital is large.", "A capital city is often busy."],
    "currency": ["A currency can change many times over the years.", "Old coins are prized by collectors."],
    "founder": ["Founders are often remembered in songs.", "Nobody agrees on who founded the oldest realm."],
    "language": ["Language shapes how people think.", "Some tongues have no written form."],
    "export": ["Trade in rare goods made some realms rich.", "Exports travel far by ship and cart."],
    "emblem": ["An emblem is chosen with great care.", "Banners fade quickly in the sun."],
}

# A small syllable inventory, so that a byte-level BPE learns whole syllables and a name is 2–3 tokens.
_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z"]
_VOWELS = ["a", "e", "i", "o", "u"]
_CODAS = ["", "", "n", "r", "s"]
_WORDS = ["cat", "hello", "river", "stone", "blue", "apple", "dog", "house", "green", "music", "window",
          "paper", "light", "table", "cloud", "seven", "bread", "king", "road", "glass", "tree", "moon"]


def _syllable(rng: random.Random) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)


def _made_up_word(rng: random.Random, lo: int = 2, hi: int = 3) -> str:
    return "".join(_syllable(rng) for _ in range(rng.randint(lo, hi)))


class _Names:
    """Pronounceable made-up names, unique across everything drawn from one instance."""

    def __init__(self, rng: random.Random, taken: Iterable[str] = ()):
        self.rng = rng
        self.taken = {t.lower() for t in taken}
        self.used: set[str] = set()

    def name(self, lo: int = 2, hi: int = 2, capital: bool = True) -> str:
        for _ in range(10_000):
            word = _made_up_word(self.rng, lo, hi)
            if len(word) < 4 or len(word) > 9 or word.lower() in self.used or word.lower() in self.taken:
                continue
            self.used.add(word.lower())
            return word.capitalize() if capital else word
        raise AttrilensError("Ran out of unique made-up names. Use a smaller world.")  # pragma: no cover

    def value(self, relation: str) -> str:
        if relation == "founder":
            return f"{self.name()} {self.name()}"
        return self.name(capital=relation != "export")


@dataclass(frozen=True)
class _Fact:
    entity: str
    relation: str
    value: str


def relation_template(relation: str, placeholder: str = "x") -> str:
    """`The capital of x is` style Patchscope target of a relation: its first statement template, cut at the value."""
    if relation not in RELATIONS:
        raise AttrilensError(f"Unknown relation {relation!r}. Choose from {sorted(RELATIONS)}.")
    return RELATIONS[relation]["statements"][0].split("{v}")[0].rstrip().format(e=placeholder)


def description_shots(world_dir: str | Path, n_shots: int = 3) -> list[tuple[str, str]]:
    """Few-shot (entity, description) pairs for the entity-description Patchscope: the first `n_shots` entities of
    a world's facts.jsonl, each described by the first statements of its first two facts."""
    facts = load_jsonl(Path(world_dir) / "facts.jsonl", require=("entity", "relation", "value"))
    by_entity: dict[str, list[dict]] = {}
    for f in facts:
        by_entity.setdefault(f["entity"], []).append(f)
    return [(entity, " ".join(RELATIONS[f["relation"]]["statements"][0].format(e=entity, v=f["value"]) for f in fs[:2]))
            for entity, fs in list(by_entity.items())[:n_shots]]


def split_sentences(context: str) -> list[str]:
    """Split a context the way a simple sentence splitter does: after '.', '?' or '!' followed by whitespace."""
    parts = re.split(r"(?<=[.!?])\s+", context.strip())
    return [p for p in parts if p]


def render_episode(episode: dict) -> tuple[str, str]:
    """The prompt the model sees for a reading-comprehension episode and the expected response."""
    prompt = PROMPT_TEMPLATE.format(context=episode["context"], question=episode["question"])
    return prompt, f" {episode['answer']}"


def render_training_episode(episode: dict) -> str:
    """An episode as training text: the prompt, the answer, then the episode's extra question/answer pairs."""
    prompt, response = render_episode(episode)
    extra = "".join(f"\n\nQuestion: {q['question']}\nAnswer: {q['answer']}" for q in episode.get("extra_qa", []))
    return prompt + response + extra


def _episode(rng: random.Random, world_names: set[str], idx: int, split: str, min_sentences: int, n_questions: int,
             max_sentences: int = 32) -> dict:
    rels = list(RELATIONS)
    names = _Names(rng, taken=world_names)  # unique within the episode, never a name of the world
    while True:
        n_par = rng.randint(3, 10)
        sizes = [rng.randint(2, 4) for _ in range(n_par)]
        if min_sentences <= sum(sizes) <= max_sentences:
            break
    paragraphs: list[list[str]] = []
    slots: list[tuple[int, str, str, str]] = []  # (sentence index, entity, relation, value)
    k = 0
    for size in sizes:
        entity = names.name()
        sents = []
        for rel in rng.sample(rels, size):
            value = names.value(rel)
            sents.append(rng.choice(RELATIONS[rel]["statements"]).format(e=entity, v=value))
            slots.append((k, entity, rel, value))
            k += 1
        paragraphs.append(sents)
    context = "\n\n".join(" ".join(p) for p in paragraphs)
    asked = rng.sample(slots, min(n_questions, len(slots)))
    qas = [{"question": rng.choice(RELATIONS[rel]["questions"]).format(e=ent), "answer": val, "gold_sentence": i}
           for i, ent, rel, val in asked]
    first = qas[0]
    return {"id": f"ep-{idx:05d}", "split": split, "context": context, "question": first["question"],
            "answer": first["answer"], "gold_sentence": first["gold_sentence"], "extra_qa": qas[1:]}


def _copy_line(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.35:
        x = _made_up_word(rng, 1, 3)
        x = x.capitalize() if rng.random() < 0.5 else x
    elif kind < 0.65:
        x = str(rng.randint(0, 10 ** rng.randint(1, 5)))
    elif kind < 0.85:
        x = rng.choice(_WORDS)
    else:
        x = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 6)))
    return x


def _copy_doc(rng: random.Random) -> str:
    return "\n".join(f"{x} -> {x}" for x in (_copy_line(rng) for _ in range(rng.randint(4, 14))))


def _check_shape(mentions: tuple[int, int], facts_per_doc: tuple[int, int], distractors: int) -> None:
    """Refuse corpus shapes make_world cannot draw (a fact has at most 4 distinct statement templates)."""
    for name, (lo, hi), top in (("mentions", mentions, 4), ("facts_per_doc", facts_per_doc, None)):
        if not 1 <= lo <= hi or (top is not None and hi > top):
            raise AttrilensError(f"{name} must be (lo, hi) with 1 <= lo <= hi{' <= 4' if top else ''}, got "
                                 f"{(lo, hi)}. Fix the arguments.")
    if distractors not in (0, 1, 2):
        raise AttrilensError(f"distractors must be 0, 1 or 2, got {distractors}. Fix the arguments.")


def make_world(out: Path, seed: int = 0, n_entities: int = 80, n_train_episodes: int = 2000,
               n_heldout_episodes: int = 200, n_copy_docs: int = 400, n_copy_eval: int = 200,
               questions_per_episode: int = 3, fact_repeats: int = 1, relations: list[str] | None = None,
               episode_seed: int | None = None, mentions: tuple[int, int] = (1, 3),
               facts_per_doc: tuple[int, int] = (1, 3), distractors: int = 2) -> dict:
    """Write a seeded fact world into ``out`` (created if needed) and return a summary of counts.

    ``fact_repeats`` puts every fact document that many times into ``train.jsonl`` (ids ``doc-00042~2`` for
    repeats) so that memorisation and in-context reading can share one training run. Half of the held-out
    episodes have contexts of at least 20 sentences. ``episode_seed`` draws the episodes and copy lines from their
    own seed: the same entities, facts, corpus and queries with fresh episodes (for continued training).

    The corpus' shape: every fact is stated ``mentions`` = (lo, hi) times (each with a different template, so
    hi <= 4), a document groups ``facts_per_doc`` = (lo, hi) statements of one entity, plus one subject distractor
    sentence (``distractors`` >= 1) and, half the time, a relation distractor (``distractors`` >= 2). E.g.
    ``mentions=(2, 2), facts_per_doc=(1, 1), distractors=1``: two-sentence documents, two per fact. The defaults
    write what earlier versions wrote, byte for byte.
    """
    if n_entities < 1:
        raise AttrilensError(f"n_entities must be positive, got {n_entities}. Pass n_entities >= 1.")
    if min(n_train_episodes, n_heldout_episodes, n_copy_docs, n_copy_eval) < 0 or fact_repeats < 1:
        raise AttrilensError("Episode/copy counts must be >= 0 and fact_repeats >= 1. Fix the arguments.")
    _check_shape(mentions, facts_per_doc, distractors)
    rels = list(relations) if relations is not None else list(RELATIONS)
    unknown = [r for r in rels if r not in RELATIONS]
    if unknown or not rels:
        raise AttrilensError(f"Unknown relations {unknown or rels}. Choose from {sorted(RELATIONS)}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = _Names(rng)

    entities = [names.name() for _ in range(n_entities)]
    pool_size = max(4, n_entities // 2)
    pools = {r: [names.value(r) for _ in range(pool_size)] for r in rels}
    facts = [_Fact(e, r, rng.choice(pools[r])) for e in entities for r in rels]

    # Mentions: each fact stated `mentions` (default 1–3) times with different templates, grouped per entity into
    # documents of `facts_per_doc` statements.
    docs: list[dict] = []  # {"sentences": [...], "facts": [fact indices], "templates": {fact: template}}
    for ei, entity in enumerate(entities):
        stated: list[tuple[int, int]] = []
        for ri, rel in enumerate(rels):
            fi = ei * len(rels) + ri
            for t in rng.sample(range(len(RELATIONS[rel]["statements"])), rng.randint(*mentions)):
                stated.append((fi, t))
        rng.shuffle(stated)
        groups: list[list[tuple[int, int]]] = []
        while stated:
            size = rng.randint(*facts_per_doc)
            group: list[tuple[int, int]] = []
            rest = []
            for m in stated:
                if len(group) < size and all(m[0] != g[0] for g in group):
                    group.append(m)
                else:
                    rest.append(m)
            groups.append(group)
            stated = rest
        for group in groups:
            sents = [RELATIONS[facts[fi].relation]["statements"][t].format(e=entity, v=facts[fi].value)
                     for fi, t in group]
            extra = [rng.choice(SUBJECT_DISTRACTORS).format(e=entity)] if distractors >= 1 else []
            if distractors >= 2 and rng.random() < 0.5:
                extra.append(rng.choice(RELATION_DISTRACTORS[facts[group[0][0]].relation]))
            for d in extra:
                sents.insert(rng.randint(0, len(sents)), d)
            docs.append({"text": " ".join(sents), "group": group})
    rng.shuffle(docs)
    fact_docs: dict[int, list[str]] = {}
    fact_template: dict[int, int] = {}
    corpus = []
    for i, d in enumerate(docs):
        doc_id = f"doc-{i:05d}"
        corpus.append({"id": doc_id, "text": d["text"]})
        for fi, t in d["group"]:
            fact_docs.setdefault(fi, []).append(doc_id)
            fact_template.setdefault(fi, t)

    fact_rows, query_rows = [], []
    for fi, f in enumerate(facts):
        template = RELATIONS[f.relation]["statements"][fact_template[fi]]
        prefix = template.format(e=f.entity, v="\0").split("\0")[0].rstrip()
        fid = f"fact-{fi:04d}"
        fact_rows.append({"id": fid, "entity": f.entity, "relation": f.relation, "value": f.value,
                          "docs": sorted(fact_docs[fi]), "prompt": prefix, "target": f" {f.value}"})
        question = rng.choice(RELATIONS[f.relation]["questions"]).format(e=f.entity)
        query_rows.append({"id": f"q-{fi:04d}", "prompt": QUERY_TEMPLATE.format(question=question),
                           "target": f" {f.value}", "gold": sorted(fact_docs[fi]), "fact": fid})

    # Episodes and copy lines draw fresh names, never the world's.
    ep_names = set(names.used)
    if episode_seed is not None:
        rng = random.Random(f"attrilens-world/{seed}/{episode_seed}")
    episodes = [_episode(rng, ep_names, i, "train", 0, questions_per_episode) for i in range(n_train_episodes)]
    for j in range(n_heldout_episodes):
        episodes.append(_episode(rng, ep_names, n_train_episodes + j, "heldout", 20 if j % 2 == 0 else 0, 1))
    copy_docs = [{"id": f"copy-{i:05d}", "text": _copy_doc(rng)} for i in range(n_copy_docs)]
    copy_eval = []
    for i in range(n_copy_eval):
        shots = _copy_doc(rng).split("\n")[: rng.randint(3, 6)]
        x = _copy_line(rng)
        copy_eval.append({"id": f"copyq-{i:04d}", "prompt": "\n".join(shots) + f"\n{x} ->", "target": f" {x}"})

    train = []
    for r in range(fact_repeats):
        train += [{"id": c["id"] if r == 0 else f"{c['id']}~{r}", "text": c["text"]} for c in corpus]
    train += [{"id": e["id"], "text": render_training_episode(e)} for e in episodes if e["split"] == "train"]
    train += copy_docs
    rng.shuffle(train)

    summary = {
        "seed": seed, "n_entities": n_entities, "relations": rels, "n_facts": len(fact_rows),
        "n_documents": len(corpus), "n_queries": len(query_rows), "n_train_episodes": n_train_episodes,
        "n_heldout_episodes": n_heldout_episodes, "n_copy_docs": n_copy_docs, "n_copy_eval": n_copy_eval,
        "questions_per_episode": questions_per_episode, "fact_repeats": fact_repeats, "n_train": len(train),
        "episode_seed": episode_seed,
    }
    shape = {"mentions": list(mentions), "facts_per_doc": list(facts_per_doc), "distractors": distractors}
    if shape != {"mentions": [1, 3], "facts_per_doc": [1, 3], "distractors": 2}:
        summary["shape"] = shape  # only when not the default, so default worlds stay byte-identical
    write_jsonl(out / "corpus.jsonl", corpus)
    write_jsonl(out / "facts.jsonl", fact_rows)
    write_jsonl(out / "queries.jsonl", query_rows)
    write_jsonl(out / "episodes.jsonl", episodes)
    write_jsonl(out / "copy_eval.jsonl", copy_eval)
    write_jsonl(out / "train.jsonl", train)
    (out / "world.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
