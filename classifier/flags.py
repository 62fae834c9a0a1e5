"""Command-line flags generated from a dataclass of settings (``Config``, ``ExportOptions``), in the one
style every script uses:

    --batch-size 64           a field's value (the dataclass checks and converts it)
    --progress / --progress false   a boolean: alone it means true; true/false, yes/no, on/off, 1/0
    --extra '{dropout: 0.2}'  a mapping, as YAML

A flag the user does not give is absent from the parsed namespace (``argparse.SUPPRESS``), so "given"
and "default" stay apart. A field declares extra flag behaviour in its metadata (see ``flag_spec``):
a help text, ``nargs``/``const``/``metavar``, and old spellings kept working for scripts
(e.g. ``--no-progress`` for ``--progress false``).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import fields

import yaml

TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def flag_name(name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def declared_types(field: dataclasses.Field) -> tuple[list[str], bool]:
    """A field's declared types in order (``str | list | None`` -> ["str", "list"]) and whether None is allowed."""
    kinds = [k.strip() for k in str(field.type).split("|")]
    return [k for k in kinds if k != "None"], "None" in kinds


def flag_spec(*, help: str | None = None, old: dict | None = None, **argparse_options) -> dict:
    """Field metadata for the generator: ``help``; ``old`` maps an old spelling to the value it stands for
    (``{"--no-verify": False}``; ``...`` for "takes a value like the flag itself"); other keys go to
    ``add_argument`` (``nargs``, ``const``, ``metavar``)."""
    return {"flag": {"help": help, "old": old or {}, "argparse": argparse_options}}


def parse_bool_word(text: str) -> bool:
    """A boolean flag's text (true/false, yes/no, on/off, 1/0); ValueError otherwise."""
    if isinstance(text, bool):
        return text
    word = str(text).lower()
    if word not in TRUE_WORDS + FALSE_WORDS:
        raise ValueError(f"not a boolean: {text!r}")
    return word in TRUE_WORDS


class FlagParser(argparse.ArgumentParser):
    """An ArgumentParser whose boolean flags never swallow a positional argument: ``--quiet photo.jpg``
    is ``--quiet`` and the image, since only a boolean word (true/false, ...) is taken as a flag's value."""

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        flags = {s for action in self._actions if getattr(action, "boolean", False) for s in action.option_strings}
        for i, arg in enumerate(args):
            if arg == "--":
                break
            if arg in flags and (i + 1 == len(args) or args[i + 1].lower() not in TRUE_WORDS + FALSE_WORDS):
                args[i] = f"{arg}=true"
        return super().parse_known_args(args, namespace)


def add_bool_flag(parser: argparse.ArgumentParser, name: str, *, convert=None, default=argparse.SUPPRESS,
                  help: str | None = None, old: dict | None = None) -> None:
    """``--name`` (true), ``--name true|false``; ``old`` spellings such as ``{"--no-name": False}`` kept working.

    ``convert(text)`` turns the given word into a bool (default ``parse_bool_word``). In a parser with
    positional arguments use ``FlagParser``, so that ``--name`` never takes the next positional as its value."""
    action = parser.add_argument(flag_name(name), dest=name, type=convert or parse_bool_word, nargs="?", const=True,
                                 default=default, metavar="true|false", help=help)
    action.boolean = True
    _add_old_spellings(parser, name, old or {})


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, *, convert=None, skip=()) -> None:
    """One flag per field of the dataclass ``cls`` (``--batch-size`` for ``batch_size``); unset flags are absent.

    ``convert(name, text)``: how a boolean flag's text becomes a value (default ``parse_bool_word``); other
    flags keep their text (mappings are parsed as YAML) for the dataclass's own checks to convert."""
    for f in fields(cls):
        if f.name in skip:
            continue
        spec = f.metadata.get("flag", {})
        kinds, _ = declared_types(f)
        help_text = spec.get("help") or (f"default: {f.default!r}" if f.default is not dataclasses.MISSING else None)
        if kinds == ["bool"]:
            add_bool_flag(parser, f.name, convert=(lambda v, n=f.name: convert(n, v)) if convert else None,
                          help=help_text, old=spec.get("old"))
            continue
        if kinds == ["dict"]:
            parser.add_argument(flag_name(f.name), type=yaml.safe_load, default=argparse.SUPPRESS,
                                help=help_text or "YAML mapping, e.g. '{dropout: 0.2}'")
        else:
            parser.add_argument(flag_name(f.name), dest=f.name, default=argparse.SUPPRESS, help=help_text,
                                **spec.get("argparse", {}))
        _add_old_spellings(parser, f.name, spec.get("old") or {})


def _add_old_spellings(parser, name: str, old: dict) -> None:
    """Hidden flags that set ``name`` as they always did (``--no-progress`` -> False)."""
    for spelling, value in old.items():
        if value is ...:  # the same value as the flag, under an older name
            parser.add_argument(spelling, dest=name, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        else:
            parser.add_argument(spelling, dest=name, action="store_const", const=value, default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS)
