"""The Python API: train, load, predict, evaluate, export. The scripts (train.py, eval.py, test.py,
export.py) are thin callers of these functions, so the CLI and the API give the same run folders and
the same predictions for the same settings.

    import classifier
    run = classifier.train(model="lenet5", dataset="fashion_mnist", epochs=2)
    run.metrics["accuracy"], run.history[-1]["val_acc"]
    preds = run.model.predict(["shoe.png", pil_image, array], topk=3)
    report = run.model.evaluate("new_photos/")
    onnx_path = run.model.export(quantize="int8")
    classifier.load(onnx_path).predict(["shoe.png"])[0].label

Errors a user can cause raise ``ClassifierError`` with the one-line message the CLI prints.
"""
from __future__ import annotations

import base64
import contextlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from classifier.config import Config, load_yaml, make_config, with_recipe
from classifier.data import BadImageError, Samples, load_dataset, load_image, run_splits
from classifier.data.arrays import arrays_dataset, as_uint8_images
from classifier.data.check import run_check
from classifier.data.datasets import image_files_under, labelled_folder
from classifier.data.images import pil_to_array
from classifier.data.splits import evaluation_split
from classifier.engine.lr_finder import LRFinderResult, find_lr_for_config
from classifier.engine.trainer import fit
from classifier.errors import ClassifierError
from classifier.evaluation import evaluate_and_report, images_to_uint8_batch
from classifier.inference import CHECKPOINT_SUFFIXES, Predictor
from classifier.models import list_models as _registry_list_models
from classifier.report.plots import plot_dataset_grid, plot_predictions_grid
from classifier.report.writer import prediction_rows, write_predictions_csv

__all__ = ["train", "find_lr", "load", "check_data", "list_models", "show_dataset", "Model", "Prediction",
           "Predictions", "TrainResult", "EvalReport"]
GRID_IMAGES = 48  # images shown in predictions.png


# ---------------------------------------------------------------------------------------------- train

def train(config: str | Path | None = None, *, resume: str | Path | None = None, callbacks: dict | None = None,
          class_names=None, **settings) -> "TrainResult":
    """Train a model; returns the finished run (folder, metrics, history, model).

    ``settings`` are the config keys (the CLI flags with underscores: ``model``, ``mode``, ``weights``,
    ``dataset``, ``epochs``, ``batch_size``, ``lr``, ``img_size``, ``recipe``, ``progress``, ...; see
    ``classifier.config.Config``); ``config`` a YAML file of them (settings override it).
    ``dataset`` may be ``(images, labels)`` from memory: images a uint8 (or 0-1 float) array or tensor
    (N,H,W), (N,H,W,C) or (N,C,H,W), labels class indices, ``class_names`` their names. Such a run records
    its data as ``arrays:<fingerprint>``: resuming it, or evaluating it on its own split, takes the same
    arrays again (else a one-line error says so); export verifies it on random images.
    ``resume``: a run folder to continue from its last.pt (settings may raise ``epochs`` and change the
    hardware; others must equal the run's). ``callbacks``: {event: [fn, ...]}, events on_train_start(run),
    on_epoch_end(run, row), on_train_end(run, summary); a callback stops training with ``run.stop()``.

    The global state a run changes (torch thread count, deterministic mode, the torch / numpy / Python
    random generators) is restored when it returns.
    """
    arrays = None
    dataset = settings.get("dataset")
    if isinstance(dataset, (tuple, list)):
        if len(dataset) != 2:
            raise ClassifierError("dataset=(images, labels) takes two arrays")
        arrays = arrays_dataset(*dataset, class_names=class_names)
        settings["dataset"] = arrays[0].name
    elif class_names is not None:
        raise ClassifierError("class_names names the classes of in-memory arrays: use it with "
                              "dataset=(images, labels) (to keep a subset of a dataset's classes, use classes=)")
    cfg, given = resolve_settings(config, settings)
    with global_state_restored():
        run = fit(cfg, given=given, resume=resume, arrays=arrays, callbacks=callbacks)
    return TrainResult(Path(run.dir), run.summary or {}, list(run.state.history), run.cfg, run)


