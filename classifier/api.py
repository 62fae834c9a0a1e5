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

import json
from dataclasses import dataclass, field
from pathlib import Path

from classifier.config import Config, resolve
from classifier.data import load_dataset, run_splits
from classifier.data.check import run_check
from classifier.engine.lr_finder import LRFinderResult, find_lr_for_config
from classifier.engine.runtime import global_state_restored
from classifier.engine.trainer import fit
from classifier.errors import ClassifierError
from classifier.evaluation import evaluate_and_report
from classifier.evaluation_data import evaluation_samples
from classifier.inference import CHECKPOINT_SUFFIXES, Predictor
from classifier.inputs import in_memory_dataset, load_inputs
from classifier.models import list_models as _registry_list_models
from classifier.predictions import Prediction, Predictions, predict_images
from classifier.report.notebook import report_html, report_markdown
from classifier.report.grids import write_dataset_grid

__all__ = ["train", "find_lr", "load", "check_data", "list_models", "show_dataset", "Model", "Prediction",
           "Predictions", "TrainResult", "EvalReport"]


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
    on_epoch_end(run, row), on_train_end(run, summary), on_train_interrupt(run); a callback stops training
    with ``run.stop()``.

    The global state a run changes (torch thread count, deterministic mode, the torch / numpy / Python
    random generators) is restored when it returns.
    """
    arrays = in_memory_dataset(settings.get("dataset"), class_names)
    if arrays is not None:
        settings["dataset"] = arrays[0].name
    cfg, given = resolve(settings, config, resume=resume)
    with global_state_restored():
        run = fit(cfg, given=given, resume=resume, arrays=arrays, callbacks=callbacks)
    return TrainResult(Path(run.dir), run.summary or {}, list(run.state.history), run.cfg, run)


def find_lr(config: str | Path | None = None, *, plot: str | Path | None = None, **settings) -> LRFinderResult:
    """The learning-rate range test on what ``train(**settings)`` would train (its data, model, mode,
    optimiser and parameter groups): ``.suggestion`` (a number), ``.rule``, ``.lrs``, ``.losses``; ``plot``
    writes loss against learning rate with the suggestion marked (``True``: MODEL-DATASET-lr_find.png). Writes
    no run folder; the global state (random generators, threads) is put back afterwards, as by ``train``."""
    cfg, _ = resolve(settings, config)
    if plot is True:
        plot = f"{cfg.model.replace('/', '_')}-{_dataset_label(cfg.dataset)}-lr_find.png"
    with global_state_restored():
        return find_lr_for_config(cfg, plot_path=plot)


def _dataset_label(dataset: str) -> str:
    """A dataset spec as part of a file name: ``folder:data/photos/`` -> ``data_photos``."""
    return dataset.split(":")[-1].strip("/").replace("/", "_")


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
    def predict(self, inputs, *, topk: int = 5, batch_size: int = 64, threshold: float | None = None,
                reject: bool = False, explain: bool = False) -> Predictions:
        """Predictions for image files, folders (searched recursively), PIL images, or numpy arrays /
        tensors: (H,W), (H,W,C) one image, (N,H,W[,C]) a batch; uint8 0-255 or float 0-1. A single
        input or a list of them. Unreadable files are skipped and listed in ``.skipped``. A multi-label
        model's ``labels`` are the classes at or above their fitted thresholds (``threshold``: this one for
        every class). ``reject``: images scoring below the model's "unknown" threshold get the label
        ``unknown`` (``ood_score`` set on each prediction); ``explain``: each prediction gets a ``heatmap``
        (Grad-CAM of the predicted class at the image's own size, in [0, 1]; classifier/trust/)."""
        if topk < 1:
            raise ClassifierError(f"topk must be at least 1, got {topk}")
        _check_batch_size(batch_size)
        if reject and not self.predictor.ood:
            raise ClassifierError(f"{self.path} has no rejection threshold (it was trained without a validation "
                                  "split, or before the toolkit stored one): predict without reject")
        self.predictor.decision_thresholds(threshold)  # a bad threshold is refused before any image is read
        images, paths, skipped = load_inputs(inputs, self.predictor.prep.channels)
        return predict_images(self.predictor, images, paths, skipped, topk=topk, batch_size=batch_size,
                              threshold=threshold, reject=reject, explain=explain)

    # --- evaluate
    def evaluate(self, data=None, *, split: str | None = None, output: str | Path | None = None, data_dir=None,
                 batch_size: int = 256, progress: bool = True, threshold: float | None = None,
                 ood: str | Path | None = None) -> "EvalReport":
        """Accuracy, per-class metrics, confusion matrix and figures, written to a report folder.

        ``data``: None (the model's own run: ``split`` of the split recorded beside the checkpoint), a
        folder of class sub-folders (labelled by class name), a dataset spec (``fashion_mnist``,
        ``folder:PATH``, ``csv:PATH``: split as the run was), or ``(images, labels)`` arrays (labels: class
        indices, or a 0/1 matrix for a multi-label model). ``threshold``: a multi-label model's decision
        threshold for every class instead of its fitted ones. ``ood``: a folder of images of none of the
        classes: AUROC, FPR at 95% TPR and the share rejected by the model's "unknown" threshold
        (``ood_auroc``, ``ood_fpr95``, ``ood_rejected`` in the metrics and the report).
        """
        _check_batch_size(batch_size)
        samples, source, target = evaluation_samples(data, split, data_dir, model_path=self.path,
                                                     classes=self.classes, metadata=self.metadata)
        out = Path(output) if output else self.path.parent / f"eval-{target}-{self.path.stem}"
        metrics = evaluate_and_report(self.predictor, samples, out, title=f"{self.path.name} on {source}",
                                      source=str(self.path), batch_size=batch_size, progress=progress,
                                      threshold=threshold, ood=ood)
        return EvalReport(metrics, out)

    # --- export
    def export(self, output: str | Path | None = None, **options) -> Path:
        """Export a checkpoint; options as export.py's flags. ``format``: a name or list from the table in
        classifier/export/formats.py (``"onnx"``, the default: verified fp32 ONNX; ``"int8"``; ``"ort"``;
        ``"web"``: a page that classifies in the browser), e.g. ``format=["onnx", "int8", "ort"]``; also
        ``embed_preprocessing=True``, ``dynamic_size``, ``ort_target="amd64"``, ``benchmark``, ``threads``,
        ``opset``, ``verify``, ``quantize_method``, ``data_dir``, ``serve`` (web). The older
        ``quantize="int8"`` and ``mobile="arm"`` still work. Returns the first asked format's file (web: its folder)."""
        # classifier.export here, not at the top: it imports onnx (~1.2 s), which training never needs
        from classifier.export.formats import ExportOptions
        from classifier.export.from_checkpoint import export_checkpoint

        return export_checkpoint(self._checkpoint(), ExportOptions.of(output=str(output) if output else None,
                                                                       **options))

    def export_web(self, out_dir: str | Path | None = None, *, serve: bool = False, **options) -> Path:
        """``export(out_dir, format="web", ...)``: a static web page that classifies images in the browser
        (index.html, the model(s), metadata.json and the ONNX Runtime Web files; default folder: web/ beside
        the checkpoint); ``serve``: serve it on localhost until interrupted. Returns the folder."""
        if options.get("format", "web") not in ("web", ["web"], ("web",)):
            raise ClassifierError(f"export_web writes the web page only (format={options['format']!r}): "
                                  "export(format=[...]) writes several formats")
        options.pop("format", None)
        return self.export(out_dir, format="web", serve=serve, **options)

    # --- serve
    def serve(self, **options) -> None:
        """Serve this model over HTTP until SIGTERM or Ctrl-C (as ``serve.py --model PATH``): the V2
        inference protocol and ``POST /predict``; options as serve.py's flags (``port=8000``, ``host``,
        ``model_name``, ``max_batch``, ``max_delay_ms``, ``max_body_mb``, ``timeout_s``, ``workers``).
        See docs/serving.md."""
        # classifier.serve here, not at the top: FastAPI and uvicorn are the serve extra's
        from classifier.serve.options import ServeOptions
        from classifier.serve.server import serve

        serve(self, ServeOptions.of(**options))

    def _checkpoint(self) -> Path:
        """The checkpoint this model was loaded from; exported models cannot be exported again."""
        if self.path.suffix not in CHECKPOINT_SUFFIXES:
            raise ClassifierError(f"{self.path} is already an exported model: export its checkpoint (.pt)")
        return self.path


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ClassifierError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")


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
        return report_markdown(self.dir) or repr(self)

    def _repr_html_(self) -> str:
        """The per-class table and the confusion matrix, for notebooks."""
        return report_html(self.metrics, self.dir)


# ---------------------------------------------------------------------------------------------- data

def check_data(dataset=None, *, config: str | Path | None = None, output: str | Path | None = None,
               **settings) -> dict:
    """The data check on the splits ``train(config, dataset=dataset, **settings)`` would use (same recipe,
    fractions and seed): class counts, image modes and sizes, unreadable files, duplicates across splits.
    Prints a summary; returns the report."""
    cfg, _ = resolve(_with_dataset(settings, dataset), config)
    found = run_splits(cfg.to_dict(), download=cfg.download)
    return run_check(found.info.classes, found.splits, output)


def show_dataset(dataset=None, *, config: str | Path | None = None, save: str | Path | None = None,
                 per_class: int = 8, **settings) -> Path:
    """A grid of the first ``per_class`` training images of every class, one row per class, of the dataset
    ``train(config, dataset=dataset, **settings)`` would use; returns its path."""
    cfg, _ = resolve(_with_dataset(settings, dataset), config)
    info, official = load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download)
    samples = official["train"]
    path = write_dataset_grid(Path(save or f"{_dataset_label(cfg.dataset)}-samples.png"), samples, info.classes,
                              info.channels, per_class)
    print(f"{len(info.classes)} classes, {len(samples)} training images; sample grid written to {path}")
    return path


def _with_dataset(settings: dict, dataset) -> dict:
    """``settings`` with the dataset argument (None: the config file's, the recipe's or the default)."""
    return settings if dataset is None else {**settings, "dataset": dataset}
