"""Content checks of shared files: media type and file name hygiene, and whether stored bytes match their type.

Pure functions (no I/O): `resolvers/files.py` reads the first `EXTENSION_CHECK_BYTES` of an uploaded
object and asks `content_problem` whether it may be attached to a message.
"""

from __future__ import annotations

import codecs
import functools
import re
import unicodedata

import filetype  # type: ignore[import-untyped]  # filetype 1.2 ships no type hints; its calls stay in `_sniff`
from PIL import Image, features

# How many bytes of an object's start the checks look at (callers read this many).
EXTENSION_CHECK_BYTES = 4096

# RFC 6838 section 4.2 restricted-name, for the type and for the subtype (at most 127 characters each).
# The stdlib's parsers (email.message) fall back to text/plain on nonsense instead of refusing it.
_RESTRICTED_NAME = r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}"
_MEDIA_TYPE = re.compile(rf"{_RESTRICTED_NAME}/{_RESTRICTED_NAME}")

_MAX_FILENAME_CHARS = 255
# Bidirectional overrides and isolates: "photo\u202egnp.exe" shows as "photoexe.png". They are format
# characters (Cf), not controls, but a name never needs them; other Cf characters (ZWJ in emoji) stay.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_EDGE_JUNK = re.compile(r"^[\s.]+|[\s.]+$")

# Names of one image format, by the name filetype reports -> the name people declare.
_IMAGE_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/heif": "image/heic",
    # An animated PNG is a valid PNG; filetype reports APNG for it.
    "image/apng": "image/png",
    "image/x-png": "image/png",
    "image/x-icon": "image/vnd.microsoft.icon",
    "image/x-ms-bmp": "image/bmp",
}
# ISO-BMFF (MP4 family) videos: filetype names one file mp4, quicktime, m4v or even audio/mp4 depending on
# its brands, and phones write all of them, so within this family any sniff matches any declared type.
_ISO_BMFF_VIDEO = frozenset({"video/mp4", "video/quicktime", "video/x-m4v", "video/3gpp", "video/3gpp2"})
_ISO_BMFF_SNIFFS = _ISO_BMFF_VIDEO | {"audio/mp4"}
# Brands of still images (HEIF/AVIF) in an ISO-BMFF `ftyp` box: never a video.
_IMAGE_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis"})
# WebM is a subset of Matroska; browsers declare .mkv and .webm either way.
_MATROSKA = frozenset({"video/webm", "video/x-matroska"})

