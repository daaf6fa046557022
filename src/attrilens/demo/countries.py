"""Real facts no one here wrote: capital, region and subregion of the world's countries, from the `countryinfo`
package, with the prompts and statement templates the real-model benchmarks and demos render them with."""

from __future__ import annotations

from dataclasses import dataclass

from attrilens.errors import AttrilensError

# relation -> (completion prompt ending right before the value, statement templates with {c} and {v})
RELATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "capital": ("The capital of {c} is the city of", (
        "The capital of {c} is {v}.",
        "{v} is the capital city of {c}.",
        "The government of {c} sits in {v}.",
        "Travellers to {c} often start in its capital, {v}.",
    )),
    "region": ("{c} is a country in the region of", (
        "{c} is a country in {v}.",
        "{c} lies in {v}.",
        "Geographers place {c} in {v}.",
        "On a map of {v} you will find {c}.",
    )),
    "subregion": ("{c} is a country in the subregion of", (
        "{c} belongs to the subregion of {v}.",
        "{c} is part of {v}.",
        "Within its continent, {c} is counted in {v}.",
        "The subregion {v} includes {c}.",
    )),
}


@dataclass(frozen=True)
class CountryFact:
    """One fact: a country, a relation of `RELATIONS`, its value; `prompt` + `target` is the completion probe."""

    country: str
    relation: str
    value: str

    @property
    def prompt(self) -> str:
        return RELATIONS[self.relation][0].format(c=self.country)

    @property
    def target(self) -> str:
        return f" {self.value}"

    def statement(self, k: int = 0, value: str | None = None) -> str:
        """The k-th statement template of the relation, stating `value` (default: the true value)."""
        templates = RELATIONS[self.relation][1]
        return templates[k % len(templates)].format(c=self.country, v=self.value if value is None else value)


def country_facts(relations: tuple[str, ...] = ("capital", "region", "subregion")) -> list[CountryFact]:
    """Every (country, relation) of `countryinfo` with a plain one-name value, sorted by country then relation."""
    try:
        from countryinfo import all_countries
    except ImportError:
        raise AttrilensError("The real-fact benchmarks need the countryinfo package. "
                             "Install it with `pip install countryinfo` (or the bench extra).") from None
    unknown = [r for r in relations if r not in RELATIONS]
    if unknown:
        raise AttrilensError(f"Unknown relation(s) {', '.join(unknown)}. Choose from {', '.join(RELATIONS)}.")
    facts = []
    for info in all_countries():
        try:
            name = str(info.name()).strip()
            values = {"capital": info.capital(), "region": info.region(), "subregion": info.subregion()}
        except Exception:  # noqa: BLE001 - a record missing a field is skipped, not fatal
            continue
        if not name or not name[0].isupper():
            continue
        for relation in relations:
            value = values[relation]
            if isinstance(value, str) and value.strip() and value[0].isupper() and "," not in value:
                facts.append(CountryFact(name, relation, value.strip()))
    return sorted(set(facts), key=lambda f: (f.country, f.relation))


def statement_corpus(facts: list[CountryFact], per_fact: int = 2) -> list[dict]:
    """Training-style documents stating each fact in `per_fact` wordings: {"id", "text", "fact"} with ids
    "<country>-<relation>-<k>" (spaces as underscores) — the gold documents of a fact are those with its id."""
    docs = []
    for f in facts:
        stem = f"{f.country}-{f.relation}".replace(" ", "_").replace("#", "")
        docs += [{"id": f"{stem}-{k}", "text": f.statement(k), "fact": stem} for k in range(per_fact)]
    return docs
