"""The export formats, one table: a format's name -> its builder, what it needs and what it writes.

    onnx   NAME.onnx: fp32, verified against PyTorch (every other ONNX format derives from it)
    int8   NAME.int8.onnx: quantized from the verified fp32 model
    ort    NAME.ort (+ NAME.required_operators.config) of every ONNX model above, for ONNX Runtime Mobile
    web    a folder with a static page that classifies images in the browser (its own fp32 model, + int8)

``export.py --format onnx int8 ort`` and ``Model.export(format=["int8", "ort"])`` pick them; the options of
all of them are ``ExportOptions``, whose fields are the flags (classifier/flags.py generates them, as for
``Config``). Adding a format: a builder ``build(job) -> Path`` that writes its files and appends its rows
to ``job.rows``, one ``ExportFormat`` in ``FORMATS`` (or ``register_format`` from outside), and, if it has
a setting, one field in ``ExportOptions``. What a model file says about itself is declared in
``classifier.artifact`` (``metadata_key``), not here.
"""
from __future__ import annotations

import difflib
import platform
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

from torch import nn

from classifier.artifact import checkpoint_metadata, read_metadata
from classifier.config import convert_value
from classifier.data import RunSplits
from classifier.errors import ClassifierError
from classifier.export.onnx import DEFAULT_OPSET, ORT_TARGETS, export_onnx, required_operators_path, to_ort, verify_onnx
from classifier.export.quantize import METHODS, quantize_int8
from classifier.export.run_data import calibration_batches, parity_images
from classifier.export.web import export_web
from classifier.flags import declared_types, flag_name, flag_spec
from classifier.inference import Predictor
from classifier.preprocess import Preprocessing
from classifier.trust.graph import feature_score, trust_graph


# --- the options: one field per flag ------------------------------------------------------------------
def option(default=None, *, help: str, old: dict | None = None, **argparse_options):
    """An ``ExportOptions`` field: its default, its flag's help, old spellings and argparse extras."""
    return field(default=default, metadata=flag_spec(help=help, old=old, **argparse_options))


