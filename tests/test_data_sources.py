"""The dataset registry: built-in sources resolve through it, a new source is one registration, and a user's
``@classifier.register_dataset`` works wherever a dataset name does (``train.py --import``, ``classifier.train``,
evaluation, ``check_data``)."""
from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest

import classifier
from classifier.commands.eval import main as eval_main
from classifier.commands.train import main as train_main
from classifier.config import make_config
from classifier.data import load_dataset
from classifier.data.samples import DatasetInfo, Samples
from classifier.data.sources import (default_augment, find_source, fashion_mnist, register_source, registry, resolve,
                                     source_stats)
from classifier.errors import ClassifierError
from tests.conftest import stripes, write_class_images
from tests.test_data_helpers import write_cifar, write_eurosat, write_fashion

TINY = ["--model", "lenet5", "--epochs", "1", "--batch-size", "16", "--workers", "0", "--progress", "false",
        "--plots", "false", "--tensorboard", "false", "--amp", "off"]
TINY_API = dict(model="lenet5", epochs=1, batch_size=16, workers=0, progress=False, plots=False, tensorboard=False,
                amp="off")


@pytest.fixture(autouse=True)
def forget_registrations(monkeypatch, tmp_path):
    """Sources a test registers vanish after it; no system copy of Fashion-MNIST is found."""
    monkeypatch.setattr(registry, "_SOURCES", dict(registry._SOURCES))
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", str(tmp_path / "no-system-copy"))


# --- built-in sources ---------------------------------------------------------------------------
@pytest.mark.parametrize("spec, write, splits", [
    ("fashion_mnist", lambda root: write_fashion(root / "fashion_mnist"), {"train", "test"}),
    ("cifar10", lambda root: write_cifar(root / "cifar10" / "cifar-10-batches-py"), {"train", "test"}),
    ("eurosat", lambda root: write_eurosat(root / "eurosat" / "2750"), {"train"}),
])
def test_official_sources_load_through_the_registry(tmp_path, spec, write, splits):
    write(tmp_path)
    source, path = resolve(spec.upper().replace("_", "-"))  # names forgive case and - for _
    assert source.name == spec and path is None and not source.takes_path
    info, official = load_dataset(spec, tmp_path, download=False)
    assert info.name == spec and set(official) == splits
    assert source_stats(spec) == (info.mean, info.std)  # the registered statistics are the ones used
    assert default_augment(spec) == source.augment == "light"


def test_folder_and_arrays_are_prefix_sources(tmp_path):
    write_class_images(tmp_path / "colours", per_class=3)
    source, path = resolve(f"folder:{tmp_path / 'colours'}")
    assert source.name == "folder" and source.takes_path and path == str(tmp_path / "colours")
    info, official = load_dataset(f"folder:{tmp_path / 'colours'}")
    assert info.classes == ["blue", "green", "red"] and len(official["train"]) == 9
    assert source_stats("folder:x") is None  # measured from the images, not registered
    assert resolve("arrays:0123abcd")[0].name == "arrays"
    with pytest.raises(ClassifierError, match="in-memory arrays"):
        load_dataset("arrays:0123abcd")


def test_a_new_source_is_one_registration(tmp_path):
    calls = []

    @register_source("tiles", takes_path=True, mean=(0.5,), std=(0.25,), augment="flip")
    def load(path, root, download):
        calls.append((path, root, download))
        images = np.zeros((4, 8, 8, 1), np.uint8)
        return (DatasetInfo(f"tiles:{path}", ["a", "b"], 1, (8, 8), (0.5,), (0.25,)),
                {"train": Samples(labels=[0, 1, 0, 1], images=images)})

    info, official = load_dataset("Tiles:some/where", tmp_path, download=False)
    assert calls == [("some/where", tmp_path, False)] and info.name == "tiles:some/where"
    assert default_augment("tiles:x") == "flip" and "tiles:PATH" in registry.source_names()
    assert make_config({"dataset": "tiles:x"}).dataset == "tiles:x"  # the Config accepts it
    with pytest.raises(ValueError, match="already registered"):
        register_source("tiles")(load)


def test_unknown_dataset_is_one_line_naming_choices_and_how_to_add_one():
    with pytest.raises(ClassifierError) as err:
        make_config({"dataset": "fashion_mnits"})
    msg = str(err.value)
    assert "unknown dataset 'fashion_mnits'; did you mean fashion_mnist?" in msg and "\n" not in msg
    assert "folder:PATH" in msg and "cifar10" in msg and "--import" in msg and "register_dataset" in msg
    with pytest.raises(ClassifierError, match="needs a path"):
        load_dataset("folder:")


