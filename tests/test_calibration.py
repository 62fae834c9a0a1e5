"""Temperature scaling (classifier/trust/calibrate.py)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from classifier.trust.calibrate import fit_temperature, sigmoid_nll, softmax_nll


def overconfident(n=600, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), labels] += 1.5  # right a bit more often than not ...
    return 6 * logits, labels  # ... but six times too sure


def test_temperature_lowers_validation_nll():
    logits, labels = overconfident()
    t = fit_temperature(logits, labels)
    assert t > 2
    assert softmax_nll(logits, labels, t) < softmax_nll(logits, labels, 1.0) - 0.1
    # a minimum: a little either side is no better
    assert softmax_nll(logits, labels, t) <= min(softmax_nll(logits, labels, t * 1.05),
                                                 softmax_nll(logits, labels, t / 1.05))


def test_calibrated_logits_keep_their_temperature_near_one():
    """Labels drawn from softmax(logits) themselves: those probabilities are calibrated, T stays ~1."""
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (3000, 4))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = (p.cumsum(1) < rng.random((3000, 1))).sum(1)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.1)


def test_multilabel_shared_and_per_class():
    rng = np.random.default_rng(3)
    targets = rng.integers(0, 2, (500, 3))
    logits = 8 * (targets - 0.5) + rng.normal(0, 4, (500, 3))
    shared = fit_temperature(logits, targets, multilabel=True)
    per_class = fit_temperature(logits, targets, multilabel=True, per_class=True)
    assert per_class.shape == (3,)
    assert sigmoid_nll(logits, targets, shared) < sigmoid_nll(logits, targets, 1.0)
    assert sigmoid_nll(logits, targets, per_class) <= sigmoid_nll(logits, targets, shared) + 1e-9


def test_run_stores_a_temperature_that_lowers_val_nll_and_every_client_applies_it():
    """best.pt holds the temperature fitted on validation (lower val NLL than the raw softmax); predict on
    the checkpoint and on the ONNX export give the same calibrated probabilities; summary.json has the ECEs."""
    import classifier
    from classifier.checkpoint import load_checkpoint
    from classifier.models import model_from_checkpoint
    from classifier.preprocess import Preprocessing
    from classifier.trust.fitting import sample_outputs
    from tests.trust_run import trust_run

    run, onnx_path, data = trust_run()
    ckpt = load_checkpoint(run.dir / "best.pt")
    t = ckpt["temperature"]
    assert run.summary["temperature"] == t and t != 1.0
    assert {"test_ece", "test_ece_uncalibrated"} <= set(run.summary)
    logits, _, labels = sample_outputs(model_from_checkpoint(ckpt), run.engine_run.data.splits["val"],
                                       Preprocessing.from_dict(ckpt["preprocessing"]))
    assert softmax_nll(logits, labels, t) < softmax_nll(logits, labels, 1.0)
    files = sorted(data.rglob("*.png"))[:12]
    pt, ox = classifier.load(run.dir / "best.pt"), classifier.load(onnx_path)
    assert ox.metadata["temperature"] == pytest.approx(t)
    probs_pt = np.stack([p.probs for p in pt.predict(files)])
    probs_onnx = np.stack([p.probs for p in ox.predict(files)])
    np.testing.assert_allclose(probs_pt, probs_onnx, atol=1e-5)


def test_calibrate_false_and_old_checkpoints_keep_the_raw_softmax(tmp_path):
    """A checkpoint without the new keys (older, or --calibrate false) predicts with temperature 1."""
    import classifier
    from classifier.checkpoint import load_checkpoint, save_checkpoint
    from tests.trust_run import trust_run

    run, _, data = trust_run()
    ckpt = load_checkpoint(run.dir / "best.pt")
    old = {k: v for k, v in ckpt.items() if k not in ("temperature", "ood", "format")}
    save_checkpoint(old, tmp_path / "old.pt")
    model = classifier.load(tmp_path / "old.pt")
    assert model.predictor.temperature == 1.0 and model.predictor.ood is None
    files = sorted(data.rglob("*.png"))[:4]
    with pytest.raises(classifier.ClassifierError, match="rejection threshold"):
        model.predict(files, reject=True)
    new = classifier.load(run.dir / "best.pt")
    p_old = np.stack([p.probs for p in model.predict(files)])
    p_new = np.stack([p.probs for p in new.predict(files)])
    assert (p_old.argmax(1) == p_new.argmax(1)).all()
    # the raw softmax is the calibrated one at T = 1: softmax(T * log p_new) == p_old
    z = ckpt["temperature"] * np.log(p_new)
    np.testing.assert_allclose(np.exp(z) / np.exp(z).sum(1, keepdims=True), p_old, atol=1e-4)
    assert not np.allclose(p_old, p_new, atol=1e-3)  # and the temperature did change them


def test_browser_page_shows_the_calibrated_probabilities_the_cam_and_the_unknown_answer(tmp_path):
    """The page divides the logits by the metadata's temperature (same probabilities as predict on the
    checkpoint, 1e-5), overlays the graph's cam output (export --web --cam), and answers "unknown" where
    predict(reject=True) does, from the graph's ood_score output."""
    import threading

    import classifier
    from classifier.export import web
    from tests import test_web
    from tests.trust_run import trust_run

    run, _, data = trust_run()
    test_web.runtime_or_skip()
    page = classifier.load(run.dir / "best.pt").export_web(tmp_path / "site" / "page", cam=True)
    driver_gen = test_web.browser.__wrapped__(_Factory(tmp_path))
    driver = next(driver_gen)
    server = web.make_server(tmp_path / "site", port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        state, message = test_web.open_page(driver, web.server_url(server) + "page/")
        assert state == "ready", message
        strange = tmp_path / "strange"
        strange.mkdir()
        rng = np.random.default_rng(5)
        for i in range(4):  # pictures of none of the colours: noise and stripes
            pixels = rng.integers(0, 256, (32, 32, 3)) if i % 2 else np.indices((32, 32)).sum(0)[..., None] % 8 * 32
            Image.fromarray(np.broadcast_to(pixels, (32, 32, 3)).astype(np.uint8)).save(strange / f"strange{i}.png")
        files = sorted(data.rglob("*.png"))[:6] + sorted(strange.glob("*.png"))
        test_web.upload(driver, files)
        got = test_web.results(driver, "fp32", len(files))
        expected = classifier.load(run.dir / "best.pt").predict(files, reject=True)
        np.testing.assert_allclose([got[p.name] for p in files], [p.probs for p in expected], atol=1e-5)
        assert driver.execute_script("return document.querySelectorAll('.result canvas.cam').length") == len(files)
        shown = driver.execute_script("return Object.fromEntries(Array.from(document.querySelectorAll('.result'), "
                                      "f => [f.dataset.file, [Number(f.dataset.oodScore), f.dataset.unknown]]))")
        scores = np.array([shown[p.name][0] for p in files])
        np.testing.assert_allclose(scores, [p.ood_score for p in expected], rtol=1e-3, atol=1e-3)
        unknown = [shown[p.name][1] == "true" for p in files]
        assert unknown == [p.label == "unknown" for p in expected]
        assert any(unknown) and not all(unknown)  # both answers occur: the comparison means something
        assert driver.execute_script("return document.querySelectorAll('.result .unknown').length") == sum(unknown)
    finally:
        server.shutdown()
        server.server_close()
        next(driver_gen, None)
    assert (page / "metadata.json").is_file()


class _Factory:
    """The minimum of pytest's tmp_path_factory that test_web's browser fixture uses."""

    def __init__(self, root):
        self.root = root

    def mktemp(self, name):
        path = self.root / name
        path.mkdir()
        return path


def test_onnx_client_example_applies_the_temperature():
    import importlib.util
    from pathlib import Path

    import classifier
    from tests.trust_run import trust_run

    run, onnx_path, data = trust_run()
    spec = importlib.util.spec_from_file_location("onnx_client", Path(__file__).resolve().parents[1] / "examples"
                                                  / "onnx_client.py")
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    session, meta = client.load_model(str(onnx_path))
    files = sorted(data.rglob("*.png"))[:4]  # at the model's size: no resize differences
    expected = classifier.load(run.dir / "best.pt").predict(files, reject=True)
    for path, prediction in zip(files, expected):
        probs, score = client.classify_with_score(session, meta, str(path))
        np.testing.assert_allclose(probs, prediction.probs, atol=1e-5)
        assert score == pytest.approx(prediction.ood_score, rel=1e-3)  # float32: the graph sums in its own order


def test_calibrate_false_fits_no_temperature_and_old_onnx_files_predict_as_before(tmp_path):
    import onnx

    import classifier
    from classifier.checkpoint import load_checkpoint
    from classifier.models import model_from_checkpoint
    from classifier.preprocess import Preprocessing
    from classifier.trust.fitting import fit_trust
    from tests.trust_run import trust_run

    run, onnx_path, data = trust_run()
    ckpt = load_checkpoint(run.dir / "best.pt")
    splits = run.engine_run.data.splits
    fitted = fit_trust(model_from_checkpoint(ckpt), Preprocessing.from_dict(ckpt["preprocessing"]), splits["val"],
                       splits["train"], calibrate=False, score="energy")
    assert fitted["temperature"] == 1.0 and fitted["ood"]["score"] == "energy" and "stats" not in fitted["ood"]
    proto = onnx.load(str(onnx_path))  # an export from before issue 31: none of its metadata keys
    kept = [p for p in proto.metadata_props if p.key not in ("temperature", "ood_score", "reject_threshold",
                                                              "reject_keep")]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, str(tmp_path / "old.onnx"))
    old = classifier.load(tmp_path / "old.onnx")
    assert old.predictor.temperature == 1.0 and old.predictor.ood is None
    files = sorted(data.rglob("*.png"))[:4]
    z = np.stack([p.probs for p in old.predict(files)])
    new = np.stack([p.probs for p in classifier.load(onnx_path).predict(files)])
    assert (z.argmax(1) == new.argmax(1)).all() and not np.allclose(z, new, atol=1e-3)
    with pytest.raises(classifier.ClassifierError, match="rejection threshold"):
        old.predict(files, reject=True)


def test_multilabel_temperature_is_shared_or_per_class_by_measurement():
    from classifier.trust.calibrate import fit_multilabel_temperature

    rng = np.random.default_rng(4)
    targets = rng.integers(0, 2, (800, 3))
    scale = np.array([1.0, 6.0, 0.3])  # one class fine, one over-confident, one under-confident: per class wins
    logits = scale * (4 * (targets - 0.5) + rng.normal(0, 2, (800, 3)))
    t, kind = fit_multilabel_temperature(logits, targets)
    assert kind == "per-class" and t.shape == (3,) and t[1] > 2 and t[2] < 1
    shared_data = 5 * (4 * (targets - 0.5) + rng.normal(0, 2, (800, 3)))
    assert fit_multilabel_temperature(shared_data, targets)[1] == "shared"
