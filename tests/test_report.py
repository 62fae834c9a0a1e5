import csv
import json
import re

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from classifier.errors import ClassifierError
from classifier.metrics import compute_metrics
from classifier.report import plots
from classifier.report.compare import compare_runs, write_comparison
from classifier.report.writer import (prediction_rows, topk_string, write_evaluation_report,
                                      write_predictions_csv)

# 12 classes, some with long names; the last one has no samples.
CLASSES = [f"class {i}" for i in range(9)] + [
    "Ankle boot with an unreasonably long descriptive class name",
    "Herbaceous vegetation | pipes in the name",
    "Permanent crop (no samples in this split)",
]
HISTORY = [{"epoch": e, "train_loss": 2 / e, "val_loss": 2.2 / e + 0.03 * e, "train_acc": 1 - 1 / (e + 1),
            "val_acc": 0.9 - 1 / (e + 2), "lr": 0.1 * 0.5 ** e} for e in range(1, 9)]


def fake_eval(n=120, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASSES) - 1, n)
    logits = rng.normal(0, 1, (n, len(CLASSES)))
    logits[np.arange(n), y] += 2.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    images = rng.integers(0, 256, (n, 16, 16, channels), dtype=np.uint8)
    return y, probs, images


def assert_png(path, min_side=300):
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert min(im.size) >= min_side, im.size


@pytest.fixture(scope="module")
def evaluation():
    y, probs, images = fake_eval()
    return y, probs, images, compute_metrics(y, probs, CLASSES)


def test_metric_figures_are_pngs(tmp_path, evaluation):
    _, _, _, m = evaluation
    cm = m["confusion_matrix"]
    for path in [plots.plot_confusion_matrix(tmp_path / "cm.png", cm, CLASSES),
                 plots.plot_confusion_matrix(tmp_path / "cmn.png", cm, CLASSES, normalize=True),
                 plots.plot_per_class_metrics(tmp_path / "pc.png", m["per_class"]),
                 plots.plot_misclassifications(tmp_path / "mis.png", cm, CLASSES),
                 plots.plot_reliability(tmp_path / "rel.png", m["calibration"])]:
        assert_png(path)


def test_figure_variants_return_figures(evaluation):
    _, _, _, m = evaluation
    fig = plots.confusion_matrix_figure(m["confusion_matrix"], CLASSES, normalize=True)
    assert isinstance(fig, Figure) and fig.axes


@pytest.mark.parametrize("channels, labelled", [(1, True), (3, False)])
def test_image_grids(tmp_path, channels, labelled):
    y, probs, images = fake_eval(n=60, channels=channels, seed=channels)
    pred, conf = probs.argmax(1), probs.max(1)
    grid = plots.plot_predictions_grid(tmp_path / "grid.png", images, pred, conf, CLASSES,
                                       y if labelled else None, per_class=4, max_rows=8)
    viewer = plots.plot_dataset_grid(tmp_path / "data.png", images, y, CLASSES, per_class=4)
    assert_png(grid)
    assert_png(viewer)


def test_learning_curves_tolerate_missing_values(tmp_path):
    assert_png(plots.plot_learning_curves(tmp_path / "lc.png", HISTORY))
    partial = [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5}, {"epoch": 2, "train_loss": 0.8, "val_loss": None}]
    assert_png(plots.plot_learning_curves(tmp_path / "lc2.png", partial), min_side=200)


def test_short_name():
    assert plots.short_name("short") == "short"
    assert len(plots.short_name("x" * 100)) == plots.MAX_NAME


@pytest.fixture(scope="module")
def report(tmp_path_factory, evaluation):
    y, probs, images, m = evaluation
    out = tmp_path_factory.mktemp("report")
    rows = prediction_rows([f"img_{i}.png" for i in range(len(y))], probs, CLASSES, y)
    samples = {"images": images, "y_pred": probs.argmax(1), "confidence": probs.max(1), "y_true": y}
    written = write_evaluation_report(out, m, predictions=rows, sample_images=samples, history=HISTORY,
                                      title="Fashion test", source="runs/x/best.pt")
    return out, written, m