def find_lr(config: str | Path | None = None, *, plot: str | Path | None = None, **settings) -> LRFinderResult:
    """The learning-rate range test on what ``train(**settings)`` would train (its data, model, mode,
    optimiser and parameter groups): ``.suggestion`` (a number), ``.rule``, ``.lrs``, ``.losses``; ``plot``
    writes loss against learning rate with the suggestion marked. Writes no run folder; the global state
    (random generators, threads) is put back afterwards, as by ``train``."""
    cfg, _ = resolve_settings(config, settings)
    with global_state_restored():
        return find_lr_for_config(cfg, plot_path=plot)


def resolve_settings(config, settings: dict) -> tuple[Config, dict]:
    """The checked Config for a YAML file and API arguments (recipe < file < arguments), and the settings
    given, as checked and typed (flags arrive as text)."""
    values = with_recipe({**(load_yaml(config) if config else {}), **settings})
    cfg = make_config(values)
    resolved = cfg.to_dict()
    return cfg, {key: resolved[key] for key in values}


@contextlib.contextmanager
def global_state_restored():
    """Put back the process-wide settings a run changes: threads, deterministic mode, random generators."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        # only when the run changed it: the call imports torch._dynamo and torch._inductor (~3 s)
        if (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) \
                != (deterministic, warn_only):
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        random.setstate(rng[2])
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


@dataclass(repr=False)
class TrainResult:
    """A finished training run: ``dir`` (the run folder), ``metrics`` (test-split metrics of best.pt,
    else the best epoch's validation figures), ``history`` (one record per epoch), ``summary``
    (summary.json), ``config`` (every setting, resolved), ``model`` (best.pt loaded)."""

    dir: Path
    summary: dict
    history: list
    config: Config
    engine_run: object = field(default=None)  # the engine's Run (model, optimiser, data), for tools on top

    @property
    def metrics(self) -> dict:
        path = self.dir / "eval" / "metrics.json"
        if path.is_file():
            return json.loads(path.read_text())
        best = next((r for r in self.history if r["epoch"] == self.summary.get("best_epoch")), None)
        if best is None or best.get("val_acc") is None:
            return {}
        return {"accuracy": best["val_acc"], "loss": best["val_loss"], "split": "val"}

    @property
    def model(self) -> "Model":
        return load(self.dir / "best.pt")

    def __repr__(self) -> str:
        acc = self.metrics.get("accuracy")
        return (f"TrainResult(dir='{self.dir}', model={self.config.model!r}, mode={self.config.mode!r}, "
                f"epochs={len(self.history)}" + (f", accuracy={acc:.4f}" if acc is not None else "") + ")")


# ---------------------------------------------------------------------------------------------- models

def load(path: str | Path, *, threads: int | None = None) -> "Model":
    """A trained model from a checkpoint (``.pt``) or an exported model (``.onnx``, ``.ort``)."""
    return Model(Predictor.load(path, threads=threads), Path(path))


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a pattern; ``timm/<pattern>`` searches timm's catalogue."""
    return _registry_list_models(pattern)


@dataclass
class Prediction:
    """One image's prediction: ``label`` and ``confidence`` of the top class, ``topk`` [(label, prob)],
    ``probs`` (all classes, in the model's class order), ``path`` of the file it came from (or None)."""

    label: str
    confidence: float
    index: int
    topk: list
    probs: np.ndarray = field(repr=False)
    path: str | None = None

    def __repr__(self) -> str:
        where = f"{self.path!r}, " if self.path else ""
        return f"Prediction({where}{self.label!r}, confidence={self.confidence:.4f})"


class Predictions(list):
    """A list of ``Prediction``; ``skipped``: [(input, reason)] for unreadable images."""

    def __init__(self, items, skipped, classes, shown=()):
        super().__init__(items)
        self.skipped, self.classes = skipped, classes
        self._shown = list(shown)  # the first images, for predictions.png

    def save(self, out_dir: str | Path, *, topk: int = 5) -> Path:
        """predictions.csv (file, top-k, probabilities) and predictions.png (a grid) in ``out_dir``."""
        out = Path(out_dir)
        probs = np.stack([p.probs for p in self]) if self else np.zeros((0, len(self.classes)))
        names = [p.path or f"image {i}" for i, p in enumerate(self)]
        write_predictions_csv(out / "predictions.csv", prediction_rows(names, probs, self.classes, k=topk))
        if self._shown:
            side = min(max(max(im.shape[:2]) for im in self._shown), 128)
            pred = probs[: len(self._shown)].argmax(1)
            plot_predictions_grid(out / "predictions.png", images_to_uint8_batch(self._shown, side), pred,
                                  probs[np.arange(len(self._shown)), pred], self.classes)
        return out / "predictions.csv"

    def __repr__(self) -> str:
        shown = ", ".join(repr(p) for p in self[:3]) + (", ..." if len(self) > 3 else "")
        skipped = f"; {len(self.skipped)} skipped" if self.skipped else ""
        return f"Predictions({len(self)} images: [{shown}]{skipped})"


class Model:
    """A trained model from a checkpoint or an ONNX / ORT file, with the class names it carries."""

    def __init__(self, predictor: Predictor, path: Path):
        self.predictor, self.path = predictor, Path(path)

    @property
    def classes(self) -> list[str]:
        return self.predictor.classes

    @property
    def backend(self) -> str:
        return self.predictor.backend

    @property
    def metadata(self) -> dict:
        return self.predictor.metadata

    def __repr__(self) -> str:
        prep = self.predictor.prep
        return (f"Model('{self.path}', backend={self.backend!r}, classes={len(self.classes)}, "
                f"input={prep.channels}x{prep.size[0]}x{prep.size[1]})")

    # --- predict
    def predict(self, inputs, *, topk: int = 5, batch_size: int = 64) -> Predictions:
        """Predictions for image files, folders (searched recursively), PIL images, or numpy arrays /
        tensors: (H,W), (H,W,C) one image, (N,H,W[,C]) a batch; uint8 0-255 or float 0-1. A single
        input or a list of them. Unreadable files are skipped and listed in ``.skipped``."""
        if topk < 1:
            raise ClassifierError(f"topk must be at least 1, got {topk}")
        images, paths, skipped = self._images(inputs)
        probs = self.predictor.predict(images, batch_size=batch_size) if images else np.zeros((0, len(self.classes)))
        k = min(topk, len(self.classes))
        out = []
        for row, path in zip(probs, paths):
            order = np.argsort(-row, kind="stable")[:k]
            out.append(Prediction(self.classes[order[0]], float(row[order[0]]), int(order[0]),
                                  [(self.classes[i], float(row[i])) for i in order], row, path))
        if skipped:
            print(f"skipped {len(skipped)} unreadable image(s): " + "; ".join(r for _, r in skipped[:3])
                  + (" ..." if len(skipped) > 3 else ""))
        return Predictions(out, skipped, self.classes, images[:GRID_IMAGES])

    def _images(self, inputs):
        """uint8 HWC images in the model's channels, their paths (None for in-memory), and skipped files."""
        channels = self.predictor.prep.channels
        items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        images, paths, skipped = [], [], []
        for item in items:
            if isinstance(item, (str, Path)):
                for file in image_files(item):
                    try:
                        images.append(load_image(file, channels))
                        paths.append(str(file))
                    except BadImageError as err:
                        skipped.append((str(file), str(err)))
            elif isinstance(item, Image.Image):
                images.append(pil_to_array(item, channels))
                paths.append(None)
            elif isinstance(item, np.ndarray) or torch.is_tensor(item):
                batch = array_images(item)
                images += list(batch)
                paths += [None] * len(batch)
            else:
                raise ClassifierError(f"cannot predict on a {type(item).__name__}: give image paths, folders, "
                                      "PIL images or numpy arrays")
        return images, paths, skipped

    # --- evaluate
    def evaluate(self, data=None, *, split: str | None = None, output: str | Path | None = None, data_dir=None,
                 batch_size: int = 256, progress: bool = True) -> "EvalReport":
        """Accuracy, per-class metrics, confusion matrix and figures, written to a report folder.

        ``data``: None (the model's own run: ``split`` of the split recorded beside the checkpoint), a
        folder of class sub-folders (labelled by class name), a dataset spec (``fashion_mnist``,
        ``folder:PATH``: split as the run was), or ``(images, labels)`` arrays (labels: class indices).
        """
        samples, source, target = self._eval_samples(data, split, data_dir)
        out = Path(output) if output else self.path.parent / f"eval-{target}-{self.path.stem}"
        metrics = evaluate_and_report(self.predictor, samples, out, title=f"{self.path.name} on {source}",
                                      source=str(self.path), batch_size=batch_size, progress=progress)
        return EvalReport(metrics, out)

    def _eval_samples(self, data, split: str | None, data_dir):
        if isinstance(data, (tuple, list)):
            info, official = arrays_dataset(*data, class_names=self.classes)
            return official["train"], f"{len(official['train'])} images from memory", "arrays"
        if data is not None and Path(str(data)).is_dir():
            return labelled_folder(str(data), self.classes), f"folder {data}", Path(str(data)).name
        config = self.metadata.get("config") or {"dataset": self.metadata.get("dataset")}
        record = self.path.parent / "split.json"
        if data is None and not record.exists() and not config.get("dataset"):
            raise ClassifierError(f"no split.json next to {self.path}: say what to evaluate on "
                                  "(a FOLDER argument or --dataset)")
        found = run_splits(config, split_file=record, data_dir=data_dir, dataset=data)
        split = split or evaluation_split(found.record)  # test; val for a train/val run without test images
        if split not in found.splits:
            raise ClassifierError(f"unknown split '{split}' (choices: {', '.join(found.splits)})")
        where = f"{found.record['dataset']} {split} split" + (f" recorded in {record}" if data is None
                                                              and record.exists() else "")
        return found.splits[split], where, split

    # --- export
    def export(self, output: str | Path | None = None, **options) -> Path:
        """Export a checkpoint to verified ONNX; options as export.py's flags (``quantize="int8"``,
        ``embed_preprocessing=True``, ``dynamic_size``, ``mobile="arm"``, ``benchmark``, ``threads``,
        ``opset``, ``verify``, ``quantize_method``, ``data_dir``). Returns the .onnx path."""
        # classifier.export here, not at the top: it imports onnx (~1.2 s), which training never needs
        from classifier.export.from_checkpoint import ExportOptions, export_checkpoint

        return export_checkpoint(self._checkpoint(), ExportOptions.of(output=str(output) if output else None,
                                                                       **options))

    def export_web(self, out_dir: str | Path | None = None, *, serve: bool = False, **options) -> Path:
        """A static web page that classifies images in the browser (``export.py --web``): index.html, the
        model(s), metadata.json and the ONNX Runtime Web files; options as ``export`` (e.g. quantize="int8").
        ``serve``: serve it on localhost until interrupted. Returns the folder."""
        from classifier.export.web import export_web_checkpoint  # see export

        return export_web_checkpoint(self._checkpoint(), out_dir or "", serve_page=serve, **options)

    def _checkpoint(self) -> Path:
        """The checkpoint this model was loaded from; exported models cannot be exported again."""
        if self.path.suffix not in CHECKPOINT_SUFFIXES:
            raise ClassifierError(f"{self.path} is already an exported model: export its checkpoint (.pt)")
        return self.path


def image_files(path: str | Path) -> list[Path]:
    """A file, or the image files of a folder (recursively, sorted)."""
    path = Path(path)
    if path.is_dir():
        files = [Path(f) for f in image_files_under(path)]
        if not files:
            raise ClassifierError(f"no images found in {path}")
        return files
    if not path.is_file():
        raise ClassifierError(f"no such image or folder: {path}")
    return [path]


def array_images(array) -> np.ndarray:
    """(H,W) or (H,W,C) one image, (N,H,W[,C]) or (N,C,H,W) a batch; uint8 or float 0-1 -> uint8 (N,H,W,C)."""
    a = array.detach().cpu().numpy() if torch.is_tensor(array) else np.asarray(array)
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (1, 3, 4)):
        a = a[None]
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4:
        raise ClassifierError(f"an image array must be (H,W), (H,W,C) or a batch (N,H,W[,C]), got shape {a.shape}")
    return as_uint8_images(a, "image array")


