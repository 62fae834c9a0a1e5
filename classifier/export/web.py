"""A static web page that classifies images on the user's own device with ONNX Runtime Web.

``export_web`` writes a folder any static host can serve::

    index.html, classify.js        the page (classifier/export/web_page/)
    model.onnx, metadata.json      the web graph and its metadata (the ONNX metadata, as JSON:
    model.int8.onnx, metadata.int8.json   onnxruntime-web cannot read metadata_props)
    page.json                      which models the page offers, the runtime version, top-k
    ort/                           onnxruntime-web (pinned), so the page needs no network

The web graph takes decoded uint8 pixels (NCHW, any height and width, in the model's channels) and does
everything else itself: the toolkit's resize and normalisation (``--embed-preprocessing``) and, when the
run evaluated with ``tta_flip``, the mean of the image's and its mirror image's logits. The page only
decodes images, by the toolkit's rules (see ``web_page/classify.js``).
"""
from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from torch import nn

from classifier.artifact import OUTPUT_NAME, read_metadata
from classifier.cache import cache_dir
from classifier.errors import ClassifierError
from classifier.export.onnx import export_onnx, verify_onnx
from classifier.export.quantize import quantize_int8
from classifier.inference import flip_averaged
from classifier.preprocess import Preprocessing
from classifier.trust.graph import TrustGraph
from classifier.trust.ood import FeatureScore

ORT_WEB_VERSION = "1.30.0"
# npm's dist.integrity of onnxruntime-web@1.30.0: the tarball is checked against it before use.
ORT_WEB_SHA512 = "q0y+JrrtukXSzsBWEMccVfqX25LRmosXHF+CaRJmg8pZClzcV7svNc4rKY3jL02Vb7QmRMDs1SigqR4CXAfKYQ=="
# ort.min.js registers the WASM and WebGPU backends; both run on this one WebAssembly build (JSEP).
ORT_WEB_FILES = ("ort.min.js", "ort-wasm-simd-threaded.jsep.mjs", "ort-wasm-simd-threaded.jsep.wasm")
NPM_REGISTRY = "https://registry.npmjs.org"
PAGE_ASSETS = Path(__file__).with_name("web_page")
PAGE_FILES = ("index.html", "classify.js")
TOPK = 5
MIRROR_NOTE = "in the graph: logits are the mean of the image's and its mirror image's"


