"""Pictures in feed HTML, and the rule for what is not a picture of the post.

`html_images(html)` reads every `<img>` of an item's HTML the way a browser that ran the
page's lazy loader would: the largest `srcset`/`data-srcset` candidate, else `data-src`,
`data-lazy-src`, `data-original`, ..., else `src`. When a lazy attribute names the picture,
`src` is only a placeholder (a `data:` GIF, a 1x1 spacer) and is reported as dropped.

`not_a_picture(...)` is the small, data-driven rule for images that are in a post but are
not a picture of it: share buttons and feed-flare, tracking pixels, avatars, emoji and other
images declared at 32 px or less. Each rule is one row of `URL_RULES` / `CLASS_RULES` /
`LINK_RULES`; the row's reason is what the caller logs.

Nothing here resolves URLs or raises on odd input: values come back as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser

# Lazy-loading plugins keep the real picture in one of these (most specific first).
LAZY_ATTRIBUTES = ("data-lazy-src", "data-src", "data-original", "data-lazy", "data-echo",
                   "data-url")
# Jetpack's carousel names the original upload, larger than any srcset candidate.
ORIGINAL_ATTRIBUTES = ("data-orig-file",)
LAZY_SRCSET_ATTRIBUTES = ("data-lazy-srcset", "data-srcset")
# How many enclosing elements with a class are remembered: bounds the work per tag on
# hostile HTML (share buttons sit a few levels deep).
MAX_OPEN_CONTAINERS = 64
# Images declared this small (width or height, in CSS pixels) are icons, not pictures.
TRACKING_PIXEL_MAX = 1
ICON_MAX = 32

# (reason, pattern searched in "host/path?query" of the image URL, lower-cased).
URL_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("feedflare", re.compile(r"/~(?:ff|f|a)/")),
    ("tracking_pixel", re.compile(r"/~r/|^feeds\.feedburner\.com/~r/")),
    ("tracking_pixel", re.compile(r"^(?:pixel\.wp\.com|stats\.wordpress\.com)/")),
    ("tracking_pixel", re.compile(r"^(?:www\.)?medium\.com/_/stat\b")),
    ("tracking_pixel", re.compile(r"^feeds\.feedblitz\.com/|^[^/]*\.doubleclick\.net/")),
    ("avatar", re.compile(r"^(?:[\w-]+\.)*gravatar\.com/avatar/")),
    ("emoji", re.compile(r"^s\.w\.org/images/core/emoji/")),
    ("emoji", re.compile(r"/(?:emoji|emoticons|smilies|custom_emojis)/")),
    ("share_button", re.compile(r"/(?:share|sharing|social)[-_]?(?:buttons?|icons?)/")),
)
# (reason, pattern searched in the img's class attribute, lower-cased).
CLASS_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("emoji", re.compile(r"\b(?:wp-smiley|emoji|emoticon|custom-emoji)\b")),
    ("avatar", re.compile(r"\bavatar\b")),
)
# (reason, pattern searched in the class of any enclosing element, lower-cased).
CONTAINER_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("feedflare", re.compile(r"\bfeedflare\b")),
    ("share_button", re.compile(r"\b(?:sharedaddy|share-?buttons?|social-?share|"
                                r"sharing|addtoany|a2a_kit|shareaholic)\b")),
)
# (reason, pattern searched in "host/path?query" of the enclosing link, lower-cased).
LINK_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("feedflare", re.compile(r"/~(?:ff|f|a)/")),
    ("share_button", re.compile(
        r"^(?:www\.)?facebook\.com/shar|^(?:www\.)?(?:twitter|x)\.com/(?:intent|share)|"
        r"^(?:www\.)?pinterest\.[a-z.]+/pin/create|^(?:www\.)?reddit\.com/submit|"
        r"^(?:www\.)?linkedin\.com/share|^(?:www\.)?tumblr\.com/(?:share|widgets/share)|"
        r"^(?:www\.)?addtoany\.com/|^(?:api\.)?whatsapp\.com/send|^t\.me/share")),
)


@dataclass(frozen=True)
class HtmlImage:
    """One `<img>`: the URL as written, its declared size and where it sits."""

    url: str
    width: int | None = None
    height: int | None = None
    classes: str = ""
    link: str = ""
    containers: tuple[str, ...] = ()
    placeholder: str | None = None
    from_srcset: bool = False


def declared_pixels(value: object) -> int | None:
    """The integer pixels of a width/height attribute ("640", "640px", " 32 "), else None."""
    if not isinstance(value, str):
        return None
    match = re.match(r"\s*(\d{1,6})(?:\.\d*)?\s*(?:px)?\s*$", value)
    return int(match.group(1)) if match else None


def not_a_picture(url: str, *, width: int | None = None, height: int | None = None,
                  classes: str = "", link: str = "", containers: tuple[str, ...] = ()
                  ) -> str | None:
    """Why an image of a post is not a picture of it (a reason for the log), else None."""
    sizes = [size for size in (width, height) if size is not None]
    if sizes and min(sizes) <= TRACKING_PIXEL_MAX:
        return "tracking_pixel"
    where = _host_and_path(url)
    for reason, pattern in URL_RULES:
        if pattern.search(where):
            return reason
    lowered_classes = classes.lower()
    for reason, pattern in CLASS_RULES:
        if pattern.search(lowered_classes):
            return reason
    for container in containers:
        for reason, pattern in CONTAINER_RULES:
            if pattern.search(container.lower()):
                return reason
    if link:
        link_where = _host_and_path(link)
        for reason, pattern in LINK_RULES:
            if pattern.search(link_where):
                return reason
    if sizes and max(sizes) <= ICON_MAX:
        return "icon"
    return None


def _host_and_path(url: str) -> str:
    """`host/path?query` of a URL, lower-cased, without scheme, credentials or port."""
    text = url.strip().lower()
    if text.startswith("data:"):
        return ""
    text = re.sub(r"^[a-z][a-z0-9+.-]*:", "", text, count=1)
    if text.startswith("//"):
        text = text[2:]
        authority, slash, rest = text.partition("/")
        host = authority.rpartition("@")[2].split(":", 1)[0]
        return host + slash + rest
    return text


def srcset_candidates(value: str) -> list[tuple[str, float, str]]:
    """(url, size, unit) for each candidate of a srcset; unit is "w" or "x" (default 1x).

    Follows the HTML parsing rules closely enough for real feeds: a URL runs to the next
    whitespace (so URLs may contain commas), a comma ends a candidate.
    """
    candidates: list[tuple[str, float, str]] = []
    position = 0
    length = len(value)
    while position < length:
        while position < length and (value[position].isspace() or value[position] == ","):
            position += 1
        start = position
        while position < length and not value[position].isspace():
            position += 1
        url = value[start:position]
        descriptor = ""
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            end = value.find(",", position)
            end = length if end == -1 else end
            descriptor = value[position:end].strip()
            position = end
        if url:
            candidates.append((url, *_descriptor(descriptor)))
    return candidates


def _descriptor(text: str) -> tuple[float, str]:
    for part in text.split():
        match = re.fullmatch(r"(\d+(?:\.\d+)?)([wx])", part.lower())
        if match:
            return float(match.group(1)), match.group(2)
    return 1.0, "x"


def largest_candidate(value: str) -> tuple[str, int | None] | None:
    """The srcset candidate with the largest w (else x) descriptor and its width, if given."""
    candidates = [item for item in srcset_candidates(value)
                  if not item[0].lower().startswith("data:")]
    if not candidates:
        return None
    widths = [item for item in candidates if item[2] == "w"]
    if widths:
        best = max(widths, key=lambda item: item[1])
        return best[0], int(best[1])
    return max(candidates, key=lambda item: item[1])[0], None


class _ImageCollector(HTMLParser):
    """Collects each `<img>` with its lazy-loaded source, size, link and containers."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[HtmlImage] = []
        # Open elements that carry a class: (tag, class); closed by the matching end tag.
        self._open: list[tuple[str, str]] = []
        self._links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: (value or "") for name, value in attrs}
        if tag == "img":
            self._image(values)
        elif tag == "a":
            self._links.append(values.get("href", "").strip())
        elif values.get("class") and len(self._open) < MAX_OPEN_CONTAINERS:
            self._open.append((tag, values["class"]))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self._image({name: (value or "") for name, value in attrs})

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            if self._links:
                self._links.pop()
            return
        for index in range(len(self._open) - 1, -1, -1):
            if self._open[index][0] == tag:
                del self._open[index:]
                break

    def _image(self, values: dict[str, str]) -> None:
        width = declared_pixels(values.get("width"))
        height = declared_pixels(values.get("height"))
        src = values.get("src", "").strip()
        lazy = _lazy_source(values)
        chosen = _named(values, ORIGINAL_ATTRIBUTES) or lazy
        if chosen is None:
            srcset = largest_candidate(values.get("srcset", ""))
            if srcset is not None and srcset[0] != src:
                chosen = srcset
        if chosen is None:
            if not src:
                return
            chosen = (src, None)
        url, srcset_width = chosen
        # With a lazy loader's attribute present, src only holds its placeholder.
        placeholder = src if lazy is not None and src and src != url else None
        self.images.append(HtmlImage(
            url=url, width=srcset_width or width, height=None if srcset_width else height,
            classes=values.get("class", ""), link=self._links[-1] if self._links else "",
            containers=tuple(item[1] for item in self._open), placeholder=placeholder,
            from_srcset=srcset_width is not None))


