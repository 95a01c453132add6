"""Image previews: small, upright, without metadata, and refused for anything that is no safe image."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib

import pytest
from PIL import ExifTags, Image, ImageCms

from infra.settings import Settings
from infra.thumbnails import THUMBNAIL_CONTENT_TYPE, PillowThumbnailer, ThumbnailError, make_thumbnail
from resolvers.ports import ImageError

SIZE = 320
MAX_PIXELS = 50_000_000
RED, BLUE = (220, 20, 20), (20, 20, 220)


def camera_jpeg() -> bytes:
    """A 2000x1000 photo as a phone stores it held upright: sideways pixels, orientation 6, GPS, XMP, ICC."""
    image = Image.new("RGB", (2000, 1000), BLUE)
    image.paste(RED, (0, 0, 1000, 1000))  # the stored left half is the top once turned upright
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.Base.Make] = "PhoneMaker"
    exif[ExifTags.IFD.GPSInfo] = {
        ExifTags.GPS.GPSLatitudeRef: "N",
        ExifTags.GPS.GPSLatitude: (52.0, 31.0, 12.0),
        ExifTags.GPS.GPSLongitudeRef: "E",
        ExifTags.GPS.GPSLongitude: (13.0, 24.0, 36.0),
    }
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><exif:GPSLatitude>52,31.2N</exif:GPSLatitude></x:xmpmeta>'
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90, exif=exif, xmp=xmp, icc_profile=icc)
    data = out.getvalue()
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(ExifTags.IFD.GPSInfo)  # the sample really has GPS
    return data


def png_with_alpha() -> bytes:
    image = Image.new("RGBA", (800, 400), (0, 0, 0, 0))
    image.paste((30, 200, 30, 255), (400, 0, 800, 400))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (200, 100), colour) for colour in (RED, BLUE)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int, *, pixels: bytes | None = None) -> bytes:
    """A greyscale PNG whose header says `width`x`height`; its data, if any, is `pixels` compressed."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    data = png_chunk(b"IDAT", zlib.compress(pixels, 9)) if pixels is not None else b""
    return b"\x89PNG\r\n\x1a\n" + header + data + png_chunk(b"IEND", b"")


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def pixel(image: Image.Image, x: int, y: int) -> tuple[int, ...]:
    value = image.getpixel((x, y))
    assert isinstance(value, tuple)
    return value


def near(colour: tuple[int, ...], expected: tuple[int, int, int]) -> bool:
    return all(abs(a - b) < 40 for a, b in zip(colour[:3], expected, strict=True))


