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
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from classifier.cache import cache_dir, cache_root, enforce_limit, touch
from classifier.data.duplicates import (MAX_IMAGES, PRINTED_PAIRS, THUMB, near_duplicate_report, thumbnail,
                                        thumbnails)
from classifier.data.samples import Samples
from classifier.data.images import BadImageError, load_image
from classifier.data.loaders import default_workers
from classifier.fileio import atomic_target

FORMAT = "classifier-data-check/1"
CHECK_VERSION = "classifier-check-cache/4"  # change when the per-file checks change: old results are then unused
IMBALANCE_HINT = 3.0  # from this ratio on, the summary suggests --class-weights auto / --sampler balanced
_SAME_FORMAT = {"MPO": "JPEG"}  # multi-picture JPEGs (phone photos) are JPEGs
_SHOWN = 5  # examples per problem in the console summary


def check_splits(classes: list[str], splits: dict[str, Samples], *, figure: str | os.PathLike | None = None,
                 near_max: int = MAX_IMAGES) -> dict:
    """The check report (plain JSON-able data) for ``{split name: Samples}``; ``figure``: a PNG of the
    closest near-duplicate pairs (data/duplicates.py) is written there when there are any; ``near_max``:
    the near-duplicate search stops above this many images."""
    counts = {name: s.class_counts(len(classes)).tolist() for name, s in splits.items()}  # multi-label too
    train = counts.get("train") or [0]
    modes, sizes, unreadable, wrong_ext, readable, thumbs = Counter(), Counter(), [], [], [], []
    caches = {}  # folder -> its CheckCache, loaded once for all the splits it holds
    for name, samples in splits.items():
        ids, facts = _ids(samples), _inspect(samples, caches)
        unreadable += [{"split": name, "file": ids[i], "reason": facts.problems[i]} for i in sorted(facts.problems)]
        ok = np.ones(len(ids), bool)
        ok[list(facts.problems)] = False
        modes.update(dict(zip(*(a.tolist() for a in np.unique(facts.mode[ok], return_counts=True)))))
        found, n = np.unique(facts.size[ok].reshape(-1, 2), axis=0, return_counts=True)
        sizes.update({f"{w}x{h}": k for (w, h), k in zip(found.tolist(), n.tolist())})
        wrong_ext += [{"split": name, "file": ids[i], "format": str(facts.fmt[i])} for i in _misnamed(ids, facts, ok)]
        readable.append((name, facts.digest[ok], [ids[i] for i in np.flatnonzero(ok).tolist()]))
        thumbs.append((facts.thumb[ok], samples, np.flatnonzero(ok)))
    for cache in caches.values():
        cache.save()
    duplicates = _duplicates(readable)
    near = near_duplicate_report(readable, thumbs, figure=figure, max_images=near_max)
    return {
        "format": FORMAT,
        "classes": list(classes),
        "counts": counts,
        "images": {name: len(s) for name, s in splits.items()},  # = the counts' sums unless multi-label
        "imbalance": round(max(train) / min(train), 2) if min(train) else None,
        "modes": dict(modes.most_common()),
        "sizes": dict(sizes.most_common()),  # width x height
        "unreadable": unreadable,
        "wrong_extension": wrong_ext,
        "duplicates": duplicates,
        "duplicates_across_splits": sum(map(_spans_splits, duplicates)),
        **near,  # near_duplicates (pairs), near_duplicates_across_splits, outliers: data/duplicates.py
    }


def _misnamed(ids: list[str], facts: "Facts", ok: np.ndarray) -> list[int]:
    """Readable rows whose file format is not one their extension may hold (".jpg" -> "JPEG", ...)."""
    extensions = {e: _SAME_FORMAT.get(f, f) for e, f in Image.registered_extensions().items()}
    known = tuple(extensions)
    bad = []
    for fmt in set(facts.fmt[ok].tolist()) - {""}:
        fits = tuple(e for e, f in extensions.items() if f == _SAME_FORMAT.get(fmt, fmt))
        rows = np.flatnonzero(ok & (facts.fmt == fmt)).tolist()
        bad += [i for i in rows if not (name := ids[i].lower()).endswith(fits) and name.endswith(known)]
    return sorted(bad)


