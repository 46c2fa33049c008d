import numpy as np
import pytest
import torch
from PIL import Image

from loracraft.data.images import load_bucket_tensor, load_image_rgb, resize_and_center_crop, to_tensor
from loracraft.errors import UserError


def saved(tmp_path, img: Image.Image, name: str, **save_args):
    path = tmp_path / name
    img.save(path, **save_args)
    return path


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparent_pixels_become_white(tmp_path, mode):
    img = Image.new(mode, (8, 8), (0, 0) if mode == "LA" else (0, 0, 0, 0))
    img.putpixel((0, 0), (0, 255) if mode == "LA" else (0, 0, 0, 255))
    loaded = load_image_rgb(saved(tmp_path, img, "a.png"))
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (0, 0, 0)
    assert loaded.getpixel((5, 5)) == (255, 255, 255)


def test_palette_with_transparency_becomes_white(tmp_path):
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    img.putpixel((0, 0), 0)
    loaded = load_image_rgb(saved(tmp_path, img, "p.png", transparency=1))
    assert loaded.getpixel((0, 0)) == (0, 0, 0)
    assert loaded.getpixel((4, 4)) == (255, 255, 255)


def test_grey_and_16_bit_grey_are_scaled_not_clipped(tmp_path):
    grey = load_image_rgb(saved(tmp_path, Image.new("L", (4, 4), 100), "l.png"))
    assert grey.getpixel((0, 0)) == (100, 100, 100)
    deep = Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16))  # 128 * 257
    loaded = load_image_rgb(saved(tmp_path, deep, "i16.png"))
    assert loaded.getpixel((0, 0)) == (128, 128, 128)


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = saved(tmp_path, Image.new("RGB", (96, 64), "red"), "photo.jpg", exif=exif)
    assert load_image_rgb(path).size == (64, 96)


@pytest.mark.parametrize("content", [b"", b"garbage"])
def test_undecodable_image_is_a_user_error_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(UserError, match=f"cannot decode image {path}"):
        load_image_rgb(path)


def test_truncated_image_is_a_user_error(tmp_path):
    path = saved(tmp_path, Image.effect_noise((64, 64), 50).convert("RGB"), "t.png")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UserError, match="cannot decode image"):
        load_image_rgb(path)


def halves(width: int, height: int) -> Image.Image:
    """Left half black, right half white."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, width // 2 :] = 255
    return Image.fromarray(pixels)


@pytest.mark.parametrize(
    ("size", "resized", "bucket"), [((40, 20), (128, 64), (64, 64)), ((400, 200), (128, 64), (64, 64))]
)
def test_resize_and_center_crop_keeps_the_centre(size, resized, bucket):
    out = resize_and_center_crop(halves(*size), resized, bucket)
    assert out.size == bucket
    # The centred window of a half-black, half-white picture is split in the middle too.
    assert out.getpixel((8, 32))[0] < 30 and out.getpixel((56, 32))[0] > 225


def test_crop_only_when_no_resize_needed():
    img = Image.fromarray(np.arange(300 * 200 * 3, dtype=np.uint32).reshape(200, 300, 3).astype(np.uint8))
    out = resize_and_center_crop(img, (300, 200), (256, 192))
    assert np.array_equal(np.asarray(out), np.asarray(img)[4:196, 22:278])


def test_to_tensor_scales_to_minus_one_one():
    tensor = to_tensor(halves(4, 2))
    assert tensor.shape == (3, 2, 4) and tensor.dtype == torch.float32
    assert tensor[:, :, :2].eq(-1).all() and tensor[:, :, 2:].eq(1).all()


def test_load_bucket_tensor_shape(tmp_path):
    path = saved(tmp_path, halves(100, 60), "x.webp")
    assert load_bucket_tensor(path, (107, 64), (64, 64)).shape == (3, 64, 64)
