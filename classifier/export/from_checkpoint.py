"""A toolkit checkpoint -> verified ONNX (+ int8, + ORT mobile format), with a report.

Verification and the report use the run's own data: the split recorded in ``split.json`` beside the
checkpoint (val images for the parity check, training images for int8 calibration, the test split
for accuracy). Without data (e.g. a run trained on in-memory arrays) the parity check runs on random
images, and says so.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classifier.artifact import checkpoint_metadata, read_metadata
from classifier.checkpoint import load_checkpoint
from classifier.data import RunSplits, load_image, run_splits
from classifier.errors import ClassifierError
from classifier.export.benchmark import benchmark, format_results
from classifier.export.onnx import ORT_TARGETS, export_onnx, required_operators_path, to_ort, verify_onnx
from classifier.export.quantize import quantize_int8
from classifier.inference import Predictor, image_groups
from classifier.models import model_from_checkpoint
from classifier.preprocess import Preprocessing

PARITY_IMAGES = 256  # val images compared between ONNX Runtime and PyTorch
CALIBRATION_IMAGES = 256  # training images for static int8 calibration
CALIBRATION_BATCH = 32


@dataclass
class ExportOptions:
    """The options of ``export.py`` and ``Model.export``, with the same names."""

    output: str | None = None  # the .onnx to write (default: model.onnx beside the checkpoint)
    dynamic_size: bool = False  # input height and width may vary too
    embed_preprocessing: bool = False  # resize + normalisation in the graph: uint8 NCHW pixels of any size
    verify: bool = True  # ONNX Runtime vs PyTorch parity check
    quantize: str | None = None  # "int8": also NAME.int8.onnx
    quantize_method: str = "static"  # static (calibrated on training images) | dynamic (weights only)
    mobile: str | None = None  # "arm" | "amd64": also NAME.ort for ONNX Runtime Mobile
    benchmark: bool = False  # time PyTorch eager vs ONNX Runtime
    threads: int | None = None  # CPU threads for the latency figures and the benchmark
    opset: int | None = None
    data_dir: str | None = None  # dataset folder (default: the one the run was trained with)

    @classmethod
    def of(cls, **options) -> "ExportOptions":
        """Options from keyword arguments; an unknown name is a one-line error."""
        try:
            return cls(**options)
        except TypeError as err:
            raise ClassifierError(f"export: {err}") from None

    def check(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ClassifierError(f"--threads must be at least 1, got {self.threads}")
        if self.quantize not in (None, "int8"):
            raise ClassifierError(f"quantize must be 'int8' or None, got {self.quantize!r}")
        if self.quantize_method not in ("static", "dynamic"):
            raise ClassifierError(f"quantize_method must be static or dynamic, got {self.quantize_method!r}")
        if self.mobile not in (None, *ORT_TARGETS):
            raise ClassifierError(f"mobile must be one of {', '.join(ORT_TARGETS)}, got {self.mobile!r}")
        if self.output is not None and Path(self.output).suffix != ".onnx":
            raise ClassifierError(f"--output must end in .onnx, got '{self.output}'")


def load_run_splits(ckpt_path: Path, ckpt: dict, data_dir: str | None) -> RunSplits:
    """train/val/test Samples as the run used them (``run_splits``). Never downloads: no data is
    reported in the note, not fatal."""
    config = ckpt.get("config") or {"dataset": ckpt.get("dataset")}
    if not config.get("dataset"):
        return RunSplits(None, list(ckpt["classes"]), {}, None, "no data (no dataset in the checkpoint)")
    try:
        return run_splits(config, split_file=Path(ckpt_path).parent / "split.json", data_dir=data_dir,
                          download=False)
    except ClassifierError as err:
        return RunSplits(None, list(ckpt["classes"]), {}, None, f"no data ({err})")


def export_checkpoint(checkpoint, options: ExportOptions) -> Path:
    """Export, verify, quantize / convert as asked, and print the report; returns the .onnx path."""
    options.check()
    ckpt_path = Path(checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    prep = Preprocessing.from_dict(ckpt["preprocessing"])
    out = Path(options.output) if options.output else ckpt_path.parent / "model.onnx"
    data = load_run_splits(ckpt_path, ckpt, options.data_dir)

    export_onnx(model, prep, checkpoint_metadata(ckpt), out, dynamic_size=options.dynamic_size,
                embed_preprocessing=options.embed_preprocessing, opset=options.opset)
    print(f"exported {out} ({ckpt['model_name']}, input {prep.channels}x{prep.size[0]}x{prep.size[1]}"
          f"{' uint8 pixels' if options.embed_preprocessing else ''}; data: {data.note})")
    fp32 = Row("ONNX fp32", out, max_diff=_verify(out, model, prep, data) if options.verify else None)
    rows = [Row("PyTorch"), fp32, *_derived_models(options, out, data)]

    tta = bool((ckpt.get("config") or {}).get("tta_flip"))
    _fill_accuracy(rows, Predictor.from_model(model, prep, ckpt["classes"], source=str(ckpt_path), tta_flip=tta),
                   data)
    timed = benchmark(prep, model=model, onnx_models={r.name: r.path for r in rows if r.path is not None},
                      threads=options.threads, batch=32 if options.benchmark else None,
                      runs=50 if options.benchmark else 20, budget_s=2.0 if options.benchmark else 0.5)
    for row, result in zip(rows, timed):
        row.latency_ms = result.median_ms
    print_report(rows, data, timed, full_benchmark=options.benchmark)
    if options.embed_preprocessing and options.dynamic_size and fp32.agreement is not None and fp32.agreement < 1:
        print("(with --dynamic-size the graph does not resize: images are resized and rounded to whole pixel values "
              "before it, where the checkpoint keeps the fractions, so predictions near a tie can differ)")
    if options.mobile and options.mobile != host_cpu():
        print(f"(the .ort files are optimised for {options.mobile} CPUs: their latency on this {host_cpu()} machine "
              f"says little about the target device; --mobile {host_cpu()} makes ones for a machine like this)")
    return out


def sample_images(samples, channels: int, indices=None):
    """uint8 images of a Samples (array batch, or files read with ``load_image``), optionally a subset."""
    if indices is not None:
        samples = samples.subset(indices)
    if samples.images is not None:
        return samples.images
    return [load_image(p, channels) for p in samples.paths]


def seeded_subset(n_total: int, n: int, seed: int = 0) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).permutation(n_total)[:n])


@dataclass
class Row:
    name: str
    path: Path | None = None
    accuracy: float | None = None
    agreement: float | None = None
    max_diff: float | None = None
    latency_ms: float | None = None

    def line(self) -> str:
        size = f"{self.path.stat().st_size / 1e6:8.2f} MB" if self.path else f"{'-':>11}"
        pct = lambda v: f"{v:8.2%}" if v is not None else f"{'-':>8}"  # noqa: E731
        diff = f"{self.max_diff:9.1e}" if self.max_diff is not None else f"{'-':>9}"
        lat = f"{self.latency_ms:8.3f} ms" if self.latency_ms is not None else f"{'-':>11}"
        return f"{self.name:<12} {size} {pct(self.accuracy)}  {pct(self.agreement)}  {diff}  {lat}"


def predictions(predictor, samples, batch_size: int = 256) -> np.ndarray:
    """Predicted class per sample (files are read batch by batch)."""
    out = []
    for start in range(0, len(samples), batch_size):
        idx = np.arange(start, min(start + batch_size, len(samples)))
        out.append(predictor.predict(sample_images(samples, predictor.prep.channels, idx), batch_size=batch_size))
    return np.concatenate(out).argmax(1) if out else np.zeros(0, np.int64)


def host_cpu() -> str:
    """This machine's CPU family in ONNX Runtime's converter terms (arm or amd64)."""
    return "arm" if platform.machine().lower().startswith(("arm", "aarch64")) else "amd64"


def _derived_models(options: ExportOptions, out: Path, data: RunSplits) -> list[Row]:
    """int8 (quantize) and ORT-format (mobile) versions of the verified fp32 model."""
    rows = [Row("ONNX fp32", out)]
    if options.quantize:
        int8_path = out.with_name(f"{out.stem}.int8.onnx")
        batches = calibration_batches(Predictor.load(out), data) if options.quantize_method == "static" else None
        quantize_int8(out, int8_path, calibration_batches=batches, method=options.quantize_method)
        print(f"quantized: {int8_path} ({read_metadata(int8_path)['quantization']})")
        rows.append(Row("ONNX int8", int8_path))
    if options.mobile:
        for row in list(rows):
            ort_path = to_ort(row.path, target=options.mobile)
            rows.append(Row(f".ort {row.name.split()[-1]}", ort_path))
            print(f"mobile: {ort_path} (optimised for {options.mobile}; operators for a reduced build: "
                  f"{required_operators_path(ort_path)})")
    return rows[1:]


def print_report(rows: list[Row], data: RunSplits, timed, *, full_benchmark: bool) -> None:
    print(f"\n{'format':<12} {'size':>11} {'test acc':>8}  {'agree PT':>8}  {'max|dlog|':>9}  {'latency b1':>11}")
    for row in rows:
        print(row.line())
    samples = data.get("test", "val")
    where = (f"accuracy and agreement with PyTorch on {len(samples)} {'test' if data.get('test') else 'val'} images"
             if samples is not None else f"no accuracy: {data.note}")
    print(f"({where}; max|dlog|: largest logit difference from PyTorch in the parity check; "
          f"latency: median at batch 1, {timed[0].threads} thread(s))")
    if full_benchmark:
        print("\n" + format_results(timed))


def parity_images(prep: Preprocessing, data: RunSplits):
    """(uint8 images, what they are) for the parity check: val (else test) images, random pixels without data."""
    samples = data.get("val", "test")
    if samples is not None:
        images = sample_images(samples, prep.channels, seeded_subset(len(samples), PARITY_IMAGES))
        return images, f"{len(images)} {'val' if data.get('val') is samples else 'test'} images"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (64, *prep.size, prep.channels), dtype=np.uint8), "64 random images (no data found)"


def _verify(out: Path, model, prep, data: RunSplits) -> float:
    """Parity check on val (else test) images, random pixels without data; a failure removes the file."""
    images, what = parity_images(prep, data)
    try:
        parity = verify_onnx(out, model, images)
    except ClassifierError:
        out.unlink(missing_ok=True)
        raise
    print(f"verified: {parity.max_abs_diff:.1e} max |logit diff|, {parity.top1_agreement:.2%} top-1 agreement "
          f"with PyTorch on {what}")
    return parity.max_abs_diff


def calibration_batches(fp32_predictor, data: RunSplits):
    """Model-input batches of training images, prepared exactly as the fp32 model takes them."""
    train = data.get("train")
    if train is None:
        raise ClassifierError(f"static int8 quantization calibrates on training images, but there are none "
                              f"({data.note}); pass --data-dir or use --quantize-method dynamic")
    idx = seeded_subset(len(train), CALIBRATION_IMAGES)
    return (fp32_predictor.to_input(group) for i in range(0, len(idx), CALIBRATION_BATCH)
            for group in image_groups(sample_images(train, fp32_predictor.prep.channels, idx[i:i + CALIBRATION_BATCH])))


def _fill_accuracy(rows: list[Row], torch_predictor, data: RunSplits) -> None:
    samples = data.get("test", "val")
    if samples is None:
        return
    labels = np.asarray(samples.labels)
    reference = predictions(torch_predictor, samples)
    for row in rows:
        pred = reference if row.path is None else predictions(Predictor.load(row.path), samples)
        row.accuracy = float((pred == labels).mean())
        row.agreement = float((pred == reference).mean())