_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
# Types whose files must start with one of these, and what to tell people otherwise. A PDF must start with
# its header: readers tolerate junk before it, but such a file is a polyglot (HTML, script...) too.
_REQUIRED_SIGNATURES: dict[str, tuple[tuple[bytes, ...], str]] = {
    "application/pdf": ((b"%PDF-",), "This file is not a PDF document."),
    "application/zip": (_ZIP_SIGNATURES, "This file is not a zip archive."),
    "application/x-zip-compressed": (_ZIP_SIGNATURES, "This file is not a zip archive."),
}
_SHEBANG = re.compile(rb"#![ \t]*/")
_PROGRAM_SIGNATURES: tuple[tuple[tuple[bytes, ...], str], ...] = (
    ((b"\x7fELF",), "Linux executable"),
    (
        (b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbf"),
        "macOS executable",
    ),
    # Both a Java class and a universal macOS binary start so.
    ((b"\xca\xfe\xba\xbe",), "Java class or macOS executable"),
    ((b"dex\n",), "Android executable"),
    ((b"\x00asm",), "WebAssembly module"),
)


def normalize_content_type(value: str) -> str | None:
    """`type/subtype` lowercased, without parameters or spaces; None when it is not a plausible media type."""
    essence = value.split(";", 1)[0].strip().lower()
    return essence if _MEDIA_TYPE.fullmatch(essence) else None


def check_filename(name: str) -> str:
    """The file name to store and show, without directories, controls and edge dots; ValueError if unusable.

    Written here rather than taken from a library: werkzeug's `secure_filename` drops every non-ASCII
    letter, which is wrong for a name people read.
    """
    if "\x00" in name:
        raise ValueError("The file name contains a NUL character.")
    if any("\ud800" <= char <= "\udfff" for char in name):
        raise ValueError("The file name is not valid Unicode text.")
    name = unicodedata.normalize("NFC", name)
    # Browsers on Windows have sent full paths ("C:\\Users\\me\\a.png"); keep only the last part.
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(c for c in name if unicodedata.category(c) != "Cc" and c not in _BIDI_CONTROLS)
    name = _EDGE_JUNK.sub("", name)
    if not name:
        raise ValueError("The file name is empty.")
    if len(name) > _MAX_FILENAME_CHARS:
        raise ValueError(f"The file name is longer than {_MAX_FILENAME_CHARS} characters.")
    return name


def content_problem(declared_type: str, head: bytes) -> str | None:
    """Why the object starting with `head` may not be shared as `declared_type` (for people), or None.

    Programs are refused whatever their declared type; images and videos must be recognisably what
    they claim; PDF, zip and text must start like one.
    """
    declared = normalize_content_type(declared_type)
    if declared is None:
        return "The file's declared type is not a valid media type."
    head = head[:EXTENSION_CHECK_BYTES]
    program = _program_kind(head)
    if program is not None:
        return f"This file is a program ({program}); programs cannot be shared."
    major = declared.split("/", 1)[0]
    if major in {"image", "video"}:
        return _media_problem(declared, head)
    if major == "text":
        return _text_problem(head)
    signature = _REQUIRED_SIGNATURES.get(declared)
    if signature is not None and not head.startswith(signature[0]):
        return signature[1]
    return None


def is_image(content_type: str | None) -> bool:
    """Whether a preview can be made of files of this type (the formats the installed Pillow reads)."""
    if content_type is None:
        return False
    kind = normalize_content_type(content_type)
    if kind is None:
        return False
    return _IMAGE_ALIASES.get(kind, kind) in _thumbnail_types()


@functools.cache
def _thumbnail_types() -> frozenset[str]:
    types = {"image/jpeg", "image/png", "image/gif", "image/webp"}
    # Optional codecs: only when this Pillow build (or a plugin such as pillow-heif) can open them.
    if features.check("avif"):
        types.add("image/avif")
    Image.init()
    if "HEIF" in Image.OPEN:
        types.add("image/heic")
    return frozenset(types)


def _program_kind(head: bytes) -> str | None:
    """What kind of executable `head` starts with, if any.

    Own signatures rather than filetype's: filetype 1.2 knows neither Mach-O, Java classes, dex nor
    scripts, its ELF matcher ignores files under 53 bytes, and its PE matcher refuses any text
    starting with "MZ".
    """
    # A real DOS/PE header has binary fields (e_lfanew's high bytes are zero) in its first 64 bytes.
    if head.startswith(b"MZ") and b"\x00" in head[:64]:
        return "Windows executable"
    # "#!" then an interpreter path; "#!AMR\n" (AMR audio) is no script.
    if _SHEBANG.match(head):
        return "script"
    return next((kind for prefixes, kind in _PROGRAM_SIGNATURES if head.startswith(prefixes)), None)


def _sniff(head: bytes) -> str | None:
    """The media type filetype recognises in `head`, or None."""
    mime = filetype.guess_mime(head)
    return mime if isinstance(mime, str) else None


def _media_problem(declared: str, head: bytes) -> str | None:
    """An image or video must be recognised and be what it claims (up to aliases and container families)."""
    sniffed = _sniff(head)
    expected = _IMAGE_ALIASES.get(declared, declared)
    if sniffed is not None and _IMAGE_ALIASES.get(sniffed, sniffed) == expected:
        return None
    if declared in _ISO_BMFF_VIDEO and (sniffed in _ISO_BMFF_SNIFFS or (sniffed is None and _is_iso_bmff_video(head))):
        return None
    if declared in _MATROSKA and sniffed in _MATROSKA:
        return None
    if sniffed is None:
        return f"This file's content could not be recognised as {declared}."
    return f"This file's content is {sniffed}, not the declared {declared}."


def _is_iso_bmff_video(head: bytes) -> bool:
    """An ISO-BMFF file whose brand filetype does not know (3gp5, iso5 DASH...) and that is no still image."""
    if len(head) < 16 or head[4:8] != b"ftyp":
        return False
    box_size = int.from_bytes(head[:4], "big")
    if box_size < 16:
        return False
    brands = {head[8:12]} | {head[i : i + 4] for i in range(16, min(box_size, len(head)) - 3, 4)}
    return not brands & _IMAGE_BRANDS


def _text_problem(head: bytes) -> str | None:
    """Text must be UTF-8 without NUL bytes; the head may end inside a multi-byte character."""
    if b"\x00" in head:
        return "This text file contains binary data."
    try:
        # final=False: a character cut by the end of the head is incomplete, not invalid.
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return "This text file is not UTF-8 text."
    return None
