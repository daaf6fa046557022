"""One options protocol for every method of every lens: a typed dataclass per method whose fields carry their help.

A method (context estimator or wrapper, training-data method, Patchscope preset) declares `Options`, a dataclass
whose fields are `option(default, help="…")` (kronfluence's `*Arguments` are the model), and inherits `HasOptions`.
`describe` lists the fields (name, type, default, help, choices) for `attrilens methods`, the docs and the web
form; `build_options` fills the dataclass from Python values and from `NAME=VALUE` text (`--option`, the web
form), refusing unknown names with the valid ones and coercing text to each field's annotated type.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass
from typing import Any, ClassVar, Literal, Union

from attrilens.errors import AttrilensError

HELP, CHOICES = "help", "choices"  # the metadata keys `option` sets on a dataclass field
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
_NONE = ("none", "null")


def option(default: Any = MISSING, *, help: str, choices: Sequence[Any] | None = None,
           default_factory: Any = MISSING) -> Any:
    """A dataclass field with its one-line help (what it does, why it matters) and, optionally, its valid values."""
    metadata: dict[str, Any] = {HELP: help}
    if choices is not None:
        metadata[CHOICES] = tuple(choices)
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


@dataclass(frozen=True)
class NoOptions:
    """The options of a method that takes none."""


@dataclass(frozen=True)
class OptionInfo:
    """One option as `describe` reports it: name, type as written, default, help and valid values (or None)."""

    name: str
    type: str
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    settable: bool = True  # whether text (`--option NAME=VALUE`, a web form field) can give it

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (defaults that are not JSON values are written as text)."""
        return {"name": self.name, "type": self.type, "default": _jsonable(self.default), "help": self.help,
                "choices": None if self.choices is None else [_jsonable(c) for c in self.choices],
                "settable": self.settable}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


# ---------------------------------------------------------------------------------------------- types
def field_types(options_cls: type) -> dict[str, Any]:
    """Each field's annotated type, resolved (a name that cannot be resolved stays its text)."""
    try:
        return typing.get_type_hints(options_cls)
    except Exception:  # a name only the type checker sees, or a class defined inside a function
        module = vars(sys.modules.get(options_cls.__module__, typing))
        out = {}
        for f in dataclasses.fields(options_cls):
            try:
                out[f.name] = eval(f.type, {**vars(typing), **module}) if isinstance(f.type, str) else f.type
            except Exception:
                out[f.name] = f.type
        return out


def _arms(hint: Any) -> tuple[list[Any], bool]:
    """The non-None members of a union (or the type itself) and whether None is allowed."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = typing.get_args(hint)
        return [a for a in args if a is not type(None)], type(None) in args
    return [hint], hint is type(None)


def _type_text(hint: Any) -> str:
    """A type as a person writes it: `int | None`, `list[int]`, `'a' | 'b'`."""
    if isinstance(hint, str):
        return hint
    arms, optional = _arms(hint)
    if len(arms) > 1 or optional:
        return " | ".join([_type_text(a) for a in arms] + (["None"] if optional else []))
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if origin is not None:
        args = ", ".join("..." if a is Ellipsis else _type_text(a) for a in typing.get_args(hint))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(hint, "__name__", str(hint))


_SCALARS = (bool, int, float, str)
_SEQUENCES = (list, tuple, Sequence)  # origins of list[int], tuple[int, ...], Sequence[int]


def _coercible(hint: Any) -> bool:
    """Whether text can give a value of this type."""
    arms, _ = _arms(hint)
    for arm in arms:
        origin = typing.get_origin(arm)
        if arm in _SCALARS or origin is Literal:
            return True
        if origin in _SEQUENCES:
            items = [a for a in typing.get_args(arm) if a is not Ellipsis]
            if items and all(a in (int, float, str) for a in items) and len(set(items)) == 1:
                return True
    return False


def _scalar(text: str, kind: Any) -> Any:
    """`text` as one value of `kind` (bool, int, float, str or a Literal); ValueError when it is not one."""
    stripped = text.strip()
    if typing.get_origin(kind) is Literal:
        for choice in typing.get_args(kind):
            if str(choice) == stripped or (isinstance(choice, str) and choice.lower() == stripped.lower()):
                return choice
        raise ValueError(text)
    if kind is bool:
        if stripped.lower() in _TRUE + _FALSE:
            return stripped.lower() in _TRUE
        raise ValueError(text)
    if kind is int:
        return int(stripped)
    if kind is float:
        return float(stripped)
    if kind is str:
        return text
    raise ValueError(text)


def coerce(text: str, hint: Any, name: str, owner: str = "this method") -> Any:
    """`text` as a value of the type `hint` (bool, int, float, str, `X | None`, a Literal, or a list / tuple of int,
    float or str written comma-separated); a value that is not one is a one-line AttrilensError naming the fix."""
    arms, optional = _arms(hint)
    if optional and text.strip().lower() in _NONE:
        return None
    if not _coercible(hint):
        raise AttrilensError(f"{name} of {owner} takes {_type_text(hint)}, which cannot be given as text. Set it "
                             "from Python instead.")
    for arm in arms:
        origin = typing.get_origin(arm)
        try:
            if arm in _SCALARS or origin is Literal:
                return _scalar(text, arm)
            if origin in _SEQUENCES:
                kind = next(a for a in typing.get_args(arm) if a is not Ellipsis)
                items = [_scalar(t, kind) for t in text.split(",") if t.strip()]
                return tuple(items) if origin is tuple else items
        except (ValueError, StopIteration):
            continue
    wanted = _type_text(hint) + (" (comma-separated)" if any(typing.get_origin(a) in _SEQUENCES for a in arms) else "")
    raise AttrilensError(f"--option {name}={text!r}: {name} takes {wanted}. Pass a value of that type "
                         f"(`attrilens methods` lists each option's type).")


# ---------------------------------------------------------------------------------------------- describing
def describe(options_cls: type) -> list[OptionInfo]:
    """Every field of an options dataclass: name, type as text, default, help (from `option`; '' without) and
    choices (from `option(..., choices=)` or a Literal type)."""
    hints = field_types(options_cls)
    out = []
    for f in dataclasses.fields(options_cls):
        hint = hints.get(f.name, f.type)
        choices = f.metadata.get(CHOICES)
        literal = [a for a in _arms(hint)[0] if typing.get_origin(a) is Literal]
        if choices is None and literal:
            choices = tuple(typing.get_args(literal[0]))
        default = f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default
        out.append(OptionInfo(f.name, f.type if isinstance(f.type, str) else _type_text(hint),
                              None if default is MISSING else default, f.metadata.get(HELP, ""), choices,
                              _coercible(hint)))
    return out


# ---------------------------------------------------------------------------------------------- building
def parse_assignments(pairs: Iterable[str] | None, flag: str = "--option") -> dict[str, str]:
    """`NAME=VALUE` strings → {name: text} (names with hyphens or underscores); a malformed one, or one name given
    twice with different values, is a one-line AttrilensError naming the fix."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, text = str(pair).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not key.isidentifier():
            raise AttrilensError(f"{flag} takes NAME=VALUE, got {pair!r}. Pass e.g. {flag} top_k=5 (the names: "
                                 "`attrilens methods`).")
        if key in out and out[key] != text:
            raise AttrilensError(f"{flag} {key} is given twice ({out[key]!r} and {text!r}). Pass it once.")
        out[key] = text
    return out


