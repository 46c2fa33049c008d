import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from data_helpers import load_bucket_tensor, load_image_rgb
from loracraft.data import images
from loracraft.data.buckets import center_crop_box
from loracraft.data.images import ImageFileError, open_image, resize_and_crop, to_tensor, upright_size
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
    out = resize_and_crop(halves(*size), resized, center_crop_box(resized, bucket))
    assert out.size == bucket
    # The centred window of a half-black, half-white picture is split in the middle too.
    assert out.getpixel((8, 32))[0] < 30 and out.getpixel((56, 32))[0] > 225


def test_crop_only_when_no_resize_needed():
    img = Image.fromarray(np.arange(300 * 200 * 3, dtype=np.uint32).reshape(200, 300, 3).astype(np.uint8))
    out = resize_and_crop(img, (300, 200), center_crop_box((300, 200), (256, 192)))
    assert np.array_equal(np.asarray(out), np.asarray(img)[4:196, 22:278])


def test_to_tensor_scales_to_minus_one_one():
    tensor = to_tensor(halves(4, 2))
    assert tensor.shape == (3, 2, 4) and tensor.dtype == torch.float32
    assert tensor[:, :, :2].eq(-1).all() and tensor[:, :, 2:].eq(1).all()


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = saved(tmp_path, Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "cmyk.jpg")
    assert load_image_rgb(path).getpixel((4, 4)) == (255, 0, 0)


def test_palette_without_transparency_keeps_its_colours(tmp_path):
    img = Image.new("P", (4, 4), 2)
    img.putpalette([0, 0, 0, 10, 20, 30, 200, 100, 50] + [0] * 759)
    assert load_image_rgb(saved(tmp_path, img, "p.png")).getpixel((1, 1)) == (200, 100, 50)


def test_big_endian_16_bit_grey_is_scaled(tmp_path):
    img = Image.frombytes("I;16B", (4, 4), np.full((4, 4), 128 * 257, dtype=">u2").tobytes())
    assert img.mode == "I;16B"
    assert load_image_rgb(saved(tmp_path, img, "deep.tif")).getpixel((2, 2)) == (128, 128, 128)


def test_half_transparent_grey_alpha_is_blended_on_white(tmp_path):
    loaded = load_image_rgb(saved(tmp_path, Image.new("LA", (4, 4), (100, 128)), "la.png"))
    assert loaded.getpixel((0, 0)) == (177, 177, 177)  # 100 * 128/255 + 255 * 127/255


def test_images_over_the_pixel_limit_are_refused_naming_the_file(tmp_path, monkeypatch):
    path = saved(tmp_path, Image.new("RGB", (64, 48)), "huge.png")
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 64 * 48 - 1)
    with pytest.raises(
        ImageFileError, match=rf"cannot decode image {path} \(64x48 = 0 MP, over the .* MP limit\); downscale"
    ):
        load_image_rgb(path)


def test_pillows_bomb_warning_neither_escapes_nor_stops_loading(tmp_path, monkeypatch):
    path = saved(tmp_path, Image.new("RGB", (64, 64)), "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # Pillow warns above this, fails above twice it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_image_rgb(path).size == (64, 64)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_pillows_bomb_error_becomes_our_message(tmp_path, monkeypatch):
    path = saved(tmp_path, Image.new("RGB", (64, 64)), "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageFileError, match=f"cannot decode image {path} .*4096 pixels.*downscale it"):
        load_image_rgb(path)


def test_image_file_error_survives_pickling_between_processes(tmp_path):
    err = pickle.loads(pickle.dumps(ImageFileError(tmp_path / "x.png", "truncated")))
    assert isinstance(err, UserError) and err.reason == "truncated" and str(tmp_path / "x.png") in str(err)


def test_large_jpeg_decodes_at_dct_scale_close_to_a_full_decode(tmp_path):
    ys, xs = np.mgrid[0:600, 0:800]
    pixels = np.stack([(xs * 255 // 800), (ys * 255 // 600), (xs + ys) % 256], axis=-1).astype(np.uint8)
    path = saved(tmp_path, Image.fromarray(pixels), "photo.jpg", quality=95)
    fast = load_bucket_tensor(path, (192, 144), (192, 128))
    full = to_tensor(
        resize_and_crop(load_image_rgb(path), (192, 144), center_crop_box((192, 144), (192, 128)))
    )
    assert fast.shape == full.shape == (3, 128, 192)
    assert (fast - full).abs().mean() < 0.02  # of the [-1, 1] range


@pytest.mark.parametrize("name", ["turned.jpg", "turned.png", "turned.webp"])
def test_upright_size_reads_the_exif_of_the_header_only(tmp_path, name):
    exif = Image.Exif()
    exif[0x0112] = 8
    path = saved(tmp_path, Image.new("RGB", (30, 20)), name, exif=exif)
    with open_image(path) as img:
        assert upright_size(img) == (20, 30)
        # Still undecoded: Pillow empties the tile list once it decodes (its WebP reader has no tiles).
        assert img.tile or name.endswith(".webp")


def test_xmp_orientation_gives_the_same_size_from_the_header_and_the_pixels(tmp_path):
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    path = saved(tmp_path, Image.new("RGB", (30, 20)), "xmp.jpg", xmp=xmp)
    with open_image(path) as img:
        assert upright_size(img) == (20, 30)
    assert load_image_rgb(path).size == (20, 30)
