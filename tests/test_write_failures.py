"""Outputs that cannot be written (missing or unwritable folder, full disk) are one-line errors naming the
path and the system's reason, from every command and the Python API; a failed checkpoint save leaves the
previous checkpoint loadable and no temporary file, and the run resumes once space is freed."""
from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
import torch

from classifier.checkpoint import load_checkpoint, save_checkpoint
from classifier.commands.eval import main as eval_main
from classifier.commands.export import main as export_main
from classifier.commands.test import main as classify_main
from classifier.commands.train import main as train_main
from classifier.config import make_config, resolve
from classifier.engine.trainer import fit
from classifier.errors import ClassifierError
from classifier.fileio import atomic_target, make_output_dir
from classifier.models import create_model
from classifier.preprocess import Preprocessing
from tests.conftest import write_class_images

PREP = Preprocessing(size=(16, 16), channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
NOT_A_DIR = os.strerror(errno.ENOTDIR)
NO_SPACE = os.strerror(errno.ENOSPC)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("writes")
    write_class_images(root / "colours", per_class=3)
    model = create_model("lenet5", num_classes=3, in_chans=3)
    save_checkpoint({"model": model.state_dict(), "model_name": "lenet5", "num_classes": 3, "in_chans": 3,
                     "classes": ["blue", "green", "red"], "preprocessing": PREP.to_dict(), "config": {},
                     "dataset": f"folder:{root / 'colours'}", "epoch": 1, "step": 1}, root / "lenet.pt")
    (root / "blocker").write_text("a file where a folder is wanted\n")
    return root


COMMANDS = {  # command -> (main, argv writing under `out`), what cannot be written
    "train": (lambda r, out: (train_main, ["--model", "lenet5", "--dataset", f"folder:{r / 'colours'}",
                                           "--project", str(out), "--epochs", "1", "--progress", "false"]),
              "cannot write to run folder {out}/lenet5-folder"),
    "eval": (lambda r, out: (eval_main, ["--checkpoint", str(r / "lenet.pt"), str(r / "colours"), "--output", str(out),
                                         "--no-progress"]),
             "cannot write to report folder {out}"),
    "test": (lambda r, out: (classify_main, ["--checkpoint", str(r / "lenet.pt"), str(r / "colours"), "--quiet",
                                             "--output", str(out)]),
             "cannot write to output folder {out}"),
    "export": (lambda r, out: (export_main, ["--checkpoint", str(r / "lenet.pt"), "--no-verify",
                                             "--output", str(out / "model.onnx")]),
               "cannot write to output folder {out}"),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_unwritable_output_is_one_line_naming_path_and_reason(files, command, capsys):
    make_argv, message = COMMANDS[command]
    out = files / "blocker" / "out"
    main, argv = make_argv(files, out)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {message.format(out=out)}: {NOT_A_DIR}\n"


def test_the_library_raises_the_same_error(files):
    with pytest.raises(ClassifierError, match="^cannot write to output folder /proc/nope: "):
        make_output_dir("/proc/nope")
    with pytest.raises(ClassifierError, match=f"^cannot write checkpoint {files}/blocker/x.pt: {NOT_A_DIR}$"):
        save_checkpoint({"epoch": 1}, files / "blocker" / "x.pt")


# ------------------------------------------------------------------------------------------- full disk

SLACK = 64 * 1024  # free space left on the full disk: the run header fits, a checkpoint does not


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs when running as root (a real disk that fills up), else None (the tests fake a full disk at
    the file level). 2 MB: one epoch of the tiny run below fits (its checkpoints, curves, reports: ~0.8 MB)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        yield mount, False
        return
    try:
        yield mount, True
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def fill(folder: Path, leave: int = 0) -> Path:
    """Write zeros into folder/filler until the disk is full, then give back ``leave`` bytes."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as err:
            assert err.errno == errno.ENOSPC
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def no_space_on_save(monkeypatch):
    """The file-level fault: torch.save writes a few bytes, then the disk is full."""
    def save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, NO_SPACE)

    monkeypatch.setattr(torch, "save", save)


def tiny_run(tmp_path, project):
    data = write_class_images(tmp_path / "colours", per_class=4)
    return make_config({"model": "resnet", "extra": {"width": 4}, "dataset": f"folder:{data}", "project": str(project),
                        "name": "run", "epochs": 1, "batch_size": 4, "workers": 0, "progress": False,
                        "tensorboard": False, "eval_test": False, "plots": False})


def test_full_disk_during_a_checkpoint_save_then_resume(tmp_path, small_disk, monkeypatch):
    disk, real = small_disk
    cfg = tiny_run(tmp_path, disk)
    run_dir = fit(cfg).dir
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1
    before = {p.name for p in run_dir.iterdir()}
    if real:
        filler = fill(disk, leave=SLACK)
        assert (run_dir / "best.pt").stat().st_size > SLACK
    else:
        no_space_on_save(monkeypatch)

    longer, given = resolve({"epochs": 2}, resume=run_dir)  # the resume rules (config.resolve), then the engine
    with pytest.raises(ClassifierError) as err:
        fit(longer, given=given, resume=run_dir)
    assert str(err.value) in [f"cannot write checkpoint {run_dir / name}: {NO_SPACE}" for name in ("best.pt", "last.pt")]
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1  # the previous checkpoint is intact
    assert {p.name for p in run_dir.iterdir()} == before  # no temporary file left behind

    if real:
        filler.unlink()
    else:
        monkeypatch.undo()
    fit(longer, given=given, resume=run_dir)
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 2


def test_torch_save_to_a_path_on_a_full_disk_is_named_too(small_disk):
    """torch.save given a path fails on a full disk with a RuntimeError ("unexpected pos"), not an OSError."""
    disk, real = small_disk
    if not real:
        pytest.skip("needs a real small disk (root, to mount a tmpfs)")
    target = disk / "weights.pt"
    with pytest.raises(ClassifierError, match=f"^cannot write weights {target}: {NO_SPACE}$"):
        with atomic_target(target, "weights") as tmp:
            torch.save({"w": torch.zeros(600_000)}, tmp)
    assert list(disk.iterdir()) == []
