"""Checkpoints: state dicts + config + everything evaluation and export need. Never pickled modules.

Layout of a toolkit checkpoint (a dict saved with ``torch.save``)::

    format         "classifier-checkpoint/1"
    model          model state dict
    model_name     registry name, e.g. "resnet18" or "timm/vit_tiny_patch16_224"
    num_classes    int
    in_chans       int
    classes        list of class names, index = label
    preprocessing  Preprocessing.to_dict(): size, channels, mean, std
    config         the resolved run config (plain dict)
    dataset        dataset spec the model was trained on
    optimizer, scheduler, scaler   state dicts (training checkpoints only)
    epoch, step    counters: epochs completed, optimiser steps taken
    rng            random states (torch, numpy, python) so a resume continues exactly
    best_val_loss  float
    extra          free-form plain data (history, timings)

Loading always uses ``weights_only=True``: a crafted file cannot run code, it is refused.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from classifier.errors import ClassifierError
from classifier.fileio import save_torch

FORMAT = "classifier-checkpoint/1"


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write atomically: a temporary file in the same folder, fsync, then rename over the target.

    A process killed mid-save, or a full disk, leaves the previous checkpoint intact and loadable; a failed
    write is a one-line ClassifierError naming the path and the system's reason.
    """
    return save_torch({"format": FORMAT, **state}, path, "checkpoint")


def load_state_file(path: str | os.PathLike, *, mmap: bool = False) -> dict:
    """Load a ``.pt``/``.pth``/``.safetensors`` file as plain data, never executing code from it. ``mmap``:
    tensors are mapped from the file, not read, until used (for a caller that only wants the small entries;
    files in torch's legacy format are read whole)."""
    path = Path(path)
    if not path.is_file():
        raise ClassifierError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as err:  # corrupt or not a safetensors file
            raise ClassifierError(f"cannot read safetensors file {path}: {err}") from None
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # a legacy (non-zip) file
    except pickle.UnpicklingError as err:
        raise ClassifierError(
            f"refused to load {path}: it is not a plain-tensor checkpoint and could run code "
            f"({_refusal_reason(err)[:160]})"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ClassifierError(f"cannot read checkpoint {path}: {str(err).splitlines()[0][:200]}") from None
    if not isinstance(obj, dict):
        raise ClassifierError(f"{path} holds a {type(obj).__name__}, not a state dict or checkpoint")
    return obj


def _refusal_reason(err: Exception) -> str:
    """What torch's long weights_only error refused (e.g. "Unsupported global: GLOBAL exec ..."), one line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # torch bolds part of its message with ANSI codes
    for line in text.splitlines():
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].strip().split(". ")[0]
    return next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)


def is_toolkit_checkpoint(obj: dict) -> bool:
    return obj.get("format") == FORMAT


def load_checkpoint(path: str | os.PathLike, *, mmap: bool = False) -> dict:
    """Load a checkpoint written by this toolkit (refuses other files with a clear message); ``mmap``: as
    ``load_state_file``."""
    obj = load_state_file(path, mmap=mmap)
    if not is_toolkit_checkpoint(obj):
        raise ClassifierError(f"{path} is not a checkpoint written by this toolkit (no '{FORMAT}' marker)")
    return obj
