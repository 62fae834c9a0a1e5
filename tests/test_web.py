"""``export.py --web``: the web graph (resize, normalisation and test-time flip inside), its metadata.json,
the pinned onnxruntime-web from the cache, and the page itself in a real headless Chromium, compared
with ONNX Runtime in Python on the same PNG files (fp32 within 1e-4, int8 same top-1).

The browser tests need Debian's chromium + chromium-driver, Selenium and onnxruntime-web (``make test``
installs them where it can) and are skipped, with the reason, where any is missing.
``CLASSIFIER_WEB_SCREENSHOT=runs/NAME/best.pt`` (a Fashion-MNIST run) also saves the README's
screenshot of the page to docs/figures/web_page.png.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from classifier.checkpoint import load_checkpoint
from classifier.data import load_dataset, load_image
from classifier.errors import ClassifierError
from classifier.export import read_metadata, web
from classifier.inference import Predictor
from tests.conftest import COLOURS
from tests.test_export import CLASSES, colour_folder_run

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1100,900",
                  "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")  # a test-pattern camera
PAGE_TIMEOUT_S = 120  # the 28 MB WebAssembly runtime compiles on a busy CPU
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "figures" / "web_page.png"


def runtime_or_skip() -> Path:
    try:
        return web.onnxruntime_web()
    except ClassifierError as err:
        pytest.skip(f"onnxruntime-web unavailable: {err}")


# --- a tiny run exported for the browser --------------------------------------------------------------
@pytest.fixture(scope="module")
def flip_run(tmp_path_factory):
    """A colour run that evaluated with the test-time flip, on an image folder export.py can reload."""
    ckpt = colour_folder_run(tmp_path_factory.mktemp("web_run"), per_class=12, seed=3)
    saved = torch.load(ckpt, weights_only=True)
    saved["config"]["tta_flip"] = True
    torch.save(saved, ckpt)
    return ckpt


@pytest.fixture(scope="module")
def web_folder(flip_run, tmp_path_factory):
    from classifier.commands.export import main

    runtime_or_skip()
    site = tmp_path_factory.mktemp("site")
    return main(["--checkpoint", str(flip_run), "--web", str(site / "page"), "--quantize", "int8"])


def test_web_folder_is_complete_and_metadata_json_agrees(web_folder):
    names = {p.relative_to(web_folder).as_posix() for p in web_folder.rglob("*") if p.is_file()}
    assert {"index.html", "classify.js", "page.json", "model.onnx", "model.int8.onnx", "metadata.json",
            "metadata.int8.json"} <= names
    assert {f"ort/{name}" for name in web.ORT_WEB_FILES} <= names
    page = json.loads((web_folder / "page.json").read_text())
    assert [m["precision"] for m in page["models"]] == ["fp32", "int8"] and page["topk"] == 3
    for entry in page["models"]:
        assert json.loads((web_folder / entry["metadata"]).read_text()) == read_metadata(web_folder / entry["file"])
    meta = read_metadata(web_folder / "model.int8.onnx")
    assert meta["preprocessing_embedded"] and meta["resize_embedded"] and meta["classes"] == CLASSES
    assert meta["tta_flip"] is False and meta["test_time_flip"] == web.MIRROR_NOTE and "int8" in meta["quantization"]


def test_web_graph_flips_inside_like_the_checkpoint(web_folder, flip_run):
    """The graph's own mirror average equals the checkpoint predictor's (no flip missing, none twice)."""
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((32, 32), (27, 40), (48, 36))]
    web_probs = np.concatenate([Predictor.load(web_folder / "model.onnx").predict([im]) for im in images])
    reference = Predictor.load(flip_run)
    assert reference.tta_flip
    expected = np.concatenate([reference.predict([im]) for im in images])
    np.testing.assert_allclose(web_probs, expected, atol=1e-5)
    reference.tta_flip = False
    unflipped = np.concatenate([reference.predict([im]) for im in images])
    assert np.abs(unflipped - expected).max() > 1e-3  # the flip changes the outputs: the check above means it


def test_web_flag_errors_are_one_line(flip_run, tmp_path, capsys):
    from classifier.commands.export import main

    with pytest.raises(SystemExit):
        main(["--checkpoint", str(flip_run), "--serve"])
    assert capsys.readouterr().err == "error: --serve serves the page that --web writes: add --web [DIR]\n"
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(flip_run), "--web", str(tmp_path / "w"), "--mobile"])
    assert "drop --mobile" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("mine")
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(flip_run), "--web", str(tmp_path / "busy")])
    err = capsys.readouterr().err
    assert "other files in it" in err and err.count("\n") == 1


def test_runtime_offline_and_tampered_tarball_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("CLASSIFIER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NPM_CONFIG_REGISTRY", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(ClassifierError) as offline:
        web.onnxruntime_web()
    message = str(offline.value)
    assert "could not be fetched" in message and f"npm pack onnxruntime-web@{web.ORT_WEB_VERSION}" in message
    assert "\n" not in message
    tarball = tmp_path / "cache" / "onnxruntime-web" / f"onnxruntime-web-{web.ORT_WEB_VERSION}.tgz"
    tarball.write_bytes(b"not the published tarball")
    with pytest.raises(ClassifierError, match="differs from the pinned one"):
        web.onnxruntime_web()


# --- the page in headless Chromium --------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("needs Debian's chromium and chromium-driver (as root: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs Selenium (pip install '.[test]')")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingOptions", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    except Exception as err:  # noqa: BLE001 - selenium wraps the driver's start-up failures in several types
        pytest.skip(f"Chromium did not start: {str(err).strip().splitlines()[0][:200]}")
    driver.set_script_timeout(PAGE_TIMEOUT_S)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def site(web_folder):
    """(url, folder): the folder above the page, served on localhost by the server --serve uses."""
    server = web.make_server(web_folder.parent, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield web.server_url(server), web_folder.parent
    server.shutdown()
    server.server_close()


def wait_for(driver, condition: str, timeout=PAGE_TIMEOUT_S):
    """Wait until the JavaScript expression ``condition`` is truthy; returns its value."""
    from selenium.webdriver.support.ui import WebDriverWait  # Selenium is optional: here only once it was found

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: d.execute_script(f"return {condition}"))


def open_page(driver, url):
    driver.get(url)
    state = wait_for(driver, "['ready', 'error'].includes(document.body.dataset.state) && document.body.dataset.state")
    return state, driver.find_element("id", "message").text


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def write_test_pngs(folder: Path) -> list[Path]:
    """Real PNGs the page and the toolkit must decode alike: colour images of several sizes, gray, RGBA with
    transparent pixels, a palette image, and one rotated by its EXIF orientation."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    paths = []
    for i, (name, (h, w)) in enumerate(zip(CLASSES, ((32, 32), (24, 40), (50, 30)))):
        rgb = np.clip(np.array(COLOURS[name]) + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        paths.append(folder / f"{name}_{i}.png")
        Image.fromarray(rgb).save(paths[-1])
    rgba = np.concatenate([np.full((28, 28, 3), COLOURS["blue"], np.uint8), np.full((28, 28, 1), 255, np.uint8)], 2)
    rgba[:10, :, 3] = 0  # fully transparent band: white after compositing
    paths.append(folder / "blue_rgba.png")
    Image.fromarray(rgba, "RGBA").save(paths[-1])
    paths.append(folder / "gray.png")
    Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8), "L").save(paths[-1])
    palette = Image.new("P", (20, 26), 1)
    palette.putpalette([30, 200, 30, 200, 30, 30] + [0] * 762)
    palette.paste(0, (0, 0, 20, 8))
    paths.append(folder / "palette.png")
    palette.save(paths[-1])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: displayed after a 90 degree turn
    tall = np.clip(np.array(COLOURS["red"]) + rng.integers(-40, 40, (20, 36, 3)), 0, 255).astype(np.uint8)
    tall[:, :6] = 255
    paths.append(folder / "red_exif_rotated.png")
    Image.fromarray(tall).save(paths[-1], exif=exif)
    return paths


