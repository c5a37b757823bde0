"""Telling image formats apart by their leading bytes, and their canonical extensions.

Only signatures are consulted, never a Content-Type or file name. Formats are named as
Pillow names them (`JPEG`, `PNG`, `HEIF`...), so they match `DecodeLimits.formats`.
"""

from __future__ import annotations

from PIL import Image

EXTENSIONS: dict[str, str] = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "TIFF": ".tif",
    "ICO": ".ico",
    "AVIF": ".avif",
    "HEIF": ".heic",
    "JPEG2000": ".jp2",
    "JXL": ".jxl",
    "QOI": ".qoi",
    "PSD": ".psd",
}

MEDIA_TYPES: dict[str, str] = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "ICO": "image/vnd.microsoft.icon",
    "AVIF": "image/avif",
    "HEIF": "image/heic",
    "JPEG2000": "image/jp2",
    "JXL": "image/jxl",
    "QOI": "image/qoi",
    "PSD": "image/vnd.adobe.photoshop",
}
"""The media type (Content-Type) of every format `sniff_format` names; not Pillow's
`Image.MIME`, which stays empty until `Image.init()` has run in the process."""

SNIFF_BYTES = 64
"""How many leading bytes `sniff_format` needs to tell every format it knows."""

_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})


def sniff_format(head: bytes) -> str | None:
    """The Pillow format name of the image whose first bytes are `head`, or None.

    Only signatures are consulted (never a Content-Type or file name). Formats are named as
    Pillow names them, so the answer can be matched against `DecodeLimits.formats`; give at
    least `SNIFF_BYTES` bytes.
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:4] == b"\x00\x00\x01\x00" and int.from_bytes(head[4:6], "little") > 0:
        return "ICO"
    if head[4:8] == b"ftyp":
        return _iso_media_format(head)
    if head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        return "JPEG2000"
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")):
        return "JXL"
    if head[:4] == b"qoif":
        return "QOI"
    if head[:4] == b"8BPS":
        return "PSD"
    return None


def _iso_media_format(head: bytes) -> str | None:
    """AVIF or HEIF from an ISO-BMFF `ftyp` box: the major brand, then compatible brands.

    A still AVIF often has the generic major brand `mif1` and lists `avif` among its
    compatible brands, so those are read too (as far as `head` reaches).
    """
    box_end = min(len(head), max(16, int.from_bytes(head[:4], "big")))
    brands = [head[8:12]] + [head[offset:offset + 4] for offset in range(16, box_end - 3, 4)]
    if any(brand in _AVIF_BRANDS for brand in brands):
        return "AVIF"
    if any(brand in _HEIF_BRANDS for brand in brands):
        return "HEIF"
    return None


def describe_non_image(head: bytes) -> str:
    """A short human hint at what a non-image file looks like, for the log."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    for prefix, what in (
        (b"%pdf", "a PDF document"),
        (b"<svg", "an SVG image"),
        (b"<!doctype html", "an HTML page"),
        (b"<html", "an HTML page"),
        (b"<?xml", "an XML document"),
        (b"{", "JSON or text"),
    ):
        if text.startswith(prefix):
            return f"no image signature: looks like {what}"
    return "no image signature"


def extension_for(image_format: str) -> str:
    """The canonical file extension of a Pillow format name (".jpg", ".png", ...)."""
    if image_format in EXTENSIONS:
        return EXTENSIONS[image_format]
    registered = [
        ext for ext, name in Image.registered_extensions().items() if name == image_format
    ]
    natural = f".{image_format.lower()}"
    return natural if natural in registered or not registered else registered[0]
