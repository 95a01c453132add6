"""What a shared file may be: its declared type, its name, and whether its first bytes match the type."""

from __future__ import annotations

import io
import struct
import zipfile

import pytest
from PIL import Image, ImageCms, PngImagePlugin, features

from resolvers.file_checks import (
    EXTENSION_CHECK_BYTES,
    check_filename,
    content_problem,
    is_image,
    normalize_content_type,
)
from resolvers.image_metadata import cleaned_types, strip_metadata

# --- samples, built the way the real programs write them -------------------------------------------


def image_bytes(image_format: str, *, mode: str = "RGB", size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, "red").save(out, format=image_format)
    return out.getvalue()


def animated_png() -> bytes:
    out = io.BytesIO()
    first, second = Image.new("RGB", (16, 16), "red"), Image.new("RGB", (16, 16), "blue")
    first.save(out, format="PNG", save_all=True, append_images=[second])
    return out.getvalue()


def iso_bmff(major: bytes, compatible: list[bytes], *, then: bytes = b"moov") -> bytes:
    """An ISO-BMFF start: the `ftyp` box with its brands, then the header of the next box."""
    body = b"ftyp" + major + struct.pack(">I", 0) + b"".join(compatible)
    return struct.pack(">I", len(body) + 4) + body + struct.pack(">I", 8 + 64) + then + bytes(64)


def ebml(doctype: bytes) -> bytes:
    """A Matroska/WebM start: the EBML header naming its DocType."""
    fields = bytes.fromhex("4286810142f7810142f2810442f38108") + b"\x42\x82" + bytes([0x80 | len(doctype)]) + doctype
    fields += bytes.fromhex("4287810442858102")
    return b"\x1a\x45\xdf\xa3" + bytes([0x80 | len(fields)]) + fields + b"\x18\x53\x80\x67" + bytes(32)


IPHONE_MOV = iso_bmff(b"qt  ", [b"qt  "], then=b"wide")
ANDROID_MP4 = iso_bmff(b"isom", [b"isom", b"iso2", b"avc1", b"mp41"])
ITUNES_M4V = iso_bmff(b"M4V ", [b"M4V ", b"M4A ", b"mp42", b"isom"])
PHONE_3GP = iso_bmff(b"3gp5", [b"3gp5", b"3gp4"])  # a brand filetype does not know
HEIC_PHOTO = iso_bmff(b"heic", [b"mif1", b"heic"], then=b"meta")
WEBM = ebml(b"webm")
MKV = ebml(b"matroska")

ELF = b"\x7fELF\x02\x01\x01" + bytes(9) + b"\x02\x00\x3e\x00\x01\x00\x00\x00" + bytes(40)
PE = (b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + bytes(46) + struct.pack("<I", 0x80)).ljust(
    0x80, b"\x00"
) + b"PE\x00\x00\x64\x86"
MACH_O = b"\xcf\xfa\xed\xfe\x07\x00\x00\x01\x03\x00\x00\x00" + bytes(20)
JAVA_CLASS = b"\xca\xfe\xba\xbe\x00\x00\x00\x41" + bytes(16)
DEX = b"dex\n035\x00" + bytes(64)
WASM = b"\x00asm\x01\x00\x00\x00" + bytes(8)
SHELL_SCRIPT = b"#!/bin/sh\nrm -rf ~\n"
ENV_SCRIPT = b"#! /usr/bin/env python3\nprint('hi')\n"
PROGRAMS = [ELF, PE, MACH_O, JAVA_CLASS, DEX, WASM, SHELL_SCRIPT, ENV_SCRIPT]

PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
NOISE = bytes(range(256)) * 16


def zip_archive() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("notes.txt", "hello " * 100)
    return out.getvalue()


def head_of(data: bytes) -> bytes:
    return data[:EXTENSION_CHECK_BYTES]


# --- images ------------------------------------------------------------------------------------------


def test_png_declared_as_png_passes() -> None:
    assert content_problem("image/png", head_of(image_bytes("PNG"))) is None


def test_png_declared_as_jpeg_is_refused_naming_what_it_is() -> None:
    problem = content_problem("image/jpeg", head_of(image_bytes("PNG")))
    assert problem is not None
    assert "image/png" in problem