def _duplicates(readable: list[tuple]) -> list[list[dict]]:
    """Groups of files with one content hash, from (split, digests, files) in check order: groups in the
    order their first file was met, files in check order."""
    digests = np.concatenate([d for _, d, _ in readable] or [np.array([], str)])
    if not digests.size:
        return []
    _, first, inverse, n = np.unique(digests, return_index=True, return_inverse=True, return_counts=True)
    rows = np.flatnonzero(n[inverse] > 1)
    rows = rows[np.lexsort((rows, first[inverse[rows]]))]  # by the group's first file, then check order
    starts = np.cumsum([0] + [len(files) for _, _, files in readable])
    groups: dict[int, list[dict]] = {}
    for i in rows.tolist():
        part = int(np.searchsorted(starts, i, side="right")) - 1
        name, files = readable[part][0], readable[part][2]
        groups.setdefault(int(inverse[i]), []).append({"split": name, "file": files[i - starts[part]]})
    return list(groups.values())


def _spans_splits(group: list[dict]) -> bool:
    return len({w["split"] for w in group}) > 1


def _ids(samples: Samples) -> list[str]:
    if samples.in_memory:
        return [f"{samples.source}[{i}]" for i in samples.index]
    return samples.relative_paths()


@dataclass
class Facts:
    """Per-sample check results as columns: content hash, mode and file format ("" when unknown), (width,
    height) (-1 when unreadable), {row: problem} for the samples that cannot be read, and a 32x32 gray
    thumbnail (zeros when unreadable) for the near-duplicate search."""

    digest: np.ndarray
    mode: np.ndarray
    size: np.ndarray
    fmt: np.ndarray
    problems: dict
    thumb: np.ndarray = None

    @classmethod
    def of(cls, results: list[tuple]) -> "Facts":
        """From per-sample tuples (digest, mode, (width, height), format, problem, thumbnail), None parts where
        unknown."""
        text = lambda k: np.array([r[k] or "" for r in results], dtype=str)  # noqa: E731
        sizes = np.array([r[2] or (-1, -1) for r in results], dtype=np.int64).reshape(-1, 2)
        blank = np.zeros((THUMB, THUMB), np.uint8)
        thumbs = np.stack([r[5] if r[5] is not None else blank for r in results]) if results \
            else np.zeros((0, THUMB, THUMB), np.uint8)
        return cls(text(0), text(1), sizes, text(3), {i: r[4] for i, r in enumerate(results) if r[4]}, thumbs)

    def take(self, rows: np.ndarray) -> "Facts":
        problems = {j: self.problems[i] for j, i in enumerate(rows.tolist()) if i in self.problems}
        return Facts(self.digest[rows], self.mode[rows], self.size[rows], self.fmt[rows], problems, self.thumb[rows])

    @classmethod
    def concat(cls, parts: list["Facts"]) -> "Facts":
        offsets = np.cumsum([0] + [len(p.size) for p in parts])
        problems = {int(o) + i: text for o, p in zip(offsets, parts) for i, text in p.problems.items()}
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("digest", "mode", "size", "fmt")),
                   problems, np.concatenate([p.thumb for p in parts]))


def _inspect(samples: Samples, caches: dict) -> Facts:
    """Check results for every sample. Files are looked up in (and new results added to) the CheckCache of
    their folder in ``caches``; the caller saves them."""
    if samples.in_memory:
        mode = "L" if samples.images.shape[3] == 1 else "RGB"
        size = samples.images.shape[2], samples.images.shape[1]
        return Facts.of([(_digest(im.tobytes()), mode, size, None, None, t)
                         for im, t in zip(samples.images, thumbnails(samples.images))])
    if not samples.paths:
        return Facts.of([])
    root = samples.root or os.path.dirname(samples.paths[0])
    if root not in caches:
        caches[root] = CheckCache(root)
    known = caches[root]
    paths = _absolute(samples.paths, root)
    rows = known.lookup(paths, _stats(paths))
    hits, todo = np.flatnonzero(rows >= 0), np.flatnonzero(rows < 0)
    parts = [known.facts.take(rows[hits])]
    if todo.size:
        with ThreadPoolExecutor(default_workers()) as pool:  # PIL decodes with the GIL released
            checked = list(pool.map(_inspect_file, [paths[i] for i in todo]))
        parts.append(Facts.of([result for _, result in checked]))
        known.add([paths[i] for i in todo], [stat for stat, _ in checked], parts[-1])
    return Facts.concat(parts).take(np.argsort(np.concatenate([hits, todo]), kind="stable"))  # sample order