def _named(values: dict[str, str], names: tuple[str, ...]) -> tuple[str, int | None] | None:
    """The first of `names` holding a URL that is not a data: placeholder."""
    for name in names:
        text = values.get(name, "").strip()
        if text and not text.lower().startswith("data:"):
            return text, None
    return None


def _lazy_source(values: dict[str, str]) -> tuple[str, int | None] | None:
    """The picture a lazy loader would put in place: its srcset's largest, else its src."""
    for name in LAZY_SRCSET_ATTRIBUTES:
        candidate = largest_candidate(values.get(name, ""))
        if candidate is not None:
            return candidate
    return _named(values, LAZY_ATTRIBUTES)


def html_images(html: str) -> list[HtmlImage]:
    """Every `<img>` of an HTML fragment, in document order, with its best source."""
    collector = _ImageCollector()
    collector.feed(html)
    collector.close()
    return collector.images


# Size markers that CDNs put in a picture's URL; removing them gives the picture's identity,
# so that two renditions of one picture in one item are recognised as one.
# (host pattern, path pattern, replacement), host and path lower-cased for the match only.
RENDITION_RULES: tuple[tuple[re.Pattern[str], re.Pattern[str], str], ...] = (
    # WordPress: photo-1024x683.jpg is a resized photo.jpg.
    (re.compile(r""), re.compile(r"-\d{2,5}x\d{2,5}(?=\.[a-z0-9]{3,4}$)", re.IGNORECASE), ""),
    # Flickr: 123_abc_m.jpg, 123_abc_b.jpg are sizes of 123_abc.
    (re.compile(r"(?:^|\.)staticflickr\.com$"),
     re.compile(r"(?<=/)(\d+_[0-9a-f]+)_[a-z](?=\.[a-z]{3,4}$)", re.IGNORECASE), r"\1"),
    # Tumblr: .../s640x960/name.jpg and .../s1280x1920/name.jpg.
    (re.compile(r"(?:^|\.)media\.tumblr\.com$"), re.compile(r"/s\d{2,5}x\d{2,5}/"), "/"),
)