# --- a user's dataset -----------------------------------------------------------------------------
def write_user_module(folder, name: str):
    """A module registering ``name`` as the stripes arrays (what a user's my_data.py would hold)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}_module.py"
    path.write_text(textwrap.dedent(f"""
        import numpy as np
        import classifier

        @classifier.register_dataset("{name}")
        def stripes():
            rng = np.random.default_rng(0)
            labels = np.arange(60) % 3
            images = rng.integers(0, 60, (60, 16, 16), dtype=np.uint8)
            for i, c in enumerate(labels):
                images[i, :, c * 16 // 3:(c + 1) * 16 // 3] += 180
            return images, labels, ["left", "mid", "right"]
        """))
    return path


def test_user_module_trains_from_the_cli_and_evaluates(tmp_path, capsys):
    module = write_user_module(tmp_path / "code", "cli_stripes")
    run_dir = train_main(["--import", str(module), "--dataset", "cli_stripes", *TINY,
                          "--project", str(tmp_path / "runs"), "--name", "cli"])
    assert (run_dir / "best.pt").is_file()
    model = classifier.load(run_dir / "best.pt")
    assert model.classes == ["left", "mid", "right"]
    assert model.metadata["config"]["dataset"] == "cli_stripes"  # recorded by name: found again through it
    # eval.py in a new process would know the name only through --import: the run's test split is reloaded
    out = eval_main(["--import", str(module), "--checkpoint", str(run_dir / "best.pt"),
                     "--output", str(tmp_path / "ev"), "--progress", "false"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_samples"] == 12  # 20% of the 60 arrays, carved as the run carved them


def test_user_module_by_name_and_the_python_api(tmp_path, monkeypatch):
    write_user_module(tmp_path, "api_stripes")
    monkeypatch.chdir(tmp_path)  # --import NAME finds modules in the current folder, as python -m does
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "api_stripes_module", raising=False)  # imported afresh, so it registers
    from classifier.commands import import_user_modules

    import_user_modules(["api_stripes_module"])
    assert find_source("api_stripes").user
    run = classifier.train(dataset="api_stripes", project=str(tmp_path / "runs"), name="api", **TINY_API)
    assert run.config.dataset == "api_stripes" and len(run.history) == 1
    images, labels = stripes(60)
    assert run.model.evaluate((images, labels), output=tmp_path / "ev").metrics["n_samples"] == 60


def test_registered_function_returning_a_folder(tmp_path):
    write_class_images(tmp_path / "photos", per_class=4)

    @classifier.register_dataset("my_photos")
    def photos():
        return tmp_path / "photos"

    info, official = load_dataset("my_photos")
    assert info.name == "my_photos" and info.classes == ["blue", "green", "red"]
    assert official["train"].root == str(tmp_path / "photos") and len(official["train"]) == 12
    report = classifier.check_data("my_photos")
    assert report["classes"] == ["blue", "green", "red"]
    assert classifier.show_dataset("my_photos", save=tmp_path / "grid.png", per_class=2).is_file()


def test_registered_function_returning_a_dataset_string(tmp_path):
    write_fashion(tmp_path / "fashion_mnist")

    @classifier.register_dataset("clothes", augment="flip")
    def clothes():
        return "fashion_mnist"

    info, official = load_dataset("clothes", tmp_path, download=False)
    assert info.name == "clothes" and info.classes[0] == "T-shirt/top" and len(official["test"]) == 10
    assert default_augment("clothes") == "flip"


@pytest.mark.parametrize("returned, message", [
    ("no/such/folder", "neither a folder nor a dataset string"),
    (42, "returned a int"),
    ("selfish", "names itself"),
])
def test_registered_function_returning_nonsense(returned, message):
    classifier.register_dataset("selfish")(lambda: returned)
    with pytest.raises(ClassifierError, match=message):
        load_dataset("selfish")


def test_registered_functions_naming_each_other_are_a_loop_not_a_recursion_error():
    classifier.register_dataset("ping")(lambda: "pong")
    classifier.register_dataset("pong")(lambda: "ping")
    with pytest.raises(ClassifierError, match=r"dataset 'ping' leads back to itself \(ping -> pong -> ping\)"):
        load_dataset("ping")


def test_register_and_import_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(ClassifierError, match="built in"):
        classifier.register_dataset("cifar10")
    with pytest.raises(ClassifierError, match="unknown augment preset 'flp'; did you mean flip"):
        classifier.register_dataset("mine", augment="flp")
    with pytest.raises(ClassifierError, match="without ':'"):
        classifier.register_dataset("a:b")
    with pytest.raises(SystemExit) as code:
        train_main(["--import", "no_such_module_xyz", "--dataset", "fashion_mnist", *TINY])
    assert code.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --import no_such_module_xyz failed: ModuleNotFoundError") and "\n" not in err
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('oops')\n")
    with pytest.raises(SystemExit):
        train_main(["--import", str(broken), *TINY])
    assert "RuntimeError: oops" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_main(["--dataset", "nobody_registered_me", *TINY])
    assert "unknown dataset 'nobody_registered_me'" in capsys.readouterr().err