def upload(driver, paths):
    driver.find_element("id", "file-input").send_keys("\n".join(str(p) for p in paths))


def results(driver, precision: str, count: int) -> dict:
    """file name -> data-probs (or the error) of the page's results, once ``count`` of them are from ``precision``."""
    wait_for(driver, f"document.querySelectorAll('.result[data-model=\"{precision}\"], .result.error').length"
                     f" === {count}")
    figures = driver.execute_script(
        "return Array.from(document.querySelectorAll('.result'), f => [f.dataset.file, f.dataset.probs || null, "
        "f.dataset.error || null])")
    return {name: json.loads(probs) if probs else error for name, probs, error in figures}


def test_page_classifies_like_onnxruntime_in_python(browser, site, web_folder, tmp_path):
    state, message = open_page(browser, site[0] + "page/")
    assert state == "ready", message
    info = browser.find_element("id", "model-info").text
    assert "lenet5" in info and "3×32×32 (RGB)" in info and "blue, green, red" in info and "flip" in info
    paths = write_test_pngs(tmp_path / "images")
    bad = tmp_path / "images" / "notes.png"
    bad.write_text("not an image")
    upload(browser, [*paths, bad])

    got = results(browser, "fp32", len(paths) + 1)
    assert "cannot decode" in got.pop("notes.png")
    expected = Predictor.load(web_folder / "model.onnx").predict_files(paths)
    probs = np.array([got[p.name] for p in paths])
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    assert (probs.argmax(1) == expected.argmax(1)).all()
    assert len(set(expected.argmax(1))) == 3  # the images are not all one class: top-1 agreement means something

    backend = browser.find_element("id", "backend-select")
    browser.find_element("css selector", "#model-select option[value='int8']").click()
    got = results(browser, "int8", len(paths) + 1)
    expected_int8 = Predictor.load(web_folder / "model.int8.onnx").predict_files(paths)
    assert [int(np.argmax(got[p.name])) for p in paths] == list(expected_int8.argmax(1))
    assert [o.get_attribute("value") for o in backend.find_elements("tag name", "option")] == ["wasm"]
    assert console_errors(browser) == []


