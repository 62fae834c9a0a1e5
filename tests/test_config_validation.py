"""Every config key is checked against its own declaration (type, range or choices): the cases below are
generated from classifier/config.py, so a new key is covered without editing this file."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from classifier.config import FIELDS, resolve_for_model, key_types, make_config, resolve_config
from classifier.commands.train import build_parser
from classifier.errors import ClassifierError

REPO = Path(__file__).resolve().parents[1]

# a value of a type the key does not take, for each declared type
FOREIGN = {"int": "abc", "float": "abc", "bool": "maybe", "str": [1, 2], "list": {"a": 1}, "dict": "text"}
NUMBER_TYPES = {"int", "float"}


def accepts(name):
    return FIELDS[name].metadata.get("accepts")


def wrong_type_value(name):
    kinds, _ = key_types(name)
    assert set(kinds) <= set(FOREIGN), f"{name}: no wrong-type example for type {kinds}; add one to FOREIGN"
    if len(kinds) == 1:
        return FOREIGN[kinds[0]]
    return next(v for v in ({"a": 1}, [1, 2]) if type(v).__name__ not in kinds)


def out_of_range_values(name):
    """Values just outside the declared interval on each bounded side, or an unknown name."""
    rule = accepts(name)
    if rule is None:
        return []
    if rule.choices is not None:
        return ["no-such-choice"]
    kinds, _ = key_types(name)
    unit = 1 if "int" in kinds else 0.5
    values = []
    if rule.ge is not None:
        values.append(rule.ge - unit)
    if rule.gt is not None:
        values.append(rule.gt)
    if rule.le is not None:
        values.append(rule.le + unit)
    if rule.lt is not None:
        values.append(rule.lt)
    return [int(v) if "int" in kinds else float(v) for v in values]


WRONG_TYPE = [(name, wrong_type_value(name)) for name in FIELDS]
OUT_OF_RANGE = [(name, value) for name in FIELDS for value in out_of_range_values(name)]


def test_every_numeric_key_declares_its_range():
    unbounded = [n for n in FIELDS if set(key_types(n)[0]) & NUMBER_TYPES and accepts(n) is None]
    assert unbounded == [], f"declare what these keys accept with key(..., ge=/gt=/le=/lt=): {unbounded}"


def test_the_defaults_pass_their_own_declarations():
    cfg = make_config({})
    assert cfg.mode == "scratch" and cfg.extra == {}


def assert_one_line(err, name, value):
    text = str(err.value)
    assert "\n" not in text
    assert name in text and (repr(value) in text or str(value) in text), text


@pytest.mark.parametrize("name,value", WRONG_TYPE, ids=[n for n, _ in WRONG_TYPE])
def test_wrong_type_is_a_one_line_error(name, value):
    with pytest.raises(ClassifierError) as err:
        make_config({name: value})
    assert_one_line(err, name, value)
    assert "not a valid" in str(err.value)


@pytest.mark.parametrize("name,value", OUT_OF_RANGE, ids=[f"{n}={v}" for n, v in OUT_OF_RANGE])
def test_out_of_range_is_a_one_line_error_saying_what_is_accepted(name, value):
    with pytest.raises(ClassifierError) as err:
        make_config({name: value})
    assert_one_line(err, name, value)
    rule = accepts(name)
    wanted = "choices: " + ", ".join(rule.names()) if rule.choices is not None else rule.describe()
    assert wanted in str(err.value)


def test_flags_take_the_same_check():
    with pytest.raises(ClassifierError, match=r"^label_smoothing=2.0 is out of range: must be in \[0, 1\)$"):
        resolve_config(build_parser().parse_args(["--label-smoothing", "2"]))


def test_yaml_takes_the_same_check(tmp_path):
    (tmp_path / "bad.yaml").write_text("weight_decay: -1\n")
    with pytest.raises(ClassifierError, match=r"^weight_decay=-1.0 is out of range: must be >= 0$"):
        resolve_config(build_parser().parse_args(["--config", str(tmp_path / "bad.yaml")]))


def test_values_are_converted_and_aliases_resolved():
    cfg = make_config({"epochs": "3", "lr": "1e-3", "tensorboard": "off", "mode": "transfer", "weights": "imagenet",
                       "classes": "5,6", "img_size": 32.0})
    assert (cfg.epochs, cfg.lr, cfg.tensorboard, cfg.mode, cfg.classes, cfg.img_size) == (
        3, 1e-3, False, "feature-extract", ["5", "6"], 32)


@pytest.mark.parametrize("values,message", [
    ({"mode": "finetune"}, "--mode finetune needs pretrained weights"),
    ({"weights": "imagenet"}, "--mode scratch starts from random weights"),
    ({"freeze_bn": True}, "--freeze-bn keeps pretrained BatchNorm statistics"),
    ({"lr": float("nan")}, "lr=nan is not a valid float"),
])
def test_rules_across_keys_and_non_finite_numbers(values, message):
    with pytest.raises(ClassifierError, match=message):
        make_config(values)


@pytest.mark.parametrize("model,size,message", [
    ("lenet5", 7, "img_size=7 does not fit model 'lenet5': it accepts input sides of 12 up"),
    ("resnet18", 16, "img_size=16 does not fit model 'resnet18': it accepts input sides of 32 up"),
])
def test_input_size_is_checked_against_the_model(model, size, message):
    with pytest.raises(ClassifierError, match=f"^{message}$"):
        resolve_for_model(make_config({"model": model, "img_size": size}))
    resolve_for_model(make_config({"model": model, "img_size": 32}))


@pytest.mark.parametrize("flags,message", [
    (["--label-smoothing", "2"], "error: label_smoothing=2.0 is out of range: must be in [0, 1)"),
    (["--workers", "-3"], "error: workers=-3 is out of range: must be >= 0"),
    (["--epochs", "many"], "error: config value epochs='many' is not a valid int"),
    (["--img-size", "7"], "error: img_size=7 does not fit model 'lenet5': it accepts input sides of 12 up"),
])
def test_train_script_exits_2_without_traceback(tmp_path, flags, message):
    """Through train.py itself; --img-size 7 is refused before the (missing) data is looked at."""
    cmd = [sys.executable, str(REPO / "train.py"), "--model", "lenet5", "--dataset", f"folder:{tmp_path / 'none'}",
           "--project", str(tmp_path / "runs"), *flags]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == message
    assert "Traceback" not in done.stderr
    assert not any(p.is_file() for p in (tmp_path / "runs").rglob("*"))