@dataclass(repr=False)
class EvalReport:
    """An evaluation: ``metrics`` (as metrics.json: accuracy, per_class, confusion_matrix, ...) and ``dir``
    (report.md, metrics.json, predictions.csv, figures/)."""

    metrics: dict
    dir: Path

    @property
    def accuracy(self) -> float:
        return self.metrics["accuracy"]

    def __repr__(self) -> str:
        return f"EvalReport(accuracy={self.accuracy:.4f}, images={self.metrics.get('n_samples')}, dir='{self.dir}')"

    def _repr_markdown_(self) -> str:
        return (self.dir / "report.md").read_text() if (self.dir / "report.md").is_file() else repr(self)

    def _repr_html_(self) -> str:
        """The per-class table and the confusion matrix, for notebooks."""
        def cell(value):
            return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

        rows = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in (name, m.get("precision"), m.get("recall"),
                                                                         m.get("f1"), m.get("support"))) + "</tr>"
                       for name, m in self.metrics.get("per_class", {}).items())
        html = (f"<p><b>accuracy {self.accuracy:.2%}</b> on {self.metrics.get('n_samples')} images "
                f"(report: <code>{self.dir / 'report.md'}</code>)</p><table><tr><th>class</th><th>precision</th>"
                f"<th>recall</th><th>F1</th><th>support</th></tr>{rows}</table>")
        figure = next(iter(sorted((self.dir / "figures").glob("confusion*.png"))), None) \
            if (self.dir / "figures").is_dir() else None
        if figure is not None:
            html += f'<img src="data:image/png;base64,{base64.b64encode(figure.read_bytes()).decode()}" width="480"/>'
        return html


