"""Flags generated from a configuration dataclass: one declaration per setting, its help in the field."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def _base_type(tp: object) -> type:
    """``int``, ``float``, ``str`` or ``bool`` out of an annotation such as ``str | None``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return args[0]
    return tp  # type: ignore[return-value]


def build_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    """``--kebab-case`` flags for every field of ``cls``; fields without a default are required."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        tp = _base_type(hints[f.name])
        if f.default is dataclasses.MISSING:
            parser.add_argument(flag, dest=f.name, type=tp, required=True, help=help_)
        elif tp is bool:
            action = argparse.BooleanOptionalAction if f.default else "store_true"
            parser.add_argument(flag, dest=f.name, action=action, default=f.default, help=help_)
        else:
            parser.add_argument(
                flag, dest=f.name, type=tp, default=f.default, help=f"{help_} (default: {f.default})"
            )
    return parser


def config_from_args(cls: type, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