class MirrorAveraged(nn.Module):
    """The toolkit's test-time flip (``flip_averaged``) as a module, so the exported graph does it itself."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return flip_averaged(self.model, x)


@dataclass
class WebModel:
    precision: str  # "fp32" or "int8"
    path: Path
    metadata_path: Path
    note: str = ""


@dataclass
class WebFolder:
    path: Path
    models: list[WebModel] = field(default_factory=list)


def export_web(model: nn.Module, prep: Preprocessing, metadata: dict, out_dir, *, verify_images=None,
               quantize: str | None = None, calibration=None, opset: int | None = None,
               cam: bool = False, score: FeatureScore | None = None) -> WebFolder:
    """Write the page folder ``out_dir`` for ``model`` (``metadata``: ``checkpoint_metadata`` of its run).

    ``verify_images``: uint8 HWC images the fp32 web graph is checked on against PyTorch (the same
    parity targets as ``export.py``); ``quantize``: None, "static" or "dynamic" adds an int8 model;
    ``calibration``: fp32 model path -> model-input batches, for static quantization; ``cam``: a second
    output, the top class's activation map, which the page overlays on each image (classifier/trust/);
    ``score``: the run's "unknown" feature score (``trust.graph.feature_score``) as an ``ood_score`` output, which
    the page compares with the metadata's ``reject_threshold`` (logit scores need no output).
    """
    folder = WebFolder(_prepare_folder(out_dir))
    runtime = onnxruntime_web()  # before the slow export: offline, fail at once
    net, web_meta = web_graph(model, metadata)
    if cam and net is not model:
        raise ClassifierError("--cam: the page's graph averages each image with its mirror image (tta_flip); "
                              "its activation map is not exported")
    # the logits first: the parity check compares those
    graph = TrustGraph(model, score, cam, mirror=net is not model) if cam or score is not None else net
    fp32 = folder.path / "model.onnx"
    export_onnx(graph, prep, web_meta, fp32, embed_preprocessing=True, opset=opset,
                outputs=graph.output_names if graph is not net else (OUTPUT_NAME,))
    note = "not verified"
    if verify_images is not None and len(verify_images):
        try:
            note = f"verified against PyTorch: {verify_onnx(fp32, net, verify_images)}"
        except ClassifierError:
            fp32.unlink(missing_ok=True)
            raise
    folder.models.append(WebModel("fp32", fp32, write_metadata_json(fp32, folder.path / "metadata.json"), note))
    if quantize:
        int8 = folder.path / "model.int8.onnx"
        quantize_int8(fp32, int8, method=quantize, calibration_batches=calibration(fp32) if calibration else None)
        folder.models.append(WebModel("int8", int8, write_metadata_json(int8, folder.path / "metadata.int8.json"),
                                      read_metadata(int8)["quantization"]))
    else:  # an earlier export's int8 model must not outlive the fp32 model it came from
        for stale in ("model.int8.onnx", "metadata.int8.json"):
            (folder.path / stale).unlink(missing_ok=True)
    _write_page(folder, runtime)
    return folder


def web_graph(model: nn.Module, metadata: dict) -> tuple[nn.Module, dict]:
    """The network to export for the browser and its metadata: a run evaluated with the test-time flip
    gets it inside the graph, and its metadata then tells clients not to flip again."""
    if not metadata.get("tta_flip"):
        return model, dict(metadata)
    return MirrorAveraged(model), {**metadata, "tta_flip": False, "test_time_flip": MIRROR_NOTE}


def write_metadata_json(model_path: Path, json_path: Path) -> Path:
    """The model's ONNX metadata (decoded as ``read_metadata`` decodes it) as JSON beside it."""
    json_path.write_text(json.dumps(read_metadata(model_path), indent=1) + "\n")
    return json_path


