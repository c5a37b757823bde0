"""The SSRF address policy: which addresses and URLs the crawler refuses to connect to.

Pure functions, no I/O. `is_forbidden_address` judges one IP address (the one a socket is
about to connect to); `check_url` judges a URL before any request (scheme, port, host
spelling, IP literals, well-known internal names). The connector in `crawler.fetch` applies
`is_forbidden_address` to every address it actually connects to, so a DNS answer or an IP
literal that slips past `check_url` is still refused.

Python's `ipaddress.is_global` is not enough on its own: it calls 2002::/16 (6to4) and
64:ff9b::/96 (NAT64) global whatever IPv4 address they embed, and fec0::/10 (site-local)
global. The tables below are explicit, and anything not covered by them is judged with
`is_global` as a fail-closed fallback.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from yarl import URL

from crawler.errors import BlockedAddressError, PermanentFetchError
from storage.redact import redact

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES = frozenset({"http", "https"})

# Cloud metadata endpoints; checked before the ranges that contain them.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(address) for address in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
    "169.254.170.2",    # AWS ECS task metadata
    "169.254.169.253",  # AWS VPC DNS
    "168.63.129.16",    # Azure WireServer (a public-looking address)
    "100.100.100.200",  # Alibaba Cloud
    "fd00:ec2::254",    # AWS IPv6 metadata
    "fd00:ec2::23",     # AWS IPv6 VPC DNS
))

_IPV4_TABLE: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(network), reason) for network, reason in (
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "cgnat"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link_local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "ietf_protocol"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "reserved"),  # former 6to4 relay anycast
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("240.0.0.0/4", "reserved"),
    )
)

_IPV6_TABLE: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(network), reason) for network, reason in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("64:ff9b:1::/48", "nat64_local"),
        ("100::/64", "discard"),
        ("2001::/32", "teredo"),  # the client's IPv4 address is hidden; never needed here
        ("2001:2::/48", "benchmarking"),
        ("2001:db8::/32", "documentation"),
        ("2001::/23", "ietf_protocol"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "reserved"),  # SRv6 SIDs
        ("fc00::/7", "private"),    # unique local addresses
        ("fe80::/10", "link_local"),
        ("fec0::/10", "site_local"),
        ("ff00::/8", "multicast"),
    )
)

_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")

# Host names that always mean this machine or a cloud metadata service.
_LOOPBACK_NAMES = frozenset({
    "localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback",
})
_METADATA_NAMES = frozenset({
    "metadata", "metadata.google.internal", "instance-data", "instance-data.ec2.internal",
    "metadata.azure.com",
})
# Special-use or private-use suffixes that never name a public web server.
_PRIVATE_SUFFIXES = ("localhost", "local", "internal", "home.arpa", "localdomain", "intranet")

# The "bad ports" of the WHATWG Fetch standard: services that must not receive an HTTP GET.
BAD_PORTS = frozenset({
    0, 1, 7, 9, 11, 13, 15, 17, 19, 20, 21, 22, 23, 25, 37, 42, 43, 53, 69, 77, 79, 87, 95,
    101, 102, 103, 104, 109, 110, 111, 113, 115, 117, 119, 123, 135, 137, 139, 143, 161, 179,
    389, 427, 465, 512, 513, 514, 515, 526, 530, 531, 532, 540, 548, 554, 556, 563, 587, 601,
    636, 989, 990, 993, 995, 1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061, 6000,
    6566, 6665, 6666, 6667, 6668, 6669, 6679, 6697, 10080,
})

_NUMBER_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)


def parse_address(value: str | IPAddress) -> IPAddress | None:
    """An IP address from its text (brackets and an IPv6 zone id allowed), else None."""
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    # A zone id ("fe80::1%eth0", "%25" when percent-encoded) does not change the policy.
    text = text.split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_forbidden_address(address: str | IPAddress) -> str | None:
    """Why connecting to `address` is refused (e.g. ``"loopback"``), or None if it is public.

    An unparseable address is refused (``"unparseable"``): the policy fails closed.
    IPv6 forms that embed an IPv4 address (IPv4-mapped, NAT64, 6to4) are judged by the
    IPv4 address they lead to.
    """
    ip = parse_address(address)
    if ip is None:
        return "unparseable"
    if ip in METADATA_ADDRESSES:
        return "metadata"
    if isinstance(ip, ipaddress.IPv4Address):
        return _ipv4_reason(ip)
    return _ipv6_reason(ip)


def _ipv4_reason(ip: ipaddress.IPv4Address) -> str | None:
    for network, reason in _IPV4_TABLE:
        if ip in network:
            return reason
    return None if ip.is_global else "reserved"


def _ipv6_reason(ip: ipaddress.IPv6Address) -> str | None:
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        return is_forbidden_address(embedded)
    if ip in _IPV4_TRANSLATED:
        return "reserved"
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:  # "::" and "::1" are judged by the table
        return "ipv4_compatible"  # deprecated by RFC 4291; no legitimate use remains
    for network, reason in _IPV6_TABLE:
        if ip in network:
            return reason
    if ip not in _GLOBAL_UNICAST:
        return "reserved"
    return None if ip.is_global else "reserved"


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, NAT64 (64:ff9b::/96) or 6to4 address leads to."""
    if ip in _IPV4_MAPPED or ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _SIX_TO_FOUR:
        return ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF)
    return None