@pytest.mark.parametrize(
    ("declared", "data"),
    [
        ("image/jpeg", image_bytes("JPEG")),
        ("image/jpg", image_bytes("JPEG")),
        ("Image/JPEG; q=1", image_bytes("JPEG")),
        ("image/gif", image_bytes("GIF")),
        ("image/webp", image_bytes("WEBP")),
        ("image/png", animated_png()),
        ("image/heif", HEIC_PHOTO),
        ("image/heic", HEIC_PHOTO),
    ],
)
def test_images_pass_as_their_type_and_its_aliases(declared: str, data: bytes) -> None:
    assert content_problem(declared, head_of(data)) is None


def test_unrecognisable_bytes_declared_as_an_image_are_refused() -> None:
    assert content_problem("image/png", NOISE) is not None


def test_image_declared_with_an_invalid_type_is_refused() -> None:
    assert content_problem("nonsense", head_of(image_bytes("PNG"))) is not None


# --- videos ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "data"),
    [
        ("video/mp4", ANDROID_MP4),
        ("video/quicktime", IPHONE_MOV),
        ("video/x-m4v", ITUNES_M4V),
        ("video/3gpp", PHONE_3GP),
        ("video/webm", WEBM),
        ("video/x-matroska", MKV),
    ],
)
def test_videos_pass_as_their_type(declared: str, data: bytes) -> None:
    assert content_problem(declared, data) is None


@pytest.mark.parametrize(
    ("declared", "data"),
    [
        # Phones and browsers label MP4-family files loosely; they are one container.
        ("video/mp4", IPHONE_MOV),
        ("video/quicktime", ANDROID_MP4),
        ("video/mp4", ITUNES_M4V),
        ("video/mp4", iso_bmff(b"M4A ", [b"M4A ", b"mp42", b"isom"])),  # filetype calls it audio/mp4
        ("video/webm", MKV),
    ],
)
def test_videos_pass_as_another_type_of_the_same_container(declared: str, data: bytes) -> None:
    assert content_problem(declared, data) is None


@pytest.mark.parametrize(
    ("declared", "data"),
    [
        ("video/mp4", HEIC_PHOTO),
        ("video/mp4", WEBM),
        ("video/webm", ANDROID_MP4),
        ("video/mp4", image_bytes("PNG")),
        ("image/heic", ANDROID_MP4),
        ("video/mp4", NOISE),
    ],
)
def test_videos_and_images_of_another_kind_are_refused(declared: str, data: bytes) -> None:
    assert content_problem(declared, head_of(data)) is not None


# --- programs ------------------------------------------------------------------------------------------


def test_elf_renamed_as_a_jpeg_is_refused_as_a_program() -> None:
    problem = content_problem("image/jpeg", ELF)
    assert problem is not None
    assert "program" in problem


@pytest.mark.parametrize("program", PROGRAMS)
@pytest.mark.parametrize(
    "declared", ["application/zip", "text/plain", "application/pdf", "audio/mpeg", "application/octet-stream"]
)
def test_programs_are_refused_whatever_their_declared_type(program: bytes, declared: str) -> None:
    problem = content_problem(declared, program)
    assert problem is not None
    assert "program" in problem


def test_text_that_happens_to_start_with_mz_is_not_taken_for_a_program() -> None:
    assert content_problem("text/plain", b"MZ 1234 departs at 9:40 from platform 3.\n") is None


def test_amr_audio_is_not_taken_for_a_script() -> None:
    assert content_problem("audio/amr", b"#!AMR\n" + bytes(32)) is None


# --- documents and archives ------------------------------------------------------------------------------


def test_zip_made_by_zipfile_passes_as_zip() -> None:
    assert content_problem("application/zip", head_of(zip_archive())) is None


def test_pdf_passes_and_other_bytes_declared_as_pdf_are_refused() -> None:
    assert content_problem("application/pdf", PDF) is None
    assert content_problem("application/pdf", NOISE) is not None
    assert content_problem("application/pdf", b"<html>%PDF-1.7") is not None


def test_bytes_that_are_no_zip_are_refused_as_zip() -> None:
    assert content_problem("application/zip", PDF) is not None


# --- text ------------------------------------------------------------------------------------------------


