"""Removes the metadata of shared photos (EXIF and XMP: GPS position, camera, times) but their orientation.

Pure functions on bytes (no I/O). Segments and chunks are dropped; the compressed image data is
copied unchanged, so the picture loses nothing. Written here rather than taken from a library:
re-encoding with Pillow would lose quality and decode every pixel (hundreds of MiB for a large
photo), piexif is unmaintained and knows no PNG, and exiftool is a Perl program. The one EXIF
tag kept is read and written here too: Pillow's EXIF reader reports damaged blocks through the
process-wide warnings machinery, and the block written is 26 bytes.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable

_ORIENTATION = 0x0112
_SHORT = 3  # the TIFF type of the orientation's value
_EXIF_HEADER = b"Exif\x00\x00"

# JPEG: any marker that is neither byte stuffing (FF 00), a restart marker (FF D0-D7) nor a fill byte.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SOI, _EOI, _SOS, _APP0, _APP1, _APP2, _APP14 = 0xD8, 0xD9, 0xDA, 0xE0, 0xE1, 0xE2, 0xEE
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_ICC_PROFILE = b"ICC_PROFILE\x00"
# Frames, Huffman and arithmetic tables (C0-CF), scans, quantization tables, restart intervals,
# line counts and hierarchical headers (DA-DF), and the markers without a segment: the picture itself.
_KEPT_SEGMENTS = frozenset({*range(0xC0, 0xD0), *range(0xDA, 0xE0), _SOI, _EOI, *_STANDALONE})
# Application segments that stay, by how their content starts: JFIF (and its extension), ICC profiles, Adobe's.
_KEPT_APPLICATION_SEGMENTS = {_APP0: (b"JFIF\x00", b"JFXX\x00"), _APP2: (_ICC_PROFILE,), _APP14: (b"Adobe",)}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# eXIf holds EXIF; XMP and ImageMagick's "Raw profile type exif" live in the text chunks.
_PNG_METADATA = frozenset({b"eXIf", b"tEXt", b"zTXt", b"iTXt"})

_WEBP_METADATA = frozenset({b"EXIF", b"XMP "})
_VP8X_EXIF, _VP8X_XMP = 0x08, 0x04


def cleaned_types() -> frozenset[str]:
    """The content types `strip_metadata` cleans."""
    return frozenset(_STRIPPERS)


def strip_metadata(content_type: str, data: bytes) -> bytes:
    """`data` without EXIF/XMP but its orientation; `data` itself when there was nothing to remove.

    Damaged structure is cut off where it starts (what follows cannot be parsed, so it cannot
    be vouched for); anything after the image's end (another picture, a video) goes too.
    """
    strip = _STRIPPERS.get(content_type)
    return strip(data) if strip is not None else data


def _orientation(exif: bytes) -> int:
    """The orientation in an EXIF block's first directory (TIFF, with or without its "Exif" header); 1 if none."""
    tiff = exif.removeprefix(_EXIF_HEADER)
    order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(tiff[:4])
    if order is None:
        return 1
    try:
        (directory,) = struct.unpack_from(order + "I", tiff, 4)
        (entries,) = struct.unpack_from(order + "H", tiff, directory)
        for entry in range(directory + 2, directory + 2 + 12 * entries, 12):
            tag, kind, count = struct.unpack_from(order + "HHI", tiff, entry)
            if tag == _ORIENTATION and kind == _SHORT and count == 1:
                (value,) = struct.unpack_from(order + "H", tiff, entry + 8)
                return value if 2 <= value <= 8 else 1
    except struct.error:  # offsets past the end: a damaged block
        return 1
    return 1


def _orientation_only(orientation: int) -> bytes:
    """A TIFF block with the orientation and nothing else (without the "Exif" header).

    Header, one directory of one entry (Orientation, SHORT, 1, the value padded to 4 bytes), no next one.
    """
    return b"MM\x00*" + struct.pack(">IHHHIHHI", 8, 1, _ORIENTATION, _SHORT, 1, orientation, 0, 0)


def _strip_jpeg(data: bytes) -> bytes:
    if not data.startswith(b"\xff\xd8"):
        return data
    parts, changed = _jpeg_parts(data)
    kept: list[bytes] = []
    insert_at = 1
    orientation = 1
    for marker, part in parts:
        if marker is not None and _drop_jpeg_segment(marker, part[4:]):
            if marker == _APP1 and part[4:].startswith(_EXIF_HEADER) and orientation == 1:
                orientation = _orientation(part[4:])
            changed = True
            continue
        kept.append(part)
        if marker == _APP0 and insert_at == len(kept) - 1:
            insert_at = len(kept)  # JFIF's APP0 stays first after SOI
    if not changed:
        return data
    if orientation != 1:
        exif = _EXIF_HEADER + _orientation_only(orientation)
        kept.insert(insert_at, b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif)
    return b"".join(kept)


