"""The inference server (classifier/serve): the V2 protocol through an unmodified tritonclient, /predict
against model.predict, every bad input a 4xx with the server still answering, timeouts, dynamic
batching, a short bounded load, and SIGTERM under load (a real serve.py process).

The ONNX model is a tiny graph (flatten + one dense layer) written with onnx.helper and the toolkit's
metadata, so no exporter runs here (test_export covers the exporter); the checkpoint is a real lenet5.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

import classifier
from classifier.artifact import INPUT_NAME, OUTPUT_NAME, preprocessing_metadata, set_metadata
from classifier.checkpoint import save_checkpoint
from classifier.errors import ClassifierError
from classifier.models import create_model
from classifier.preprocess import Preprocessing
from tests.conftest import write_problem_files

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
from classifier.serve import cli  # noqa: E402
from classifier.serve.app import create_app  # noqa: E402
from classifier.serve.batching import Batcher  # noqa: E402
from classifier.serve.options import ServeOptions  # noqa: E402
from classifier.serve.server import bind  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["blue", "green", "red"]
PREP = Preprocessing(size=(12, 12), channels=3, mean=(0.45, 0.45, 0.45), std=(0.25, 0.25, 0.25))


# --- models and servers -------------------------------------------------------------------------------------
def tiny_onnx(path: Path) -> Path:
    """input [N, 3, 12, 12] FP32 -> Flatten -> Gemm -> logits [N, 3], with the toolkit's metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    features = 3 * 12 * 12
    weight = numpy_helper.from_array((rng.standard_normal((features, 3)) * 0.05).astype(np.float32), "w")
    bias = numpy_helper.from_array(np.array([0.1, -0.2, 0.05], np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Flatten", [INPUT_NAME], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "w", "b"], [OUTPUT_NAME])],
        "tiny", [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, 12, 12])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 3])], initializer=[weight, bias])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    set_metadata(proto, {"model_name": "tiny", "classes": CLASSES, "num_classes": 3,
                         **preprocessing_metadata(PREP, embedded=False)})
    onnx.save(proto, str(path))
    return path


class Server:
    """A server on a free loopback port, in a thread of this process."""

    def __init__(self, model, **options):
        self.options = ServeOptions.of(port=0, **options)
        self.app = create_app(model, self.options)
        sock = bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="error", access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started, "the test server did not start"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(15)


def request(port, method, path, body=b"", headers=None, timeout=20):
    """(status, headers, body) of one request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def multipart(files, field="files"):
    """A multipart/form-data body of (file name, bytes) in ``field``, and its content type."""
    boundary = uuid.uuid4().hex
    parts = [(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
              "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def predict(port, files, field="files", query=""):
    body, content_type = multipart(files, field)
    return request(port, "POST", "/predict" + query, body, {"Content-Type": content_type})


def metric(port, name) -> float:
    """The sum of a metric's samples in /metrics (over its labels)."""
    status, _, text = request(port, "GET", "/metrics")
    assert status == 200
    return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$",
                                                        text.decode(), re.M))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    lenet = create_model("lenet5", num_classes=3, in_chans=3).eval()
    ckpt = save_checkpoint({"model": lenet.state_dict(), "model_name": "lenet5", "num_classes": 3, "in_chans": 3,
                            "classes": CLASSES, "preprocessing": PREP.to_dict(), "config": {}, "dataset": "colours",
                            "epoch": 1}, root / "best.pt")
    rng = np.random.default_rng(1)
    images = root / "images"
    images.mkdir()
    for i, (size, mode) in enumerate([((12, 12), "RGB"), ((30, 17), "RGB"), ((20, 20), "L"), ((9, 40), "RGBA")]):
        pixels = rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
        Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(images / f"im{i}.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(images / "photo.jpg", quality=90)
    return {"onnx": tiny_onnx(root / "tiny.onnx"), "pt": ckpt, "images": sorted(images.iterdir()),
            "problems": write_problem_files(root / "problems")}


@pytest.fixture(scope="module")
def server(artifacts):
    s = Server(classifier.load(artifacts["onnx"]), max_batch=8, max_delay_ms=5, max_body_mb=1, timeout_s=10)
    yield s
    s.stop()


# --- V2 through tritonclient ------------------------------------------------------------------------------
def test_tritonclient_metadata_and_infer_equal_onnx_runtime(server, artifacts):
    httpclient = pytest.importorskip("tritonclient.http")
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("classifier")
    meta = client.get_model_metadata("classifier")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 12, 12]}]
    assert {"name": "logits", "datatype": "FP32", "shape": [-1, 3]} in meta["outputs"]
    x = np.random.default_rng(2).standard_normal((5, 3, 12, 12)).astype(np.float32)
    expected = ort.InferenceSession(str(artifacts["onnx"])).run(None, {"input": x})[0]
    for binary in (True, False):  # the binary tensor extension, and plain JSON
        tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in ("logits", "probabilities")]
        result = client.infer("classifier", [tensor], outputs=outputs)
        np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-5)
        probs = np.exp(expected) / np.exp(expected).sum(1, keepdims=True)
        np.testing.assert_allclose(result.as_numpy("probabilities"), probs, atol=1e-5)
    result = client.infer("classifier", [tensor])  # no outputs named: all of them, binary
    np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-5)
    with pytest.raises(Exception, match="unknown model"):
        client.get_model_metadata("other")


