"""Image previews for shared files: a small WebP without any metadata, made with Pillow off the event loop.

Uploaded bytes are hostile: the decoder only runs on the formats we preview, after the header's pixel
count was checked, and the output carries no EXIF/XMP/ICC (GPS positions never leave the server).
Decoding takes memory in proportion to the pixels decoded: a JPEG is decoded at 1/2 to 1/8 of its
size (libjpeg's scaling), so it may have `JPEG_PIXEL_FACTOR` times the pixels of other formats.
"""

from __future__ import annotations

import asyncio
import functools
import io
from dataclasses import dataclass

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError, features

from resolvers.ports import ImageError

THUMBNAIL_CONTENT_TYPE = "image/webp"
_WEBP_QUALITY = 80
# How many times `max_pixels` a JPEG's header may declare: the scaled size libjpeg decodes to must
# still be within `max_pixels` (progressive JPEGs also keep their coefficients, about 3 bytes a pixel).
JPEG_PIXEL_FACTOR = 4


class ThumbnailError(ImageError):
    """No preview can be made of these bytes: not an image, damaged, or too many pixels."""


@functools.cache
def _source_formats() -> tuple[str, ...]:
    # Only decoders we preview get to see uploaded bytes (less attack surface than every Pillow plugin).
    formats = ["JPEG", "PNG", "GIF", "WEBP"]
    if features.check("avif"):
        formats.append("AVIF")
    Image.init()
    if "HEIF" in Image.OPEN:  # registered by the optional pillow-heif plugin
        formats.append("HEIF")
    return tuple(formats)


_SRGB = ImageCms.createProfile("sRGB")
# (source mode, preview mode) pairs LittleCMS converts directly.
_PROFILE_CONVERSIONS = frozenset({("RGB", "RGB"), ("CMYK", "RGB"), ("L", "RGB"), ("RGBA", "RGBA")})


async def make_thumbnail(data: bytes, *, size: int, max_pixels: int) -> bytes:
    """A WebP of `data` fitting `size`x`size`, upright and without metadata; raises ThumbnailError."""
    # Decoding takes tens of milliseconds to seconds of CPU: never on the event loop.
    return await asyncio.to_thread(_render, data, size, max_pixels)


@dataclass(slots=True)
class PillowThumbnailer:
    """The `Thumbnailer` port (resolvers/ports.py) with the limits from `FileConfig`.

    Not frozen: the port declares `content_type` as a plain (settable) attribute.
    """

    size: int
    max_pixels: int
    content_type: str = THUMBNAIL_CONTENT_TYPE

    async def thumbnail(self, data: bytes) -> bytes:
        """A small WebP preview of the image `data`, without its metadata; raises ThumbnailError."""
        return await make_thumbnail(data, size=self.size, max_pixels=self.max_pixels)


def _render(data: bytes, size: int, max_pixels: int) -> bytes:
    try:
        with Image.open(io.BytesIO(data), formats=_source_formats()) as source:
            jpeg = source.format == "JPEG"
            # Image.open read only the header: refuse before the first pixel is decoded.
            _refuse_bomb(source.size, max_pixels * JPEG_PIXEL_FACTOR if jpeg else max_pixels)
            if jpeg:
                # libjpeg scales by 1/2, 1/4 or 1/8 while decoding: far less memory and time for a preview.
                source.draft("RGB", (size, size))
                _refuse_bomb(source.size, max_pixels)
            # The first frame of an animation (Image.open is positioned there); exif_transpose loads it.
            upright = ImageOps.exif_transpose(source)
        picture = _to_srgb(upright)
        picture.thumbnail((size, size), Image.Resampling.LANCZOS)
        return _encode_bare(picture)
    except ThumbnailError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Pillow's own limit (its warning is an exception when the process's warning filters say so).
        raise ThumbnailError("The image has too many pixels.") from error
    except UnidentifiedImageError as error:
        raise ThumbnailError("The file is not an image we can preview.") from error
    except Exception as error:
        # Hostile or truncated data: Pillow's decoders and parsers raise OSError, ValueError, SyntaxError,
        # EOFError, struct.error and, as its fuzzing history shows, IndexError, TypeError or KeyError too.
        # The caller only needs to know that no preview can be made.
        raise ThumbnailError("The image is damaged or incomplete.") from error


def _refuse_bomb(dimensions: tuple[int, int], max_pixels: int) -> None:
    """Refuses images whose header declares more pixels than our limit or Pillow's.

    Pillow only *warns* (DecompressionBombWarning) between MAX_IMAGE_PIXELS and twice that. Making
    that warning an error per call with `warnings.catch_warnings()` is not thread-safe before Python
    3.14: the filters are one process-wide list, so concurrent `to_thread` calls would restore each
    other's saved lists (losing or leaking the "error" filter); setting `Image.MAX_IMAGE_PIXELS` per
    call races the same way. So the warning's own condition is checked here, as an error, from the
    header's size; both globals stay untouched.
    """
    width, height = dimensions
    pixels = max(1, width) * max(1, height)
    limit = max_pixels if Image.MAX_IMAGE_PIXELS is None else min(max_pixels, Image.MAX_IMAGE_PIXELS)
    if pixels > limit:
        raise ThumbnailError("The image has too many pixels.")


def _to_srgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, or RGBA when the image has transparency, mapped to sRGB when an ICC profile says how.

    The preview keeps no ICC profile, so a wide-gamut (Display P3) or CMYK picture is converted
    through its profile first; a broken profile falls back to plain conversion.
    """
    mode = "RGBA" if image.has_transparency_data else "RGB"
    if image.mode in {"I", "I;16", "I;16B", "I;16L"}:
        # 16-bit greyscale (PNG): scale to 8 bits, as a plain convert clips everything above 255 to white.
        image = image.convert("I").point(lambda value: value / 256, "L")
    icc = image.info.get("icc_profile")
    if isinstance(icc, bytes) and icc and (image.mode, mode) in _PROFILE_CONVERSIONS:
        try:
            converted = ImageCms.profileToProfile(
                image, ImageCms.ImageCmsProfile(io.BytesIO(icc)), _SRGB, outputMode=mode
            )
        except (ImageCms.PyCMSError, OSError, ValueError):
            converted = None
        if converted is not None:
            return converted
    return image.convert(mode)


def _encode_bare(image: Image.Image) -> bytes:
    """WebP bytes with pixels only: a fresh image carries no EXIF, XMP or ICC from the source."""
    bare = Image.new(image.mode, image.size)
    bare.paste(image)
    out = io.BytesIO()
    bare.save(out, format="WEBP", quality=_WEBP_QUALITY)
    return out.getvalue()
