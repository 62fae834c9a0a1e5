"""Mislabelled images: confident learning (cleanlab) on out-of-fold probabilities.

    issues = classifier.find_label_issues(model="lenet5", dataset="folder:photos", epochs=10)
    issues.rows[0]          # {"file": "train/Coat/x.png", "given_label": "Coat", "suggested_label": "Pullover", ...}
    issues.per_class        # {"Coat": 12, ...}: flagged images per given class
    classifier.train(dataset="folder:photos", exclude=issues.files)   # train without them (or: the CSV's path, a str)

``train.py --find-label-issues`` is the same call. It runs k-fold cross-validation (classifier/crossval.py,
``folds`` default 5: every train+val image gets probabilities from a model that never trained on it, and
the folds already done in the same folder are reused), then cleanlab's ``filter.find_label_issues`` with
``filter_by`` (FILTERS). The default, ``background``, is cleanlab's ``low_self_confidence`` ranking (the
lowest out-of-fold probability of the given label first) cut at ``background_count``: how many given labels
sit as low as the probabilities the model gives classes an image is not (see there). cleanlab's own count
(``count.num_label_issues``, which ``low_self_confidence`` flags) also counts the model's confident mistakes
between look-alike classes as label errors, 1.5-2x the planted errors of the label-noise benchmark; the
background count came within 10% of them for every model measured (bench/label_issue_options.py,
docs/data-quality.md). In the cross-validation folder RUN it writes:

* ``label_issues.csv``: file, given_label, suggested_label (the out-of-fold prediction), score (cleanlab's
  label quality: the out-of-fold probability of the given label; lower is more suspicious), most
  suspicious first;
* ``label_issues.png``: the most suspicious images with both labels;
* ``label_issues.md``: flagged images per class, the commonest (given -> suggested) pairs.

Multi-label data (a 0/1 label matrix) goes through cleanlab's ``multilabel_classification`` functions with the
same rules: an image is flagged when any of its classes looks wrongly marked (present or absent). The
background count is then summed over the classes, each class read as its own yes/no question
(``multilabel_background_count``), and cuts cleanlab's multi-label ranking (worst class first) alone
(cleanlab's own count is no cap there: ``_rank_multilabel``); ``given_label`` and ``suggested_label`` are
label sets (class names separated by spaces; suggested: the classes whose out-of-fold probability is at least
0.5), and the per-class count is of the flagged images on which given and suggested disagree about that class.

Nothing in the dataset folder is moved, renamed or changed: fixing a label, or training without the
flagged files (``--exclude RUN/label_issues.csv``, or a list of the ones you checked), is the user's call.
The test split is never checked (it is not part of the cross-validation).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from classifier.config import load_yaml
from classifier.crossval import DEFAULT_FOLDS, CrossValResult, cross_validate, csv_text
from classifier.data import BadImageError, load_image, run_splits
from classifier.data.exclude import sample_ids
from classifier.errors import ClassifierError
from classifier.evaluation import images_to_uint8_batch
from classifier.fileio import atomic_write_text
from classifier.report.tiles import plot_tiles
from classifier.tasks import TASKS, to_multilabel

FIGURE_IMAGES = 36  # shown in label_issues.png
MANY_FLAGGED = 0.25  # flagging more than this share of the images: a caution that the model may be too weak
# "background" (the default): cleanlab's low_self_confidence cut at background_count; the others are cleanlab's
# own filter_by rules, as cleanlab applies them
FILTERS = ("background", "low_self_confidence", "prune_by_noise_rate", "prune_by_class", "both",
           "confident_learning", "predicted_neq_given", "low_normalized_margin")


@dataclass(repr=False)
class LabelIssues:
    """The flagged images, most suspicious first: ``rows`` (dicts as label_issues.csv), ``per_class``
    (flagged count per given class; multi-label: per class in dispute), ``dir`` (the cross-validation
    folder), ``cv`` (its CrossValResult)."""

    dir: Path
    rows: list
    per_class: dict
    cv: CrossValResult = field(default=None)

    @property
    def files(self) -> list[str]:
        return [r["file"] for r in self.rows]

    def __repr__(self) -> str:
        return f"LabelIssues({len(self.rows)} of {len(self.cv.files) if self.cv else '?'} images, dir='{self.dir}')"


def find_label_issues(config: str | Path | None = None, *, folds: int | None = None, filter_by: str | None = None,
                      figure: bool = True, callbacks: dict | None = None, class_names=None,
                      **settings) -> LabelIssues:
    """Cross-validate (``classifier.cross_validate``'s settings; the test split is not evaluated unless
    ``eval_test=True``) and flag the train+val images whose given label the out-of-fold probabilities
    contradict. ``filter_by``: the rule (FILTERS; None: the first, ``background``; CLI
    ``--label-issue-filter``). Writes label_issues.csv/.png/.md in the folder."""
    filter_by = _checked_filter(filter_by)
    if settings.get("fold") is not None:
        raise ClassifierError("finding label issues needs every fold: drop fold (run single folds with "
                              "cross_validate / --folds K --fold k, then this finds them done)")
    settings.setdefault("eval_test", False)
    cv = cross_validate(config, folds=folds or settings.pop("folds", None) or DEFAULT_FOLDS, callbacks=callbacks,
                        class_names=class_names, **settings)
    return label_issues_of(cv, filter_by=filter_by, figure=figure)


def _checked_filter(filter_by: str | None) -> str:
    if filter_by is None:
        return FILTERS[0]
    if filter_by not in FILTERS:
        raise ClassifierError(f"invalid label issue filter '{filter_by}' (choices: {', '.join(FILTERS)})")
    return filter_by


def rank_label_issues(labels: np.ndarray, probs: np.ndarray, filter_by: str | None = None) -> tuple[np.ndarray,
                                                                                                    np.ndarray]:
    """(positions of the flagged samples, most suspicious first; every sample's label quality score).
    ``labels``: class indices, or a 0/1 matrix (multi-label; ``probs`` then per-class sigmoids)."""
    flagged, scores, _ = _ranked(labels, probs, filter_by)
    return flagged, scores


def _ranked(labels, probs, filter_by: str | None):
    """``rank_label_issues`` and the counts the rule compared ({name: count}; empty for cleanlab's rules)."""
    filter_by = _checked_filter(filter_by)
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    missing = np.flatnonzero(to_multilabel(labels, probs.shape[1]).sum(0) == 0).tolist()
    if missing:
        raise ClassifierError(f"class(es) {missing} have no train+val images: label issues need every class")
    flagged, scores, counts = RANKERS[labels.ndim](labels, probs, filter_by)
    flagged = np.asarray(flagged, np.int64)
    return flagged[np.argsort(scores[flagged], kind="stable")], scores, counts  # lowest quality first


def _rank_multiclass(labels: np.ndarray, probs: np.ndarray, filter_by: str):
    """cleanlab's rule; background: its low_self_confidence ranking cut at the lower of the two counts."""
    from cleanlab.filter import find_label_issues as cleanlab_find  # cleanlab (and scikit-learn): only here
    from cleanlab.rank import get_label_quality_scores

    probs = probs / probs.sum(1, keepdims=True)  # the CSV's 6 significant digits: rows sum to 1 again
    rule = "low_self_confidence" if filter_by == "background" else filter_by
    flagged = cleanlab_find(labels, probs, filter_by=rule, return_indices_ranked_by="self_confidence", n_jobs=1)
    counts = {}
    if filter_by == "background":
        counts = {"cleanlab's count": len(flagged), "background count": background_count(labels, probs)}
        flagged = flagged[:counts["background count"]]
    return flagged, get_label_quality_scores(labels, probs, method="self_confidence"), counts


def _rank_multilabel(labels: np.ndarray, probs: np.ndarray, filter_by: str):
    """cleanlab's multi-label rule; background: cleanlab's multi-label label quality ranking cut at
    ``multilabel_background_count`` alone. cleanlab's own multi-label count is no cap: it ran short on the
    synthetic test (93 for 120 wrongly marked images, where the background count gives 116 and the
    ranking's first 120 are 98% right) and longer than the background count on the real-image benchmark
    (580 against 522 for 200: docs/data-quality.md)."""
    from cleanlab.multilabel_classification.filter import find_label_issues as cleanlab_find
    from cleanlab.multilabel_classification.rank import get_label_quality_scores

    given = [np.flatnonzero(row).tolist() for row in labels]
    # an image's score: its worst class (cleanlab's default, an exponential moving average over the classes,
    # dilutes one wrong class with the right ones: the first 200 of the multi-label benchmark's ranking were
    # 44% planted with it, 64% with the minimum)
    scores = get_label_quality_scores(given, probs, aggregator_kwargs={"method": np.min})
    if filter_by == "background":
        count = multilabel_background_count(labels, probs)
        return np.argsort(scores, kind="stable")[:count], scores, {"background count": count}
    flagged = cleanlab_find(given, probs, filter_by=filter_by, return_indices_ranked_by="self_confidence", n_jobs=1)
    return flagged, scores, {}


def background_count(labels: np.ndarray, probs: np.ndarray) -> int:
    """How many given labels look wrong, from where their probabilities sit against the background.

    The background is the probability the model gives every class that is not an image's prediction: what
    it says of a class the image is not. A wrong given label is such a class, so its probability is drawn from
    the background; a right one rarely falls as low (the model would have to be confidently wrong about
    it). So with tau the background's median, the share of given labels at or below tau, divided by the
    background's share at or below tau (about 1/2), estimates the share of wrong labels: Storey's estimate
    of the share of true null hypotheses (2002), with the background as the null. When mislabelled images
    mostly carry a look-alike class, their given labels sit above the background and the count comes out
    low: the rule errs towards a shorter list, not towards flagging the model's own confusions."""
    rows = np.arange(len(labels))
    background = np.ones(probs.shape, dtype=bool)
    background[rows, probs.argmax(1)] = False
    background = probs[background]
    if not len(background):
        return 0
    tau = float(np.median(background))
    share = float(np.mean(background <= tau))
    return int(round(len(labels) * float(np.mean(probs[rows, labels] <= tau)) / share))


def multilabel_background_count(labels: np.ndarray, probs: np.ndarray) -> int:
    """``background_count`` of every class read as a yes/no question (probabilities [1 - p, p], the given
    answer 0/1), summed: the wrongly marked (image, class) pairs, at least the images with a wrong label."""
    return sum(background_count(labels[:, c], np.stack([1 - probs[:, c], probs[:, c]], 1))
               for c in range(labels.shape[1]))


# label form (labels.ndim) -> (labels, probs, filter_by) -> (flagged, every sample's label quality score,
# the counts the rule compared)
RANKERS = {1: _rank_multiclass, 2: _rank_multilabel}


def label_issues_of(cv: CrossValResult, *, filter_by: str | None = None, figure: bool = True) -> LabelIssues:
    """Flag, write the CSV, figure and report of a complete cross-validation."""
    filter_by = _checked_filter(filter_by)
    if not cv.complete:
        raise ClassifierError(f"{cv.dir}: folds {sorted(set(range(1, cv.folds + 1)) - set(cv.folds_done))} are not "
                              "done; label issues need the out-of-fold probabilities of every fold")
    flagged, scores, counts = _ranked(cv.labels, cv.probs, filter_by)
    rule = filter_by + (f": {', '.join(f'{name} {n}' for name, n in counts.items())}" if counts else "")
    task, classes = TASKS[cv.task], cv.classes
    given, suggested = to_multilabel(cv.labels, len(classes)), task.decide(cv.probs)
    rows = [{"file": cv.files[i], "given_label": task.label_text(cv.labels[i], classes),
             "suggested_label": task.label_text(suggested[i], classes), "score": float(scores[i])} for i in flagged]
    # per class: flagged images given it (single-label), or on which given and suggested disagree about it
    counted = given if cv.task == "multiclass" else given != suggested
    per_class = dict(zip(classes, counted[flagged].sum(0).astype(int).tolist()))
    lines = [["file", "given_label", "suggested_label", "score"]] + [
        [r["file"], r["given_label"], r["suggested_label"], f"{r['score']:.6f}"] for r in rows]
    atomic_write_text(cv.dir / "label_issues.csv", csv_text(lines), "label issues")
    shown = _figure(cv, rows[:FIGURE_IMAGES]) if figure and rows else None
    totals = given.sum(0)
    caution = _caution(cv, len(rows))
    atomic_write_text(cv.dir / "label_issues.md", _report(cv, rows, per_class, totals, shown, rule, caution),
                      "label issues report")
    print(f"label issues: {len(rows)} of {len(cv.files)} train+val images flagged ({rule}); "
          + ", ".join(f"{c} {n}" for c, n in per_class.items() if n) + f"\n  {cv.dir / 'label_issues.csv'}"
          + (f"; figure {shown}" if shown else "") + f"; report {cv.dir / 'label_issues.md'}\n"
          f"  nothing in the dataset was changed; to train without them: --exclude {cv.dir / 'label_issues.csv'}"
          + (f"\n  caution: {caution}" if caution else ""), flush=True)
    return LabelIssues(cv.dir, rows, per_class, cv)


def _caution(cv: CrossValResult, flagged: int) -> str:
    """A warning when more than MANY_FLAGGED of the images are flagged: the count then mostly measures the
    out-of-fold model's own mistakes (docs/data-quality.md)."""
    if flagged <= MANY_FLAGGED * len(cv.files):
        return ""
    name = TASKS[cv.task].headline
    value = cv.summary.get(f"cv_val_{name}_mean")
    figure = f" (out-of-fold {name} {value:.3f})" if value is not None else ""
    return (f"{flagged / len(cv.files):.0%} of the images flagged: the model{figure} is probably too weak for "
            "the count, which then takes its own mistakes for wrong labels; read label_issues.csv from the top "
            "(most suspicious first), or train longer or a stronger model")


def _report(cv: CrossValResult, rows: list, per_class: dict, totals: np.ndarray, figure, rule: str,
            caution: str = "") -> str:
    pairs = Counter((r["given_label"], r["suggested_label"]) for r in rows).most_common(10)
    out = [f"# Label issues in {cv.settings.get('dataset', '')}", "",
           f"{len(rows)} of {len(cv.files)} train+val images flagged by cleanlab ({rule}) on out-of-fold "
           f"probabilities of {cv.folds} folds ({cv.settings.get('model', '')}). The list, most suspicious first: "
           "`label_issues.csv`. Nothing in the dataset was changed.", "",
           *([f"**Caution**: {caution}.", ""] if caution else []),
           "| given class | flagged | images | share |" if cv.task == "multiclass" else
           "| class | flagged, given and suggested disagree on it | images given it | share |", "|---|---:|---:|---:|"]
    out += [f"| {c} | {n} | {t} | {n / max(t, 1):.1%} |" for (c, n), t in zip(per_class.items(), totals.tolist())]
    if pairs:
        out += ["", "| given | suggested | images |", "|---|---|---:|"]
        out += [f"| {g or '(none)'} | {s or '(none)'} | {n} |" for (g, s), n in pairs]
    if figure:
        out += ["", f"![the most suspicious images]({Path(figure).name})"]
    return "\n".join(out) + "\n"


def _figure(cv: CrossValResult, rows: list) -> Path | None:
    """label_issues.png: the images of ``rows``, read through fold 1's split (its train + val: every image)."""
    fold_dir = cv.dir / "fold-1"
    config = load_yaml(fold_dir / "config.yaml")
    found = run_splits(config, split_file=fold_dir / "split.json", dataset=cv.arrays, download=False)
    where = {}
    for name in ("train", "val"):
        samples = found.splits[name]
        where.update((sid, (samples, i)) for i, sid in enumerate(sample_ids(samples)))
    images, captions = [], []
    for r in rows:
        samples, i = where.get(r["file"], (None, None))
        if samples is None:
            continue
        try:
            image = samples.images[i] if samples.in_memory else load_image(samples.paths[i], 3)
        except BadImageError:
            continue
        images.append(image)
        captions.append(f"given: {r['given_label']}\nsuggested: {r['suggested_label']}\n{r['file'][-22:]}")
    if not images:
        return None
    side = min(max(max(im.shape[:2]) for im in images), 96)
    tiles = list(images_to_uint8_batch(images, side))
    return plot_tiles(cv.dir / "label_issues.png", tiles, captions, cols=6,
                      title="most suspicious labels first (out-of-fold prediction = suggested)")
