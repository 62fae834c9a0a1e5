"""The training engine end to end on tiny folder datasets: CLI, run folder, modes, weights, resume."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

import classifier
from classifier.checkpoint import load_checkpoint
from classifier.commands.train import main as train_main
from classifier.engine.loop import progressive_size
from classifier.engine.optim import lr_factor
from classifier.errors import ClassifierError
from tests.conftest import write_class_images

FAST = ["--batch-size", "16", "--progress", "false", "--amp", "off", "--workers", "0", "--plots", "false"]


def train(tmp_path, dataset, *extra, name="run"):
    argv = ["--dataset", f"folder:{dataset}", "--project", str(tmp_path / "runs"), "--name", name, *FAST, *extra]
    return train_main(argv)


def test_cli_end_to_end_writes_the_run_folder(tmp_path, tiny_folder, capsys):
    run = train(tmp_path, tiny_folder, "--model", "lenet5", "--epochs", "2", "--lr", "0.05", "--plots", "true")
    for name in ("config.yaml", "model_summary.txt", "split.json", "history.csv", "best.pt", "last.pt",
                 "summary.json", "curves.png", "eval/report.md", "eval/metrics.json",
                 "eval/figures/confusion_matrix.png"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "val_loss", "train_acc", "val_acc", "lr", "epoch_time_s"} <= set(rows[0])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["params"] > 0 and summary["size_bytes"] > 0
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["classes"] == ["blue", "green", "red"]
    assert ckpt["preprocessing"]["channels"] == 3 and ckpt["model_name"] == "lenet5"
    out = capsys.readouterr().out
    assert "Mult-Adds" in (run / "model_summary.txt").read_text() or "mult" in out.lower()
    # the saved config re-runs the same training
    rerun = train_main(["--config", str(run / "config.yaml"), "--name", "rerun", "--epochs", "1"])
    assert (rerun / "best.pt").is_file() and rerun != run


def test_learns_the_tiny_task(tmp_path, tiny_folder):
    run = train(tmp_path, tiny_folder, "--model", "lenet5", "--epochs", "6", "--optimizer", "adam",
                "--lr", "0.01", "--augment", "none")
    assert json.loads((run / "summary.json").read_text())["test_accuracy"] >= 0.9
    # --plots false (the tests' default): the report's numbers and tables, no figures
    assert (run / "eval" / "report.md").is_file() and (run / "eval" / "metrics.json").is_file()
    assert not (run / "curves.png").exists() and not (run / "eval" / "figures").exists()
    assert "## Figures" not in (run / "eval" / "report.md").read_text()


def test_without_validation_split_best_is_the_last_epoch(tmp_path, tiny_folder, capsys):
    run = train(tmp_path, tiny_folder, "--model", "lenet5", "--epochs", "3", "--val-fraction", "0")
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [r["val_loss"] for r in rows] == ["", "", ""]  # not a made-up 0.0
    assert load_checkpoint(run / "best.pt")["epoch"] == 3  # the test split is evaluated on the newest weights
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_epoch"] == 3 and summary["val_loss"] is None
    out = capsys.readouterr().out
    assert "no val" in out and "*best*" not in out
    with pytest.raises(SystemExit):
        train(tmp_path, tiny_folder, "--model", "lenet5", "--epochs", "2", "--val-fraction", "0",
              "--early-stopping", "2", name="early")
    assert "no validation images" in capsys.readouterr().err
    assert not any((tmp_path / "runs" / "early").iterdir())  # refused before the run wrote anything


class Interrupt(Exception):
    pass


def stop_after_epoch(n):
    def callback(run, row):
        if row["epoch"] == n:
            raise Interrupt

    return callback


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_continues_exactly(tmp_path, tiny_folder, ema):
    from classifier.config import make_config
    from classifier.engine.trainer import fit

    values = dict(model="vggnet", extra={"width": 8}, seed=3, augment="light", epochs=3, batch_size=16,
                  progress=False, amp="off", workers=0, dataset=f"folder:{tiny_folder}",
                  project=str(tmp_path / "runs"), ema=ema)
    straight = fit(make_config({**values, "name": "straight"})).dir
    with pytest.raises(Interrupt):
        fit(make_config({**values, "name": "part"}), callbacks={"on_epoch_end": [stop_after_epoch(1)]})
    part = tmp_path / "runs" / "part"
    assert load_checkpoint(part / "last.pt")["epoch"] == 1
    train_main(["--resume", str(part), *FAST])
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(part / "last.pt")
    assert b["epoch"] == 3 and b["step"] == a["step"]
    for weights in ("model", "trained_model") if ema else ("model",):
        for k in a[weights]:
            assert torch.equal(a[weights][k], b[weights][k]), (weights, k)
    assert [r["val_loss"] for r in a["state"]["history"]] == [r["val_loss"] for r in b["state"]["history"]]


def test_epochs_extends_a_finished_run(tmp_path, tiny_folder):
    run = train(tmp_path, tiny_folder, "--model", "lenet5", "--epochs", "1")
    train_main(["--resume", str(run), "--epochs", "2", *FAST])
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 2 and len(ckpt["state"]["history"]) == 2


def test_feature_extract_keeps_backbone_bit_identical(tmp_path, tiny_folder):
    source = train(tmp_path, tiny_folder, "--model", "resnet", "--extra", "{width: 8}", "--epochs", "1", name="src")
    run = train(tmp_path, tiny_folder, "--model", "resnet", "--extra", "{width: 8}", "--epochs", "2",
                "--mode", "transfer", "--weights", str(source / "best.pt"), name="fx")
    before, after = load_checkpoint(source / "best.pt")["model"], load_checkpoint(run / "last.pt")["model"]
    body = [k for k in before if k.startswith("backbone.")]
    assert any("running_mean" in k for k in body)
    for k in body:
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["head.weight"], after["head.weight"]) if "head.weight" in before else True


def test_finetune_from_checkpoint_of_other_dataset_and_class_count(tmp_path, tiny_folder, capsys):
    source = train(tmp_path, tiny_folder, "--model", "resnet", "--extra", "{width: 8}", "--epochs", "1", name="src")
    two = write_class_images(tmp_path / "two", per_class=12, classes={"cyan": (30, 200, 200), "pink": (230, 80, 160)})
    run = train(tmp_path, two, "--model", "resnet", "--extra", "{width: 8}", "--epochs", "1", "--mode", "finetune",
                "--weights", str(source / "best.pt"), "--backbone-lr-mult", "0.1", name="ft")
    out = capsys.readouterr().out
    assert "weights:" in out and "head" in out.split("weights:")[1].splitlines()[0].lower()
    before, after = load_checkpoint(source / "best.pt"), load_checkpoint(run / "last.pt")
    assert after["classes"] == ["cyan", "pink"] and after["num_classes"] == 2
    changed = [k for k in before["model"] if k.startswith("backbone.") and "weight" in k
               and not torch.equal(before["model"][k], after["model"][k])]
    assert changed, "fine-tuning must train the backbone"


def test_finetune_with_frozen_bn_statistics(tmp_path, tiny_folder, capsys):
    """--freeze-bn: the backbone's BatchNorm running statistics stay the pretrained ones while its weights
    (conv and BatchNorm scale) train; without it the statistics move. Scratch with it is refused."""
    source = train(tmp_path, tiny_folder, "--model", "resnet", "--extra", "{width: 8}", "--epochs", "1", name="src")
    before = load_checkpoint(source / "best.pt")["model"]
    stats = [k for k in before if k.startswith("backbone.") and k.endswith(("running_mean", "running_var"))]
    assert stats
    for flag, name in ((["--freeze-bn", "true"], "frozen"), ([], "moving")):
        run = train(tmp_path, tiny_folder, "--model", "resnet", "--extra", "{width: 8}", "--epochs", "1",
                    "--mode", "finetune", "--weights", str(source / "best.pt"), *flag, name=name)
        after = load_checkpoint(run / "last.pt")["model"]
        same = [torch.equal(before[k], after[k]) for k in stats]
        assert all(same) if flag else not any(same), name
        assert any(not torch.equal(before[k], after[k]) for k in before
                   if k.startswith("backbone.") and k.endswith("weight")), name
    with pytest.raises(SystemExit) as exit_info:
        train(tmp_path, tiny_folder, "--model", "resnet", "--freeze-bn", "true", name="scratch")
    assert exit_info.value.code == 2 and "--freeze-bn" in capsys.readouterr().err


def test_finetune_without_weights_is_an_error(tmp_path, tiny_folder, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train(tmp_path, tiny_folder, "--model", "lenet5", "--mode", "finetune")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--weights" in err and "Traceback" not in err


def test_scratch_loads_nothing(tmp_path, tiny_folder):
    from classifier.config import make_config
    from classifier.engine.build import build_data, build_model
    from classifier.engine.runtime import Dist
    from classifier.models import create_model

    cfg = make_config({"model": "lenet5", "dataset": f"folder:{tiny_folder}", "workers": 0})
    data = build_data(cfg, tmp_path, Dist())
    torch.manual_seed(0)
    model, note = build_model(cfg, data)
    torch.manual_seed(0)
    fresh = create_model("lenet5", num_classes=3, in_chans=3)
    assert note is None
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ClassifierError):
        make_config({"mode": "scratch", "weights": "x.pt"})


def test_list_models(capsys):
    train_main(["--list-models"])
    out = capsys.readouterr().out
    for name in ("lenet5", "vggnet", "resnet", "deepnet-skip", "vgg11", "resnet18", "mobilenet_v2", "timm/"):
        assert name in out


def test_unknown_model_suggests(tmp_path, tiny_folder, capsys):
    with pytest.raises(SystemExit):
        train(tmp_path, tiny_folder, "--model", "resnet19")
    assert "did you mean" in capsys.readouterr().err


def test_checkpoint_with_builder_options_reloads_for_inference(tmp_path, tiny_folder):
    from classifier.inference import Predictor

    run = train(tmp_path, tiny_folder, "--model", "vggnet", "--extra", "{width: 8}", "--epochs", "1")
    predictor = Predictor.load(run / "best.pt")
    probs = predictor.predict([np.full((16, 16, 3), 200, np.uint8)])
    assert probs.shape == (1, 3) and abs(probs.sum() - 1) < 1e-5


def test_default_augmentation_is_the_datasets(tmp_path, tiny_folder):
    from classifier.config import make_config
    from classifier.data import default_augment
    from classifier.engine.runtime import Dist
    from classifier.engine.build import build_data

    data = build_data(make_config({"model": "lenet5", "dataset": f"folder:{tiny_folder}", "workers": 0}),
                        tmp_path, Dist())
    assert default_augment(data.info.name) != "none"
    assert not data.loaders["train"].augment.is_identity


def _train_val_folder(tmp_path):
    root = tmp_path / "imagenet_style"
    write_class_images(root / "train", per_class=10, seed=1)
    write_class_images(root / "val", per_class=4, seed=2)
    return root


def test_train_val_layout_trains_on_all_of_train_and_reports_val(tmp_path, capsys):
    root = _train_val_folder(tmp_path)
    run = train(tmp_path, root, "--model", "lenet5", "--epochs", "1")
    record = json.loads((run / "split.json").read_text())
    assert record["splits"]["train"]["size"] == 30 and record["splits"]["train"]["source"] == "train"
    assert record["splits"]["val"]["size"] == 12 and record["splits"]["val"]["source"] == "val"
    assert record["splits"]["test"]["size"] == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["evaluated_split"] == "val" and 0.0 <= summary["val_accuracy"] <= 1.0
    assert "test_accuracy" not in summary
    from classifier.startup import seconds_since_start

    assert 0 < summary["startup_s"] < seconds_since_start()  # measured from this (pytest) process's start
    assert "(val split)" in (run / "eval" / "report.md").read_text()
    out = capsys.readouterr().out
    assert "training on all 30 images of train/" in out and "val accuracy" in out
    from classifier.commands.eval import main as eval_main

    assert eval_main(["--checkpoint", str(run / "best.pt"), "--no-progress"]).name == "eval-val-best"
    # a test split carved from train/ when asked for explicitly
    carved = train(tmp_path, root, "--model", "lenet5", "--epochs", "1", "--test-fraction", "0.2", name="carved")
    record = json.loads((carved / "split.json").read_text())
    assert record["splits"]["test"]["size"] == 6 and record["splits"]["train"]["size"] == 24
    assert json.loads((carved / "summary.json").read_text())["evaluated_split"] == "test"


def test_run_made_before_the_train_val_change_resumes(tmp_path):
    """Runs started when test_fraction defaulted to 0.2 (a test split carved from train/) keep their split."""
    root = _train_val_folder(tmp_path)
    run = train(tmp_path, root, "--model", "lenet5", "--epochs", "1", "--test-fraction", "0.2")
    old = json.loads((run / "split.json").read_text())
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["config"]["test_fraction"] == 0.2  # what every run of the old default recorded
    train_main(["--resume", str(run), "--epochs", "2", *FAST])
    assert json.loads((run / "split.json").read_text()) == old
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


def test_resize_policy_default_per_case_and_saved_in_the_checkpoint(tmp_path, tiny_folder, capsys):
    run = train(tmp_path, tiny_folder, "--model", "lenet5", "--epochs", "1", "--eval-test", "false")
    assert load_checkpoint(run / "best.pt")["preprocessing"]["resize_policy"] == "squash"  # one image size
    mixed = write_class_images(tmp_path / "mixed", per_class=6, size=20)
    write_class_images(mixed, per_class=3, size=12, seed=4)  # overwrites some files at another size
    run = train(tmp_path, mixed, "--model", "lenet5", "--epochs", "1", "--img-size", "16", name="mixed")
    assert load_checkpoint(run / "best.pt")["preprocessing"]["resize_policy"] == "crop"
    assert "resize policy: crop" in capsys.readouterr().out
    run = train(tmp_path, mixed, "--model", "lenet5", "--epochs", "1", "--img-size", "16", "--resize", "pad",
                name="pad")
    assert load_checkpoint(run / "best.pt")["preprocessing"]["resize_policy"] == "pad"
    assert "resize: pad" in (run / "config.yaml").read_text()
    with pytest.raises(SystemExit):
        train(tmp_path, mixed, "--resize", "fit", name="bad")
    assert "error: invalid resize 'fit' (choices: squash, crop, pad)" in capsys.readouterr().err


def test_feature_extract_with_and_without_the_feature_cache_trains_the_same_head(tmp_path, tiny_folder, capsys):
    source = train(tmp_path, tiny_folder, "--model", "lenet5", "--epochs", "1", name="src")
    common = ["--model", "lenet5", "--epochs", "2", "--mode", "feature-extract", "--weights", str(source / "best.pt"),
              "--augment", "none", "--eval-test", "false"]
    cached = train(tmp_path, tiny_folder, *common, name="cached")
    out = capsys.readouterr().out
    assert "feature cache: computed 1 view(s) x" in out
    assert "feature cache (validation): computed 1 view(s) x 6 images" in out  # the backbone once per image
    plain = train(tmp_path, tiny_folder, *common, "--feature-cache", "off", name="plain")
    assert "feature cache off (--feature-cache off)" in capsys.readouterr().out
    a, b = load_checkpoint(cached / "last.pt"), load_checkpoint(plain / "last.pt")
    for run_a, run_b in zip(a["state"]["history"], b["state"]["history"]):  # validation on cached features
        assert run_a["val_loss"] == pytest.approx(run_b["val_loss"], rel=1e-5)
        assert run_a["val_acc"] == run_b["val_acc"]
    a, b = a["model"], b["model"]
    assert set(a) == set(b)  # the saved model is backbone + head either way
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    again = train(tmp_path, tiny_folder, *common, name="again")
    assert "feature cache: reused" in capsys.readouterr().out
    torch.testing.assert_close(load_checkpoint(again / "last.pt")["model"]["head.weight"], a["head.weight"])


def test_feature_views_sets_the_augmented_views_the_cache_holds(tmp_path, tiny_folder, capsys):
    source = train(tmp_path, tiny_folder, "--model", "lenet5", "--epochs", "1", "--plots", "false", name="src")
    common = ["--model", "lenet5", "--epochs", "1", "--mode", "feature-extract", "--weights", str(source / "best.pt"),
              "--augment", "light", "--eval-test", "false", "--plots", "false"]
    train(tmp_path, tiny_folder, *common, name="default")
    assert "feature cache: computed 4 view(s) x" in capsys.readouterr().out
    run = train(tmp_path, tiny_folder, *common, "--feature-views", "2", name="two")
    assert "feature cache: computed 2 view(s) x" in capsys.readouterr().out
    assert "feature_views: 2" in (run / "config.yaml").read_text()


def test_weight_average_follows_its_formula():
    from classifier.engine.ema import WeightAverage

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    avg = WeightAverage(model, decay=0.99)
    assert avg.decay_at(1) == pytest.approx(2 / 11) and avg.decay_at(10_000) == 0.99  # warm-up, then decay
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.randn(8, 2))  # BatchNorm statistics and its integer counter change too
    avg.update(model, step=1)
    d, now = 2 / 11, model.state_dict()
    for k, v in avg.model.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, d * start[k] + (1 - d) * now[k])
        else:
            assert torch.equal(v, now[k]), k  # num_batches_tracked is copied
    assert not any(p.requires_grad for p in avg.model.parameters())


def test_ema_run_validates_and_saves_the_averaged_weights(tmp_path, tiny_folder, capsys):
    from classifier.engine.loop import evaluate

    result = classifier.train(model="vggnet", extra={"width": 8}, dataset=f"folder:{tiny_folder}", epochs=2,
                              ema=0.9, project=str(tmp_path), batch_size=16, progress=False, amp="off",
                              workers=0, tensorboard=False, plots=False, eval_test=False)
    assert "weight average: EMA, decay 0.9" in capsys.readouterr().out
    run = result.engine_run
    last = load_checkpoint(result.dir / "last.pt")
    val_loss = result.history[-1]["val_loss"]

    def val_loss_of(weights):
        run.raw_model.load_state_dict(weights)
        return evaluate(run.raw_model, run.data.loaders["val"], run.device, channels_last=run.channels_last)["loss"]

    assert val_loss_of(last["model"]) == pytest.approx(val_loss, rel=1e-6)  # validation saw the average
    assert val_loss_of(last["trained_model"]) != pytest.approx(val_loss, rel=1e-3)  # not the trained weights
    assert "trained_model" not in load_checkpoint(result.dir / "best.pt")  # deployable file: the average only
    assert "ema: 0.9" in (result.dir / "config.yaml").read_text()


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decaying_schedules_warm_up_then_fall_to_zero(schedule):
    total, warmup = 100, 10
    f = [lr_factor(s, total, schedule=schedule, warmup_steps=warmup) for s in range(total)]
    assert f[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])  # linear warm-up to the peak
    assert f[warmup] == 1.0 and all(a >= b for a, b in zip(f[warmup:], f[warmup + 1:]))
    assert f[-1] < 0.02 and lr_factor(total, total, schedule=schedule) == 0.0
    steps = np.diff(f[warmup:])
    if schedule == "linear":
        assert steps == pytest.approx(np.full_like(steps, -1 / (total - warmup)))  # equal steps down
    else:
        assert abs(steps[0]) < abs(steps[len(steps) // 2])  # cosine: slow start, fastest in the middle


def test_onecycle_and_step_schedules():
    assert max(range(100), key=lambda s: lr_factor(s, 100, schedule="onecycle")) == 29  # peak after 30%
    assert [lr_factor(s, 100, schedule="step") for s in (0, 49, 50, 74, 75)] == pytest.approx([1, 1, .1, .1, .01])
    assert lr_factor(7, 100, schedule="step", step_size=3) == pytest.approx(0.01)
    assert lr_factor(50, 100, schedule="none") == 1.0


def test_progressive_resize_schedule():
    sides = [progressive_size(e, 12, (28, 28), 0.6)[0] for e in range(12)]
    assert sides[0] == round(0.6 * 28) and sides == sorted(sides)  # starts at the fraction, never shrinks
    assert sides[7:] == [28] * 5  # full size from the last of the first 2/3 of the epochs on
    assert [progressive_size(e, 12, (28, 28), 0.0) for e in range(12)] == [(28, 28)] * 12  # 0: off
    assert progressive_size(0, 10, (64, 32), 0.5) == (32, 16)  # each side scaled
    assert progressive_size(0, 10, (12, 12), 0.1) == (8, 8)  # never below 8 px
    assert progressive_size(0, 10, (28, 28), 0.2, smallest=12) == (12, 12)  # nor the model's minimum side
    assert progressive_size(0, 1, (28, 28), 0.5) == (28, 28)  # a 1-epoch run trains at full size


def test_progressive_resize_trains_small_first_and_evaluates_at_full_size(tmp_path, tiny_folder, capsys):
    seen = {"train": [], "eval": set()}

    def watch(run):
        def record(module, args):
            shape = tuple(args[0].shape[-2:])
            if module.training:
                seen["train"][-1].add(shape)
            else:
                seen["eval"].add(shape)
        run.raw_model.register_forward_pre_hook(record)
        seen["train"].append(set())

    result = classifier.train(model="resnet", dataset=f"folder:{tiny_folder}", epochs=6, progressive_resize=0.5,
                              project=str(tmp_path), batch_size=16, progress=False, amp="off", workers=0,
                              tensorboard=False, plots=False,
                              callbacks={"on_train_start": [watch],
                                         "on_epoch_end": [lambda run, row: seen["train"].append(set())]})
    expected = [progressive_size(e, 6, (16, 16), 0.5) for e in range(6)]
    assert expected[0] == (8, 8) and expected[-1] == (16, 16)
    assert [s for s in seen["train"] if s] == [{size} for size in expected]
    assert seen["eval"] == {(16, 16)}  # validation and the test report at the model's size
    assert "at 8x8 px" in capsys.readouterr().out
    assert "progressive_resize: 0.5" in (result.dir / "config.yaml").read_text()
