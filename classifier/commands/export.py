"""``python export.py``: a checkpoint -> verified ONNX (+ int8, + ORT mobile format), with a report.

Verification and the report use the run's own data: the split recorded in ``split.json`` beside the
checkpoint (val images for the parity check, training images for int8 calibration, the test split
for accuracy). Without data the parity check runs on random images, and says so.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classifier.commands import cli_entry
from classifier.errors import ClassifierError

PARITY_IMAGES = 256  # val images compared between ONNX Runtime and PyTorch
CALIBRATION_IMAGES = 256  # training images for static int8 calibration
CALIBRATION_BATCH = 32


def build_parser() -> argparse.ArgumentParser:
    from classifier.export.onnx import DEFAULT_OPSET, ORT_TARGETS

    parser = argparse.ArgumentParser(
        description="Export a checkpoint to ONNX, verify it against PyTorch, optionally quantize it to int8 "
                    "and convert it to the ORT format of ONNX Runtime Mobile.",
        epilog="examples:\n"
               "  python export.py --checkpoint runs/demo/best.pt\n"
               "  python export.py --checkpoint runs/demo/best.pt --quantize int8 --mobile --benchmark",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="toolkit checkpoint, e.g. runs/NAME/best.pt")
    parser.add_argument("--output", help="ONNX file to write (default: model.onnx beside the checkpoint)")
    parser.add_argument("--dynamic-size", action="store_true", help="let input height and width vary too")
    parser.add_argument("--embed-preprocessing", action="store_true",
                        help="fold resizing, pixel scaling and normalisation into the graph: input is uint8 NCHW "
                             "pixels of any height and width")
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    parser.add_argument("--quantize", choices=["int8"], help="also write an int8 model (NAME.int8.onnx)")
    parser.add_argument("--quantize-method", choices=["static", "dynamic"], default="static",
                        help="static: calibrated on training images (default); dynamic: weights only")
    parser.add_argument("--mobile", nargs="?", const="arm", choices=ORT_TARGETS, metavar="{arm,amd64}",
                        help="also write NAME.ort and NAME.required_operators.config for ONNX Runtime Mobile, "
                             "optimised for ARM CPUs (phones; the default) or amd64 (x86-64 devices)")
    parser.add_argument("--benchmark", action="store_true",
                        help="time PyTorch eager vs ONNX Runtime (batch-1 latency, throughput)")
    parser.add_argument("--threads", type=int, help="CPU threads for the latency figures and --benchmark, both "
                        "engines (default: PyTorch's, usually the number of cores)")
    parser.add_argument("--opset", type=int, help=f"ONNX opset (default: {DEFAULT_OPSET})")
    parser.add_argument("--data-dir", help="dataset folder (default: the one the run was trained with)")
    return parser


@dataclass
class RunSplits:
    """The run's samples per split name, or why there are none."""
    splits: dict
    note: str = ""

    def get(self, *names):
        return next((self.splits[n] for n in names if self.splits.get(n) is not None), None)


def load_run_splits(ckpt_path: Path, ckpt: dict, data_dir: str | None) -> RunSplits:
    """train/val/test Samples as the run used them: its split.json (else the same seeded split made
    again), then its class selection. Never downloads: no data is reported, not fatal."""
    from classifier.data import load_dataset, load_split, samples_from_record, split_dataset
    from classifier.engine.setup import select_classes

    config = ckpt.get("config") or {}
    root = data_dir or config.get("data_dir") or "datasets"
    split_file = ckpt_path.parent / "split.json"
    try:
        if split_file.exists():
            record = load_split(split_file)
            splits, info = {}, None
            for name in record.get("splits", {}):
                info, splits[name] = samples_from_record(None, root, record, name, download=False)
            where = f"the split recorded in {split_file}"
        else:
            spec = ckpt.get("dataset") or config.get("dataset")
            if not spec:
                return RunSplits({}, "no data (no split.json and no dataset in the checkpoint)")
            info, official = load_dataset(spec, root, download=False)
            splits, _ = split_dataset(info, official, val_fraction=config.get("val_fraction", 0.1),
                                      test_fraction=config.get("test_fraction", 0.2), seed=config.get("seed", 0))
            where = f"{spec} split again with the run's seed"
    except ClassifierError as err:
        return RunSplits({}, f"no data ({err})")
    _, splits = select_classes(info, splits, config.get("classes"))
    return RunSplits(splits, where)


