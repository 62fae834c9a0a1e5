"""Dataset check: what a dataset holds and what is wrong with it, before any training.

``python train.py --check-data --dataset folder:PATH`` prints it; training on a folder dataset writes it
to ``runs/NAME/data_check.json`` and prints the summary. Over the train/val/test splits it reports:

* class counts per split and the imbalance ratio (largest / smallest training class);
* the image modes and sizes found;
* unreadable files (empty, truncated, not an image, too many pixels): training skips them;
* files whose content is another format than their extension says (readable; listed as a warning);
* duplicates by content hash, in particular the same image in two splits (a leak into val/test).

Every file is decoded with :func:`load_image`, as training decodes it. Hidden and non-image files are
not samples (``is_image_file``), so they are not checked.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from classifier.data.datasets import Samples
from classifier.data.images import BadImageError, load_image
from classifier.fileio import atomic_target

FORMAT = "classifier-data-check/1"
IMBALANCE_HINT = 3.0  # from this ratio on, the summary suggests --class-weights auto / --sampler balanced
_SAME_FORMAT = {"MPO": "JPEG"}  # multi-picture JPEGs (phone photos) are JPEGs
_SHOWN = 5  # examples per problem in the console summary


def check_splits(classes: list[str], splits: dict[str, Samples]) -> dict:
    """The check report (plain JSON-able data) for ``{split name: Samples}``."""
    counts = {name: np.bincount(s.labels, minlength=len(classes)).tolist() for name, s in splits.items()}
    train = counts.get("train") or [0]
    modes, sizes, unreadable, wrong_ext = Counter(), Counter(), [], []
    by_hash = defaultdict(list)
    extensions = Image.registered_extensions()  # ".jpg" -> "JPEG", ...
    for name, samples in splits.items():
        for sample_id, (digest, mode, size, fmt, problem) in zip(_ids(samples), _inspect(samples)):
            where = {"split": name, "file": sample_id}
            if problem:
                unreadable.append({**where, "reason": problem})
                continue
            modes[mode] += 1
            sizes[f"{size[0]}x{size[1]}"] += 1
            by_hash[digest].append(where)
            expected = extensions.get(os.path.splitext(sample_id)[1].lower())
            if fmt and expected and _SAME_FORMAT.get(fmt, fmt) != expected:
                wrong_ext.append({**where, "format": fmt})
    duplicates = [group for group in by_hash.values() if len(group) > 1]
    return {
        "format": FORMAT,
        "classes": list(classes),
        "counts": counts,
        "imbalance": round(max(train) / min(train), 2) if min(train) else None,
        "modes": dict(modes.most_common()),
        "sizes": dict(sizes.most_common()),  # width x height
        "unreadable": unreadable,
        "wrong_extension": wrong_ext,
        "duplicates": duplicates,
        "duplicates_across_splits": sum(map(_spans_splits, duplicates)),
    }


def _spans_splits(group: list[dict]) -> bool:
    return len({w["split"] for w in group}) > 1


def _ids(samples: Samples) -> list[str]:
    if samples.in_memory:
        return [f"{samples.source}[{i}]" for i in samples.index]
    return samples.relative_paths()


def _inspect(samples: Samples):
    """Per sample: (content hash, mode, (width, height), file format, problem or None)."""
    if samples.in_memory:
        mode = "L" if samples.images.shape[3] == 1 else "RGB"
        size = samples.images.shape[2], samples.images.shape[1]
        return ((_digest(im.tobytes()), mode, size, None, None) for im in samples.images)
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:  # PIL decodes with the GIL released
        return list(pool.map(_inspect_file, samples.paths, chunksize=16))


def _inspect_file(path: str):
    try:
        load_image(path, 1)  # a full decode, as training does: raises BadImageError
        with Image.open(path) as im, open(path, "rb") as f:
            return _digest(f.read()), im.mode, im.size, im.format, None
    except BadImageError as err:
        return None, None, None, None, str(err).removeprefix(f"{path}: ")
    except OSError as err:
        return None, None, None, None, f"cannot read ({err.strerror or err})"


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def run_check(classes: list[str], splits: dict[str, Samples], path: str | os.PathLike | None = None) -> dict:
    """Check the splits, write the report to ``path`` (if given) and print the summary."""
    report = check_splits(classes, splits)
    lines = summary_lines(report)
    if path:
        with atomic_target(Path(path)) as tmp:
            tmp.write_text(json.dumps(report, indent=1))
        lines.append(f"  report: {path}")
    print("\n".join(lines), flush=True)
    return report


def summary_lines(report: dict) -> list[str]:
    """A short console summary; the report file has every entry."""
    classes, counts = report["classes"], report["counts"]
    train = counts.get("train", [])
    sizes = ", ".join(f"{name} {sum(c)}" for name, c in counts.items())
    lines = [f"data check: {len(classes)} classes; images {sizes}"]
    if train:
        lo, hi = int(np.argmin(train)), int(np.argmax(train))
        ratio = report["imbalance"]
        if train[lo] == train[hi]:
            lines.append(f"  training classes: {train[lo]} images each")
        else:
            lines.append(f"  training classes: smallest {classes[lo]} {train[lo]}, largest {classes[hi]} {train[hi]} "
                         f"(imbalance {'inf' if ratio is None else f'{ratio:.2f}'})"
                         + ("; consider --class-weights auto or --sampler balanced"
                            if ratio is None or ratio >= IMBALANCE_HINT else ""))
    lines.append("  modes: " + _top(report["modes"]) + "; sizes (WxH): " + _top(report["sizes"]))
    lines += _listed("unreadable, skipped", [f"{b['split']}: {b['file']}: {b['reason']}" for b in report["unreadable"]])
    lines += _listed("extension does not match the content",
                     [f"{w['split']}: {w['file']} is {w['format']}" for w in report["wrong_extension"]])
    leaks = [g for g in report["duplicates"] if _spans_splits(g)]
    lines += _listed("identical images in two splits",
                     [" = ".join(f"{w['split']}: {w['file']}" for w in g) for g in leaks])
    if len(report["duplicates"]) > len(leaks):
        lines.append(f"  sets of identical images within one split: {len(report['duplicates']) - len(leaks)}")
    return lines


def _top(counter: dict, n: int = 4) -> str:
    items = list(counter.items())
    text = ", ".join(f"{k} {v}" for k, v in items[:n])
    return (text + (f", {len(items) - n} more" if len(items) > n else "")) or "none"


def _listed(title: str, items: list[str]) -> list[str]:
    if not items:
        return []
    more = [f"    ... and {len(items) - _SHOWN} more"] if len(items) > _SHOWN else []
    return [f"  {title} ({len(items)}):"] + [f"    {t}" for t in items[:_SHOWN]] + more