def refuse_unknown(names: Iterable[str], valid: Sequence[str], owner: str) -> None:
    """AttrilensError for names `owner` does not take, listing the valid ones."""
    unknown = sorted(set(names) - set(valid))
    if unknown:
        raise AttrilensError(f"Unknown option(s) {', '.join(unknown)} for {owner}. Valid options: "
                             f"{', '.join(valid) or 'none'}.")


def parse_texts(options_cls: type, texts: Mapping[str, str] | None, owner: str) -> dict[str, Any]:
    """{name: text} → {name: value of the field's type}; a name the dataclass lacks is refused with the valid ones."""
    texts = dict(texts or {})
    refuse_unknown(texts, [f.name for f in dataclasses.fields(options_cls)], owner)
    hints = field_types(options_cls)
    choices = {f.name: f.metadata[CHOICES] for f in dataclasses.fields(options_cls) if CHOICES in f.metadata}
    out = {name: coerce(text, hints[name], name, owner) for name, text in texts.items()}
    for name, value in out.items():
        if name in choices and value not in choices[name]:
            raise AttrilensError(f"--option {name}={texts[name]!r}: {name} takes one of "
                                 f"{', '.join(map(str, choices[name]))}. Pass one of them.")
    return out


def merge_values(values: Mapping[str, Any], parsed: Mapping[str, Any], what: str = "--option") -> dict[str, Any]:
    """Values given by name (Python keywords, a verb's own flags) and the same from text: one given both ways with
    different values is an error."""
    out = dict(values)
    for key, value in parsed.items():
        if key in out and out[key] != value and not _same(out[key], value):
            raise AttrilensError(f"{key} is given twice with different values: {out[key]!r}, and {value!r} by "
                                 f"{what}. Pass it once.")
        out[key] = value
    return out


def _same(a: Any, b: Any) -> bool:
    return isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)


def build_options(options_cls: type, values: Mapping[str, Any] | None = None, *, owner: str,
                  texts: Mapping[str, str] | None = None) -> Any:
    """`options_cls` from Python `values` and `texts` ({name: text}, coerced to each field's type); an unknown
    name is refused listing the valid ones, a value given both ways that disagrees is an error, and the
    dataclass's own checks (`__post_init__`) judge the values."""
    values = dict(values or {})
    refuse_unknown([*values, *(texts or {})], [f.name for f in dataclasses.fields(options_cls)], owner)
    return options_cls(**merge_values(values, parse_texts(options_cls, texts, owner)))


class HasOptions:
    """A method with an `Options` dataclass: its option names, defaults and description, and options built from
    values. Subclasses set `Options` and say what they are in `option_kind` ("method", "preset", …)."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    option_kind: ClassVar[str] = "method"

    @classmethod
    def option_owner(cls) -> str:
        """How errors name this method: "the trackstar method", "the logit-lens preset"."""
        return f"the {cls.name or cls.__name__} {cls.option_kind}"

    @classmethod
    def option_names(cls) -> list[str]:
        """The fields of this method's options, in declaration order."""
        return [f.name for f in dataclasses.fields(cls.Options)]

    @classmethod
    def option_default(cls, name: str) -> Any:
        """The default of one of this method's options."""
        f = next(f for f in dataclasses.fields(cls.Options) if f.name == name)
        return f.default_factory() if f.default is MISSING else f.default

    @classmethod
    def make_options(cls, **values: Any) -> Any:
        """This method's options from keyword values; a name it does not take is an error listing the valid ones."""
        return build_options(cls.Options, values, owner=cls.option_owner())

    @classmethod
    def options_from_text(cls, texts: Mapping[str, str] | None, **values: Any) -> Any:
        """This method's options from {name: text} (`--option`, a web form) coerced to the fields' types, and
        keyword values; a name given both ways with different values is an error."""
        return build_options(cls.Options, values, owner=cls.option_owner(), texts=texts)

    @classmethod
    def describe_options(cls) -> list[OptionInfo]:
        """Each option: name, type, default, help, choices."""
        return describe(cls.Options)