# --- /predict ----------------------------------------------------------------------------------------------
def test_predict_equals_model_predict(server, artifacts):
    files = artifacts["images"] * 2  # 10 images: more than --max-batch 8, predicted in two chunks
    expected = classifier.load(artifacts["onnx"]).predict([str(f) for f in files], topk=2)
    status, _, body = predict(server.port, [(f.name, f.read_bytes()) for f in files], query="?topk=2")
    assert status == 200, body
    items = json.loads(body)
    assert [i["file"] for i in items] == [f.name for f in files]
    for item, want in zip(items, expected):
        assert item["label"] == want.label and item["index"] == want.index
        assert item["confidence"] == pytest.approx(want.confidence, abs=1e-5)
        assert [t["label"] for t in item["topk"]] == [label for label, _ in want.topk]
        assert [t["confidence"] for t in item["topk"]] == pytest.approx([p for _, p in want.topk], abs=1e-5)
    one = files[1]
    for status, _, body in (predict(server.port, [(one.name, one.read_bytes())], field="file"),
                            request(server.port, "POST", "/predict", one.read_bytes(), {"Content-Type": "image/png"})):
        assert status == 200 and json.loads(body)[0]["label"] == expected[1].label


def test_checkpoint_server_predicts_like_model_predict(artifacts):
    model = classifier.load(artifacts["pt"])
    s = Server(model, max_batch=4)
    try:
        files = artifacts["images"][:3]
        status, _, body = predict(s.port, [(f.name, f.read_bytes()) for f in files])
        assert status == 200, body
        want = model.predict([str(f) for f in files])
        assert [i["label"] for i in json.loads(body)] == [p.label for p in want]
        assert [i["confidence"] for i in json.loads(body)] == pytest.approx([p.confidence for p in want], abs=1e-5)
        x = np.random.default_rng(3).standard_normal((2, 3, 12, 12)).astype(np.float32)
        spec = {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}  # nested JSON
        status, _, body = request(s.port, "POST", "/v2/models/classifier/infer",
                                  json.dumps({"inputs": [spec], "outputs": [{"name": "logits"}]}).encode())
        assert status == 200, body
        with torch.inference_mode():
            expected = model.predictor.logits(x)
        np.testing.assert_allclose(np.array(json.loads(body)["outputs"][0]["data"]).reshape(2, 3), expected, atol=1e-5)
    finally:
        s.stop()


def test_v2_uint8_input_of_a_graph_with_embedded_preprocessing():
    """A model taking uint8 pixels of any size: UINT8 in the metadata; JSON and binary data parsed alike,
    out-of-range values refused."""
    from types import SimpleNamespace

    from classifier.serve import v2

    predictor = SimpleNamespace(raw_pixels=True, input_shape=["batch", 3, "height", "width"], prep=PREP,
                                classes=CLASSES, backend="onnxruntime")
    assert v2.model_metadata("m", predictor)["inputs"][0] == {"name": "input", "datatype": "UINT8",
                                                              "shape": [-1, 3, -1, -1]}
    pixels = np.arange(2 * 3 * 5 * 7, dtype=np.uint8).reshape(2, 3, 5, 7)
    header = json.dumps({"inputs": [{"name": "input", "shape": [2, 3, 5, 7], "datatype": "UINT8",
                                     "parameters": {"binary_data_size": pixels.size}}]}).encode()
    _, parsed = v2.parse_infer_request(header + pixels.tobytes(), str(len(header)), predictor)
    assert parsed.dtype == np.uint8 and np.array_equal(parsed, pixels)
    body = json.dumps({"inputs": [{"name": "input", "shape": [2, 3, 5, 7], "datatype": "UINT8",
                                   "data": pixels.reshape(-1).tolist()}]}).encode()
    assert np.array_equal(v2.parse_infer_request(body, None, predictor)[1], pixels)
    with pytest.raises(v2.V2Error, match="0-255"):
        v2.parse_infer_request(body.replace(b"[0, 1,", b"[0, 300,"), None, predictor)