# Query parameters that image CDNs use for a rendition's size and its signature (Photon,
# imgix, the Guardian's `s`, Meta's `stp`/`oh`/`oe`); two URLs of one item differing only in
# these are renditions of one picture.
SIZE_PARAMETERS = frozenset({"w", "h", "width", "height", "resize", "fit", "quality", "q",
                             "dpr", "auto", "format", "fm", "crop", "s", "sz", "size", "ssl",
                             "strip", "stp", "oh", "oe"})


def picture_identity(url: str) -> str:
    """The URL without a CDN's size marker: equal for two renditions of one picture."""
    match = re.match(r"([a-z][a-z0-9+.-]*://)([^/?#]*)([^?#]*)(\?[^#]*)?(.*)$", url,
                     re.IGNORECASE | re.DOTALL)
    if not match:
        return url
    scheme, authority, path, query, fragment = match.groups()
    host = authority.rpartition("@")[2].split(":", 1)[0].lower()
    for host_pattern, path_pattern, replacement in RENDITION_RULES:
        if host_pattern.search(host):
            path = path_pattern.sub(replacement, path, count=1)
    kept = [pair for pair in (query or "")[1:].split("&")
            if pair and pair.split("=", 1)[0].lower() not in SIZE_PARAMETERS]
    query = "?" + "&".join(kept) if kept else ""
    return scheme + authority + path + query + fragment
