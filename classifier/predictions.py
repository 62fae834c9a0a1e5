"""What ``Model.predict`` returns, and how it is made from a Predictor's probabilities: a ``Prediction`` per
image (top class, top-k, every probability, the multi-label set, the "unknown" score, the heat map) in a
``Predictions`` list that can save itself as predictions.csv and predictions.png."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from classifier.inference import Predictor
from classifier.report.predictions import write_predictions
from classifier.trust.explain import write_overlays
from classifier.trust.ood import apply_rejection

GRID_IMAGES = 48  # images shown in predictions.png


@dataclass
class Prediction:
    """One image's prediction: ``label`` and ``confidence`` of the top class, ``topk`` [(label, prob)],
    ``probs`` (all classes, in the model's class order: softmax, or one sigmoid per class for a multi-label
    model), ``path`` of the file it came from (or None), ``labels``: the predicted classes (the top class;
    for a multi-label model every class at or above its threshold, maybe none)."""

    label: str
    confidence: float
    index: int
    topk: list
    probs: np.ndarray = field(repr=False)
    path: str | None = None
    labels: list = field(default_factory=list)
    ood_score: float | None = None  # predict(reject=True): the "unknown" score (higher: more like the classes)
    heatmap: np.ndarray | None = field(default=None, repr=False)  # predict(explain=True): H x W in [0, 1]

    def __repr__(self) -> str:
        where = f"{self.path!r}, " if self.path else ""
        return f"Prediction({where}{self.label!r}, confidence={self.confidence:.4f})"


class Predictions(list):
    """A list of ``Prediction``; ``skipped``: [(input, reason)] for unreadable images."""

    explained = None  # the images, when predicted with explain=True (save writes their overlays)

    def __init__(self, items, skipped, classes, shown=()):
        super().__init__(items)
        self.skipped, self.classes = skipped, classes
        self._shown = list(shown)  # the first images, for predictions.png
        self.multilabel = False  # set by Model.predict for a multi-label model

    def save(self, out_dir: str | Path, *, topk: int = 5) -> Path:
        """predictions.csv (file, top-k, probabilities) and predictions.png (a grid) in ``out_dir``."""
        path = write_predictions(Path(out_dir), self, self.classes, topk=topk, multilabel=self.multilabel,
                                 shown=self._shown)
        if self.explained:  # predict(explain=True): an overlay per image in explain/
            write_overlays(Path(out_dir) / "explain", self, self.explained)
        return path

    def __repr__(self) -> str:
        shown = ", ".join(repr(p) for p in self[:3]) + (", ..." if len(self) > 3 else "")
        skipped = f"; {len(self.skipped)} skipped" if self.skipped else ""
        return f"Predictions({len(self)} images: [{shown}]{skipped})"


def predict_images(predictor: Predictor, images: list, paths: list, skipped: list, *, topk: int, batch_size: int,
                   threshold: float | None, reject: bool, explain: bool) -> Predictions:
    """``Model.predict`` on decoded ``images`` (``paths``: where each came from; ``skipped``: unreadable inputs)."""
    classes = predictor.classes
    scores = None
    if reject and images:
        probs, scores = predictor.predict_with_scores(images, batch_size=batch_size)
    else:
        probs = predictor.predict(images, batch_size=batch_size) if images else np.zeros((0, len(classes)))
    k = min(topk, len(classes))
    sets = predictor.label_sets(probs, threshold)
    out = []
    for row, path, chosen in zip(probs, paths, sets):
        order = np.argsort(-row, kind="stable")[:k]
        out.append(Prediction(classes[order[0]], float(row[order[0]]), int(order[0]),
                              [(classes[i], float(row[i])) for i in order], row, path,
                              [classes[i] for i in np.flatnonzero(chosen)]))
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s): " + "; ".join(r for _, r in skipped[:3])
              + (" ..." if len(skipped) > 3 else ""))
    if scores is not None:
        apply_rejection(out, scores, predictor.ood["threshold"])
    if explain:
        for prediction, heatmap in zip(out, predictor.heatmaps(images)):
            prediction.heatmap = heatmap
    predictions = Predictions(out, skipped, classes, images[:GRID_IMAGES])
    predictions.multilabel = predictor.task.name == "multilabel"
    predictions.explained = images if explain else None
    return predictions