def test_utf8_text_passes_even_when_the_head_cuts_a_character() -> None:
    text = "Grüße aus Köln ".encode().ljust(EXTENSION_CHECK_BYTES - 2, b".") + "🌍 and more".encode()
    head = head_of(text)
    with pytest.raises(UnicodeDecodeError):
        head.decode()  # the head really ends inside a character
    assert content_problem("text/plain; charset=utf-8", head) is None


def test_text_with_nul_bytes_is_refused() -> None:
    assert content_problem("text/plain", b"hello\x00world") is not None


def test_text_that_is_not_utf8_is_refused() -> None:
    assert content_problem("text/plain", "café au lait".encode("latin-1")) is not None


def test_an_image_declared_as_text_is_refused() -> None:
    assert content_problem("text/plain", head_of(image_bytes("PNG"))) is not None


# --- names and types ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\x\\a.png", "a.png"),
        ("re\x07port\x1b.pdf\r\n", "report.pdf"),
        ("  ..holiday.jpg..  ", "holiday.jpg"),
        ("photo\u202egnp.exe", "photognp.exe"),
        ("Cafe\u0301.txt", "Café.txt"),
        ("日本語のファイル.txt", "日本語のファイル.txt"),
    ],
)
def test_file_names_keep_only_a_clean_last_part(given: str, kept: str) -> None:
    assert check_filename(given) == kept


@pytest.mark.parametrize(
    "name", ["", "   ", "..", "dir/", "a\x00.txt", "bad\udc80.txt", "x" * 256, "e\u0301" * 200 + "x" * 56]
)
def test_unusable_file_names_are_refused_with_a_reason(name: str) -> None:
    with pytest.raises(ValueError, match=r"\w") as refused:
        check_filename(name)
    assert str(refused.value).startswith("The file name")


def test_names_of_255_characters_after_composition_are_kept() -> None:
    # 200 decomposed é (400 code points) compose to 200 characters.
    name = "e\u0301" * 200 + "x" * 55
    assert len(check_filename(name)) == 255


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("Image/PNG; charset=x", "image/png"),
        (" text/plain ;charset=UTF-8", "text/plain"),
        (
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ),
        ("application/vnd.ms-excel", "application/vnd.ms-excel"),
        ("image/svg+xml", "image/svg+xml"),
        ("nonsense", None),
        ("", None),
        ("image/", None),
        ("/png", None),
        ("image/png/x", None),
        ("image /png", None),
        ("image/p ng", None),
        ("ima\x00ge/png", None),
        ("image/" + "x" * 128, None),
    ],
)
def test_content_types_are_normalized_or_refused(given: str, normal: str | None) -> None:
    assert normalize_content_type(given) == normal


def test_long_but_valid_subtypes_are_kept() -> None:
    subtype = "vnd." + "x" * 123
    assert normalize_content_type(f"application/{subtype}") == f"application/{subtype}"


def test_only_previewable_image_types_are_images() -> None:
    assert is_image("image/jpeg")
    assert is_image("Image/PNG; x=y")
    assert is_image("image/jpg")
    assert is_image("image/gif")
    assert is_image("image/webp")
    assert is_image("image/avif") == features.check("avif")
    assert not is_image("image/bmp")
    assert not is_image("image/svg+xml")
    assert not is_image("application/pdf")
    assert not is_image("nonsense")
    assert not is_image(None)


# --- photo metadata (Review 2, item 17): removed but the orientation, the picture untouched ---------

GPS_IFD = 0x8825


def photo_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turn right to show upright
    exif[0x010F] = "PhoneMaker"
    exif[GPS_IFD] = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)}
    return exif


XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><exif:GPSLatitude>52,31.2N</exif:GPSLatitude></x:xmpmeta>'


def picture() -> Image.Image:
    image = Image.new("RGB", (120, 80), (200, 40, 40))
    image.paste((20, 40, 200), (0, 0, 60, 40))
    return image


def jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def camera_jpeg() -> bytes:
    """A phone's JPEG: EXIF with GPS, XMP, an IPTC block, a comment, an ICC profile, and a second picture after it."""
    out = io.BytesIO()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    picture().save(out, format="JPEG", exif=photo_exif(), xmp=XMP, icc_profile=icc, comment=b"at home")
    data = out.getvalue()
    iptc = jpeg_segment(0xED, b"Photoshop 3.0\x00" + b"8BIM\x04\x04" + b"City: Berlin")
    # After SOI: the IPTC block as cameras place it; after EOI: an MPF-style second image.
    return data[:2] + iptc + data[2:] + data


def pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        return image.tobytes()


def exif_of(data: bytes) -> dict[int, object]:
    with Image.open(io.BytesIO(data)) as image:
        exif = image.getexif()
        assert not exif.get_ifd(GPS_IFD)
        return dict(exif)


def test_a_jpeg_loses_location_and_other_metadata_but_keeps_orientation_colours_and_pixels() -> None:
    original = camera_jpeg()
    assert b"City: Berlin" in original
    assert Image.open(io.BytesIO(original)).getexif().get_ifd(GPS_IFD)

    cleaned = strip_metadata("image/jpeg", original)

    assert exif_of(cleaned) == {0x0112: 6}
    for marker in (b"PhoneMaker", b"xmpmeta", b"City: Berlin", b"at home"):
        assert marker not in cleaned, marker
    assert "icc_profile" in Image.open(io.BytesIO(cleaned)).info
    assert cleaned.count(b"\xff\xd9") == 1  # the second picture is gone
    assert cleaned.endswith(b"\xff\xd9")
    assert pixels(cleaned) == pixels(original)
    assert content_problem("image/jpeg", cleaned[:EXTENSION_CHECK_BYTES]) is None


def test_a_png_loses_its_exif_and_text_chunks_but_keeps_orientation_and_pixels() -> None:
    out = io.BytesIO()
    text = PngImagePlugin.PngInfo()
    text.add_itxt("XML:com.adobe.xmp", XMP.decode())
    text.add_text("Comment", "at home")
    picture().save(out, format="PNG", exif=photo_exif(), pnginfo=text)
    original = out.getvalue()

    cleaned = strip_metadata("image/png", original)

    assert exif_of(cleaned) == {0x0112: 6}
    for marker in (b"PhoneMaker", b"xmpmeta", b"at home", b"tEXt", b"iTXt"):
        assert marker not in cleaned, marker
    assert cleaned.index(b"eXIf") < cleaned.index(b"IDAT")
    assert pixels(cleaned) == pixels(original)


def test_a_webp_loses_its_exif_and_xmp_but_keeps_orientation_and_pixels() -> None:
    out = io.BytesIO()
    picture().save(out, format="WEBP", lossless=True, exif=photo_exif(), xmp=XMP)
    original = out.getvalue()
    assert b"XMP " in original

    cleaned = strip_metadata("image/webp", original)

    assert exif_of(cleaned) == {0x0112: 6}
    for marker in (b"PhoneMaker", b"xmpmeta", b"XMP "):
        assert marker not in cleaned, marker
    assert int.from_bytes(cleaned[4:8], "little") == len(cleaned) - 8
    assert pixels(cleaned) == pixels(original)


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP"])
def test_an_image_without_metadata_is_kept_byte_for_byte(image_format: str) -> None:
    data = image_bytes(image_format)
    assert strip_metadata(f"image/{image_format.lower()}", data) is data


def test_other_types_are_not_touched() -> None:
    data = b"%PDF-1.7\n" + b"PhoneMaker" * 10
    assert strip_metadata("application/pdf", data) is data
    assert cleaned_types() == {"image/jpeg", "image/png", "image/webp"}


@pytest.mark.parametrize("content_type", ["image/jpeg", "image/png", "image/webp"])
def test_cut_or_damaged_images_are_cleaned_without_error_and_keep_no_metadata(content_type: str) -> None:
    out = io.BytesIO()
    picture().save(out, format=content_type.split("/")[1].upper(), exif=photo_exif())
    data = out.getvalue()
    for end in range(0, len(data), 7):
        assert b"PhoneMaker" not in strip_metadata(content_type, data[:end]), end
    for at in range(12, 200, 9):
        garbled = data[:at] + bytes(range(256)) * 4 + data[at:]
        assert b"PhoneMaker" not in strip_metadata(content_type, garbled), at