def sample_images(samples, channels: int, indices=None):
    """uint8 images of a Samples (array batch, or files read with ``load_image``), optionally a subset."""
    from classifier.data import load_image

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


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.threads is not None and args.threads < 1:
        raise ClassifierError(f"--threads must be at least 1, got {args.threads}")
    from classifier.checkpoint import load_checkpoint, model_from_checkpoint
    from classifier.export import benchmark, checkpoint_metadata, export_onnx
    from classifier.inference import Predictor
    from classifier.preprocess import Preprocessing

    ckpt_path = Path(args.checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    prep = Preprocessing.from_dict(ckpt["preprocessing"])
    out = Path(args.output) if args.output else ckpt_path.parent / "model.onnx"
    if out.suffix != ".onnx":
        raise ClassifierError(f"--output must end in .onnx, got '{out}'")
    data = load_run_splits(ckpt_path, ckpt, args.data_dir)

    export_onnx(model, prep, checkpoint_metadata(ckpt), out, dynamic_size=args.dynamic_size,
                embed_preprocessing=args.embed_preprocessing, opset=args.opset)
    print(f"exported {out} ({ckpt['model_name']}, input {prep.channels}x{prep.size[0]}x{prep.size[1]}"
          f"{' uint8 pixels' if args.embed_preprocessing else ''}; data: {data.note})")
    fp32 = Row("ONNX fp32", out, max_diff=None if args.no_verify else _verify(out, model, prep, data))
    rows = [Row("PyTorch"), fp32, *_derived_models(args, out, data)]

    _fill_accuracy(rows, Predictor.from_model(model, prep, ckpt["classes"], source=str(ckpt_path)), data)
    timed = benchmark(prep, model=model, onnx_models={r.name: r.path for r in rows if r.path is not None},
                      threads=args.threads, batch=32 if args.benchmark else None, runs=50 if args.benchmark else 20,
                      budget_s=2.0 if args.benchmark else 0.5)
    for row, result in zip(rows, timed):
        row.latency_ms = result.median_ms
    print_report(rows, data, timed, full_benchmark=args.benchmark)
    if args.embed_preprocessing and args.dynamic_size and fp32.agreement is not None and fp32.agreement < 1:
        print("(with --dynamic-size the graph does not resize: images are resized and rounded to whole pixel values "
              "before it, where the checkpoint keeps the fractions, so predictions near a tie can differ)")
    if args.mobile and args.mobile != host_cpu():
        print(f"(the .ort files are optimised for {args.mobile} CPUs: their latency on this {host_cpu()} machine says "
              f"little about the target device; --mobile {host_cpu()} makes ones for a machine like this)")
    return out


def host_cpu() -> str:
    """This machine's CPU family in ONNX Runtime's converter terms (arm or amd64)."""
    import platform

    return "arm" if platform.machine().lower().startswith(("arm", "aarch64")) else "amd64"


def _derived_models(args, out: Path, data: RunSplits) -> list[Row]:
    """int8 (--quantize) and ORT-format (--mobile) versions of the verified fp32 model."""
    from classifier.export import quantize_int8, read_metadata, required_operators_path, to_ort
    from classifier.inference import Predictor

    rows = [Row("ONNX fp32", out)]
    if args.quantize:
        int8_path = out.with_name(f"{out.stem}.int8.onnx")
        batches = calibration_batches(Predictor.load(out), data) if args.quantize_method == "static" else None
        quantize_int8(out, int8_path, calibration_batches=batches, method=args.quantize_method)
        print(f"quantized: {int8_path} ({read_metadata(int8_path)['quantization']})")
        rows.append(Row("ONNX int8", int8_path))
    if args.mobile:
        for row in list(rows):
            ort_path = to_ort(row.path, target=args.mobile)
            rows.append(Row(f".ort {row.name.split()[-1]}", ort_path))
            print(f"mobile: {ort_path} (optimised for {args.mobile}; operators for a reduced build: "
                  f"{required_operators_path(ort_path)})")
    return rows[1:]


def print_report(rows: list[Row], data: RunSplits, timed, *, full_benchmark: bool) -> None:
    from classifier.export import format_results

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


def _verify(out: Path, model, prep, data: RunSplits) -> float:
    """Parity check on val (else test) images, random pixels without data; a failure removes the file."""
    from classifier.export import verify_onnx

    samples = data.get("val", "test")
    if samples is not None:
        images = sample_images(samples, prep.channels, seeded_subset(len(samples), PARITY_IMAGES))
        what = f"{len(images)} {'val' if data.get('val') is samples else 'test'} images"
    else:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (64, *prep.size, prep.channels), dtype=np.uint8)
        what = "64 random images (no data found)"
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
    from classifier.inference import image_groups

    train = data.get("train")
    if train is None:
        raise ClassifierError(f"static int8 quantization calibrates on training images, but there are none "
                              f"({data.note}); pass --data-dir or use --quantize-method dynamic")
    idx = seeded_subset(len(train), CALIBRATION_IMAGES)
    return (fp32_predictor.to_input(group) for i in range(0, len(idx), CALIBRATION_BATCH)
            for group in image_groups(sample_images(train, fp32_predictor.prep.channels, idx[i:i + CALIBRATION_BATCH])))


def _fill_accuracy(rows: list[Row], torch_predictor, data: RunSplits) -> None:
    from classifier.inference import Predictor

    samples = data.get("test", "val")
    if samples is None:
        return
    labels = np.asarray(samples.labels)
    reference = predictions(torch_predictor, samples)
    for row in rows:
        pred = reference if row.path is None else predictions(Predictor.load(row.path), samples)
        row.accuracy = float((pred == labels).mean())
        row.agreement = float((pred == reference).mean())