async def test_camera_photo_becomes_a_small_upright_webp_without_any_metadata() -> None:
    thumbnail = await make_thumbnail(camera_jpeg(), size=SIZE, max_pixels=MAX_PIXELS)

    image = opened(thumbnail)
    assert image.format == "WEBP"
    assert THUMBNAIL_CONTENT_TYPE == "image/webp"
    assert image.size == (SIZE // 2, SIZE)  # portrait: the orientation was applied
    assert near(pixel(image, SIZE // 4, 20), RED)  # the stored left half is on top
    assert near(pixel(image, SIZE // 4, SIZE - 20), BLUE)
    assert not image.getexif()
    assert "icc_profile" not in image.info
    assert "xmp" not in image.info
    for marker in (b"GPS", b"Exif", b"EXIF", b"XMP", b"ICCP", b"xmpmeta", b"PhoneMaker"):
        assert marker not in thumbnail


async def test_small_images_are_not_enlarged() -> None:
    out = io.BytesIO()
    Image.new("RGB", (100, 50), RED).save(out, format="JPEG")
    thumbnail = await make_thumbnail(out.getvalue(), size=SIZE, max_pixels=MAX_PIXELS)
    assert opened(thumbnail).size == (100, 50)


async def test_png_with_transparency_keeps_it() -> None:
    thumbnail = await make_thumbnail(png_with_alpha(), size=SIZE, max_pixels=MAX_PIXELS)

    image = opened(thumbnail)
    assert image.size == (SIZE, SIZE // 2)
    assert image.mode == "RGBA"
    assert pixel(image, 10, 10)[3] == 0  # the transparent half stays see-through
    opaque = pixel(image, SIZE - 10, 10)
    assert opaque[3] == 255
    assert near(opaque, (30, 200, 30))


async def test_animated_gif_previews_its_first_frame() -> None:
    thumbnail = await make_thumbnail(animated_gif(), size=SIZE, max_pixels=MAX_PIXELS)

    image = opened(thumbnail)
    assert getattr(image, "n_frames", 1) == 1
    assert image.size == (200, 100)
    assert near(pixel(image, 100, 50), RED)


async def test_sixteen_bit_greyscale_is_not_washed_out() -> None:
    out = io.BytesIO()
    Image.new("I;16", (64, 64), 32768).save(out, format="PNG")
    image = opened(await make_thumbnail(out.getvalue(), size=SIZE, max_pixels=MAX_PIXELS))
    assert near(pixel(image, 32, 32), (128, 128, 128))


async def test_header_declaring_more_pixels_than_allowed_is_refused_before_decoding() -> None:
    # No pixel data at all: decoding would fail as "damaged"; the refusal names the pixel count instead.
    with pytest.raises(ThumbnailError, match="too many pixels"):
        await make_thumbnail(png_claiming(5000, 5000), size=SIZE, max_pixels=1_000_000)


async def test_header_declaring_a_huge_image_is_refused() -> None:
    with pytest.raises(ThumbnailError, match="too many pixels"):
        await make_thumbnail(png_claiming(20000, 20000), size=SIZE, max_pixels=MAX_PIXELS)


async def test_pillows_own_limit_applies_even_when_ours_is_higher() -> None:
    assert Image.MAX_IMAGE_PIXELS is not None
    side = int((Image.MAX_IMAGE_PIXELS * 1.2) ** 0.5)  # above Pillow's warning, below its error
    with pytest.raises(ThumbnailError, match="too many pixels"):
        await make_thumbnail(png_claiming(side, side), size=SIZE, max_pixels=10 * Image.MAX_IMAGE_PIXELS)


async def test_compressed_bomb_small_on_disk_is_refused() -> None:
    side = 4000
    bomb = png_claiming(side, side, pixels=bytes((side + 1) * side))  # a filter byte per row, all black
    assert len(bomb) < 100_000
    with pytest.raises(ThumbnailError, match="too many pixels"):
        await make_thumbnail(bomb, size=SIZE, max_pixels=side * side - 1)


async def test_garbage_is_refused_as_not_an_image() -> None:
    with pytest.raises(ThumbnailError, match="not an image"):
        await make_thumbnail(b"this is not an image at all" * 10, size=SIZE, max_pixels=MAX_PIXELS)


async def test_formats_we_do_not_preview_are_refused() -> None:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), RED).save(out, format="BMP")
    with pytest.raises(ThumbnailError, match="not an image"):
        await make_thumbnail(out.getvalue(), size=SIZE, max_pixels=MAX_PIXELS)


async def test_truncated_image_is_refused_as_damaged() -> None:
    photo = camera_jpeg()
    with pytest.raises(ThumbnailError, match="damaged"):
        await make_thumbnail(photo[: len(photo) // 2], size=SIZE, max_pixels=MAX_PIXELS)


async def test_thumbnail_work_leaves_the_event_loop_free() -> None:
    order: list[str] = []

    async def other_work() -> None:
        order.append("other work ran")

    other = asyncio.create_task(other_work())
    await make_thumbnail(camera_jpeg(), size=SIZE, max_pixels=MAX_PIXELS)
    order.append("thumbnail done")
    await other
    assert order == ["other work ran", "thumbnail done"]


async def test_thumbnailer_port_uses_the_configured_limits_and_its_errors_are_image_errors() -> None:
    thumbnailer = PillowThumbnailer(size=64, max_pixels=3_000_000)
    assert thumbnailer.content_type == "image/webp"
    assert max(opened(await thumbnailer.thumbnail(camera_jpeg())).size) == 64
    with pytest.raises(ImageError):
        await thumbnailer.thumbnail(png_claiming(5000, 5000))


async def test_a_7000_pixel_square_png_is_refused_by_the_default_limit() -> None:
    """Review 2, item 13: the default pixel limit refuses a 49-megapixel PNG (about 600 MiB to decode)."""
    default = Settings.model_fields["thumbnail_max_pixels"].default
    with pytest.raises(ThumbnailError, match="too many pixels"):
        await make_thumbnail(png_claiming(7000, 7000), size=SIZE, max_pixels=default)


async def test_a_jpeg_over_the_pixel_limit_is_previewed_from_its_reduced_decoding() -> None:
    """Review 2, item 13: libjpeg decodes a large photo at 1/8 scale, so it gets a preview within the limit."""
    out = io.BytesIO()
    Image.new("RGB", (3000, 2000), RED).save(out, format="JPEG")
    preview = opened(await make_thumbnail(out.getvalue(), size=SIZE, max_pixels=2_000_000))
    assert preview.size == (SIZE, SIZE * 2 // 3)


async def test_a_jpeg_too_large_even_when_reduced_is_refused() -> None:
    out = io.BytesIO()
    Image.new("L", (3000, 3000)).save(out, format="JPEG")
    with pytest.raises(ThumbnailError, match="too many pixels"):
        await make_thumbnail(out.getvalue(), size=SIZE, max_pixels=2_000_000)  # 9 MP > 4 x 2 MP
