"""A toolkit checkpoint -> the export formats asked for (classifier/export/formats.py), with a report.

Every format goes through ``export_checkpoint``: the checkpoint is loaded once, each format of the plan
builds its files (verified and calibrated on the run's own data, classifier/export/run_data.py), then one
report compares every model written with PyTorch: size, test accuracy, agreement, latency.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from classifier.checkpoint import load_checkpoint
from classifier.data import RunSplits
from classifier.export.benchmark import benchmark, format_results
from classifier.export.formats import ExportJob, ExportOptions, Row, plan
from classifier.export.run_data import load_run_splits, predictions
from classifier.export.web import serve
from classifier.inference import Predictor
from classifier.tasks import to_multilabel
from classifier.models import model_from_checkpoint
from classifier.preprocess import Preprocessing
from classifier.tracking import log_exported


def export_checkpoint(checkpoint, options: ExportOptions) -> Path:
    """Build the formats of ``options`` and print the report; returns the first asked format's file (the
    .onnx for onnx, the folder for web). ``options.serve``: then serve the web page until Ctrl+C."""
    options.check()
    formats = plan(options)
    ckpt_path = Path(checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    job = ExportJob(ckpt_path, ckpt, model_from_checkpoint(ckpt), Preprocessing.from_dict(ckpt["preprocessing"]),
                    load_run_splits(ckpt_path, ckpt, options.data_dir), options)
    written = {fmt.name: fmt.build(job) for fmt in formats}
    rows = [Row("PyTorch"), *job.rows]
    tta = bool((ckpt.get("config") or {}).get("tta_flip"))
    _fill_accuracy(rows, Predictor.from_model(job.model, job.prep, ckpt["classes"], source=str(ckpt_path),
                                              tta_flip=tta), job.data)
    timed = benchmark(job.prep, model=job.model, onnx_models={r.name: r.path for r in rows if r.path is not None},
                      threads=options.threads, batch=32 if options.benchmark else None,
                      runs=50 if options.benchmark else 20, budget_s=2.0 if options.benchmark else 0.5)
    for row, result in zip(rows, timed):
        row.latency_ms = result.median_ms
    print_report(rows, job.data, timed, full_benchmark=options.benchmark)
    log_exported(ckpt_path, [r.path for r in rows if r.path is not None])  # runs logged with --mlflow
    fp32 = next((r for r in rows if r.name == "ONNX fp32"), None)
    if options.embed_preprocessing and options.dynamic_size and fp32 and fp32.agreement is not None \
            and fp32.agreement < 1:
        print("(with --dynamic-size the graph does not resize: images are resized and rounded to whole pixel values "
              "before it, where the checkpoint keeps the fractions, so predictions near a tie can differ)")
    for note in job.notes:
        print(note)
    main = next((written[name] for name in options.requested() if name in written), next(iter(written.values())))
    if options.serve:
        serve(main)
    return main


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


def _fill_accuracy(rows: list[Row], torch_predictor, data: RunSplits) -> None:
    samples = data.get("test", "val")
    if samples is None:
        return
    labels = to_multilabel(samples.labels, len(torch_predictor.classes))  # label sets: either task
    reference = predictions(torch_predictor, samples)
    for row in rows:
        pred = reference if row.path is None else predictions(Predictor.load(row.path), samples)
        row.accuracy = float((pred == labels).all(1).mean())  # multi-label: the whole set right
        row.agreement = float((pred == reference).all(1).mean())
