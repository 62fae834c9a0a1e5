"""One predictor for toolkit checkpoints (``.pt``) and exported models (``.onnx``, ``.ort``).

Everything it needs comes from the artifact: a checkpoint carries its preprocessing and class names,
an exported model its metadata. Both backends turn pixels into model input with the same
``to_model_input`` (or, for a graph with embedded preprocessing, the graph computes it), so a
checkpoint and its export give the same predictions::

    predictor = Predictor.load("runs/demo/model.onnx")
    probs = predictor.predict([image])            # uint8 HWC arrays of any size and channel count
    print(predictor.classes[probs[0].argmax()])
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from classifier.artifact import ONNX_SUFFIXES, decode_metadata, open_session, prep_from_metadata
from classifier.checkpoint import load_checkpoint
from classifier.data import load_image
from classifier.errors import ClassifierError
from classifier.models import model_from_checkpoint
from classifier.preprocess import Preprocessing, convert_channels, to_model_input
from classifier.tasks import DEFAULT_THRESHOLD, TASKS, Task, get_task, softmax  # noqa: F401 (softmax: re-exported)
from classifier.trust.explain import CAM_OUTPUT, grad_cam, normalise, to_image
from classifier.trust.ood import OOD_OUTPUT, ood_from_metadata, ood_scores, score_entry

CHECKPOINT_SUFFIXES = (".pt", ".pth")


def as_nchw(images) -> torch.Tensor:
    """A uint8 HW or HWC image, or an NHWC batch -> uint8 NCHW with 1 or 3 channels (alpha dropped)."""
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise ClassifierError(f"images must be uint8 pixels (0-255), got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[3] not in (1, 2, 3, 4):
        raise ClassifierError(f"an image must be HxW or HxWxC with C in 1-4, got shape {array.shape[1:]}")
    array = array[..., :1] if array.shape[3] == 2 else array[..., :3]  # LA -> L, RGBA -> RGB
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:  # e.g. memory-mapped datasets; torch wants writable memory
        array = array.copy()
    return torch.from_numpy(array).permute(0, 3, 1, 2)


def image_groups(images):
    """uint8 NHWC array, or list of HWC arrays -> uint8 NCHW tensors, same-shaped images batched, in order."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return [as_nchw(images)] if len(images) else []
    if not isinstance(images, (list, tuple)):
        raise ClassifierError("images must be a list of HWC arrays or an NHWC uint8 array, "
                              f"got {type(images).__name__} {getattr(images, 'shape', '')}")
    tensors = [as_nchw(img) for img in images]
    groups, run = [], []
    for t in tensors:
        if run and t.shape != run[0].shape:
            groups.append(torch.cat(run))
            run = []
        run.append(t)
    return groups + ([torch.cat(run)] if run else [])


def model_input(images, prep: Preprocessing) -> torch.Tensor:
    """uint8 images (list of HWC or NHWC) -> normalised float NCHW at the model's size and channels."""
    groups = image_groups(images)
    if not groups:
        return torch.empty(0, prep.channels, *prep.size)
    return torch.cat([to_model_input(g, prep) for g in groups])