def test_predict_options_reach_model_predict_and_new_fields_are_answered(artifacts):
    """?threshold, ?reject, ?explain go to Model.predict (merged requests with other options are predicted
    apart), and a field the prediction carries (here a heat map) is answered under its own name. The model
    is wrapped: Grad-CAM's first import alone takes longer than this file's whole time budget."""
    model = classifier.load(artifacts["onnx"])
    seen = []

    class Recording:
        predictor, classes = model.predictor, model.classes

        def predict(self, images, *, explain=False, **kw):
            seen.append((len(images), kw["threshold"], kw["reject"], explain))
            out = model.predict(images, **kw)
            for p, im in zip(out, images):
                p.heatmap = np.full(im.shape[:2], 0.5, np.float32) if explain else None
            return out

    s = Server(Recording(), max_delay_ms=300)
    try:
        one = artifacts["images"][1]
        with ThreadPoolExecutor(3) as pool:  # merged within 300 ms, predicted per options
            plain, explained, refused = pool.map(lambda q: predict(s.port, [(one.name, one.read_bytes())], query=q),
                                                 ["?topk=1", "?explain=true", "?threshold=0.25"])
        assert plain[0] == explained[0] == 200
        assert "heatmap" not in json.loads(plain[2])[0]
        heatmap = np.array(json.loads(explained[2])[0]["heatmap"])
        assert heatmap.shape == (17, 30) and np.all(heatmap == 0.5)  # the image's own size
        assert refused[0] == 400 and "multi-label" in json.loads(refused[2])["error"]  # a single-label model
        assert {(1, None, False, False), (1, None, False, True), (1, 0.25, False, False)} <= set(seen)
    finally:
        s.stop()


# --- bad input ------------------------------------------------------------------------------------------------
def v2_body(**changes):
    spec = {"name": "input", "shape": [1, 3, 12, 12], "datatype": "FP32", "data": [0.0] * 432}
    spec.update(changes)
    return json.dumps({"inputs": [spec]}).encode()


def bad_requests(problems):
    over = b"\x89PNG" + bytes(1024 * 1024 + 10)
    binary_header = v2_body(parameters={"binary_data_size": 7})  # and no binary data after it
    return {
        "text": (400, "/predict", problems["text.jpg"].read_bytes(), {}),
        "0 bytes": (400, "/predict", b"", {}),
        "truncated": (400, "/predict", problems["truncated.jpg"].read_bytes(), {}),
        "bomb": (400, "/predict", problems["bomb.png"].read_bytes(), {}),
        "bomb 2x": (400, "/predict", problems["bomb2x.png"].read_bytes(), {}),
        "empty upload": (400, "/predict", *reversed(_form(("empty.png", b"")))),
        "no files field": (400, "/predict", *reversed(_form(("a.png", b"x"), field="other"))),
        "over the size limit": (413, "/predict", over, {}),
        "bad topk": (400, "/predict?topk=0", problems["png_named.jpg"].read_bytes(), {}),
        "reject, no threshold": (400, "/predict?reject=true", problems["png_named.jpg"].read_bytes(), {}),
        "v2 wrong model": (404, "/v2/models/nope/infer", v2_body(), {}),
        "v2 wrong shape": (400, "/v2/models/classifier/infer", v2_body(shape=[1, 3, 10, 10]), {}),
        "v2 wrong count": (400, "/v2/models/classifier/infer", v2_body(data=[0.0] * 5), {}),
        "v2 wrong datatype": (400, "/v2/models/classifier/infer", v2_body(datatype="FP64"), {}),
        "v2 wrong input name": (400, "/v2/models/classifier/infer", v2_body(name="x"), {}),
        "v2 text data": (400, "/v2/models/classifier/infer", v2_body(data=["a"] * 432), {}),
        "v2 not json": (400, "/v2/models/classifier/infer", b"{not json", {}),
        "v2 null data": (400, "/v2/models/classifier/infer", v2_body(data=[None] * 432), {}),
        "v2 parameters not an object": (400, "/v2/models/classifier/infer", v2_body(parameters=[1]), {}),
        "v2 integer beyond float64": (400, "/v2/models/classifier/infer", v2_body(data=[10 ** 400] + [0.0] * 431), {}),
        "v2 nested too deep": (400, "/v2/models/classifier/infer", b"[" * 100_000 + b"]" * 100_000, {}),
        "multipart, no boundary": (400, "/predict", b"abc", {"Content-Type": "multipart/form-data"}),
        "v2 bad binary size": (400, "/v2/models/classifier/infer", binary_header,
                               {"Inference-Header-Content-Length": str(len(binary_header))}),
        "v2 unknown output": (400, "/v2/models/classifier/infer", json.dumps(
            {"inputs": json.loads(v2_body())["inputs"], "outputs": [{"name": "x"}]}).encode(), {}),
    }


