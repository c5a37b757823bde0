"""XML from the network, read the way a lenient reader does, parsed by a hardened parser.

Real API pages break XML 1.0 in small ways: a raw control character in one attribute, an
illegal character reference (``&#11;``), a byte that is not in the declared encoding. Each
would make a strict parser drop the whole page, so `xml_text` first decodes the bytes
(BOM, then the XML declaration, else UTF-8; undecodable bytes become U+FFFD) and replaces
every character and character reference XML 1.0 forbids with U+FFFD. `parse_xml` then
parses with defusedxml, which refuses any DTD, entity declaration or external reference:
those raise `UnsafeXmlError`. A quoted ``<!ENTITY`` inside CDATA or an attribute is text, not
a declaration, and parses.
"""

from __future__ import annotations

import codecs
import re
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree

__all__ = ["ParseError", "UnsafeXmlError", "clean_xml_text", "declares_entities", "parse_xml",
           "xml_text"]

# Characters XML 1.0 allows: #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-].
_ILLEGAL_CHARACTERS = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_CHARACTER_REFERENCE = re.compile(r"&#(?:x([0-9A-Fa-f]+)|([0-9]+));")
_DECLARATION = re.compile(r"\A\s*<\?xml\b[^>]*\?>")
_DECLARED_ENCODING = re.compile(
    rb"""\A\s*<\?xml\b[^>]*?\bencoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# Without a BOM, the first bytes of "<?" tell UTF-16 and UTF-32 apart (XML 1.0 appendix F).
_PREFIXES = ((b"<\x00\x00\x00", "utf-32-le"), (b"\x00\x00\x00<", "utf-32-be"),
             (b"<\x00?\x00", "utf-16-le"), (b"\x00<\x00?", "utf-16-be"))
REPLACEMENT = "\ufffd"


class UnsafeXmlError(ValueError):
    """The document declares a DTD, entities or an external reference; it is refused."""


def _encoding(body: bytes) -> tuple[str, int]:
    """The body's encoding and the length of its byte-order mark."""
    for bom, name in _BOMS:
        if body.startswith(bom):
            return name, len(bom)
    for prefix, name in _PREFIXES:
        if body.startswith(prefix):
            return name, 0
    declared = _DECLARED_ENCODING.match(body[:256])
    if declared:
        try:
            name = codecs.lookup(declared.group(1).decode("ascii")).name
        except LookupError:
            return "utf-8", 0
        # A UTF-16/32 declaration in a single-byte document (no BOM, no NULs) is a lie.
        if not name.startswith(("utf-16", "utf-32")):
            return name, 0
    return "utf-8", 0


def _legal_reference(match: re.Match[str]) -> str:
    digits, base = (match.group(1), 16) if match.group(1) else (match.group(2), 10)
    if len(digits) > 8:
        return "&#xFFFD;"
    code = int(digits, base)
    legal = (code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD
             or 0x10000 <= code <= 0x10FFFF)
    return match.group(0) if legal else "&#xFFFD;"


def clean_xml_text(text: str) -> str:
    """`text` with characters and character references illegal in XML 1.0 replaced by U+FFFD."""
    text = _ILLEGAL_CHARACTERS.sub(REPLACEMENT, text)
    return _CHARACTER_REFERENCE.sub(_legal_reference, text)


def xml_text(body: bytes) -> str:
    """The document as text: decoded leniently, without its declaration, cleaned for XML 1.0."""
    encoding, skip = _encoding(body)
    text = body[skip:].decode(encoding, errors="replace")
    return clean_xml_text(_DECLARATION.sub("", text.lstrip("\ufeff"), count=1))


def parse_xml(text: str) -> Element:
    """Parse XML text with defusedxml.

    Raises UnsafeXmlError for a DTD, an entity declaration or an external reference, and
    xml.etree.ElementTree.ParseError for text that is not well-formed.
    """
    try:
        root: Element = defusedxml.ElementTree.fromstring(
            text, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException as error:
        raise UnsafeXmlError(str(error) or type(error).__name__) from None
    return root


_PROLOG_TOKEN = re.compile(r"\s+|<!--.*?-->|<\?.*?\?>", re.DOTALL)
_ENTITY_DECLARATION = re.compile(r"<!ENTITY\b", re.IGNORECASE)


def declares_entities(body: bytes) -> bool:
    """Whether the document's DOCTYPE declares entities (the only place XML allows that).

    Only the prolog is read: comments, processing instructions and the DOCTYPE before the
    root element. A ``<!ENTITY`` quoted in CDATA, a comment or an attribute is text, and a
    DOCTYPE without an internal subset (RSS 0.91's public DTD) declares nothing.
    """
    text = xml_text(body)
    position = 0
    while True:
        token = _PROLOG_TOKEN.match(text, position)
        if token is None or token.end() == position:
            break
        position = token.end()
    if not text.startswith("<!DOCTYPE", position) and not text.startswith("<!doctype", position):
        return False
    depth, index = 0, position
    # The DOCTYPE ends at the first '>' outside its internal subset '[...]'.
    while index < len(text):
        char = text[index]
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(0, depth - 1)
        elif char == ">" and depth == 0:
            break
        index += 1
    return _ENTITY_DECLARATION.search(text, position, index + 1) is not None
