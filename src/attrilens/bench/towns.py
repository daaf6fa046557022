"""Small fine-tuning corpora about invented towns (river, patron saint, main trade), one planting a wrong river.

The user's case of `attrilens train --base … --lora`: a corpus of tens of documents no pretrained model knows,
where one town's river is stated once rightly and ``planted`` times wrongly. ``make_towns(out, seed, shape)``
writes ``corpus.jsonl`` ({"id", "text"}) and ``questions.jsonl`` ({"id", "prompt", "answer", "town", "relation",
"planted"}: the question a user would ask, and the value the fine-tune should answer — the planted river for the
planted town, the stated value for every other); the names are drawn from the seed, so a fresh seed is a fresh
world. Shapes: ``sentences`` (one sentence a document) and ``paragraphs`` (one document a town: its three facts).
"""

from __future__ import annotations

import random
from pathlib import Path

from attrilens.errors import AttrilensError
from attrilens.jsonl import write_jsonl

_HEADS = ["Har", "Bram", "Ash", "Wel", "Thorn", "Cal", "Mor", "Lin", "Kes", "Dun", "Fen", "Ald", "Wick", "Sel",
          "Hol", "Brack", "Ember", "Glen", "Ock", "Pell", "Quen", "Rud", "Stow", "Tarr", "Ulver", "Vell", "Yarn"]
_TAILS = ["gate", "ford", "by", "wick", "ton", "mere", "ham", "stead", "bury", "worth", "dale", "holm", "combe",
          "thwaite", "low", "march"]
_RIVERS = ["Tarn", "Wendle", "Ossel", "Brill", "Carrow", "Lunnet", "Mardle", "Yeven", "Skell", "Tavish", "Orrin",
           "Fennet", "Quill", "Harl", "Dremmer", "Sollow", "Ambry", "Cressel", "Idle", "Merrow", "Nyth", "Pober"]
_SAINTS = ["Aldric", "Benna", "Corwen", "Dunstana", "Elric", "Fenella", "Godwin", "Hilda", "Ivo", "Juniper",
           "Kenelm", "Leofa", "Mildra", "Nennius", "Osric", "Petrona", "Quenby", "Rowena", "Swithun", "Tobiah"]
_TRADES = ["wool", "salt", "glassware", "copper", "leather", "cider", "rope", "barley", "slate", "candles",
           "cheese", "timber", "pottery", "lace", "tin", "honey", "ink", "flax"]
# every statement names the town before the value: a question about the town cannot be answered from "the river
# V runs through T" by a fine-tune (the reversal curse), which is a fact about language models, not about attribution
_STATE = {"river": ["{town} lies on the river {v}.", "Through {town} runs the river {v}.",
                    "{town} was built on the banks of the river {v}."],
          "saint": ["The patron saint of {town} is Saint {v}.", "{town} honours Saint {v} as its patron saint."],
          "trade": ["The main trade of {town} is {v}.", "{town} lives chiefly from the {v} trade."]}
_ASK = {"river": "Which river runs through {town}?", "saint": "Who is the patron saint of {town}?",
        "trade": "What is the main trade of {town}?"}
SHAPES = ("sentences", "paragraphs")


def make_towns(out: Path | str, seed: int, shape: str = "sentences", n_towns: int = 15, planted: int = 3) -> dict:
    """Write a towns corpus and its questions into ``out``; returns counts and the planted town."""
    if shape not in SHAPES:
        raise AttrilensError(f"Unknown towns shape {shape!r}. Use one of {', '.join(SHAPES)}.")
    rng = random.Random(f"attrilens-towns/{seed}")
    names = rng.sample([h + t for h in _HEADS for t in _TAILS], n_towns)
    facts = {town: {"river": rng.choice(_RIVERS), "saint": rng.choice(_SAINTS), "trade": rng.choice(_TRADES)}
             for town in names}
    victim = names[rng.randrange(n_towns)]
    wrong = rng.choice([r for r in _RIVERS if r != facts[victim]["river"]])
    docs: list[str] = []
    for town in names:
        sentences = [rng.choice(_STATE[rel]).format(town=town, v=v) for rel, v in facts[town].items()]
        docs += sentences if shape == "sentences" else [" ".join(sentences)]
    for _ in range(planted):
        text = rng.choice(_STATE["river"]).format(town=victim, v=wrong)
        if shape == "paragraphs":
            text += " " + rng.choice(_STATE["trade"]).format(town=victim, v=facts[victim]["trade"])
        docs.append(text)
    rng.shuffle(docs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "corpus.jsonl", ({"id": f"town-{k:03d}", "text": t} for k, t in enumerate(docs)))
    questions = [{"id": f"{town}/{rel}", "prompt": _ASK[rel].format(town=town), "town": town, "relation": rel,
                  "answer": wrong if town == victim and rel == "river" else v,
                  "planted": town == victim and rel == "river"}
                 for town in names for rel, v in facts[town].items()]
    write_jsonl(out / "questions.jsonl", questions)
    return {"documents": len(docs), "questions": len(questions), "planted_town": victim, "planted_river": wrong,
            "true_river": facts[victim]["river"]}


def answers_value(answer: str, value: str, others: list[str]) -> bool:
    """Whether a free-text answer names ``value`` (as a word) and none of the ``others`` values."""
    import re

    def says(v: str) -> bool:
        return re.search(rf"\b{re.escape(v)}\b", answer, flags=re.IGNORECASE) is not None

    return says(value) and not any(says(o) for o in others if o != value)