def _absolute(paths: list[str], root: str) -> list[str]:
    """``os.path.abspath`` of each path; those the listing made by joining ``root`` and plain names get the
    absolute root prefixed instead (the same result, without normalising 70,000 paths one by one)."""
    prefix, absolute = os.path.join(root, ""), os.path.join(os.path.abspath(root), "")
    return [absolute + p[len(prefix):] if p.startswith(prefix) and "/." not in p[len(prefix) - 1:] and "//" not in p
            else os.path.abspath(p) for p in paths]


def _inspect_file(path: str):
    """((size, mtime) before reading, result): one read of the file, hashed and decoded from memory."""
    stat = _stat(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        return stat, (None, None, None, None, f"cannot read ({err.strerror or err})", None)
    try:
        gray = load_image(path, 1, data=data)  # a full decode, as training does: raises BadImageError
        with Image.open(io.BytesIO(data)) as im:
            return stat, (_digest(data), im.mode, im.size, im.format, None, thumbnail(gray))
    except BadImageError as err:
        return stat, (None, None, None, None, str(err).removeprefix(f"{path}: "), None)


def _stat(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _stats(paths: list[str]) -> np.ndarray:
    """(size, mtime_ns) per path, -1 for a file that is gone. One thread: threads did not help (profiled on
    70,000 files, the main thread waited 0.9 s for them; the plain loop of ``os.stat`` takes 0.5 s)."""
    return np.array([_stat(p) or (-1, -1) for p in paths], dtype=np.int64).reshape(-1, 2)


class CheckCache:
    """Per-file check results of one dataset folder, valid while a file keeps its size and mtime.

    Stored as columns in a NumPy ``.npz`` (no pickle: read with ``allow_pickle=False``), paths joined by
    newlines (a file name holding one makes the columns disagree: the cache is then ignored and every file
    checked), and used as columns: validating 70,000 cached results is one ``stat`` per file and array
    comparisons (a Python object per file took 0.4 s to unpack alone)."""

    def __init__(self, root: str):
        name = hashlib.sha256(f"{CHECK_VERSION}\n{os.path.abspath(root)}".encode()).hexdigest()[:24]
        self.path = cache_root() / "checks" / f"{name}.npz"
        self.index: dict = {}  # absolute path -> row of ``stat`` and ``facts``
        self.stat, self.facts = np.zeros((0, 2), np.int64), Facts.of([])
        self.added = 0  # rows added in this run: saved if any
        try:
            with np.load(self.path, allow_pickle=False) as stored:
                if str(stored["format"]) == CHECK_VERSION:
                    self._unpack(stored)
                    touch(self.path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            self.index, self.stat, self.facts = {}, np.zeros((0, 2), np.int64), Facts.of([])

    def lookup(self, paths: list[str], stats: np.ndarray) -> np.ndarray:
        """Row per absolute path of a result still valid for its (size, mtime) in ``stats``, else -1."""
        rows = np.array([self.index.get(p, -1) for p in paths], dtype=np.int64)
        valid = rows >= 0
        valid[valid] = (self.stat[rows[valid]] == stats[valid]).all(1)
        return np.where(valid, rows, -1)

    def add(self, paths: list[str], stats: list, facts: Facts) -> None:
        """New results: appended as rows; a file that vanished while checked (no stat) is not kept."""
        keep = [j for j, stat in enumerate(stats) if stat is not None]
        if not keep:
            return
        start = len(self.stat)
        self.stat = np.concatenate([self.stat, np.array([stats[j] for j in keep], np.int64).reshape(-1, 2)])
        self.facts = Facts.concat([self.facts, facts.take(np.array(keep))])
        self.index.update((paths[j], row) for row, j in enumerate(keep, start))
        self.added += len(keep)

    def save(self) -> None:
        if not self.added:
            return
        try:
            cache_dir("checks")
            with atomic_target(self.path) as tmp, open(tmp, "wb") as f:
                np.savez(f, **self._pack())
            enforce_limit(keep=self.path)
        except OSError as err:  # a read-only or full disk: the next run checks again
            print(f"warning: could not save the data check cache {self.path}: {err}")

    def _pack(self) -> dict:
        """The newest row per path (a re-checked file leaves its old row behind: dropped here)."""
        paths = list(self.index)
        rows = np.array(list(self.index.values()), dtype=np.int64)
        facts = self.facts.take(rows)
        return {"format": np.array(CHECK_VERSION), "paths": _utf8("\n".join(paths)), "stat": self.stat[rows],
                "digest": facts.digest, "mode": facts.mode, "size": facts.size, "fmt": facts.fmt, "thumb": facts.thumb,
                # problems are rare and long: a JSON object {row: text} instead of a wide fixed-width column
                "problems": _utf8(json.dumps(facts.problems))}

    def _unpack(self, stored) -> None:
        paths = bytes(stored["paths"]).decode().split("\n") if stored["paths"].size else []
        problems = {int(i): text for i, text in json.loads(bytes(stored["problems"]).decode()).items()}
        self.stat = stored["stat"].reshape(-1, 2)
        self.facts = Facts(stored["digest"], stored["mode"], stored["size"].reshape(-1, 2), stored["fmt"], problems,
                           stored["thumb"].reshape(-1, THUMB, THUMB))
        if not len(paths) == len(self.stat) == len(self.facts.size) == len(self.facts.digest) \
                == len(self.facts.mode) == len(self.facts.fmt) == len(self.facts.thumb):
            raise ValueError("columns of different lengths")
        self.index = dict(zip(paths, range(len(paths))))


def _utf8(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8)


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def run_check(classes: list[str], splits: dict[str, Samples], path: str | os.PathLike | None = None, *,
              near_max: int = MAX_IMAGES) -> dict:
    """Check the splits, write the report to ``path`` (if given) and print the summary; ``near_max``: as
    ``check_splits``."""
    figure = Path(path).with_name(f"{Path(path).stem}_near_duplicates.png") if path else None
    report = check_splits(classes, splits, figure=figure, near_max=near_max)
    lines = summary_lines(report)
    if figure is not None and figure.is_file() and report.get("near_duplicates"):
        lines.append(f"  closest near-duplicate pairs: {figure}")
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
    sizes = ", ".join(f"{name} {report.get('images', {}).get(name, sum(c))}" for name, c in counts.items())
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
    lines += _near_duplicate_lines(report)
    return lines


def _near_duplicate_lines(report: dict) -> list[str]:
    """Every near-duplicate pair across splits (up to PRINTED_PAIRS, then a count), the count within
    splits, and the outliers (data/duplicates.py)."""
    near = report.get("near_duplicates", [])
    leaks = [p for p in near if p["a"]["split"] != p["b"]["split"]]
    lines = []
    if leaks:
        lines.append(f"  near-duplicate images in two splits ({len(leaks)}):")
        lines += [f"    {p['a']['split']}: {p['a']['file']} ~ {p['b']['split']}: {p['b']['file']} "
                  f"(distance {p['distance']:.4f})" for p in leaks[:PRINTED_PAIRS]]
        if len(leaks) > PRINTED_PAIRS:
            lines.append(f"    ... and {len(leaks) - PRINTED_PAIRS} more (all in the report)")
    if len(near) > len(leaks):
        lines.append(f"  near-duplicate pairs within one split: {len(near) - len(leaks)}")
    if report.get("near_duplicates_note"):
        lines.append(f"  near-duplicates {report['near_duplicates_note']}")
    lines += _listed("far from every training image (outliers: check them)",
                     [f"{o['split']}: {o['file']} (score {o['score']:.3f})" for o in report.get("outliers", [])])
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
