"""Untrusted checkpoints: loading one never runs code from it.

A crafted pickle that would write a marker file when unpickled is handed to every command that loads
checkpoints, as a real subprocess: none writes the marker, each exits non-zero with a one-line refusal.
"""
from __future__ import annotations

import os
import pickle
import pickletools
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from classifier.checkpoint import FORMAT, load_checkpoint, load_state_file
from classifier.errors import ClassifierError
from classifier.models import create_model, load_weights
from tests.conftest import write_class_images

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this calls exec(), which writes ``marker``."""

    def __init__(self, marker):
        self.code = f"open({str(marker)!r}, 'w').write('pwned')"

    def __reduce__(self):
        return exec, (self.code,)


def write_malicious(path: Path, marker: Path) -> Path:
    """A .pt shaped like a toolkit checkpoint (format marker, names, preprocessing) whose weights are the payload."""
    torch.save({"format": FORMAT, "model": Payload(marker), "model_name": "lenet5", "num_classes": 3, "in_chans": 3,
                "classes": ["a", "b", "c"], "config": {}, "epoch": 1, "step": 1,
                "preprocessing": {"size": [16, 16], "channels": 3, "mean": [0.5] * 3, "std": [0.2] * 3}}, path)
    return path


def _calls_exec(pickle_bytes: bytes) -> bool:
    """The pickle names builtins.exec and calls it (proved from its opcodes, without unpickling it)."""
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(pickle_bytes)]
    return any(name in ("GLOBAL", "STACK_GLOBAL") and (arg is None or "exec" in str(arg)) for name, arg in ops) and \
        any(name == "REDUCE" for name, _ in ops)


def test_malicious_files_are_refused_in_process(tmp_path):
    marker = tmp_path / "pwned"
    pt = write_malicious(tmp_path / "evil.pt", marker)
    plain = tmp_path / "evil.pth"  # a bare pickle, as torch.save wrote before its zip format
    plain.write_bytes(pickle.dumps({"model": Payload(marker)}, protocol=2))
    with zipfile.ZipFile(pt) as z:
        assert _calls_exec(z.read(next(n for n in z.namelist() if n.endswith("data.pkl"))))
    assert _calls_exec(plain.read_bytes())  # the payloads are live: only the refusal stops them
    for load in (load_state_file, load_checkpoint, lambda p: load_weights(create_model("lenet5", num_classes=3), p)):
        for path in (pt, plain):
            with pytest.raises(ClassifierError, match="refused to load .* could run code") as info:
                load(path)
            assert "\n" not in str(info.value)
    assert not marker.exists()


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """The malicious checkpoint, as best.pt of a run folder and as last.pt of another (for --resume)."""
    root = tmp_path_factory.mktemp("untrusted")
    marker = root / "pwned"
    data = write_class_images(root / "data", per_class=4)
    for folder in ("run", "resume"):
        (root / folder).mkdir()
    evil = write_malicious(root / "run" / "best.pt", marker)
    write_malicious(root / "resume" / "last.pt", marker)
    return root, marker, data, evil


COMMANDS = {
    "train --weights": lambda r, d, e: ["train.py", "--dataset", f"folder:{d}", "--model", "lenet5", "--mode",
                                        "finetune", "--weights", e, "--project", r / "runs", "--workers", "0"],
    "train --resume": lambda r, d, e: ["train.py", "--resume", r / "resume"],
    "eval": lambda r, d, e: ["eval.py", "--checkpoint", e, d],
    "test": lambda r, d, e: ["test.py", "--checkpoint", e, d / "red" / "red_0.png"],
    "export": lambda r, d, e: ["export.py", "--checkpoint", e],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_refuses_the_malicious_checkpoint(setting, command):
    root, marker, data, evil = setting
    argv = [str(a) for a in COMMANDS[command](root, data, evil)]
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert not marker.exists(), f"{command} ran code from the checkpoint"
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert "Traceback" not in err and "\n" not in err, err
    assert err.startswith("error: refused to load ") and "could run code" in err, err


def test_mapped_loading_reads_the_same_checkpoint_and_refuses_the_same_files(tmp_path):
    """``mmap=True`` (a resume reading only the settings) gives the same entries, reads torch's legacy format
    too, and still never runs code from a file."""
    state = {"format": FORMAT, "config": {"model": "lenet5"}, "model": {"w": torch.arange(6.0).reshape(2, 3)}}
    for legacy in (False, True):
        path = tmp_path / f"ckpt{int(legacy)}.pt"
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)
        loaded = load_checkpoint(path, mmap=True)
        assert loaded["config"] == {"model": "lenet5"} and torch.equal(loaded["model"]["w"], state["model"]["w"])
    marker = tmp_path / "pwned"
    for legacy in (False, True):
        evil = tmp_path / f"evil{int(legacy)}.pt"
        torch.save({"format": FORMAT, "config": {}, "model": Payload(marker)}, evil,
                   _use_new_zipfile_serialization=not legacy)
        with pytest.raises(ClassifierError, match="refused"):
            load_checkpoint(evil, mmap=True)
    assert not marker.exists()