@dataclass
class ExportOptions:
    """The options of ``export.py`` and ``Model.export``, with the same names (``--quantize-method`` is
    ``quantize_method``); ``format`` picks rows of ``FORMATS``."""

    format: list | None = option(help="what to write (several allowed): see the formats below "
                                      "(default: onnx)", nargs="+", metavar="NAME")
    output: str | None = option(help="the .onnx to write (default: model.onnx beside the checkpoint); "
                                     "web: the page's folder (default: web/ beside the checkpoint)")
    dynamic_size: bool = option(False, help="let input height and width vary too (not web)")
    embed_preprocessing: bool = option(False, help="fold resizing, pixel scaling and normalisation into the "
                                                   "graph: input is uint8 NCHW pixels of any height and width "
                                                   "(web always does)")
    verify: bool = option(True, help="ONNX Runtime vs PyTorch parity check (default: true)",
                          old={"--no-verify": False})
    quantize_method: str = option("static", help="int8: static (calibrated on training images; default) or "
                                                 "dynamic (weights only)")
    ort_target: str = option("arm", help="ort: the CPU the .ort files are optimised for: arm (phones; default) "
                                         "or amd64 (x86-64 devices)")
    benchmark: bool = option(False, help="time PyTorch eager vs ONNX Runtime (batch-1 latency, throughput)")
    threads: int | None = option(help="CPU threads for the latency figures and --benchmark, both engines "
                                      "(default: PyTorch's, usually the number of cores)")
    opset: int | None = option(help=f"ONNX opset (default: {DEFAULT_OPSET})")
    data_dir: str | None = option(help="dataset folder (default: the one the run was trained with)")
    serve: bool = option(False, help="web: serve the page on localhost until Ctrl+C")
    cam: bool = option(False, help="onnx, web: a second output 'cam', the class activation map of the top class at "
                                   "the feature resolution (nets with global average pooling + linear head)")
    # older spellings, kept working for scripts and notebooks
    quantize: str | None = option(help="same as adding int8 to --format", metavar="int8")
    mobile: str | None = option(help="same as adding ort to --format, with --ort-target TARGET (default arm)",
                                nargs="?", const="arm", metavar="{arm,amd64}")
    web: str | None = option(help="same as --format web [--output DIR]", nargs="?", const="", metavar="DIR")

    @classmethod
    def of(cls, **options) -> "ExportOptions":
        """Options from keyword arguments or flags (text is converted); an unknown name is a one-line error."""
        names = [f.name for f in fields(cls)]
        for name in options:
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                raise ClassifierError(f"export: unexpected keyword argument '{name}'"
                                      + (f"; did you mean '{close[0]}'?" if close else ""))
        return cls(**{name: cls.convert(name, value) for name, value in options.items()})

    @staticmethod
    def convert(name: str, value):
        """One option's value converted to its declared type (``"2"`` -> 2 for ``threads``); one-line error."""
        if name == "format" and value is not None:
            items = [value] if isinstance(value, str) else list(value)
            return [part for item in items for part in str(item).replace(",", " ").split()]
        kinds, optional = declared_types(_FIELDS[name])
        if value is None and optional:
            return None
        return convert_value(value, kinds, f"export option {name}")

    def requested(self) -> list[str]:
        """The format names asked for, the old spellings included, in the order given."""
        names = list(self.format or ([] if self.web is not None else ["onnx"]))
        names += [name for name, asked in (("web", self.web is not None), ("int8", bool(self.quantize)),
                                           ("ort", bool(self.mobile))) if asked]
        return list(dict.fromkeys(names))

    def check(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ClassifierError(f"--threads must be at least 1, got {self.threads}")
        if self.quantize not in (None, "int8"):
            raise ClassifierError(f"quantize must be 'int8' or None, got {self.quantize!r}")
        if self.quantize_method not in METHODS:
            raise ClassifierError(f"quantize_method must be static or dynamic, got {self.quantize_method!r}")
        for name in ("mobile", "ort_target"):
            if getattr(self, name) not in (None, *ORT_TARGETS):
                raise ClassifierError(f"{name} must be one of {', '.join(ORT_TARGETS)}, got {getattr(self, name)!r}")
        if self.mobile is not None and self.ort_target != "arm" and self.mobile != self.ort_target:
            # --mobile (arm unless named) would win over --ort-target: say so rather than ignore the flag
            raise ClassifierError(f"give the .ort target once: --ort-target {self.ort_target} with --format ort, "
                                  f"or --mobile {self.ort_target}")
        if self.serve and "web" not in self.requested():
            raise ClassifierError("--serve serves the page that --web writes: add --web [DIR]")
        if self.web and self.output:
            raise ClassifierError(f"give the page's folder once: --web {self.web} or --output {self.output}")
        page = "web" in self.requested()
        if not page and self.output is not None and Path(self.output).suffix != ".onnx":
            raise ClassifierError(f"--output must end in .onnx, got '{self.output}'")
        if page and self.output is not None and Path(self.output).suffix == ".onnx":
            raise ClassifierError(f"the web format writes a folder, not '{self.output}': give a folder to --output")

    def spelling(self, name: str) -> str:
        """How the user asked for format ``name``, for messages (``--mobile`` for ort asked that way)."""
        old = {"int8": ("quantize", "--quantize int8"), "ort": ("mobile", "--mobile"), "web": ("web", "--web")}
        if name in old and getattr(self, old[name][0]) is not None and name not in (self.format or []):
            return old[name][1]
        return f"{name} from --format"


_FIELDS = {f.name: f for f in fields(ExportOptions)}


# --- what a builder works on and what it reports ------------------------------------------------------
@dataclass
class Row:
    """One model in the export report (PyTorch itself has no path)."""
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


@dataclass
class ExportJob:
    """A checkpoint being exported: the model, its preprocessing and data, the options; ``rows`` grows as
    formats are built (a builder finds the models of the formats it needs there)."""
    checkpoint: Path
    ckpt: dict
    model: nn.Module
    prep: Preprocessing
    data: RunSplits
    options: ExportOptions
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # printed after the report

    @property
    def metadata(self) -> dict:
        return checkpoint_metadata(self.ckpt)

    def model_files(self, suffix: str = ".onnx") -> list[Path]:
        return [row.path for row in self.rows if row.path is not None and row.path.suffix == suffix]


@dataclass(frozen=True)
class ExportFormat:
    name: str
    build: Callable[[ExportJob], Path]  # writes the files, appends rows; returns the main file (or folder)
    description: str
    needs: tuple[str, ...] = ()  # formats built first (int8 quantizes the fp32 model)
    page: bool = False  # writes a folder of its own models: not combined with other formats
    includes: tuple[str, ...] = ()  # (page formats) formats it builds inside its folder when asked (web: int8)
    refuses: tuple[str, ...] = ()  # options that cannot apply to it


# --- the builders -------------------------------------------------------------------------------------
def build_onnx(job: ExportJob) -> Path:
    opts = job.options
    out = Path(opts.output) if opts.output else job.checkpoint.parent / "model.onnx"
    net, outputs = trust_graph(job.model, job.ckpt, cam=opts.cam)  # + ood_score / cam outputs (classifier/trust/)
    export_onnx(net, job.prep, job.metadata, out, dynamic_size=opts.dynamic_size,
                embed_preprocessing=opts.embed_preprocessing, opset=opts.opset, outputs=outputs)
    print(f"exported {out} ({job.ckpt['model_name']}, input {job.prep.channels}x{job.prep.size[0]}x"
          f"{job.prep.size[1]}{' uint8 pixels' if opts.embed_preprocessing else ''}; data: {job.data.note})")
    job.rows.append(Row("ONNX fp32", out, max_diff=verified(out, job.model, job) if opts.verify else None))
    return out


def verified(path: Path, net: nn.Module, job: ExportJob) -> float:
    """Parity check on val (else test) images, random pixels without data; a failure removes the file."""
    images, what = parity_images(job.prep, job.data)
    try:
        parity = verify_onnx(path, net, images)
    except ClassifierError:
        path.unlink(missing_ok=True)
        raise
    print(f"verified: {parity.max_abs_diff:.1e} max |logit diff|, {parity.top1_agreement:.2%} top-1 agreement "
          f"with PyTorch on {what}")
    return parity.max_abs_diff


def int8_calibration(job: ExportJob):
    """fp32 model path -> its calibration batches (static method), or None (dynamic)."""
    if job.options.quantize_method != "static":
        return None
    return lambda fp32: calibration_batches(Predictor.load(fp32), job.data)


def build_int8(job: ExportJob) -> Path:
    fp32 = job.model_files()[0]
    out = fp32.with_name(f"{fp32.stem}.int8.onnx")
    calibration = int8_calibration(job)
    quantize_int8(fp32, out, calibration_batches=calibration(fp32) if calibration else None,
                  method=job.options.quantize_method)
    print(f"quantized: {out} ({read_metadata(out)['quantization']})")
    job.rows.append(Row("ONNX int8", out))
    return out


def build_ort(job: ExportJob) -> Path:
    target = job.options.ort_target if job.options.mobile is None else job.options.mobile
    written = []
    for row in [r for r in job.rows if r.path is not None and r.path.suffix == ".onnx"]:
        ort_path = to_ort(row.path, target=target)
        job.rows.append(Row(f".ort {row.name.split()[-1]}", ort_path))
        written.append(ort_path)
        print(f"mobile: {ort_path} (optimised for {target}; operators for a reduced build: "
              f"{required_operators_path(ort_path)})")
    host = host_cpu()
    if target != host:
        job.notes.append(f"(the .ort files are optimised for {target} CPUs: their latency on this {host} machine "
                         f"says little about the target device; --ort-target {host} makes ones for a machine "
                         "like this)")
    return written[0]


def build_web(job: ExportJob) -> Path:
    opts = job.options
    out_dir = opts.output or opts.web or job.checkpoint.parent / "web"
    images, what = parity_images(job.prep, job.data) if opts.verify else (None, "")
    folder = export_web(job.model, job.prep, job.metadata, out_dir, verify_images=images, opset=opts.opset,
                        quantize=opts.quantize_method if "int8" in opts.requested() else None,
                        calibration=int8_calibration(job), cam=opts.cam, score=feature_score(job.ckpt))
    for web_model in folder.models:
        print(f"{web_model.precision}: {web_model.path} ({web_model.note})")
        job.rows.append(Row(f"web {web_model.precision}", web_model.path))
    if what:
        print(f"(the parity check used {what})")
    print(f"web page: {folder.path}/index.html; browsers only run it served over http"
          f"{'' if opts.serve else f': python -m http.server -d {folder.path} (or add --serve)'}")
    return folder.path


def host_cpu() -> str:
    """This machine's CPU family in ONNX Runtime's converter terms (arm or amd64)."""
    return "arm" if platform.machine().lower().startswith(("arm", "aarch64")) else "amd64"


# --- the table ----------------------------------------------------------------------------------------
FORMATS: dict[str, ExportFormat] = {}


def register_format(fmt: ExportFormat) -> ExportFormat:
    """Add a format to the table (its name then works in ``--format`` and ``Model.export(format=...)``)."""
    if fmt.name in FORMATS:
        raise ClassifierError(f"export format '{fmt.name}' is already registered")
    unknown = [n for n in (*fmt.needs, *fmt.includes) if n not in FORMATS]
    if unknown:
        raise ClassifierError(f"export format '{fmt.name}' needs unknown format '{unknown[0]}'")
    FORMATS[fmt.name] = fmt
    return fmt


register_format(ExportFormat("onnx", build_onnx, "NAME.onnx: fp32, verified against PyTorch"))
register_format(ExportFormat("int8", build_int8, "NAME.int8.onnx: quantized from the fp32 model (--quantize-method)",
                             needs=("onnx",)))
register_format(ExportFormat("ort", build_ort, "NAME.ort of each ONNX model, for ONNX Runtime Mobile (--ort-target)",
                             needs=("onnx",)))
register_format(ExportFormat("web", build_web, "a static page that classifies images in the browser (with int8: "
                             "both models)", page=True, includes=("int8",), refuses=("dynamic_size",)))


def formats_text() -> str:
    """The table, one format a line, for --help and error messages."""
    return "\n".join(f"  {fmt.name:<6} {fmt.description}" for fmt in FORMATS.values())


def plan(options: ExportOptions) -> list[ExportFormat]:
    """The formats to build, in table order, with what they need; checks the combination (one-line errors)."""
    requested = options.requested()
    for name in requested:
        if name not in FORMATS:
            close = difflib.get_close_matches(name, FORMATS, n=1)
            raise ClassifierError(f"unknown export format '{name}'" + (f"; did you mean '{close[0]}'?" if close else "")
                                  + " (formats: " + "; ".join(f"{f.name}: {f.description}" for f in FORMATS.values())
                                  + ")")
    pages = [FORMATS[name] for name in requested if FORMATS[name].page]
    if pages:
        page = pages[0]
        extra = [name for name in requested if name != page.name and name not in page.includes]
        if extra:
            raise ClassifierError(f"the {page.name} format writes a folder of its own models (preprocessing "
                                  f"embedded): drop {options.spelling(extra[0])}")
        chosen = [page]
    else:
        wanted = set(requested)
        for name in requested:
            wanted.update(FORMATS[name].needs)
        chosen = [fmt for name, fmt in FORMATS.items() if name in wanted]
    for fmt in chosen:
        for name in fmt.refuses:
            if getattr(options, name):
                raise ClassifierError(f"{fmt.name} cannot take {flag_name(name)}: drop {flag_name(name)}")
    return chosen
