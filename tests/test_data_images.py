"""load_image: every PIL mode decoded the same way, by every path that feeds a model; bad files refused
with BadImageError."""
import numpy as np
import pytest
import torch
from PIL import Image

from classifier.data.images import BadImageError, is_image_file, load_image
from classifier.errors import ClassifierError
from tests.conftest import UNREADABLE, UNUSUAL, write_problem_files


def _palette(transparent: bool) -> Image.Image:
    im = Image.new("P", (5, 4), 1)
    im.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    if transparent:
        im.info["transparency"] = 1
    return im


def _luma(r, g, b):
    return round(0.299 * r + 0.587 * g + 0.114 * b)


# mode -> (image, file extension, expected RGB pixel, expected gray pixel)
CASES = {
    "1": (Image.new("1", (5, 4), 1), ".png", (255,) * 3, 255),
    "L": (Image.new("L", (5, 4), 77), ".png", (77,) * 3, 77),
    "LA": (Image.new("LA", (5, 4), (0, 128)), ".png", (127,) * 3, 127),  # black at 50% on white
    "P": (_palette(False), ".png", (0, 255, 0), _luma(0, 255, 0)),
    "P+transparency": (_palette(True), ".png", (255,) * 3, 255),
    "RGB": (Image.new("RGB", (5, 4), (10, 20, 30)), ".png", (10, 20, 30), _luma(10, 20, 30)),
    "RGBA": (Image.new("RGBA", (5, 4), (255, 0, 0, 128)), ".png", (255, 127, 127), _luma(255, 127, 127)),
    "CMYK": (Image.new("CMYK", (5, 4), (0, 255, 255, 0)), ".tif", (255, 0, 0), _luma(255, 0, 0)),
    "CMYK JPEG": (Image.new("CMYK", (5, 4), (0, 255, 255, 0)), ".jpg", (255, 0, 0), _luma(255, 0, 0)),
    "I;16": (Image.fromarray(np.full((4, 5), 257 * 200, np.uint16)), ".png", (200,) * 3, 200),
    "I": (Image.fromarray(np.full((4, 5), 257 * 100, np.int32)), ".tif", (100,) * 3, 100),
    "F": (Image.fromarray(np.full((4, 5), 0.5, np.float32)), ".tif", (128,) * 3, 128),
}


@pytest.mark.parametrize("mode", list(CASES))
def test_every_mode_converts(tmp_path, mode):
    im, ext, rgb, gray = CASES[mode]
    path = tmp_path / f"img{ext}"
    im.save(path)
    a3, a1 = load_image(path, 3), load_image(path, 1)
    assert a3.shape == (4, 5, 3) and a3.dtype == np.uint8
    assert a1.shape == (4, 5, 1) and a1.dtype == np.uint8
    assert np.abs(a3[2, 3].astype(int) - rgb).max() <= 1, a3[2, 3]
    assert abs(int(a1[2, 3, 0]) - gray) <= 1, a1[2, 3]


def test_high_bit_depth_keeps_contrast(tmp_path):
    ramp = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    a = load_image(tmp_path / "ramp.png", 1)[..., 0]
    np.testing.assert_array_equal(a, np.rint(ramp / 257).astype(np.uint8))


def test_exif_orientation_applied(tmp_path):
    im = Image.new("RGB", (6, 2), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg", 3).shape == (6, 2, 3)


def test_bad_files_raise_bad_image_error(tmp_path):
    files = write_problem_files(tmp_path)
    reasons = {"truncated.jpg": "cannot decode", "empty.png": "empty file (0 bytes)",
               "text.jpg": "not a readable image", "bomb.png": "too many pixels", "bomb2x.png": "too many pixels",
               "missing.png": "file not found"}
    assert set(reasons) - {"missing.png"} == set(UNREADABLE)
    for name, reason in reasons.items():
        path = files.get(name, tmp_path / name)
        with pytest.raises(BadImageError) as info:
            load_image(path, 3)
        msg = str(info.value)
        assert isinstance(info.value, ClassifierError) and "\n" not in msg
        assert msg.startswith(f"{path}: ") and reason in msg, msg
    for name in UNUSUAL:  # unusual, but fine: decoded to 16x16 red-ish pixels
        a = load_image(files[name], 3)
        assert a.shape == (16, 16, 3) and a[-1, -1].tolist() in ([200, 30, 30], [255, 55, 55], [200, 200, 200]), name
    alpha = load_image(files["palette_alpha.png"], 3)
    assert (alpha[:8] == 255).all() and (alpha[8:] == (200, 30, 30)).all()  # transparent half composited on white


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_refused(tmp_path, monkeypatch):
    Image.new("L", (40, 40)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 pixels: over the limit, under 2x
    with pytest.raises(BadImageError, match="too many pixels"):
        load_image(tmp_path / "bomb.png", 1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # over 2x: PIL's own error
    with pytest.raises(BadImageError, match="too many pixels"):
        load_image(tmp_path / "bomb.png", 1)


def test_is_image_file():
    assert is_image_file("a/b/cat.JPG") and is_image_file("x.png") and is_image_file("x.webp")
    assert not is_image_file("a/.hidden.png") and not is_image_file("notes.txt") and not is_image_file("png")


class _Recorder(torch.nn.Module):
    """A stand-in model that keeps the input it is given."""

    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return torch.zeros(len(x), 2)


@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_reaches_the_model_identically_everywhere(tmp_path, channels):
    """Training (in-memory and streaming loaders), evaluation, test.py, the predictor and exported models
    with embedded preprocessing all give the model the same tensor for every mode."""
    from classifier.api import Model
    from classifier.data import Samples, build_loader
    from classifier.evaluation import run_predictions
    from classifier.inference import Predictor, as_nchw, model_input
    from classifier.preprocess import InputNormalizer, Preprocessing

    paths = []
    for i, (im, ext, _, _) in enumerate(CASES.values()):
        im.save(tmp_path / f"{i}{ext}")
        paths.append(str(tmp_path / f"{i}{ext}"))
    prep = Preprocessing(size=(4, 5), channels=channels, mean=(0.3,) * channels, std=(0.2,) * channels)
    samples = Samples(labels=np.zeros(len(paths), np.int64), paths=paths, root=str(tmp_path))
    reference = torch.cat([model_input([load_image(p, channels)], prep) for p in paths])

    def loader_input(cache):
        loader = build_loader(samples, prep, train=False, batch_size=64, workers=0, cache=cache)
        assert type(loader).__name__ == ("InMemoryLoader" if cache else "StreamingLoader")
        return torch.cat([x for x, _ in loader])

    evaluated, classified = _Recorder(), _Recorder()
    run_predictions(Predictor.from_model(evaluated, prep, ["a", "b"]), samples, progress=False)
    predictor = Predictor.from_model(classified, prep, ["a", "b"])
    Model(predictor, tmp_path / "x.pt").predict(paths, batch_size=64)
    predictor.predict_files(paths)
    embedded = torch.cat([InputNormalizer(prep, resize=True)(as_nchw(load_image(p, channels))) for p in paths])
    for name, x in [("training, in memory", loader_input(True)), ("training, streamed", loader_input(False)),
                    ("evaluation", evaluated.inputs[0]), ("test.py", classified.inputs[0]),
                    ("Predictor.predict_files", classified.inputs[1]), ("ONNX, embedded preprocessing", embedded)]:
        torch.testing.assert_close(x, reference, rtol=0, atol=1e-5, msg=name)