def parse_legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The address a numeric host such as ``2130706433``, ``0x7f.1`` or ``0177.0.0.1`` means.

    These spellings follow inet_aton (and the WHATWG URL standard): one to four parts,
    each decimal, octal (leading 0) or hex (0x); the last part fills the remaining bytes.
    Returns None when `host` is not such a number or is out of range.
    """
    labels = host.split(".")
    if len(labels) > 4 or not all(_NUMBER_LABEL.match(label) for label in labels):
        return None
    numbers: list[int] = []
    for label in labels:
        try:
            if label.lower().startswith("0x"):
                numbers.append(int(label[2:] or "0", 16))
            elif len(label) > 1 and label.startswith("0"):
                numbers.append(int(label, 8))
            else:
                numbers.append(int(label, 10))
        except ValueError:  # "08" is neither octal nor decimal
            return None
    *leading, last = numbers
    if any(number > 255 for number in leading) or last >= 256 ** (4 - len(leading)):
        return None
    value = last
    for position, number in enumerate(leading):
        value |= number << (8 * (3 - position))
    return ipaddress.IPv4Address(value)


def host_port_key(host: str, port: int | None) -> str:
    """The ``host:port`` spelling `allowed_private_hosts` uses (``[::1]:8080`` for IPv6)."""
    text = host.lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        ip = parse_address(text)
        text = f"[{ip.compressed if ip is not None else text}]"
    return f"{text}:{port}"


def normalize_allowed_hosts(entries: Iterable[str]) -> frozenset[str]:
    """`allowed_private_hosts` entries in the form `host_port_key` produces."""
    normalized = set()
    for entry in entries:
        host, _, port = entry.strip().rpartition(":")
        normalized.add(host_port_key(host, int(port)) if port.isdigit() else entry.lower())
    return frozenset(normalized)


def check_url(url: str | URL, *, allowed_hosts: frozenset[str] = frozenset()) -> URL:
    """Refuse a URL the crawler must not request; return it parsed.

    Raises PermanentFetchError (``bad_url``, ``bad_scheme``, ``bad_port``, ``bad_host``) or
    BlockedAddressError (``blocked_address:<why>``) for an IP literal in any spelling that
    leads to a forbidden address, or a name such as ``localhost`` or
    ``metadata.google.internal``. `allowed_hosts` holds `host_port_key` strings exempted
    from the address and name checks (not from the scheme check).
    This check sees only the URL; the connector checks the address actually connected to.
    """
    shown = redact(url)
    try:
        parsed = url if isinstance(url, URL) else URL(url)
        scheme = parsed.scheme.lower()
        raw_host = parsed.raw_host
        port = parsed.port
    except (ValueError, TypeError) as error:
        raise PermanentFetchError(shown, "bad_url", str(error)) from None
    if scheme not in ALLOWED_SCHEMES:
        raise PermanentFetchError(shown, "bad_scheme", f"scheme {scheme or '(none)'!r}")
    if not parsed.is_absolute() or not raw_host:
        raise PermanentFetchError(shown, "bad_url", "no host")
    if port is None or not 0 < port < 65536:
        raise PermanentFetchError(shown, "bad_url", f"port {port}")
    if host_port_key(raw_host, port) in allowed_hosts:
        return parsed
    if port in BAD_PORTS:
        raise PermanentFetchError(shown, "bad_port", f"port {port} is not for HTTP")
    reason = _host_reason(raw_host)
    if reason is None:
        return parsed
    if reason == "bad_host":
        raise PermanentFetchError(shown, "bad_host", f"host {raw_host!r}")
    raise BlockedAddressError(shown, f"blocked_address:{reason}", f"host {raw_host!r}")


def _host_reason(raw_host: str) -> str | None:
    """``bad_host``, a forbidden-address reason, or None for a host worth resolving."""
    host = raw_host.lower()
    if ":" in host or "%" in host:
        if ":" not in host:
            return "bad_host"  # percent-encoded bytes in a name: nothing legitimate
        ip = parse_address(host)
        if ip is None:
            return "bad_host"
        if "%" in host:
            return "link_local"  # a zone id only makes sense for link-local addresses
        return is_forbidden_address(ip)
    name = host.removesuffix(".")
    ip = parse_address(name)
    if ip is not None:
        return is_forbidden_address(ip)
    legacy = parse_legacy_ipv4(name)
    if legacy is not None:
        # aiohttp refuses these spellings, but the resolver would accept the hex ones.
        return is_forbidden_address(legacy) or "bad_host"
    labels = name.split(".")
    if _NUMBER_LABEL.match(labels[-1]):
        return "bad_host"  # the WHATWG parser would read it as an (invalid) IPv4 address
    if not name or any(not label for label in labels):
        return "bad_host"
    if name in _LOOPBACK_NAMES:
        return "loopback"
    if name in _METADATA_NAMES:
        return "metadata"
    if any(name == suffix or name.endswith("." + suffix) for suffix in _PRIVATE_SUFFIXES):
        return "loopback" if name.endswith("localhost") else "private_name"
    return None