def _form(*files, field="files"):
    body, content_type = multipart(files, field)
    return {"Content-Type": content_type}, body


def test_every_bad_input_is_a_4xx_and_the_server_stays_ready(server, artifacts):
    good = artifacts["images"][0].read_bytes()
    for case, (want, path, body, headers) in bad_requests(artifacts["problems"]).items():
        status, _, answer = request(server.port, "POST", path, body, headers)
        assert status == want, (case, status, answer)
        message = json.loads(answer)["error"]
        assert message and "\n" not in message, case
        status, _, answer = request(server.port, "POST", "/predict", good)
        assert status == 200 and json.loads(answer)[0]["label"] in CLASSES, case
    assert request(server.port, "GET", "/v2/health/ready")[0] == 200


def test_body_over_the_limit_without_content_length_is_413(server):
    """A chunked upload has no Content-Length: the limit is counted while the body arrives."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    try:
        conn.request("POST", "/predict", body=iter([bytes(256 * 1024)] * 6), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})
        response = conn.getresponse()
        assert response.status == 413 and "limit" in json.loads(response.read())["error"]
    finally:
        conn.close()


def test_timeouts_slow_upload_408_and_slow_model_503(artifacts):
    model = classifier.load(artifacts["onnx"])

    class SlowModel:  # the model's own predictions, 1.5 s late
        predictor, classes = model.predictor, model.classes

        def predict(self, images, **kw):
            time.sleep(1.5)
            return model.predict(images, **kw)

    s = Server(SlowModel(), timeout_s=0.6)
    try:
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:  # sends half its body, then waits
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + bytes(50))
            answer = http.client.HTTPResponse(sock)
            answer.begin()
            assert answer.status == 408 and "not received within" in json.loads(answer.read())["error"]
        status, _, body = request(s.port, "POST", "/predict", artifacts["images"][0].read_bytes())
        assert status == 503 and "not answered within" in json.loads(body)["error"]
        time.sleep(1.2)  # the slow call ends; the server answers again
        assert request(s.port, "GET", "/v2/health/ready")[0] == 200
    finally:
        s.stop()


def test_options_are_checked(artifacts, capsys):
    with pytest.raises(ClassifierError, match="unknown serve option"):
        classifier.load(artifacts["onnx"]).serve(prot=1)
    with pytest.raises(ClassifierError, match="max_batch"):
        ServeOptions.of(max_batch=0)
    with pytest.raises(ClassifierError, match="port must be an integer"):
        ServeOptions.of(port="8000")
    for argv, message in ((["--model", "missing.onnx"], "not found"), (["--model", "m.onnx", "--max-batch", "0"],
                                                                        "max_batch must be at least 1")):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err


# --- batching and load ---------------------------------------------------------------------------------------
def test_batcher_merges_up_to_max_batch_and_isolates_a_failing_request():
    calls = []

    def run_batch(items):
        calls.append(len(items))
        if "bad" in items:
            raise ValueError("bad item")
        return [i * 2 for i in items]

    batcher = Batcher(run_batch, max_batch=4, max_delay_s=0.3).start()
    try:
        with batcher.coming():  # a request on its way: the first one waits for the others
            futures = [batcher.submit([i]) for i in range(3)] + [batcher.submit([7, 8])] + [batcher.submit(["bad"])]
            assert [f.result(5) for f in futures[:4]] == [[0], [2], [4], [14, 16]]
            with pytest.raises(ValueError):
                futures[4].result(5)
        assert max(calls) <= 4 and calls[0] == 3  # 3 singles merged; the pair did not fit (3 + 2 > 4)
        batcher.max_delay_s = 30.0
        started = time.monotonic()
        assert batcher.submit([5]).result(10) == [10] and time.monotonic() - started < 5  # alone: no wait
    finally:
        batcher.stop()


def load(port, clients, seconds, body):
    """Bounded load: ``clients`` threads posting ``body`` for ``seconds``; (answers, errors, labels)."""
    stop = time.monotonic() + seconds
    labels, errors = [], []

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        while time.monotonic() < stop:
            conn.request("POST", "/predict", body=body, headers={"Content-Type": "image/png"})
            response = conn.getresponse()
            data = response.read()
            (labels if response.status == 200 else errors).append(json.loads(data)[0]["label"]
                                                                  if response.status == 200 else response.status)
        conn.close()

    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    return labels, errors


def test_short_load_merges_concurrent_requests_without_errors(server, artifacts):
    body = artifacts["images"][1].read_bytes()
    want = classifier.load(artifacts["onnx"]).predict([str(artifacts["images"][1])])[0].label
    calls, items = metric(server.port, "classifier_batch_size_count"), metric(server.port, "classifier_batch_size_sum")
    labels, errors = load(server.port, clients=8, seconds=1.5, body=body)
    assert not errors and len(labels) > 8 and set(labels) == {want}
    calls = metric(server.port, "classifier_batch_size_count") - calls
    items = metric(server.port, "classifier_batch_size_sum") - items
    assert items == len(labels) and calls < items  # some model calls served several requests
    assert metric(server.port, "classifier_requests_total") >= len(labels)


# --- SIGTERM ----------------------------------------------------------------------------------------------------
def test_sigterm_under_load_answers_every_accepted_request_and_exits_0(artifacts):
    """When SIGTERM arrives, 6 requests are half uploaded and 2 clients keep posting: the 6 finish their
    uploads after the signal and are answered 200, every request the server took is answered 200 (the
    clients saw as many 200s as the server logged), later ones are refused at connect, and the process
    exits 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO / "serve.py"), "--model", str(artifacts["onnx"]), "--port", "0",
                             "--max-delay-ms", "50"], cwd=REPO, env=env,
                            stderr=subprocess.PIPE, text=True)
    lines, statuses, refused, stop = [], [], [], threading.Event()
    body = artifacts["images"][0].read_bytes()

    def half_uploaded(go: threading.Event):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                         + body[:len(body) // 2])
            go.wait(30)
            sock.sendall(body[len(body) // 2:])
            answer = http.client.HTTPResponse(sock)
            answer.begin()
            return answer.status, answer.read()

    def keep_posting():
        while not stop.is_set():
            try:
                statuses.append(request(port, "POST", "/predict", body)[0])
            except (ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected) as err:
                refused.append(type(err).__name__)  # not taken: the server had stopped listening
                return

    try:
        port = None
        deadline = time.monotonic() + 90
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            found = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
            port = int(found.group(1)) if found else None
            assert line or proc.poll() is None, "".join(lines)
        reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
        reader.start()
        go = threading.Event()
        with ThreadPoolExecutor(8) as pool:
            held = [pool.submit(half_uploaded, go) for _ in range(6)]
            wait = time.monotonic() + 20
            while metric(port, "classifier_requests_in_flight") < 7:  # 6 half-uploaded + this one
                assert time.monotonic() < wait, "the requests never reached the server"
                time.sleep(0.02)
            load = [pool.submit(keep_posting) for _ in range(2)]
            while len(statuses) < 2:  # the load is running
                assert time.monotonic() < wait, "the load clients got no answer"
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)  # the server is stopping: the half-uploaded requests are in flight
            go.set()
            answers = [f.result(30) for f in held]
            for f in load:
                f.result(30)
            stop.set()
        assert [a[0] for a in answers] == [200] * 6
        assert all(json.loads(a[1])[0]["label"] in CLASSES for a in answers)
        assert statuses and set(statuses) == {200}
        assert proc.wait(30) == 0
        reader.join(10)
        with pytest.raises(OSError):  # no longer listening
            request(port, "GET", "/v2/health/live", timeout=2)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    log = "".join(lines)
    assert len(re.findall(r"POST /predict 200 \d+\.\d ms", log)) == 6 + len(statuses), log
    assert "POST /predict 5" not in log