def _prepare_folder(out_dir) -> Path:
    """An empty or new folder, or one this function wrote before (its files are replaced)."""
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise ClassifierError(f"--web: '{path}' is a file, not a folder")
    if path.is_dir() and any(path.iterdir()) and not (path / "page.json").is_file():
        raise ClassifierError(f"--web: '{path}' is a folder with other files in it; give a new or empty folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_page(folder: WebFolder, runtime: Path) -> None:
    for name in PAGE_FILES:
        shutil.copyfile(PAGE_ASSETS / name, folder.path / name)
    ort_dir = folder.path / "ort"
    ort_dir.mkdir(exist_ok=True)
    for name in ORT_WEB_FILES:
        shutil.copyfile(runtime / name, ort_dir / name)
    num_classes = json.loads(folder.models[0].metadata_path.read_text())["num_classes"]
    page = {
        "models": [{"precision": m.precision, "file": m.path.name, "metadata": m.metadata_path.name}
                   for m in folder.models],
        "onnxruntime_web": ORT_WEB_VERSION,
        "topk": min(TOPK, num_classes),
    }
    (folder.path / "page.json").write_text(json.dumps(page, indent=1) + "\n")


# --- onnxruntime-web, fetched once into the cache ----------------------------------------------------
def onnxruntime_web() -> Path:
    """The folder holding the pinned onnxruntime-web files (``ORT_WEB_FILES``; MIT, banner in ort.min.js).

    Fetched from the npm registry on first use (``$NPM_CONFIG_REGISTRY`` if set), or unpacked from
    ``onnxruntime-web-VERSION.tgz`` put in the cache by hand; either way checked against the pinned hash.
    """
    root = cache_dir("onnxruntime-web")
    target = root / ORT_WEB_VERSION
    if all((target / name).is_file() for name in ORT_WEB_FILES):
        return target
    tarball = root / f"onnxruntime-web-{ORT_WEB_VERSION}.tgz"
    downloaded = not tarball.is_file()
    if downloaded:
        _download(tarball_url(), tarball)
    try:
        _check_sha512(tarball)
        _unpack(tarball, target)
    finally:
        if downloaded:
            tarball.unlink(missing_ok=True)  # the unpacked files are what is kept
    return target


def tarball_url() -> str:
    registry = (os.environ.get("NPM_CONFIG_REGISTRY") or NPM_REGISTRY).rstrip("/")
    return f"{registry}/onnxruntime-web/-/onnxruntime-web-{ORT_WEB_VERSION}.tgz"


def _download(url: str, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as err:  # URLError, timeouts, refused connections
        tmp.unlink(missing_ok=True)
        reason = getattr(err, "reason", None) or err
        raise ClassifierError(
            f"onnxruntime-web {ORT_WEB_VERSION} (needed once for --web) could not be fetched from {url} ({reason}); "
            f"connect once and retry, or run `npm pack onnxruntime-web@{ORT_WEB_VERSION}` on a connected machine "
            f"and copy the .tgz to {dest}") from None
    os.replace(tmp, dest)


def _check_sha512(tarball: Path) -> None:
    digest = hashlib.sha512()
    with open(tarball, "rb") as f:
        for block in iter(partial(f.read, 1 << 20), b""):
            digest.update(block)
    if base64.b64encode(digest.digest()).decode() != ORT_WEB_SHA512:
        raise ClassifierError(f"{tarball} is not onnxruntime-web {ORT_WEB_VERSION} as published on npm (its sha512 "
                              "differs from the pinned one); delete it and retry")


def _unpack(tarball: Path, target: Path) -> None:
    """Copy only the files the page needs out of the npm tarball (by exact member name)."""
    members = {f"package/dist/{name}": name for name in ORT_WEB_FILES}
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpack-"))
    try:
        with tarfile.open(tarball) as tar:
            for member, name in members.items():
                source = tar.extractfile(member) if member in tar.getnames() else None
                if source is None:
                    raise ClassifierError(f"{tarball} has no {member}")
                with source, open(tmp / name, "wb") as out:
                    shutil.copyfileobj(source, out)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- serving the folder on localhost ------------------------------------------------------------------
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with the MIME types the page needs (module scripts must be JavaScript; wasm for
    streaming compilation), whatever this system's mime.types says; no per-request log lines."""
    extensions_map = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
                      ".json": "application/json", ".onnx": "application/octet-stream", ".html": "text/html"}

    def log_message(self, format, *args):  # the base class's signature
        pass


def make_server(folder, port: int = 8000, host: str = "127.0.0.1") -> http.server.ThreadingHTTPServer:
    """An HTTP server for ``folder`` on ``host``: ``port``, or a free one if that is taken (0: any free port)."""
    handler = partial(_QuietHandler, directory=str(folder))
    try:
        return http.server.ThreadingHTTPServer((host, port), handler)
    except OSError:
        if port == 0:
            raise
        return http.server.ThreadingHTTPServer((host, 0), handler)


def server_url(server: http.server.HTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{'localhost' if host in ('127.0.0.1', '::1') else host}:{port}/"


def serve(folder, port: int = 8000) -> None:
    """Serve ``folder`` on localhost until Ctrl+C (browsers refuse WebAssembly and models from file://)."""
    with make_server(folder, port) as server:
        print(f"serving {folder} at {server_url(server)} (Ctrl+C to stop)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped")


if __name__ == "__main__":  # `python -m classifier.export.web` fetches the runtime ahead (make test, make demo)
    try:
        print(f"onnxruntime-web {ORT_WEB_VERSION}: {onnxruntime_web()}")
    except ClassifierError as err:
        raise SystemExit(f"note: {err}") from None
