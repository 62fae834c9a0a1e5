#!/usr/bin/env python
"""Which of cleanlab's options flags the planted label errors best, on saved out-of-fold probabilities?

    python bench/label_issue_options.py RUN/oof.csv [RUN2/oof.csv ...]    # noisy folders of bench/label_noise.py
    python bench/label_issue_options.py /tmp/ln1/runs/lenet5-folder-cv/oof.csv /tmp/ln2/runs/vggnet-folder-cv/oof.csv

No training: an ``oof.csv`` that ``bench/label_noise.py --part labels --keep DIR`` left (DIR/runs/*-cv/oof.csv,
made on its noisy Fashion-MNIST folder) is scored again under each option. Which files were planted in a wrong
folder follows from the file names (``img<i>.png`` is image i of bench/label_noise.py's seeded pick, whose true
class is known; ``--seed``/``--images`` as that run). Per file, a table: option, flagged, precision, recall.

Options: ``cleanlab.filter.find_label_issues``'s ``filter_by`` rules and ``frac_noise``; the lowest-scored files
(self-confidence or normalised margin) cut at ``cleanlab.count.num_label_issues``'s estimates; the same on
temperature-scaled probabilities (classifier/trust/calibrate.py's fit, on the given labels: all folds at once,
or one temperature per fold). Rows marked "oracle" use the known number of planted files: an upper bound of the
ranking, not something a user can run.
"""
from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from label_noise import CLASSES, fashion, scores  # noqa: E402

from classifier.label_issues import rank_label_issues  # noqa: E402
from classifier.trust.calibrate import fit_temperature  # noqa: E402


def read_oof(path: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(files, given labels, probabilities, fold) of an oof.csv; classes in its column order."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, rows = rows[0], rows[1:]
    classes = header[3:]
    files = [r[0] for r in rows]
    given = np.array([classes.index(r[1]) for r in rows])
    probs = np.array([[float(v) for v in r[3:]] for r in rows])
    return files, given, probs / probs.sum(1, keepdims=True), np.array([int(r[2]) for r in rows])


def planted_files(files: list[str], images: int, seed: int) -> set[str]:
    """The files in a wrong class folder: img<i>.png's true class is bench/label_noise.py's seeded pick."""
    _, labels, _ = fashion(images // 10, seed)
    out = set()
    for f in files:
        folder, name = f.split("/")[-2:]
        i = int(re.fullmatch(r"img(\d+)\.png", name).group(1))
        if folder != CLASSES[labels[i]]:
            out.add(f)
    return out


def scaled(probs: np.ndarray, given: np.ndarray, groups: np.ndarray | None = None) -> tuple[np.ndarray, list]:
    """softmax(log p / T), T fitted to the given labels (per group: one per fold)."""
    logp = np.log(np.maximum(probs, 1e-12))
    groups = np.zeros(len(given), int) if groups is None else groups
    out, temps = np.empty_like(probs), []
    for g in np.unique(groups):
        m = groups == g
        t = fit_temperature(logp[m], given[m])
        z = logp[m] / t
        z = np.exp(z - z.max(1, keepdims=True))
        out[m] = z / z.sum(1, keepdims=True)
        temps.append(round(t, 2))
    return out, temps


def options(given: np.ndarray, probs: np.ndarray, planted_count: int, planted_per_class: list[int]):
    """(option name, flagged positions) for every option on these probabilities."""
    from cleanlab.count import compute_confident_joint, num_label_issues
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    def cl(**kw):
        return np.flatnonzero(find_label_issues(given, probs, n_jobs=1, **kw))

    for rule in ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given",
                 "low_normalized_margin", "low_self_confidence"):
        yield f"filter_by={rule}", cl(filter_by=rule)
    yield "background (the default: low_self_confidence cut at the background count)", \
        rank_label_issues(given, probs, "background")[0]
    for frac in (0.5, 0.6, 0.75):
        yield f"prune_by_noise_rate, frac_noise={frac}", cl(filter_by="prune_by_noise_rate", frac_noise=frac)
    confusion = np.zeros((probs.shape[1],) * 2)
    np.add.at(confusion, (given, probs.argmax(1)), 1)
    counts = {"off_diagonal": num_label_issues(given, probs, estimation_method="off_diagonal"),
              "off_diagonal_calibrated": num_label_issues(given, probs, estimation_method="off_diagonal_calibrated"),
              "off_diagonal_custom (argmax confusion)": num_label_issues(
                  given, probs, confident_joint=confusion, estimation_method="off_diagonal_custom")}
    joint = compute_confident_joint(given, probs)
    per_class = (joint.sum(1) - np.diag(joint)).astype(int)
    yield "prune_by_class, per class = confident joint off-diagonal", cl(
        filter_by="prune_by_class", num_to_remove_per_class=per_class.tolist())
    for method in ("self_confidence", "normalized_margin"):
        quality = get_label_quality_scores(given, probs, method=method)
        order = np.argsort(quality, kind="stable")
        for name, n in counts.items():
            yield f"lowest {method}, n = num_label_issues {name}", order[:n]
        yield f"oracle: lowest {method}, n = planted ({planted_count})", order[:planted_count]
    yield "oracle: prune_by_class, per class = planted", cl(filter_by="prune_by_class",
                                                            num_to_remove_per_class=planted_per_class)


def table(path: Path, images: int, seed: int, temperature: bool = True) -> list[tuple]:
    files, given, probs, fold = read_oof(path)
    planted = planted_files(files, images, seed)
    per_class = np.bincount([given[i] for i, f in enumerate(files) if f in planted], minlength=probs.shape[1])
    acc = (probs.argmax(1) == given).mean()
    print(f"\n## {path}: {len(files)} files, {len(planted)} planted; out-of-fold accuracy on the given labels "
          f"{acc:.1%}\n")
    print(f"| {'option':<72} | flagged | precision | recall |")
    print(f"|{'-' * 74}|--------:|----------:|-------:|")
    variants = [("", probs)]
    if temperature:
        one, t1 = scaled(probs, given)
        per_fold, tk = scaled(probs, given, fold)
        variants += [(f"T={t1[0]} (all folds): ", one), (f"T per fold {tk}: ", per_fold)]
    out = []
    for prefix, p in variants:
        for name, flagged in options(given, p, len(planted), per_class.tolist()):
            prec, rec = scores({files[i] for i in flagged}, planted)
            label = ("T per fold: " if prefix.startswith("T per fold") else prefix) + name
            print(f"| {label:<72} | {len(flagged):7d} | {prec:9.2f} | {rec:6.2f} |")
            out.append((label, len(flagged), prec, rec))
        if prefix.startswith("T per fold"):
            print(f"\n(per-fold temperatures: {prefix[len('T per fold '):-2]})")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("oof", nargs="+", type=Path, help="oof.csv files of bench/label_noise.py runs (--keep DIR)")
    parser.add_argument("--images", type=int, default=2000, help="as the label_noise.py run (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="as the label_noise.py run (default 0)")
    parser.add_argument("--no-temperature", action="store_true", help="skip the temperature-scaled rows")
    args = parser.parse_args(argv)
    for path in args.oof:
        table(path, args.images, args.seed, temperature=not args.no_temperature)


if __name__ == "__main__":
    main()