def pixels_at_model_size(group: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """uint8 NCHW -> uint8 NCHW at the model's size and channels, for embedded-preprocessing graphs that
    do not resize (exported with a dynamic size).

    Uses ``to_model_input`` with a mean of 0 and std of 1 (so its output is pixels / 255): the resize and
    channel conversion are exactly the ones the checkpoint path uses, then rounded back to uint8.
    """
    identity = replace(prep, mean=(0.0,) * prep.channels, std=(1.0,) * prep.channels)
    return (to_model_input(group, identity) * 255.0).round().clamp(0, 255).to(torch.uint8)


def pixels_in_channels(group: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 NCHW -> uint8 NCHW with ``channels`` (gray replicated, or luma rounded as PIL's
    ``convert("L")`` rounds it), size kept: the input of a graph that resizes."""
    if group.shape[1] == channels:
        return group
    return convert_channels(group.float(), channels).round().clamp(0, 255).to(torch.uint8)


def flip_averaged(forward, x):
    """The toolkit's one test-time-flip rule: the mean of the logits of the images and of their mirror
    images (flipped along the width). ``x``: NCHW numpy array or tensor; ``forward``: x -> logits."""
    mirrored = torch.flip(x, dims=[-1]) if torch.is_tensor(x) else np.ascontiguousarray(x[..., ::-1])
    return (forward(x) + forward(mirrored)) / 2


class Predictor:
    """Class probabilities for images, from a checkpoint or an exported model."""

    # the artifact's task (classifier/tasks.py): softmax and the top class, or per-class sigmoids and the
    # classes at or above their decision thresholds (multi-label: ``thresholds`` in class order)
    task: Task = TASKS["multiclass"]
    thresholds: list | None = None
    # trust (classifier/trust/): the temperature dividing the logits, the "unknown" rule ({score, threshold,
    # keep[, stats]}; None: never unknown), the PyTorch model (heat maps, feature scores), and an ONNX graph's
    # outputs by name (``ood_score``, ``cam`` when exported with them)
    temperature: float = 1.0
    ood: dict | None = None
    model = None
    graph_outputs = None

    def __init__(self, run, prep: Preprocessing, classes: list[str], *, source: str, backend: str,
                 raw_pixels: bool = False, resize_embedded: bool = False, input_shape=None,
                 metadata: dict | None = None, tta_flip: bool = False):
        self._run = run  # model input (numpy NCHW) -> logits (numpy N x C)
        self.prep = prep
        self.classes = list(classes)
        self.source = source
        self.backend = backend  # "torch" or "onnxruntime"
        self.raw_pixels = raw_pixels  # the graph takes uint8 pixels (preprocessing embedded)
        self.resize_embedded = resize_embedded  # ... of any size: the graph resizes them itself
        self.input_shape = input_shape  # graph input shape; str/None entries are dynamic
        self.metadata = metadata or {}
        self.tta_flip = tta_flip  # logits = mean of the image's and its mirror image's (as the run evaluated)

    @classmethod
    def load(cls, path, *, threads: int | None = None) -> "Predictor":
        path = Path(path)
        if path.suffix in CHECKPOINT_SUFFIXES:
            return cls._from_checkpoint(path)
        if path.suffix in ONNX_SUFFIXES:
            return cls._from_onnx(path, threads)
        raise ClassifierError(f"cannot load '{path}': expected a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}) "
                              f"or an exported model ({', '.join(ONNX_SUFFIXES)})")

    @classmethod
    def _from_checkpoint(cls, path: Path) -> "Predictor":
        ckpt = load_checkpoint(path)
        prep = Preprocessing.from_dict(ckpt["preprocessing"])
        predictor = cls.from_model(model_from_checkpoint(ckpt), prep, ckpt["classes"], source=str(path),
                                   tta_flip=bool((ckpt.get("config") or {}).get("tta_flip")))
        predictor.metadata = {"model_name": ckpt["model_name"], "dataset": ckpt.get("dataset"),
                              "config": ckpt.get("config"), "epoch": ckpt.get("epoch")}
        predictor.set_task(ckpt.get("task"), ckpt.get("thresholds"))
        predictor.set_trust(ckpt.get("temperature"), ckpt.get("ood"))
        return predictor

    @classmethod
    def from_model(cls, model, prep: Preprocessing, classes: list[str], *, source: str = "model",
                   tta_flip: bool = False) -> "Predictor":
        """A predictor around a PyTorch model already in memory (put in eval mode; fp32, on its device)."""
        model.eval()
        device = next(model.parameters(), torch.empty(0)).device

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(x).to(device)).float().cpu().numpy()

        predictor = cls(run, prep, classes, source=source, backend="torch", tta_flip=tta_flip)
        predictor.model = model
        return predictor

    @classmethod
    def _from_onnx(cls, path: Path, threads: int | None) -> "Predictor":
        session = open_session(path, threads=threads)
        meta = decode_metadata(dict(session.get_modelmeta().custom_metadata_map))
        prep = prep_from_metadata(meta, source=str(path))
        graph_input = session.get_inputs()[0]
        name = graph_input.name

        def run(x: np.ndarray) -> np.ndarray:
            return session.run(None, {name: x})[0]

        predictor = cls(run, prep, meta["classes"], source=str(path), backend="onnxruntime",
                        raw_pixels=bool(meta.get("preprocessing_embedded")),
                        resize_embedded=bool(meta.get("resize_embedded")), input_shape=list(graph_input.shape),
                        metadata=meta, tta_flip=bool(meta.get("tta_flip")))
        predictor.set_task(meta.get("task"), meta.get("thresholds"))
        predictor.set_trust(meta.get("temperature"), ood_from_metadata(meta))
        names = [o.name for o in session.get_outputs()]
        if len(names) > 1:
            predictor.graph_outputs = lambda x: dict(zip(names, session.run(None, {name: x})))
        return predictor

    def set_trust(self, temperature=None, ood: dict | None = None) -> None:
        """The fitted temperature and "unknown" rule (absent in older files: 1 and none)."""
        # a float, or one per class (multi-label, per-class calibration)
        self.temperature = 1.0 if temperature is None else float(temperature) if np.ndim(temperature) == 0 \
            else np.asarray(temperature, np.float32)
        if not np.all(np.asarray(self.temperature) > 0) or np.size(self.temperature) not in (1, len(self.classes)):
            raise ClassifierError(f"{self.source} has a bad temperature {temperature} (must be > 0, one or one "
                                  "per class)")
        self.ood = dict(ood) if ood else None
        if self.ood and self.ood.get("stats") is not None:
            self.ood["stats"] = {k: np.asarray(v) for k, v in self.ood["stats"].items()}

    def set_task(self, task: str | None, thresholds=None) -> None:
        """The artifact's task and decision thresholds (absent in older files: multiclass)."""
        self.task = get_task(task)
        if thresholds is not None and len(thresholds) != len(self.classes):
            raise ClassifierError(f"{self.source} has {len(thresholds)} thresholds for {len(self.classes)} classes")
        self.thresholds = [float(t) for t in thresholds] if thresholds is not None else None

    def decision_thresholds(self, threshold: float | None = None) -> list[float] | None:
        """The per-class thresholds predictions use: ``threshold`` for every class when given (``--threshold``),
        else the fitted ones (multi-label; None for a multiclass model)."""
        if threshold is not None:
            if self.task.name == "multiclass":
                raise ClassifierError(f"a threshold is for multi-label models; {self.source} is single-label "
                                      "(it predicts its top class)")
            if not 0.0 <= float(threshold) <= 1.0:
                raise ClassifierError(f"threshold must be in [0, 1], got {threshold}")
            return [float(threshold)] * len(self.classes)
        if self.task.name == "multiclass":
            return None
        return self.thresholds or [DEFAULT_THRESHOLD] * len(self.classes)

    def label_sets(self, probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """(N, C) 0/1: the predicted classes of each image (multiclass: the top class)."""
        return self.task.decide(probs, self.decision_thresholds(threshold))

    def prepare(self, images) -> np.ndarray:
        """uint8 images -> the array this model takes (normalised float32, or uint8 pixels if embedded).

        A graph that resizes takes its images at their own size, so one array holds one size: images of
        several sizes are refused here (``predict`` batches them by size).
        """
        groups = image_groups(images)
        if self.resize_embedded and len(groups) > 1:
            raise ClassifierError(f"{self.source} resizes images itself, so an array holds images of one size; "
                                  f"these have {len(groups)} sizes: use predict(), which batches them by size")
        if not groups:
            return self.to_input(torch.zeros((0, self.prep.channels, *self.prep.size), dtype=torch.uint8))
        return np.concatenate([self.to_input(g) for g in groups])

    def to_input(self, group: torch.Tensor) -> np.ndarray:
        """Same-sized uint8 NCHW images -> the array this model takes."""
        if self.resize_embedded:
            return pixels_in_channels(group, self.prep.channels).numpy()
        if self.raw_pixels:
            return pixels_at_model_size(group, self.prep).numpy()
        return to_model_input(group, self.prep).numpy()

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Raw logits for prepared model input (NCHW); wrong shapes or dtypes get a one-line error."""
        x = np.asarray(x)
        want = np.uint8 if self.raw_pixels else np.float32
        if x.dtype != want:
            raise ClassifierError(f"{self.source} expects {np.dtype(want).name} input, got {x.dtype}")
        expected = self._expected_shape()
        if x.ndim != 4 or any(e is not None and e != g for e, g in zip(expected, x.shape[1:])):
            shown = ", ".join("?" if e is None else str(e) for e in expected)
            raise ClassifierError(f"{self.source} expects input of shape (N, {shown}) (channels, height, width), "
                                  f"got {tuple(x.shape)}")
        try:
            x = np.ascontiguousarray(x)
            return flip_averaged(self._run, x) if self.tta_flip else self._run(x)
        except ClassifierError:
            raise
        except Exception as err:  # noqa: BLE001 - ORT shape errors on dynamic graphs
            if self.backend != "onnxruntime":
                raise
            raise ClassifierError(f"{self.source} failed on input {tuple(x.shape)}: "
                                  f"{str(err).strip().splitlines()[0][:200]}") from None

    def _expected_shape(self) -> list:
        """(C, H, W) the graph was exported with; None where it accepts any size."""
        if self.input_shape is None:  # a PyTorch model: only the channel count is fixed
            return [self.prep.channels, None, None]
        return [d if isinstance(d, int) else None for d in self.input_shape[1:]]

    def predict(self, images, *, batch_size: int = 64) -> np.ndarray:
        """Class probabilities (N, C) for a list of uint8 HWC images or a uint8 NHWC batch."""
        if isinstance(images, np.ndarray) and images.ndim != 4:
            raise ClassifierError(f"an image array must be an NHWC batch, got shape {images.shape}; "
                                  "pass a single image as [image]")
        outputs = [self.probabilities(self.logits(self.to_input(group)))
                   for i in range(0, len(images), batch_size) for group in image_groups(images[i:i + batch_size])]
        return np.concatenate(outputs) if outputs else np.zeros((0, len(self.classes)), np.float32)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of raw logits: divided by the temperature, then the task's softmax or sigmoid."""
        return self.task.probabilities(logits / self.temperature)

    def predict_with_scores(self, images, *, batch_size: int = 64):
        """(probabilities (N, C), "unknown" scores (N,) or None without a stored rule): one pass per batch.
        Images scoring below ``self.ood["threshold"]`` are unknown (classifier/trust/ood.py)."""
        if not self.ood:
            return self.predict(images, batch_size=batch_size), None
        probs, scores = [], []
        for i in range(0, len(images), batch_size):
            for group in image_groups(images[i:i + batch_size]):
                x = self.to_input(group)
                logits = self.logits(x)
                probs.append(self.probabilities(logits))
                scores.append(self._ood_score(x, logits))
        if not probs:
            return np.zeros((0, len(self.classes)), np.float32), np.zeros(0)
        return np.concatenate(probs), np.concatenate(scores)

    def _ood_score(self, x: np.ndarray, logits: np.ndarray) -> np.ndarray:
        name = self.ood["score"]
        if not score_entry(name).on_features:
            return ood_scores(name, logits, temperature=self.temperature)
        if self.model is not None:  # PyTorch: the penultimate features and the statistics in the checkpoint
            with torch.inference_mode():
                device = next(self.model.parameters(), torch.empty(0)).device
                features = self.model.forward_features(torch.from_numpy(x).to(device)).float().cpu().numpy()
            return ood_scores(name, logits, features, stats=self.ood.get("stats"))
        if self.graph_outputs is not None:
            outputs = self.graph_outputs(np.ascontiguousarray(x))
            if OOD_OUTPUT in outputs:
                return np.asarray(outputs[OOD_OUTPUT], dtype=np.float64)
        raise ClassifierError(f"{self.source} names the {name} score but has no '{OOD_OUTPUT}' output: "
                              "export it again from its checkpoint")

    def heatmaps(self, images) -> list[np.ndarray]:
        """One heat map per uint8 HWC image, at the image's own height and width, in [0, 1], for the
        predicted class: Grad-CAM on a PyTorch model, the graph's ``cam`` output on an export with one."""
        maps = []
        for image in images:
            group = image_groups([image])[0]
            x = self.to_input(group)
            if self.model is not None:
                device = next(self.model.parameters(), torch.empty(0)).device
                small = grad_cam(self.model, torch.from_numpy(x).to(device))[0]
            elif self.graph_outputs is not None and CAM_OUTPUT in (outputs := self.graph_outputs(x)):
                small = normalise(np.maximum(outputs[CAM_OUTPUT][0], 0))
            else:
                raise ClassifierError(f"heat maps need the checkpoint (.pt) or an export with a '{CAM_OUTPUT}' "
                                      f"output (export.py --cam); {self.source} has neither")
            maps.append(to_image(small, group.shape[2], group.shape[3], self.prep))
        return maps

    def predict_files(self, paths, *, batch_size: int = 32) -> np.ndarray:
        """Class probabilities (N, C) for image files (any format and mode Pillow reads)."""
        paths = list(paths)
        outputs = [self.predict([load_image(p, self.prep.channels) for p in paths[i:i + batch_size]])
                   for i in range(0, len(paths), batch_size)]
        return np.concatenate(outputs) if outputs else np.zeros((0, len(self.classes)), np.float32)