def test_page_classifies_a_camera_frame(browser, site):
    url, _ = site
    if browser.current_url != url + "page/":
        open_page(browser, url + "page/")
    before = browser.execute_script("return document.querySelectorAll('.result').length")
    browser.find_element("id", "camera-button").click()
    wait_for(browser, "document.getElementById('camera-video').videoWidth > 0")
    browser.find_element("id", "capture-button").click()
    wait_for(browser, f"document.querySelectorAll('.result').length === {before + 1}")
    frame = browser.execute_script("return Object.assign({}, document.querySelector('.result:last-child').dataset)")
    assert frame["file"] == "camera-1.png" and abs(sum(json.loads(frame["probs"])) - 1) < 1e-6
    browser.find_element("id", "camera-stop").click()
    assert console_errors(browser) == []


def test_page_decodes_like_the_toolkit(browser, site):
    """The pixels the page feeds the model, gray and RGB, equal ``load_image``'s exactly."""
    url, root = site
    paths = write_test_pngs(root / "decode")
    if browser.current_url != url + "page/":  # any loaded copy of the page will do: no model is run
        open_page(browser, url + "page/")
    for path in paths:
        for channels in (1, 3):
            height, width, flat = browser.execute_async_script(
                "const [url, channels, done] = arguments;"
                "fetch(url).then(r => r.blob()).then(b => classifierPage.decodeImage(b))"
                ".then(c => done([c.height, c.width, Array.from(classifierPage.modelPixels(c, channels))]))",
                f"{url}decode/{path.name}", channels)
            got = np.array(flat, np.uint8).reshape(channels, height, width).transpose(1, 2, 0)
            np.testing.assert_array_equal(got, load_image(path, channels), err_msg=f"{path.name}, {channels} channels")