def test_report_writes_every_file(report):
    out, written, m = report
    expected = {"metrics", "predictions", "report", "confusion_matrix", "confusion_matrix_normalized",
                "per_class_metrics", "misclassifications", "reliability", "sample_predictions", "learning_curves"}
    assert set(written) == expected
    for key, path in written.items():
        assert path.is_file() and path.stat().st_size > 0
        if path.suffix == ".png":
            assert_png(path)
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(m))


def test_report_markdown_links_exist_and_marks_best_worst(report):
    out, _, m = report
    text = (out / "report.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert len(links) >= 9
    for link in links:
        assert (out / link).is_file(), link
    assert text.startswith("# Fashion test")
    assert f"| {m['best_class']['name']} |" in text and "**best**" in text and "**worst**" in text
    assert "Herbaceous vegetation \\| pipes" in text  # pipes escaped inside tables
    assert "## Most confused pairs" in text


def test_predictions_csv_rows(report):
    out, _, _ = report
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 120
    assert list(rows[0]) == ["file", "true", "pred", "confidence", "topk"]
    top = rows[0]["topk"].split(";")
    assert len(top) == 5 and top[0].rsplit(":", 1)[0] == rows[0]["pred"]


def test_write_predictions_csv_unlabelled(tmp_path):
    probs = np.array([[0.1, 0.7, 0.2]])
    rows = prediction_rows(["a.jpg"], probs, ["cat", "dog", "bird"], y_true=None, k=2)
    assert rows == [{"file": "a.jpg", "true": "", "pred": "dog", "confidence": pytest.approx(0.7),
                     "topk": "dog:0.7000;bird:0.2000"}]
    path = write_predictions_csv(tmp_path / "sub" / "p.csv", rows)
    assert path.read_text().splitlines() == ["file,true,pred,confidence,topk", "a.jpg,,dog,0.7,dog:0.7000;bird:0.2000"]
    assert topk_string([0.2, 0.8], ["x", "y"], k=5) == "y:0.8000;x:0.2000"


def make_run(root, name, summary, eval_accuracy=None):
    run = root / name
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(summary))
    if eval_accuracy is not None:
        (run / "eval").mkdir()
        (run / "eval" / "metrics.json").write_text(json.dumps({"accuracy": eval_accuracy}))
    return run


def test_compare_runs(tmp_path):
    a = make_run(tmp_path, "lenet", {"model": "lenet5", "mode": "scratch", "dataset": "fashion_mnist",
                                     "params": 61706, "size_bytes": 250_000, "train_time_s": 75.4, "epochs": 5,
                                     "test_accuracy": 0.8912, "val_loss": 0.31})
    b = make_run(tmp_path, "r18", {"model": "resnet18", "mode": "finetune", "dataset": "fashion_mnist",
                                   "params": 11_181_642, "size_bytes": 44_800_000, "train_time_s": 3725,
                                   "epochs": 3, "val_loss": 0.2}, eval_accuracy=0.9345)
    table, rows = compare_runs([a, b])
    assert [r["run"] for r in rows] == ["lenet", "r18"]
    assert rows[0]["test_accuracy"] == 0.8912 and rows[0]["accuracy_source"] == "summary.json"
    assert rows[1]["test_accuracy"] == 0.9345 and rows[1]["accuracy_source"] == "eval/metrics.json"
    assert rows[1]["size_mb"] == pytest.approx(44_800_000 / 2**20)
    lines = table.strip().splitlines()
    assert lines[0] == "| Run | Model | Mode | Dataset | Test acc. | Params | Size (MB) | Train time | Epochs |"
    assert lines[2] == "| lenet | lenet5 | scratch | fashion_mnist | 89.12% | 61.71K | 0.2 | 1m 15s | 5 |"
    assert lines[3] == "| r18 | resnet18 | finetune | fashion_mnist | 93.45% | 11.18M | 42.7 | 1h 02m | 3 |"
    out = write_comparison(tmp_path / "cmp" / "compare.md", [a, b])
    assert table in out.read_text()


def test_compare_runs_errors(tmp_path):
    with pytest.raises(ClassifierError, match="run folder not found"):
        compare_runs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClassifierError, match="no summary.json"):
        compare_runs([tmp_path / "empty"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "summary.json").write_text("{not json")
    with pytest.raises(ClassifierError, match="not valid JSON") as err:
        compare_runs([bad])
    assert "\n" not in str(err.value)
    with pytest.raises(ClassifierError, match="no run folders"):
        compare_runs([])
