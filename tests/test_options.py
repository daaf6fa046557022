"""The one options protocol (attrilens.options): fields with help, their description, text coerced to each field's
type, malformed and unknown names as one-line errors naming the fix, defaults, and the HasOptions mixin."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from attrilens.errors import AttrilensError
from attrilens.options import (
    HasOptions,
    NoOptions,
    build_options,
    coerce,
    describe,
    field_types,
    merge_values,
    option,
    parse_assignments,
    parse_texts,
)


@dataclass(frozen=True)
class Knobs:
    """Every kind of field the protocol reads."""

    count: int = option(3, help="how many")
    rate: float = option(0.5, help="how fast")
    on: bool = option(True, help="whether")
    label: str = option("plain", help="what to call it", choices=("plain", "fancy", " spaced"))
    limit: int | None = option(None, help="at most this many (None: no limit)")
    layers: Sequence[int] | None = option(None, help="which layers")
    weights: tuple[float, ...] = option((1.0,), help="per-layer weights")
    names: list[str] = option(default_factory=lambda: ["a"], help="the names")
    mode: Literal["fast", "exact"] = option("exact", help="how")
    lens: Path | str | None = option(None, help="a file")
    table: Mapping[str, str] | None = option(None, help="a table only Python can give")
    bare: int = 7  # a field without help (a toy method's)

    def __post_init__(self) -> None:
        if self.count < 1:
            raise AttrilensError(f"count must be at least 1, got {self.count}. Pass 1 or more.")


class Toy(HasOptions):
    name = "toy"
    Options = Knobs


def test_describe_gives_name_type_default_help_and_choices():
    info = {o.name: o for o in describe(Knobs)}
    assert list(info) == [f for f in Knobs.__dataclass_fields__]
    assert (info["count"].type, info["count"].default, info["count"].help) == ("int", 3, "how many")
    assert info["limit"].type == "int | None" and info["limit"].default is None
    assert info["names"].default == ["a"]  # a default_factory's value
    assert info["label"].choices == ("plain", "fancy", " spaced") and info["mode"].choices == ("fast", "exact")
    assert info["bare"].help == "" and info["bare"].default == 7
    assert info["table"].settable is False and all(info[n].settable for n in info if n != "table")
    assert info["weights"].to_dict() == {"name": "weights", "type": "tuple[float, ...]", "default": [1.0],
                                         "help": "per-layer weights", "choices": None, "settable": True}
    assert describe(NoOptions) == []


@pytest.mark.parametrize(("name", "text", "value"), [
    ("count", " 12 ", 12), ("rate", "1e-3", 1e-3), ("rate", "2", 2.0),
    *[("on", t, True) for t in ("true", "True", "1", "yes", "on")],
    *[("on", t, False) for t in ("false", "0", "no", "OFF")],
    ("label", " spaced", " spaced"),  # text is kept as given (prompts may start with a space)
    ("limit", "none", None), ("limit", "Null", None), ("limit", "5", 5),
    ("layers", "0,2, 3", [0, 2, 3]), ("layers", "-1", [-1]), ("layers", "none", None),
    ("weights", "0.5,2", (0.5, 2.0)), ("names", "x,y", ["x", "y"]),
    ("mode", "fast", "fast"), ("mode", "EXACT", "exact"),
    ("lens", "lens.safetensors", "lens.safetensors"),  # a union with str: the text itself
])
def test_text_is_coerced_to_the_fields_type(name, text, value):
    got = parse_texts(Knobs, {name: text}, "the toy method")[name]
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(("name", "text", "message"), [
    ("count", "three", "--option count='three': count takes int."),
    ("count", "1.5", "count takes int"),
    ("rate", "fast", "rate takes float"),
    ("on", "maybe", "on takes bool"),
    ("limit", "lots", "limit takes int | None"),
    ("layers", "0,x", "layers takes Sequence[int] | None (comma-separated)"),
    ("mode", "slow", "mode takes 'fast' | 'exact'"),
    ("label", "odd", "label takes one of plain, fancy,  spaced"),
    ("table", "a=b", "table of the toy method takes Mapping[str, str] | None, which cannot be given as text. Set it "
                     "from Python instead."),
])
def test_bad_text_is_one_line_naming_the_type(name, text, message):
    with pytest.raises(AttrilensError, match=None) as err:
        parse_texts(Knobs, {name: text}, "the toy method")
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("pair", ["nope", "=3", "two words=1", "9lives=1", ""])
def test_malformed_assignments_name_the_form(pair):
    with pytest.raises(AttrilensError, match=r"--option takes NAME=VALUE, got .*Pass e.g. --option top_k=5"):
        parse_assignments([pair])


def test_assignments_parse_names_with_either_spelling_and_refuse_two_values():
    assert parse_assignments(["top-k=5", "alpha=0.1=x", "top_k=5"]) == {"top_k": "5", "alpha": "0.1=x"}
    assert parse_assignments(None) == {}
    with pytest.raises(AttrilensError, match=r"--option top_k is given twice \('5' and '6'\). Pass it once."):
        parse_assignments(["top_k=5", "top-k=6"])


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(AttrilensError, match=r"^Unknown option\(s\) colour, size for the toy method. Valid options: "
                                             r"count, rate, on, label, limit, layers, weights, names, mode, lens, "
                                             r"table, bare.$"):
        build_options(Knobs, {"colour": 1}, owner="the toy method", texts={"size": "2"})
    with pytest.raises(AttrilensError, match=r"Unknown option\(s\) x for the none method. Valid options: none."):
        build_options(NoOptions, texts={"x": "1"}, owner="the none method")


def test_build_options_defaults_values_texts_and_their_agreement():
    assert build_options(Knobs, owner="t") == Knobs()
    built = build_options(Knobs, {"count": 5, "layers": [1]}, owner="t", texts={"rate": "0.25", "layers": "1"})
    assert (built.count, built.rate, built.layers, built.mode) == (5, 0.25, [1], "exact")
    with pytest.raises(AttrilensError, match=r"count is given twice with different values: 5, and 6 by --option. "
                                             r"Pass it once."):
        build_options(Knobs, {"count": 5}, owner="t", texts={"count": "6"})
    with pytest.raises(AttrilensError, match="count must be at least 1"):  # the dataclass still judges the values
        build_options(Knobs, owner="t", texts={"count": "0"})
    assert merge_values({"a": (1, 2)}, {"a": [1, 2], "b": 3}) == {"a": [1, 2], "b": 3}


def test_field_types_resolve_annotations_even_of_a_class_inside_a_function():
    @dataclass
    class Local:
        inner: Knobs | None = None
        n: int = 1

    hints = field_types(Local)
    assert hints["n"] is int and hints["inner"] == Knobs | None
    assert coerce("4", hints["n"], "n") == 4


def test_has_options_gives_names_defaults_options_and_their_description():
    assert Toy.option_names()[:3] == ["count", "rate", "on"] and Toy.option_owner() == "the toy method"
    assert Toy.option_default("names") == ["a"] and Toy.option_default("count") == 3
    assert Toy.make_options(count=4).count == 4
    assert Toy.options_from_text({"mode": "fast"}, count=2) == Knobs(count=2, mode="fast")
    assert [o.name for o in Toy.describe_options()] == Toy.option_names()
    with pytest.raises(AttrilensError, match=r"Unknown option\(s\) speed for the toy method"):
        Toy.make_options(speed=1)
    assert HasOptions.Options is NoOptions and HasOptions.option_names() == []


def test_a_plain_dataclass_without_option_fields_still_works():
    @dataclass
    class Plain:
        scale: float = 1.0
        ids: list[int] = field(default_factory=list)

    assert [(o.name, o.type, o.default, o.help) for o in describe(Plain)] == [
        ("scale", "float", 1.0, ""), ("ids", "list[int]", [], "")]
    assert build_options(Plain, owner="t", texts={"scale": "2", "ids": "1,2"}) == Plain(2.0, [1, 2])