def test_page_places_the_heat_map_where_the_toolkit_does(browser, site):
    """The page's resize-policy box (where the cam overlay goes) equals ``policy_window``'s for every policy."""
    from classifier.preprocess import RESIZE_POLICIES, policy_window

    url, _ = site
    if browser.current_url != url + "page/":
        open_page(browser, url + "page/")
    cases = [(h, w, size, policy) for h, w in ((32, 32), (24, 40), (50, 30), (1, 7), (480, 640), (333, 17))
             for size in ((32, 32), (28, 56), (224, 160)) for policy in RESIZE_POLICIES]
    got = browser.execute_script("return arguments[0].map(([h, w, size, policy]) => "
                                 "classifierPage.policyWindow(h, w, size, policy))", [list(c) for c in cases])
    expected = [[int(v) for v in policy_window(h, w, size, policy)] for h, w, size, policy in cases]
    assert got == expected
    assert any(box[0] > 0 for box in got) and any(box[0] < 0 for box in got)  # crops inside, pads around
    # the overlay of a map that is hot everywhere tints exactly the box on a white 40 x 64 image
    for policy in RESIZE_POLICIES:
        alpha = browser.execute_script(
            "const [policy] = arguments; const c = document.createElement('canvas'); c.width = 64; c.height = 40;"
            "const g = c.getContext('2d'); g.fillStyle = '#fff'; g.fillRect(0, 0, 64, 40);"
            "const out = classifierPage.camOverlay(c, {data: new Float32Array(4).fill(1), height: 2, width: 2},"
            " {input_size: [32, 32], resize_policy: policy});"
            "const d = out.getContext('2d').getImageData(0, 0, 64, 40).data;"
            "return Array.from({length: 40 * 64}, (_, i) => d[4 * i + 1] < 200 ? 1 : 0);", policy)
        tinted = np.array(alpha).reshape(40, 64).astype(bool)
        top, left, h, w = (int(v) for v in policy_window(40, 64, (32, 32), policy))
        box = np.zeros((40, 64), bool)
        box[max(top, 0):top + h, max(left, 0):left + w] = True
        assert (tinted == box).mean() > 0.97 and tinted[box].all(), policy  # (the box's edge is antialiased)


def test_page_explains_a_model_without_metadata(browser, site):
    url, root = site
    bare = root / "bare"
    shutil.copytree(root / "page", bare, dirs_exist_ok=True)
    (bare / "metadata.json").unlink()
    state, message = open_page(browser, url + "bare/")
    assert state == "error" and "model.onnx has no toolkit metadata" in message and "--web" in message
    (bare / "metadata.json").write_text(json.dumps({"model_name": "someone-elses"}))
    state, message = open_page(browser, url + "bare/")
    assert state == "error" and "classes, num_classes, input_size, channels missing" in message


def test_page_explains_a_browser_without_webassembly(browser, site):
    url, _ = site
    script = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": "delete window.WebAssembly"})
    try:
        state, message = open_page(browser, url + "page/")
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": script["identifier"]})
    assert state == "error" and "no WebAssembly" in message


@pytest.mark.skipif(not os.environ.get("CLASSIFIER_WEB_SCREENSHOT"),
                    reason="set CLASSIFIER_WEB_SCREENSHOT=runs/NAME/best.pt (a Fashion-MNIST run) for the README's")
def test_readme_screenshot_of_fashion_mnist(browser, site, tmp_path):
    """The page classifying one Fashion-MNIST test image of each of 8 classes, saved for the README."""
    from classifier.commands.export import main

    url, root = site
    ckpt = Path(os.environ["CLASSIFIER_WEB_SCREENSHOT"])
    checkpoint = load_checkpoint(ckpt)
    config, config_classes = checkpoint["config"], checkpoint["classes"]
    main(["--checkpoint", str(ckpt), "--web", str(root / "fmnist")])
    _, splits = load_dataset(config["dataset"], config["data_dir"], download=False)
    test = splits["test"]
    paths = []
    for label in range(8):
        index = int(np.flatnonzero(test.labels == label)[3])
        name = re.sub(r"[^a-z]+", "-", config_classes[label].lower())
        paths.append(tmp_path / f"{name}-{index:04d}.png")
        Image.fromarray(test.images[index][:, :, 0], "L").save(paths[-1])
    state, message = open_page(browser, url + "fmnist/")
    assert state == "ready", message
    upload(browser, paths)
    got = results(browser, "fp32", len(paths))
    expected = Predictor.load(root / "fmnist" / "model.onnx").predict_files(paths)
    np.testing.assert_allclose(np.array([got[p.name] for p in paths]), expected, atol=1e-4)
    browser.set_window_size(1100, int(browser.execute_script("return document.body.scrollHeight")) + 140)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))