# ---------------------------------------------------------------------------------------------- data

def check_data(dataset, *, output: str | Path | None = None, **settings) -> dict:
    """The data check on the splits training would use (same fractions and seed): class counts, image
    modes and sizes, unreadable files, duplicates across splits. Prints a summary; returns the report."""
    cfg = make_config({**settings, "dataset": dataset})
    found = run_splits(cfg.to_dict(), download=cfg.download)
    return run_check(found.info.classes, found.splits, output)


def show_dataset(dataset, *, save: str | Path | None = None, per_class: int = 8, **settings) -> Path:
    """A grid of the first ``per_class`` training images of every class, one row per class; returns its path."""
    cfg = make_config({**settings, "dataset": dataset})
    info, official = load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download)
    samples: Samples = official["train"]
    picked = np.concatenate([np.flatnonzero(samples.labels == c)[:per_class] for c in range(len(info.classes))])
    images, labels = [], []
    for i in picked:
        try:
            images.append(samples.images[i] if samples.in_memory else load_image(samples.paths[i], info.channels))
            labels.append(samples.labels[i])
        except BadImageError:
            continue
    side = min(max(max(im.shape[:2]) for im in images), 96)
    path = Path(save or f"{cfg.dataset.split(':')[-1].strip('/').replace('/', '_')}-samples.png")
    plot_dataset_grid(path, images_to_uint8_batch(images, side), np.array(labels), info.classes, per_class)
    print(f"{len(info.classes)} classes, {len(samples)} training images; sample grid written to {path}")
    return path

