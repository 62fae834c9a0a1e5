"""OOD scores, the rejection threshold and the separation metrics (classifier/trust/ood.py)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from classifier.errors import ClassifierError
from classifier.trust.ood import (SCORES, fit_feature_stats, fpr_at_tpr, ood_scores, separation,
                                  threshold_keeping)


@pytest.mark.parametrize("keep", [0.95, 0.9, 0.5, 1.0])
def test_threshold_keeps_the_stated_share(keep):
    scores = np.random.default_rng(0).normal(size=997)
    t = threshold_keeping(scores, keep)
    kept = (scores >= t).mean()
    assert kept >= keep
    assert (scores > t + 2e-5 * max(1, abs(t))).mean() < keep  # the largest such, up to float noise


def test_threshold_refuses_bad_share():
    with pytest.raises(ClassifierError, match="share"):
        threshold_keeping([1.0, 2.0], 1.5)


def test_auroc_and_fpr95_equal_sklearn():
    rng = np.random.default_rng(1)
    known, unknown = rng.normal(1.0, 1.0, 400), rng.normal(0.0, 1.0, 300)
    got = separation(known, unknown, threshold=0.5)
    y = np.r_[np.ones(400), np.zeros(300)]
    assert got["auroc"] == pytest.approx(roc_auc_score(y, np.r_[known, unknown]), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, np.r_[known, unknown])
    assert got["fpr95"] == pytest.approx(fpr[np.searchsorted(tpr, 0.95, side="left")], abs=1e-12)
    assert got["rejected"] == pytest.approx((unknown < 0.5).mean())
    assert fpr_at_tpr(known, known - 100) == 0.0


def test_scores_rank_far_features_lower():
    """Every score puts images far from the training classes below the training-like ones."""
    rng = np.random.default_rng(2)
    centres = rng.normal(0, 6, (3, 8))
    labels = np.repeat(np.arange(3), 60)
    feats = centres[labels] + rng.normal(size=(180, 8))
    far = rng.normal(0, 1, (50, 8)) + 30
    head = rng.normal(size=(3, 8))
    near_logits, far_logits = 5 * np.eye(3)[labels[:50]], np.zeros((50, 3))
    for name, entry in SCORES.items():
        stats = fit_feature_stats(name, feats, labels, 3)
        assert (stats is not None) == entry.on_features
        known = ood_scores(name, near_logits, feats[:50], stats=stats)
        unknown = ood_scores(name, far_logits if not entry.on_features else far @ head.T, far, stats=stats)
        assert separation(known, unknown)["auroc"] > 0.99, name


def test_feature_score_without_stats_is_an_error():
    with pytest.raises(ClassifierError, match="features"):
        ood_scores("knn", np.zeros((2, 3)))


def test_run_threshold_keeps_the_share_and_reject_answers_unknown(tmp_path):
    """The stored threshold keeps 95% of validation images; predict(reject=True) on the checkpoint and the
    ONNX export (its ood_score output) give the same scores; eval --ood reports sklearn's AUROC."""
    import classifier
    from classifier.checkpoint import load_checkpoint
    from classifier.commands.eval import main as eval_main
    from classifier.inference import Predictor
    from tests.trust_run import trust_run
    from PIL import Image

    run, onnx_path, data = trust_run()
    ood = load_checkpoint(run.dir / "best.pt")["ood"]
    assert ood["score"] == run.config.ood_score and ood["keep"] == 0.95
    predictor = Predictor.load(run.dir / "best.pt")
    val = run.engine_run.data.splits["val"]
    images = [np.asarray(Image.open(p).convert("RGB")) for p in val.paths]
    _, scores = predictor.predict_with_scores(images)
    assert (scores >= ood["threshold"]).mean() >= 0.95
    noise = tmp_path / "noise"
    noise.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(noise / f"{i}.png")
    files = sorted(data.rglob("*.png"))[:6] + sorted(noise.glob("*.png"))
    pt = classifier.load(run.dir / "best.pt").predict(files, reject=True)
    ox = classifier.load(onnx_path).predict(files, reject=True)
    np.testing.assert_allclose([p.ood_score for p in pt], [p.ood_score for p in ox], rtol=1e-3)
    assert [p.label for p in pt] == [p.label for p in ox]
    assert all((p.label == "unknown") == (p.ood_score < ood["threshold"]) for p in pt)
    out = eval_main(["--checkpoint", str(run.dir / "best.pt"), str(data), "--ood", str(noise),
                     "--output", str(tmp_path / "eval"), "--progress", "false"])
    metrics = __import__("json").loads((out / "metrics.json").read_text())
    assert {"ood_auroc", "ood_fpr95", "ood_rejected"} <= set(metrics)
    assert "Unknown images" in (out / "report.md").read_text()
    with pytest.raises(ClassifierError, match="no images"):
        classifier.load(run.dir / "best.pt").evaluate(data, ood=tmp_path / "missing", output=tmp_path / "e2")


def test_feature_extract_run_fits_on_the_feature_cache(tmp_path, monkeypatch):
    """A feature-extract run's head trains on cached backbone features; the post-training fit reuses them
    instead of running the model over the train and val images again."""
    import classifier
    from classifier.checkpoint import load_checkpoint
    from classifier.trust import fitting
    from tests.trust_run import FAST, trust_run

    run, _, data = trust_run()
    calls, original = [], fitting.sample_outputs
    monkeypatch.setattr(fitting, "sample_outputs", lambda *a, **k: calls.append(a) or original(*a, **k))
    fe = classifier.train(model="vggnet", extra={"width": 8}, mode="feature-extract", weights=str(run.dir / "best.pt"),
                          dataset=f"folder:{data}", epochs=1, val_fraction=0.25, project=str(tmp_path), name="fe",
                          **FAST)
    ood = load_checkpoint(fe.dir / "best.pt")["ood"]
    assert ood["score"] == "mahalanobis" and set(ood["stats"]) == {"means", "precision", "centre"}
    assert calls == []


def test_a_mirrored_trust_graph_flips_the_logits_and_scores_the_image_itself():
    """The web page's graph for a run evaluated with the test-time flip: logits as ``flip_averaged`` gives
    them, the "unknown" score of the image as ``Predictor`` computes it (not of its mirror image)."""
    import torch

    from classifier.inference import flip_averaged
    from classifier.models import create_model
    from classifier.trust.graph import TrustGraph
    from classifier.trust.ood import FeatureScore

    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=3, in_chans=3).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        rng = np.random.default_rng(0)
        stats = fit_feature_stats("mahalanobis", rng.normal(size=(60, features.shape[1])), np.arange(60) % 3, 3)
        score = FeatureScore("mahalanobis", stats)
        logits, scores = TrustGraph(model, score, mirror=True)(x)
        torch.testing.assert_close(logits, flip_averaged(model, x))
        torch.testing.assert_close(scores, score(features))
        assert not torch.allclose(scores, score(model.forward_features(torch.flip(x, dims=[-1]))))
        plain_logits, _ = TrustGraph(model, score)(x)
        assert not torch.allclose(plain_logits, logits)  # the mirror changed the logits
