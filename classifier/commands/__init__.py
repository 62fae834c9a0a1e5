"""Command implementations behind the thin root scripts (train.py, eval.py, test.py, export.py)."""
from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import os
import sys
from pathlib import Path

from classifier.errors import ClassifierError


def cli_entry(main):
    """Wrap a command's ``main(argv)`` so user errors print one line and exit 2 instead of a traceback."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except ClassifierError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper


def add_import_argument(parser: argparse.ArgumentParser) -> None:
    """``--import MODULE`` (repeatable): a user's module to import before the dataset is resolved."""
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (a module name, or a path to a .py file), e.g. one that registers "
                             "a dataset with @classifier.register_dataset; repeatable")


def import_user_modules(args) -> None:
    """Import every ``--import`` module of ``args`` (parsed arguments, or a list of names), in order; a failure
    is a one-line ClassifierError."""
    names = getattr(args, "imports", None) if isinstance(args, argparse.Namespace) else args
    for name in names or []:
        import_user_module(name)


def import_user_module(name: str):
    """Import a module by name (the current folder searched too) or from a .py file; returns it."""
    is_file = name.endswith(".py") or os.sep in name or "/" in name
    try:
        if is_file:
            return _import_file(Path(name))
        if os.getcwd() not in sys.path and "" not in sys.path:  # as `python -m` would: modules beside the data
            sys.path.append(os.getcwd())
        return importlib.import_module(name)
    except ClassifierError as err:
        raise ClassifierError(f"--import {name}: {err}") from None
    except Exception as err:  # noqa: BLE001 - ImportError, SyntaxError, or whatever the user's module raised
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ClassifierError(f"--import {name} failed: {type(err).__name__}: {reason}") from None


def _import_file(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    module_name = path.stem if path.stem.isidentifier() else "user_module"
    loaded = sys.modules.get(module_name)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() != path.resolve():
        module_name = f"classifier_import_{module_name}"  # another module of that name is loaded: keep it
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # what pickling and dataclasses look up
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module
