"""Dataset check: what a dataset holds and what is wrong with it, before any training.

``python train.py --check-data --dataset folder:PATH`` prints it; training on a folder dataset writes it
to ``runs/NAME/data_check.json`` and prints the summary. Over the train/val/test splits it reports:

* class counts per split and the imbalance ratio (largest / smallest training class);
* the image modes and sizes found;
* unreadable files (empty, truncated, not an image, too many pixels): training skips them;
* files whose content is another format than their extension says (readable; listed as a warning);
* duplicates by content hash, in particular the same image in two splits (a leak into val/test).

Every file is read once, hashed and decoded with :func:`load_image`, as training decodes it. The result
per file is cached by path, size and modification time (``cache_dir("checks")``, one ``.npz`` per dataset
folder), so the next run re-checks only files that changed; cached results (bad files included) are
reported as if checked again. Hidden and non-image files are not samples (``is_image_file``), so they
are not checked.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from classifier.cache import cache_dir, cache_root, enforce_limit, touch
from classifier.data.datasets import Samples
from classifier.data.images import BadImageError, load_image
from classifier.data.loaders import default_workers
from classifier.fileio import atomic_target

FORMAT = "classifier-data-check/1"
CHECK_VERSION = "classifier-check-cache/3"  # change when the per-file checks change: old results are then unused
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
    if not samples.paths:
        return []
    known = CheckCache(samples.root or os.path.dirname(samples.paths[0]))
    results = [known.get(p) for p in samples.paths]
    todo = [i for i, result in enumerate(results) if result is None]
    if todo:
        paths = [samples.paths[i] for i in todo]
        with ThreadPoolExecutor(default_workers()) as pool:  # PIL decodes with the GIL released
            for i, path, (stat, result) in zip(todo, paths, pool.map(_inspect_file, paths, chunksize=16)):
                known.put(path, stat, result)
                results[i] = result
        known.save()
    return results


def _inspect_file(path: str):
    """((size, mtime) before reading, result): one read of the file, hashed and decoded from memory."""
    stat = _stat(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        return stat, (None, None, None, None, f"cannot read ({err.strerror or err})")
    try:
        load_image(path, 1, data=data)  # a full decode, as training does: raises BadImageError
        with Image.open(io.BytesIO(data)) as im:
            return stat, (_digest(data), im.mode, im.size, im.format, None)
    except BadImageError as err:
        return stat, (None, None, None, None, str(err).removeprefix(f"{path}: "))


def _stat(path: str) -> list | None:
    try:
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns]
    except OSError:
        return None


class CheckCache:
    """Per-file check results of one dataset folder, valid while a file keeps its size and mtime.

    Stored as columns in a NumPy ``.npz`` (no pickle: read with ``allow_pickle=False``), paths joined by
    newlines (a file name holding one makes the columns disagree: the cache is then ignored and every file
    checked). 70,000 entries load in 0.4-0.5 s, where a JSON object per file took 0.5-0.6 s to decode alone.
    A result is a tuple (digest, mode, (width, height), format, problem), None parts where unreadable."""

    def __init__(self, root: str):
        name = hashlib.sha256(f"{CHECK_VERSION}\n{os.path.abspath(root)}".encode()).hexdigest()[:24]
        self.path = cache_root() / "checks" / f"{name}.npz"
        self.index: dict = {}  # absolute path -> row of the stored columns
        self.new: dict = {}  # absolute path -> ([size, mtime_ns], result) checked in this run: saved if any
        try:
            with np.load(self.path, allow_pickle=False) as stored:
                if str(stored["format"]) == CHECK_VERSION:
                    self._unpack(stored)
                    touch(self.path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            self.index = {}

    def get(self, path: str):
        path = os.path.abspath(path)
        if path in self.new:
            stat, result = self.new[path]
        elif path in self.index:
            stat, result = self.stat[self.index[path]], self._stored(path)
        else:
            return None
        return result if stat == _stat(path) else None

    def put(self, path: str, stat, result) -> None:
        if stat is None:  # vanished while checked: nothing to validate a stored result against
            return
        self.new[os.path.abspath(path)] = (list(stat), result)

    def save(self) -> None:
        if not self.new:
            return
        try:
            cache_dir("checks")
            with atomic_target(self.path) as tmp, open(tmp, "wb") as f:
                np.savez(f, **self._pack())
            enforce_limit(keep=self.path)
        except OSError as err:  # a read-only or full disk: the next run checks again
            print(f"warning: could not save the data check cache {self.path}: {err}")

    def _pack(self) -> dict:
        kept = [p for p in self.index if p not in self.new]
        paths = kept + list(self.new)
        stats = [self.stat[self.index[p]] for p in kept] + [stat for stat, _ in self.new.values()]
        results = [self._stored(p) for p in kept] + [result for _, result in self.new.values()]
        text = lambda values: np.array([v or "" for v in values], dtype=str)  # noqa: E731  None -> ""
        sizes = [r[2] or (-1, -1) for r in results]
        return {"format": np.array(CHECK_VERSION), "paths": _utf8("\n".join(paths)),
                "stat": np.array(stats, dtype=np.int64).reshape(-1, 2),
                "digest": text(r[0] for r in results), "mode": text(r[1] for r in results),
                "size": np.array(sizes, dtype=np.int64).reshape(-1, 2), "fmt": text(r[3] for r in results),
                # problems are rare and long: a JSON object {row: text} instead of a wide fixed-width column
                "problems": _utf8(json.dumps({i: r[4] for i, r in enumerate(results) if r[4]}))}

    def _stored(self, path: str):
        i = self.index[path]
        return (self.digest[i] or None, self.mode[i] or None, None if self.size[i][0] < 0 else tuple(self.size[i]),
                self.fmt[i] or None, self.problems.get(i))

    def _unpack(self, stored) -> None:
        paths = bytes(stored["paths"]).decode().split("\n") if stored["paths"].size else []
        self.stat, self.size = stored["stat"].tolist(), stored["size"].tolist()
        self.digest, self.mode, self.fmt = (stored[k].tolist() for k in ("digest", "mode", "fmt"))
        self.problems = {int(i): text for i, text in json.loads(bytes(stored["problems"]).decode()).items()}
        if not len(paths) == len(self.stat) == len(self.size) == len(self.digest) == len(self.mode) == len(self.fmt):
            raise ValueError("columns of different lengths")
        self.index = dict(zip(paths, range(len(paths))))


def _utf8(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8)


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