def _jpeg_parts(data: bytes) -> tuple[list[tuple[int | None, bytes]], bool]:
    """The markers and segments of a JPEG as (marker, bytes), scan data with marker None; and whether any was lost.

    Lost: junk between segments, a segment cut short, and whatever follows the end of the image
    (a second picture (MPF), a video, an appended file).
    """
    parts: list[tuple[int | None, bytes]] = [(_SOI, data[:2])]
    lost = False
    pos, size = 2, len(data)
    while pos < size:
        if data[pos] != 0xFF:
            # Junk between segments (decoders skip it with a warning): dropped up to the next marker.
            found = _NEXT_MARKER.search(data, pos)
            lost = True
            if found is None:
                return parts, lost
            pos = found.start()
        while pos + 1 < size and data[pos + 1] == 0xFF:  # fill bytes before a marker
            pos += 1
        marker = data[pos + 1] if pos + 1 < size else _EOI
        if marker == _EOI:
            parts.append((_EOI, b"\xff\xd9"))
            return parts, lost or pos + 2 != size
        if marker in _STANDALONE or marker == _SOI:
            parts.append((marker, data[pos : pos + 2]))
            pos += 2
            continue
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if pos + 4 > size or end > size or end < pos + 4:
            return parts, True  # a segment cut short: the file is truncated here
        parts.append((marker, data[pos:end]))
        pos = end
        if marker == _SOS:
            # The entropy-coded scan runs to the next real marker.
            found = _NEXT_MARKER.search(data, pos)
            stop = found.start() if found is not None else size
            parts.append((None, data[pos:stop]))
            pos = stop
    return parts, lost


def _drop_jpeg_segment(marker: int, payload: bytes) -> bool:
    """Whether a segment goes: all but those that make the picture, JFIF (APP0), ICC profiles (APP2) and Adobe (APP14).

    A list of what stays, not of what goes: other APPn, comments and markers nobody defined all go.
    """
    signature = _KEPT_APPLICATION_SEGMENTS.get(marker)
    if signature is not None:
        return not payload.startswith(signature)
    return marker not in _KEPT_SEGMENTS


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _strip_png(data: bytes) -> bytes:
    if not data.startswith(_PNG_SIGNATURE):
        return data
    kept: list[bytes] = [_PNG_SIGNATURE]
    first_data: int | None = None
    orientation = 1
    changed = False
    pos, size = len(_PNG_SIGNATURE), len(data)
    while pos + 8 <= size:
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > size:
            break  # a chunk cut short: the file is truncated here
        if kind in _PNG_METADATA:
            if kind == b"eXIf" and orientation == 1:
                orientation = _orientation(data[pos + 8 : pos + 8 + length])
            changed = True
        else:
            if kind == b"IDAT" and first_data is None:
                first_data = len(kept)
            kept.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            break
    if pos < size:
        changed = True
    if not changed:
        return data
    if orientation != 1 and first_data is not None:
        # eXIf must come before the image data.
        kept.insert(first_data, _png_chunk(b"eXIf", _orientation_only(orientation)))
    return b"".join(kept)


def _strip_webp(data: bytes) -> bytes:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return data
    riff_end = 8 + int.from_bytes(data[4:8], "little")
    size = min(len(data), riff_end)
    kept: list[bytes] = []
    extended: int | None = None  # index of VP8X in `kept`
    orientation = 1
    changed = len(data) != riff_end
    pos = 12
    while pos + 8 <= size:
        kind = data[pos : pos + 4]
        length = int.from_bytes(data[pos + 4 : pos + 8], "little")
        end = pos + 8 + length + (length & 1)  # chunks are padded to an even length
        if pos + 8 + length > size:
            changed = True  # a chunk cut short: the file is truncated here
            break
        if kind in _WEBP_METADATA:
            if kind == b"EXIF" and orientation == 1:
                orientation = _orientation(data[pos + 8 : pos + 8 + length])
            changed = True
        else:
            if kind == b"VP8X" and extended is None and length >= 10:
                extended = len(kept)
            kept.append(data[pos:end].ljust(end - pos, b"\x00"))
        pos = end
    if pos < size:
        changed = True
    if not changed:
        return data
    if extended is not None:
        chunk = bytearray(kept[extended])
        chunk[8] &= ~(_VP8X_EXIF | _VP8X_XMP) & 0xFF
        if orientation != 1:
            # EXIF belongs after the image data, and only in the extended format (VP8X) announcing it.
            exif = _orientation_only(orientation)
            kept.append(b"EXIF" + struct.pack("<I", len(exif)) + exif + b"\x00" * (len(exif) & 1))
            chunk[8] |= _VP8X_EXIF
        kept[extended] = bytes(chunk)
    body = b"WEBP" + b"".join(kept)
    return b"RIFF" + struct.pack("<I", len(body)) + body


_STRIPPERS: dict[str, Callable[[bytes], bytes]] = {
    "image/jpeg": _strip_jpeg,
    "image/png": _strip_png,
    "image/webp": _strip_webp,
}
