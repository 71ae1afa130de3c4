"""Flags generated from config dataclasses, with transformers' ``HfArgumentParser``.

Every field becomes ``--name`` (``--name-with-dashes`` too) with its help text
and default; ``Literal`` fields take their choices, ``tuple`` fields a fixed
number of values, ``X | None`` fields also the word ``none``. ``--config FILE``
(YAML or JSON) gives values first and flags override them. Bad input -- an
unknown key, malformed YAML, a value of the wrong type -- ends in one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, get_args, get_origin

from transformers import HfArgumentParser

from onpolicy_sft.config import unknown_key_message
from onpolicy_sft.errors import OnpolicyError

# sections of a saved config file whose keys are flags too (train_config.json)
NESTED_SECTIONS = ("loss", "training_args")


class UsageError(OnpolicyError):
    """Bad command-line or config-file input: printed as one line, exit status 2."""


def _none_or(base: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        return None if text.strip().lower() in ("none", "null") else base(text)

    convert.__name__ = getattr(base, "__name__", "value")  # argparse names it in errors
    return convert


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's help ends with its default, or "(required)"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required and action.option_strings:
            return f"{action.help} (required)"
        return super()._get_help_string(action) or ""


class ConfigParser(HfArgumentParser):
    """An ``HfArgumentParser`` over config dataclasses, with ``--config FILE``."""

    def __init__(
        self,
        dataclass_types: Sequence[type],
        *,
        prog: str,
        description: str,
        defaults: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            list(dataclass_types),
            prog=prog,
            description=description,
            allow_abbrev=False,
            formatter_class=_HelpFormatter,
        )
        self.add_argument(
            "--config",
            metavar="FILE",
            default=None,
            help="YAML or JSON file of option: value pairs (same names as the flags); "
            "flags given as well override the file",
        )
        if defaults:
            self.set_defaults(**defaults)

    @staticmethod
    def _parse_dataclass_field(parser: Any, field: dataclasses.Field) -> None:
        md = field.metadata
        if md.get("nested"):
            return  # filled from its own dataclass, parsed alongside
        tp = field.type
        args = get_args(tp)
        optional = type(None) in args
        if optional and len(args) == 2:
            tp = next(a for a in args if a is not type(None))
        # argparse expands %-formats in help
        help_text = (md.get("help") or field.name.replace("_", " ")).replace("%", "%%")
        default = field.default
        if get_origin(tp) is tuple:
            elems = get_args(tp)
            variadic = len(elems) == 2 and elems[1] is Ellipsis
            kwargs: dict[str, Any] = {
                "type": elems[0],
                "nargs": "+" if variadic else len(elems),
                "help": help_text,
            }
            if default is dataclasses.MISSING:
                kwargs["required"] = True
            else:
                kwargs["default"] = default
            names = [f"--{field.name}"]
            if "_" in field.name:
                names.append(f"--{field.name.replace('_', '-')}")
            parser.add_argument(*names, **kwargs)
            return
        if md.get("positional"):
            parser.add_argument(field.name, help=help_text)
            return
        if md.get("switch"):
            parser.add_argument(f"--{field.name}", action="store_true", help=help_text)
            return
        plain = copy.copy(field)  # HfArgumentParser passes metadata on to add_argument
        plain.metadata = types.MappingProxyType(
            {"help": help_text, **({"aliases": md["aliases"]} if "aliases" in md else {})}
        )
        HfArgumentParser._parse_dataclass_field(parser, plain)
        action = parser._option_string_actions[f"--{field.name}"]
        if not action.help:
            action.help = help_text
        if optional and action.type is not None and action.nargs is None:
            action.type = _none_or(action.type)

    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(message)

    def _actions_by_dest(self) -> dict[str, argparse.Action]:
        out: dict[str, argparse.Action] = {}
        for a in self._actions:
            if a.dest not in ("help", "config"):
                out.setdefault(a.dest, a)  # --x before its --no_x twin
        return out

    def parse(self, argv: Sequence[str]) -> dict[str, Any]:
        """The options given (in ``--config FILE`` or as flags), converted to their types."""
        argv = list(argv)
        pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        pre.add_argument("--config", default=None)
        known, _ = pre.parse_known_args(argv)
        actions = self._actions_by_dest()
        given: dict[str, Any] = {}
        if known.config:
            given = self._read_config(known.config, actions)
            for dest in given:  # the file gives it: no longer required on the command line
                actions[dest].required = False
                if not actions[dest].option_strings:
                    actions[dest].nargs = "?"
            self.set_defaults(**given)
        ns = self.parse_args(argv)
        for token in argv:
            if token.startswith("--") and token != "--config":
                action = self._option_string_actions.get(token.split("=", 1)[0])
                if action is not None and action.dest in actions:
                    given[action.dest] = getattr(ns, action.dest)
        for a in self._actions:
            if not a.option_strings and a.dest in actions:
                given[a.dest] = getattr(ns, a.dest)  # positionals
        tuples = _tuple_fields(self.dataclass_types)
        return {k: tuple(v) if k in tuples and isinstance(v, list) else v for k, v in given.items()}

    def _read_config(self, path: str, actions: dict[str, argparse.Action]) -> dict[str, Any]:
        data = load_config_file(path)
        out: dict[str, Any] = {}
        for key, value in data.items():
            action = actions.get(key)
            if action is None:
                raise UsageError(unknown_key_message(key, actions, path))
            out[key] = _convert(action, value, f"{path}: {key}")
        return out


def _tuple_fields(dataclass_types: Any) -> set[str]:
    """Fields of our configs typed as tuples (argparse gives lists)."""
    out = set()
    for dtype in dataclass_types:
        if dtype.__module__.startswith("onpolicy_sft"):
            for name, tp in typing.get_type_hints(dtype).items():
                if get_origin(tp) is tuple:
                    out.add(name)
    return out


def _convert(action: argparse.Action, value: Any, where: str) -> Any:
    """A config-file value in the flag's type; a wrong type names the key and the type."""
    convert = action.type
    if value is None or isinstance(value, dict) or convert is None:
        return value
    name = getattr(convert, "__name__", "value")

    def one(v: Any) -> Any:
        try:
            return convert(str(v)) if not isinstance(v, bool) or name != "str" else str(v)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            raise UsageError(f"{where}: {v!r} is not a valid {name}") from None

    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        items = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(action.nargs, int) and len(items) != action.nargs:
            raise UsageError(f"{where}: {value!r} must be a list of {action.nargs} values")
        return [one(v) for v in items]
    if isinstance(value, (list, tuple)):
        raise UsageError(f"{where}: {value!r} is a list; expected one {name}")
    return one(value)


def load_config_file(path: str) -> dict[str, Any]:
    """A flat mapping of option names from a YAML or JSON file (sections of a saved
    train_config.json are flattened); malformed files name the file and line."""
    if not os.path.isfile(path):
        raise UsageError(f"--config {path}: no such file")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(
                f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})"
            ) from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise UsageError(f"{where}: not valid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of option: value, got {type(data).__name__}")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key == "type":
            continue
        if key in NESTED_SECTIONS and isinstance(value, dict):
            flat.update(value)
        else:
            flat[str(key)] = value
    return flat
