"""Images are read as 8-bit RGB: a 16-bit grayscale PNG (values up to 65535, common in medical and
scientific images) was clipped at 255 by PIL's convert("RGB"), a near-white image trained with
its label without a word."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.data.images import _decode


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(_decode(path))


def test_a_16_bit_grayscale_image_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    pixels = _pixels(tmp_path / "g16.png")
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    assert np.array_equal(pixels[..., 0], expected) and np.array_equal(pixels[..., 2], expected)
    assert (pixels == 255).mean() < 0.01  # was 99.4% with convert("RGB")


@pytest.mark.parametrize("low,high", [(0.0, 1.0), (-5.0, 300.0)])
def test_a_floating_point_image_is_scaled_to_its_range(tmp_path: Path, low: float, high: float) -> None:
    values = np.linspace(low, high, 256, dtype=np.float32).reshape(16, 16)
    Image.fromarray(values).save(tmp_path / "f.tiff")
    pixels = _pixels(tmp_path / "f.tiff")
    assert pixels.min() == 0 and pixels.max() == 255 and len(np.unique(pixels)) > 200


def test_a_32_bit_integer_image_of_8_bit_values_is_read_as_they_are(tmp_path: Path) -> None:
    """Trial 62d: an int32 TIFF (mode I, as OpenCV or NumPy pipelines write one) of values 0..131
    was divided by 257: a black image, trained with its label without a word."""
    gray = np.random.default_rng(1).integers(0, 132, (16, 16)).astype(np.int32)
    Image.fromarray(gray).save(tmp_path / "i8.tif")
    assert Image.open(tmp_path / "i8.tif").mode == "I"
    assert np.array_equal(_pixels(tmp_path / "i8.tif")[..., 0], gray.astype(np.uint8))
    # Past 255 it is wide data: the 16-bit rule.
    wide = (gray * 400).astype(np.int32)
    Image.fromarray(wide).save(tmp_path / "i16.tif")
    assert np.array_equal(_pixels(tmp_path / "i16.tif")[..., 0], np.rint(wide / 257.0).astype(np.uint8))


def test_8_bit_images_are_read_as_they_were(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "l.png")
    assert np.array_equal(_pixels(tmp_path / "c.png"), rgb)
    assert np.array_equal(_pixels(tmp_path / "l.png"), np.repeat(rgb[..., :1], 3, axis=2))


def test_an_image_over_pil_s_size_limit_is_a_bad_row_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 15000x15000 image raised DecompressionBombError (not an OSError) through every worker (trial 38b)."""
    from trainer.data.formats import RowProblem

    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels: over twice the limit, as 225M is over 179M
    with pytest.raises(RowProblem, match=r"image .*huge.png is too large to decode safely \(.*\); downscale it"):
        _decode(tmp_path / "huge.png")


def test_an_unreadable_image_names_its_path_once(tmp_path: Path) -> None:
    from trainer.data.formats import RowProblem

    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(RowProblem) as refused:
        _decode(tmp_path / "broken.png")
    assert str(refused.value).count("broken.png") == 1, str(refused.value)
