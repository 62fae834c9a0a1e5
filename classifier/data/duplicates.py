"""Near-duplicate images (resized, re-encoded, slightly cropped copies) and outliers, for the data check.

Every image the check reads leaves a 32x32 gray thumbnail (``thumbnail``, cached with the check's other
per-file results). From it, a descriptor per image and zoom: the thumbnail centre-cropped by each of
``ZOOMS`` (a fraction of the side cut from every edge), resized to ``SIDE`` x ``SIDE``, mean-centred and
scaled to unit length, so the cosine distance ``1 - a.b`` between two descriptors is one minus the Pearson
correlation of the two small pictures. The distance of two images is the smallest between one's unzoomed
descriptor and the other's at some zoom (either way round): the zooms undo a centred crop, the small gray
thumbnails ignore size, colour and JPEG noise.

Two images are near-duplicates when their distance is at most ``SURE``, or at most ``LOOSE`` and at most
``RATIO`` times the geometric mean of the two images' distances to their ``RANK``-th nearest images. A fixed
threshold alone cannot do it: a copy cropped by a few pixels can sit further from its original (0.0035) than
two different photos of a plain, much-photographed object do from each other (two pairs of trousers:
0.0015), but the trousers have many such neighbours and the copy has one. Chosen on real Fashion-MNIST
images (docs/data-quality.md; ``python bench/label_noise.py --part methods|duplicates --seed S``: 2,500
training images with 200 of them copied resized x1.5-3 as JPEG, half also cropped by 1-2 pixels, two samples;
2,520 images with 20 test images copied into train, four samples): all 480 copies found, with 0-2 pairs of
different images per sample. A fixed threshold found 192-195 of 200 with 0-3 such pairs; a 64-bit perceptual
hash (DCT) put the cropped copies further apart than a million distinct pairs. Pretrained-embedding
descriptors were not measured (no pretrained weights offline here). An image with more than ``RANK - 1``
near-copies of itself relies on ``SURE`` for the rest.

Up to ``EXACT_MAX`` images the search compares every image with every other (matrix products in blocks):
about N^2 x 7,500 flops, a few seconds for a few thousand images. Above, a coarse first pass picks each
image's ``CANDIDATES`` nearest (``_nearest_pairs``): a minute for 60,000 images. Above ``MAX_IMAGES`` (and,
in the check every training run starts with, above ``TRAINING_START_MAX``) it is skipped with a note.
Outliers use the same descriptors: an image whose ``NEIGHBOURS`` most similar training images are all far
(its mean distance to them well above what training images have: ``OUTLIER_SPREAD`` robust deviations over
the median) is far from every class, whichever class it is in.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

THUMB = 32  # side of the cached gray thumbnail
SIDE = 12  # side of the compared descriptor
ZOOMS = tuple(k / 100 for k in range(13))  # centred crops tried (fraction of the side cut from each edge)
SURE = 0.0005  # cosine distance (1 - correlation) at most this: near-duplicates whatever their neighbours
LOOSE = 0.008  # at most this, and RATIO x the two images' distances to their RANK-th nearest images (their
# geometric mean): near-duplicates
RATIO = 0.15
RANK = 4  # (the 4th nearest: the 3rd after the near-copy itself)
EXACT_MAX = 5_000  # up to this many images every pair is compared at every zoom
MAX_IMAGES = 200_000  # above this the search is skipped (even the coarse pass grows with N^2)
TRAINING_START_MAX = 10_000  # the check every training run starts with searches up to here (seconds);
# the data check asked for (train.py --check-data, classifier.check_data) up to MAX_IMAGES (a minute per 60,000)
COARSE_SIDE = 6  # above EXACT_MAX: a first pass at this side and these zooms finds each image's CANDIDATES
COARSE_ZOOMS = (0.0, 0.04, 0.08, 0.12)  # nearest images, which are then compared as above
CANDIDATES = 24
NEIGHBOURS = 5
OUTLIER_SPREAD = 8.0  # robust standard deviations (1.4826 MAD) above the median kNN distance
MAX_OUTLIERS = 0.01  # at most this share of the images is listed as outliers (the farthest first)
_BLOCK = 512  # rows compared at a time: a block x N float32 matrix per zoom


def thumbnail(image: np.ndarray) -> np.ndarray:
    """A 32x32 uint8 gray thumbnail of a uint8 (H, W) or (H, W, C) image (squashed, antialiased)."""
    pil = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
    return np.asarray(pil.convert("L").resize((THUMB, THUMB), Image.BILINEAR), dtype=np.uint8)


def thumbnails(images: np.ndarray) -> np.ndarray:
    """Thumbnails of a batch of uint8 (N, H, W, C) images (the in-memory datasets), as ``thumbnail`` does."""
    out = np.zeros((len(images), THUMB, THUMB), np.uint8)
    for start in range(0, len(images), 4096):
        x = torch.from_numpy(images[start:start + 4096]).permute(0, 3, 1, 2).float()
        if x.shape[1] == 3:
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = F.interpolate(x, size=(THUMB, THUMB), mode="bilinear", antialias=True, align_corners=False)
        out[start:start + 4096] = x[:, 0].round().clamp(0, 255).byte().numpy()
    return out


def descriptors(thumbs: np.ndarray, zoom: float, side: int = SIDE) -> torch.Tensor:
    """(N, side*side) unit-length, mean-centred descriptors of the thumbnails centre-cropped by ``zoom`` (an
    exact fractional crop: the thumbnail resampled on the cropped square)."""
    x = torch.from_numpy(np.ascontiguousarray(thumbs)).float()[:, None]
    if zoom:
        scale = 1 - 2 * zoom
        theta = torch.tensor([[scale, 0, 0], [0, scale, 0]], dtype=torch.float32).expand(len(x), 2, 3)
        grid = F.affine_grid(theta, (len(x), 1, THUMB, THUMB), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False).flatten(1)
    x = x - x.mean(1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-6)


def near_duplicate_pairs(thumbs: np.ndarray, digests: np.ndarray) -> list[tuple]:
    """(i, j, distance) for i < j that are near-duplicates (the module's rule), closest first; pairs of
    identical files (one content hash: the exact-duplicate report has them) and flat images (no picture)
    left out. Up to EXACT_MAX images every pair is compared; above, each image's CANDIDATES nearest by a
    coarse pass (``_nearest_pairs``)."""
    n = len(thumbs)
    if n < 2:
        return []
    plain = descriptors(thumbs, 0.0)
    zoomed = [descriptors(thumbs, z) for z in ZOOMS]
    search = _all_pairs if n <= EXACT_MAX else _nearest_pairs
    candidates, near = search(thumbs, plain, zoomed, min(RANK, n - 1))
    flat = thumbs.reshape(n, -1).std(1) < 1.0
    pairs = [(a, b, max(d, 0.0)) for (a, b), d in candidates.items()
             if (d <= SURE or d <= RATIO * (near[a] * near[b]) ** 0.5)
             and not flat[a] and not flat[b] and digests[a] != digests[b]]
    return sorted(pairs, key=lambda p: (p[2], p[0], p[1]))


def _keep(candidates: dict, a: list, b: list, d: list) -> None:
    """Pairs (a, b, distance) into ``candidates``: (lower, higher) -> the smallest distance."""
    for x, y, dist in zip(a, b, d):
        key = (min(x, y), max(x, y))
        candidates[key] = min(candidates.get(key, dist), dist)


def _all_pairs(thumbs, plain, zoomed, rank: int) -> tuple[dict, list]:
    """Every pair compared at every zoom: (pairs at most LOOSE apart, each image's RANK-th nearest distance)."""
    n = len(plain)
    near = torch.empty(n)
    candidates: dict = {}
    for start in range(0, n, _BLOCK):
        rows = slice(start, min(start + _BLOCK, n))
        dist = torch.full((rows.stop - start, n), float("inf"))
        for z in zoomed:  # this block against every image, at every zoom, either way round
            dist = torch.minimum(dist, 1 - plain[rows] @ z.T)
            dist = torch.minimum(dist, 1 - z[rows] @ plain.T)
        dist[torch.arange(len(dist)), torch.arange(start, rows.stop)] = float("inf")  # itself
        near[rows] = torch.topk(dist, rank, dim=1, largest=False).values[:, -1]
        i, j = torch.nonzero(dist <= LOOSE, as_tuple=True)
        _keep(candidates, (i + start).tolist(), j.tolist(), dist[i, j].tolist())
    return candidates, near.tolist()


def _nearest_pairs(thumbs, plain, zoomed, rank: int) -> tuple[dict, list]:
    """Above EXACT_MAX images: a coarse pass finds each image's CANDIDATES nearest (its COARSE_SIDE descriptor
    against every image's at each of COARSE_ZOOMS: one way round suffices, as a crop's plain descriptor is
    close to its original's zoomed one), and those pairs are then compared as ``_all_pairs`` compares every
    pair; an image's RANK-th nearest is taken among the pairs it is in. On 60,000 Fashion-MNIST images every
    planted resized or cropped copy was its original's nearest by the coarse pass (docs/data-quality.md). An
    image with more than CANDIDATES near-copies of itself keeps only the nearest CANDIDATES."""
    n = len(plain)
    query = descriptors(thumbs, 0.0, COARSE_SIDE)
    base = torch.stack([descriptors(thumbs, z, COARSE_SIDE) for z in COARSE_ZOOMS], 1).flatten(0, 1)  # zooms inner
    k = min(CANDIDATES, n - 1)
    nearest = torch.empty((n, k), dtype=torch.long)
    for start in range(0, n, _BLOCK):
        rows = slice(start, min(start + _BLOCK, n))
        sim = (query[rows] @ base.T).view(rows.stop - start, n, len(COARSE_ZOOMS)).amax(2)
        sim[torch.arange(rows.stop - start), torch.arange(start, rows.stop)] = -float("inf")  # itself
        nearest[rows] = torch.topk(sim, k, dim=1).indices
    dist = torch.full((n, k), float("inf"))
    for start in range(0, n, 4 * _BLOCK):  # the candidates compared at every zoom, either way round
        rows = slice(start, min(start + 4 * _BLOCK, n))
        others = nearest[rows]
        for z in zoomed:
            dist[rows] = torch.minimum(dist[rows], 1 - torch.einsum("rd,rkd->rk", plain[rows], z[others]))
            dist[rows] = torch.minimum(dist[rows], 1 - torch.einsum("rd,rkd->rk", z[rows], plain[others]))
    a, b = np.repeat(np.arange(n), k), nearest.flatten().numpy()
    _, once = np.unique(np.minimum(a, b) * n + np.maximum(a, b), return_index=True)  # a pair chosen both ways: once
    a, b, d = a[once], b[once], dist.flatten().numpy()[once]
    # each image's RANK-th nearest among every pair it is in (its own candidates, and those that chose it)
    ends, both = np.concatenate([a, b]), np.concatenate([d, d])
    order = np.lexsort((both, ends))
    first = np.searchsorted(ends[order], np.arange(n))
    counts = np.bincount(ends, minlength=n)
    near = np.where(counts >= rank, both[order][np.minimum(first + rank - 1, len(order) - 1)], np.inf)
    close = d <= LOOSE
    return dict(zip(zip(np.minimum(a, b)[close].tolist(), np.maximum(a, b)[close].tolist()), d[close].tolist())), \
        near.tolist()


def outlier_scores(thumbs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each image's mean cosine distance to its NEIGHBOURS nearest ``reference`` images (itself and exact
    copies of it not counted)."""
    x, ref = descriptors(thumbs, 0.0), descriptors(reference, 0.0)
    k = min(NEIGHBOURS, max(len(ref) - 1, 1))
    out = np.zeros(len(x), np.float32)
    for start in range(0, len(x), _BLOCK):
        dist = 1 - x[start:start + _BLOCK] @ ref.T
        dist[dist < 1e-6] = float("inf")  # itself (or an identical image)
        near = torch.topk(dist, k, dim=1, largest=False).values
        near[torch.isinf(near)] = float("nan")
        out[start:start + _BLOCK] = torch.nanmean(near, dim=1).numpy()
    return out


def outlier_rows(scores: np.ndarray, reference_scores: np.ndarray) -> list[int]:
    """Rows whose score is OUTLIER_SPREAD robust deviations above the reference median, farthest first, at
    most MAX_OUTLIERS of them."""
    ref = reference_scores[np.isfinite(reference_scores)]
    if len(ref) < 10:
        return []
    median = float(np.median(ref))
    spread = 1.4826 * float(np.median(np.abs(ref - median))) or 1e-6
    rows = np.flatnonzero(np.nan_to_num(scores, nan=0.0) > median + OUTLIER_SPREAD * spread)
    rows = rows[np.argsort(-scores[rows], kind="stable")]
    return rows[: max(1, int(MAX_OUTLIERS * len(scores)))].tolist()


PRINTED_PAIRS = 50  # cross-split pairs printed by the check (all of them are in data_check.json)
FIGURE_PAIRS = 12


def near_duplicate_report(readable: list[tuple], thumbs: list[tuple], *, figure=None,
                          max_images: int = MAX_IMAGES) -> dict:
    """The data check's near-duplicate and outlier entries. ``readable``: (split, digests, file ids) per split,
    ``thumbs``: (thumbnails, Samples, their rows) per split, for the readable samples in the same order.
    ``figure``: a PNG of the closest pairs, written when there are any; ``max_images``: above this many
    images nothing is searched (a note says so)."""
    names = [name for name, _, ids in readable for _ in ids]
    ids = [i for _, _, part in readable for i in part]
    if len(ids) > max_images:
        why = (f"at a training run's start (train.py --check-data searches up to {MAX_IMAGES:,})"
               if max_images < MAX_IMAGES else "(even the coarse first pass compares every pair)")
        return {"near_duplicates": [], "near_duplicates_across_splits": 0, "outliers": [],
                "near_duplicates_note": f"not searched: {len(ids)} images, more than {max_images:,} {why}"}
    digests = np.concatenate([d for _, d, _ in readable]) if readable else np.zeros(0, str)
    every = np.concatenate([t for t, _, _ in thumbs]) if thumbs else np.zeros((0, THUMB, THUMB), np.uint8)
    pairs = near_duplicate_pairs(every, digests)
    entries = [{"a": {"split": names[a], "file": ids[a]}, "b": {"split": names[b], "file": ids[b]},
                "distance": round(float(d), 5)} for a, b, d in pairs]
    train = np.array([n == "train" for n in names], dtype=bool)
    outliers = []
    if train.sum() > NEIGHBOURS:
        scores = outlier_scores(every, every[train])
        outliers = [{"split": names[i], "file": ids[i], "score": round(float(scores[i]), 4)}
                    for i in outlier_rows(scores, scores[train])]
    if figure and pairs:
        _pairs_figure(figure, pairs[:FIGURE_PAIRS], names, ids, thumbs)
    return {"near_duplicates": entries,
            "near_duplicates_across_splits": sum(e["a"]["split"] != e["b"]["split"] for e in entries),
            "outliers": outliers}


def _pairs_figure(path, pairs: list[tuple], names: list, ids: list, thumbs: list[tuple]) -> None:
    from classifier.data.images import BadImageError, load_image
    from classifier.report.tiles import plot_tiles  # matplotlib: only when there is a figure to draw

    where = [(samples, int(row)) for _, samples, rows in thumbs for row in rows]
    images, captions = [], []
    for a, b, d in pairs:
        for k, i in enumerate((a, b)):
            samples, row = where[i]
            try:
                image = samples.images[row] if samples.in_memory else load_image(samples.paths[row], 3)
            except BadImageError:
                image = np.zeros((THUMB, THUMB), np.uint8)
            images.append(image)
            captions.append(f"{names[i]}: {ids[i].rsplit('/', 1)[-1][-18:]}" + (f"\ndistance {d:.4f}" if k else "\n"))
    side = min(max(max(im.shape[:2]) for im in images), 96)
    tiles = [np.asarray(Image.fromarray(im[..., 0] if im.ndim == 3 and im.shape[-1] == 1 else im).convert("RGB")
                        .resize((side, side), Image.BILINEAR)) for im in images]
    plot_tiles(path, tiles, captions, cols=4, title="closest near-duplicate pairs (pairs side by side)")
