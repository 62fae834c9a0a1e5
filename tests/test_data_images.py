"""load_image: every PIL mode decoded the same way; bad files refused with BadImageError."""
import numpy as np
import pytest
from PIL import Image

from classifier.data.images import BadImageError, is_image_file, load_image
from classifier.errors import ClassifierError


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


def _bad_files(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("this is not an image\n")
    return [tmp_path / n for n in ("empty.png", "truncated.jpg", "text.jpg", "missing.png")]


def test_bad_files_raise_bad_image_error(tmp_path):
    for path in _bad_files(tmp_path):
        with pytest.raises(BadImageError) as info:
            load_image(path, 3)
        msg = str(info.value)
        assert isinstance(info.value, ClassifierError) and "\n" not in msg and path.name in msg


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
