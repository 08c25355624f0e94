"""Command-line flags generated from configuration dataclasses: one declaration per setting.

A setting is a dataclass field declared with :func:`setting`: its default, its help, its flag
group and, where it has them, its choices. :func:`add_flags` turns the fields of a dataclass into
``argparse`` flags (grouped, defaults shown), and :func:`values_from_args` reads them back as the
dataclass's keyword arguments. Every job that trains builds its parser this way, so adding a setting
is one line in the config, and a flag can no longer drift from the field it sets (as Ray's own image
classification benchmark does with one pydantic config).

A setting's range is declared with it too (``at_least=1``, ``above=0``, ``at_most=1``):
:func:`check_ranges`, called by the dataclass's ``__post_init__``, refuses a value outside it with
one line naming the flag (:class:`~resnet_platform.errors.ConfigError`), before anything starts.

Conventions: ``--field-name`` for every field; booleans that default to False are ``--flag``
switches, those that default to True get a ``--no-field-name`` switch; tuples are comma lists.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from resnet_platform.errors import ConfigError

_META = "resnet_platform"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except where there is none to show (None, a switch's False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        nothing = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        if "%(default)" in text or nothing or action.required:
            return text
        if isinstance(action, argparse._StoreFalseAction):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",  # noqa: A002 - argparse's name
    *,
    group: str,
    choices: Iterable[str] | Callable[[], Iterable[str]] | None = None,
    metavar: str | None = None,
    cli: bool = True,
    default_factory: Any = dataclasses.MISSING,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    const: Any = None,
) -> Any:
    """A dataclass field with what its flag needs. ``choices`` may be a function (evaluated when the
    parser is built, e.g. the model registry's names); ``cli=False``: not a flag (set by the driver).
    ``at_least``/``above``/``at_most``: the range a number must lie in (None, where allowed, is
    not checked); :func:`check_ranges` enforces it. ``const``: the value of the flag given without
    one (``--resume`` alone means ``--resume must``)."""
    meta = {"help": help, "group": group, "choices": choices, "metavar": metavar, "cli": cli, "const": const}
    meta["range"] = {"at_least": at_least, "above": above, "at_most": at_most}
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_META: meta})


def _out_of_range(value: Any, at_least: Any, above: Any, at_most: Any) -> str | None:
    if at_least is not None and value < at_least:
        return f"at least {at_least:g}"
    if above is not None and value <= above:
        return f"more than {above:g}"
    if at_most is not None and value > at_most:
        return f"at most {at_most:g}"
    return None


def check_ranges(obj: Any) -> None:
    """Raise :class:`ConfigError` for the first setting of dataclass ``obj`` outside its declared range
    (every number of a tuple is checked; None is not)."""
    for f in dataclasses.fields(obj):
        bounds = (_meta(f) or {}).get("range") or {}
        if not any(v is not None for v in bounds.values()):
            continue
        value = getattr(obj, f.name)
        for item in value if isinstance(value, tuple) else (value,):
            if item is None or isinstance(item, bool) or not isinstance(item, (int, float)):
                continue
            wrong = _out_of_range(item, bounds["at_least"], bounds["above"], bounds["at_most"])
            if wrong:
                flag = "--" + f.name.replace("_", "-")
                raise ConfigError(f"{flag} must be {wrong}, got {_show(value)}")


def _meta(f: dataclasses.Field) -> dict | None:
    return f.metadata.get(_META)


def flag_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are flags, in declaration order."""
    return [f for f in dataclasses.fields(cls) if (m := _meta(f)) is not None and m["cli"]]


def _base_type(hint: Any) -> Any:
    """``int | None`` -> ``int``; other hints unchanged."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


def _comma_list(item: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            return tuple(item(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma list of {item.__name__}, got {text!r}"
            ) from None

    parse.__name__ = f"comma list of {item.__name__}"
    return parse


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _show(value: Any) -> Any:
    return ",".join(map(str, value)) if isinstance(value, tuple) else value


def add_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    groups: Mapping[str, str],
    only: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
    required: Iterable[str] = (),
    help_overrides: Mapping[str, str] | None = None,
) -> dict[str, argparse._ArgumentGroup]:
    """Add a flag for each setting of ``cls`` whose group is in ``groups`` (group key -> title, in
    the order the help shows them). ``only``/``exclude`` pick fields by name; ``defaults`` replaces
    field defaults (a recipe's); ``required`` fields have no default. Returns the argparse groups."""
    hints = typing.get_type_hints(cls)
    wanted = set(only) if only is not None else None
    skipped, needed = set(exclude), set(required)
    defaults, help_overrides = dict(defaults or {}), dict(help_overrides or {})
    by_title: dict[str, argparse._ArgumentGroup] = {}
    for title in groups.values():
        by_title.setdefault(title, parser.add_argument_group(title))
    made = {key: by_title[title] for key, title in groups.items()}
    for f in flag_fields(cls):
        meta = _meta(f)
        if meta["group"] not in made or f.name in skipped or (wanted is not None and f.name not in wanted):
            continue
        group = made[meta["group"]]
        name = "--" + f.name.replace("_", "-")
        default = defaults.get(f.name, _default_of(f))
        text = help_overrides.get(f.name, meta["help"])
        kind = _base_type(hints[f.name])
        choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
        if kind is bool:
            if default:
                group.add_argument(
                    "--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false", help=text or "off"
                )
            else:
                group.add_argument(name, dest=f.name, action="store_true", help=text)
            parser.set_defaults(**{f.name: default})
            continue
        kwargs: dict[str, Any] = {
            "dest": f.name,
            "help": text or ("default: %(default)s" if default is not None else "unset by default"),
        }
        if typing.get_origin(kind) is tuple:
            kwargs["type"] = _comma_list(typing.get_args(kind)[0])
            kwargs["metavar"] = meta["metavar"] or "A,B,..."
        elif kind in (int, float):
            kwargs["type"] = kind
        if meta["metavar"] and "metavar" not in kwargs:
            kwargs["metavar"] = meta["metavar"]
        if choices is not None:
            kwargs["choices"] = list(choices)
        if meta.get("const") is not None:
            kwargs.update(nargs="?", const=meta["const"])
        if f.name in needed:
            kwargs["required"] = True
        else:
            kwargs["default"] = (
                _show(default) if kwargs.get("type") and isinstance(default, tuple) else default
            )
        group.add_argument(name, **kwargs)
    return made


def values_from_args(
    args: argparse.Namespace, cls: type, *, only: Iterable[str] | None = None
) -> dict[str, Any]:
    """The keyword arguments of ``cls`` that ``args`` holds (flags added by :func:`add_flags` with the
    same ``only``)."""
    wanted = set(only) if only is not None else None
    return {
        f.name: getattr(args, f.name)
        for f in flag_fields(cls)
        if hasattr(args, f.name) and (wanted is None or f.name in wanted)
    }
