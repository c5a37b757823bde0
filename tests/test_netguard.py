"""The SSRF address policy, as tables: every range and every spelling of a forbidden host."""

from __future__ import annotations

import ipaddress

import pytest
from yarl import URL

from crawler.errors import BlockedAddressError, PermanentFetchError
from crawler.netguard import (
    check_url,
    host_port_key,
    is_forbidden_address,
    normalize_allowed_hosts,
    parse_legacy_ipv4,
)

FORBIDDEN_ADDRESSES = [
    # IPv4
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "cgnat"),
    ("100.127.255.254", "cgnat"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("169.254.0.1", "link_local"),
    ("169.254.169.254", "metadata"),
    ("169.254.170.2", "metadata"),
    ("168.63.129.16", "metadata"),
    ("100.100.100.200", "metadata"),
    ("192.0.0.1", "ietf_protocol"),
    ("192.0.0.170", "ietf_protocol"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.254", "benchmarking"),
    ("192.88.99.1", "reserved"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    # IPv6
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:7f00:1", "loopback"),
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "metadata"),
    ("::ffff:0.0.0.0", "unspecified"),
    ("::127.0.0.1", "ipv4_compatible"),
    ("::8.8.8.8", "ipv4_compatible"),
    ("::ffff:0:7f00:1", "reserved"),
    ("64:ff9b::7f00:1", "loopback"),
    ("64:ff9b::127.0.0.1", "loopback"),
    ("64:ff9b::a9fe:a9fe", "metadata"),
    ("64:ff9b::192.168.0.1", "private"),
    ("64:ff9b:1::1", "nat64_local"),
    ("64:ff9b:1::8.8.8.8", "nat64_local"),
    ("2002:7f00:1::", "loopback"),
    ("2002:a00:1::1", "private"),
    ("2002:a9fe:a9fe::", "metadata"),
    ("2001::1", "teredo"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "teredo"),
    ("2001:2::1", "benchmarking"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("2001:10::1", "ietf_protocol"),
    ("100::1", "discard"),
    ("5f00::1", "reserved"),
    ("fc00::1", "private"),
    ("fd12:3456:789a::1", "private"),
    ("fd00:ec2::254", "metadata"),
    ("fd00:ec2::23", "metadata"),
    ("fe80::1", "link_local"),
    ("fe80::1%eth0", "link_local"),
    ("febf::1", "link_local"),
    ("fec0::1", "site_local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("4000::1", "reserved"),
    ("[::1]", "loopback"),
    ("not an address", "unparseable"),
    ("", "unparseable"),
]

PUBLIC_ADDRESSES = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "172.32.0.1",
    "100.128.0.1",
    "192.0.3.1",
    "2606:4700:4700::1111",
    "2a00:1450:4001:82b::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::8.8.8.8",
    "2002:808:808::1",
]


class TestIsForbiddenAddress:
    @pytest.mark.parametrize(("address", "reason"), FORBIDDEN_ADDRESSES)
    def test_forbidden(self, address: str, reason: str) -> None:
        """Each special-purpose address is refused with the reason naming its range."""
        assert is_forbidden_address(address) == reason

    @pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
    def test_public(self, address: str) -> None:
        """Global unicast addresses, also behind public IPv4-embedding IPv6 forms, are allowed."""
        assert is_forbidden_address(address) is None

    def test_accepts_address_objects(self) -> None:
        """An `ipaddress` object is judged like its text."""
        assert is_forbidden_address(ipaddress.ip_address("127.0.0.1")) == "loopback"
        assert is_forbidden_address(ipaddress.ip_address("2606:4700::1")) is None


LEGACY_IPV4 = [
    ("2130706433", "127.0.0.1"),
    ("017700000001", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"),
    ("0x7F000001", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),
    ("0x7f.0.0.1", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("0177.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("127.0.1", "127.0.0.1"),
    ("0", "0.0.0.0"),
    ("0x0", "0.0.0.0"),
    ("0x", "0.0.0.0"),  # WHATWG reads a bare "0x" as zero
    ("2852039166", "169.254.169.254"),
    ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
    ("0251.0376.0251.0376", "169.254.169.254"),
    ("169.254.43518", "169.254.169.254"),
    ("8.8.8.8", "8.8.8.8"),
]


class TestParseLegacyIpv4:
    @pytest.mark.parametrize(("host", "address"), LEGACY_IPV4)
    def test_numeric_spellings(self, host: str, address: str) -> None:
        """Decimal, octal and hex spellings mean what inet_aton makes of them."""
        assert parse_legacy_ipv4(host) == ipaddress.IPv4Address(address)

    @pytest.mark.parametrize(
        "host", ["example.com", "1.2.3.4.5", "4294967296", "256.1.1.1", "08.1", "1..1"]
    )
    def test_not_numeric(self, host: str) -> None:
        """Names, out-of-range numbers and invalid digits are not IPv4 addresses."""
        assert parse_legacy_ipv4(host) is None


BLOCKED_URLS = [
    ("http://127.0.0.1/", "loopback"),
    ("http://127.0.0.1./", "loopback"),
    ("http://127.1/", "loopback"),
    ("http://2130706433/", "loopback"),
    ("http://017700000001/", "loopback"),
    ("http://0x7f000001/", "loopback"),
    ("http://0x7f.1/", "loopback"),
    ("http://0177.0.0.1/", "loopback"),
    ("http://0/", "unspecified"),
    ("http://0.0.0.0:8080/", "unspecified"),
    ("http://[::1]/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://[::ffff:7f00:1]/", "loopback"),
    ("http://[0:0:0:0:0:ffff:127.0.0.1]/", "loopback"),
    ("http://[::127.0.0.1]/", "ipv4_compatible"),
    ("http://[64:ff9b::127.0.0.1]/", "loopback"),
    ("http://[2002:7f00:1::]/", "loopback"),
    ("http://[fe80::1%25eth0]/", "link_local"),
    ("http://[::1%25lo]/", "link_local"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "metadata"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://2852039166/", "metadata"),
    ("http://0xa9fea9fe/", "metadata"),
    ("http://[::ffff:a9fe:a9fe]/", "metadata"),
    ("http://10.0.0.1/", "private"),
    ("http://192.168.0.1:8080/", "private"),
    ("http://100.64.1.1/", "cgnat"),
    ("https://[fc00::1]/", "private"),
    ("http://224.0.0.1/", "multicast"),
    ("http://localhost/", "loopback"),
    ("http://LOCALHOST:8080/", "loopback"),
    ("http://localhost./", "loopback"),
    ("http://foo.localhost/", "loopback"),
    ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
    ("http://metadata/", "metadata"),
    ("http://instance-data/", "metadata"),
    ("http://printer.local/", "private_name"),
    ("http://db.internal/", "private_name"),
    ("http://router.home.arpa/", "private_name"),
    ("http://127。0。0。1/", "loopback"),  # ideographic full stops
    ("http://①②⑦.0.0.1/", "loopback"),  # NFKC digits
    ("http://user:secret@127.0.0.1/", "loopback"),
]

BAD_URLS = [
    ("file:///etc/passwd", "bad_scheme"),
    ("ftp://example.com/a.jpg", "bad_scheme"),
    ("gopher://example.com/", "bad_scheme"),
    ("javascript:alert(1)", "bad_scheme"),
    ("data:image/png;base64,AAAA", "bad_scheme"),
    ("example.com/a.jpg", "bad_scheme"),
    ("http:///a.jpg", "bad_url"),
    ("http://example.com:25/", "bad_port"),
    ("http://example.com:6667/", "bad_port"),
    ("http://%31%32%37.0.0.1/", "bad_host"),
    ("http://1.2.3.4.5/", "bad_host"),
    ("http://08.1/", "bad_host"),
    ("http://4294967296/", "bad_host"),
    ("http://example.123/", "bad_host"),
    ("http://a..b/", "bad_host"),
]

GOOD_URLS = [
    "http://example.com/a.jpg",
    "https://files.mastodon.social/media/a.png",
    "https://EXAMPLE.com:8443/a",
    "http://8.8.8.8/",
    "http://[2606:4700:4700::1111]/",
    "http://images.test:8080/x",
    "https://xn--r8jz45g.jp/",
    "https://user:secret@example.com/a.jpg",
]


class TestCheckUrl:
    @pytest.mark.parametrize(("url", "reason"), BLOCKED_URLS)
    def test_blocked(self, url: str, reason: str) -> None:
        """Every spelling of a forbidden host is refused as blocked_address:<why>."""
        with pytest.raises(BlockedAddressError) as caught:
            check_url(url)
        assert caught.value.reason == f"blocked_address:{reason}"
        assert "secret" not in str(caught.value)

    @pytest.mark.parametrize(("url", "reason"), BAD_URLS)
    def test_bad(self, url: str, reason: str) -> None:
        """Non-http(s) schemes, bad ports and mangled hosts are refused before any request."""
        with pytest.raises(PermanentFetchError) as caught:
            check_url(url)
        assert not isinstance(caught.value, BlockedAddressError)
        assert caught.value.reason == reason

    @pytest.mark.parametrize("url", GOOD_URLS)
    def test_good(self, url: str) -> None:
        """Ordinary public http(s) URLs pass and come back parsed."""
        assert check_url(url) == URL(url)

    @pytest.mark.parametrize(
        ("url", "allowed"),
        [
            ("http://127.0.0.1:8080/feed", "127.0.0.1:8080"),
            ("http://[::1]:8080/feed", "[::1]:8080"),
            ("http://localhost:8080/feed", "localhost:8080"),
            ("http://LocalHost:8080/feed", "localhost:8080"),
            ("http://localhost/feed", "localhost:80"),
            ("http://bridge.internal:9000/", "bridge.internal:9000"),
        ],
    )
    def test_allowed_host(self, url: str, allowed: str) -> None:
        """A host:port in allowed_private_hosts is exempt from the address checks."""
        check_url(url, allowed_hosts=normalize_allowed_hosts([allowed]))

    @pytest.mark.parametrize(
        ("url", "allowed"),
        [
            ("http://127.0.0.1:8081/", "127.0.0.1:8080"),
            ("http://127.0.0.1/", "127.0.0.1:8080"),
            ("http://[::ffff:127.0.0.1]:8080/", "127.0.0.1:8080"),
            ("http://127.1:8080/", "127.0.0.1:8080"),
            ("http://localhost:8080/", "127.0.0.1:8080"),
            ("http://127.0.0.1:8080/", "localhost:8080"),
            ("http://[::1]:8080/", "localhost:8080"),
        ],
    )
    def test_allowed_host_is_exact(self, url: str, allowed: str) -> None:
        """The exemption covers exactly the named host:port, no other spelling or port."""
        with pytest.raises(BlockedAddressError):
            check_url(url, allowed_hosts=normalize_allowed_hosts([allowed]))

    def test_allowed_host_keeps_scheme_check(self) -> None:
        """An allowed host:port is still refused under a non-http(s) scheme."""
        with pytest.raises(PermanentFetchError) as caught:
            check_url("ftp://127.0.0.1:8080/", allowed_hosts=frozenset({"127.0.0.1:8080"}))
        assert caught.value.reason == "bad_scheme"


class TestHostPortKey:
    @pytest.mark.parametrize(
        ("host", "port", "key"),
        [
            ("127.0.0.1", 8080, "127.0.0.1:8080"),
            ("::1", 8080, "[::1]:8080"),
            ("[::1]", 8080, "[::1]:8080"),
            ("0:0::1", 80, "[::1]:80"),
            ("LocalHost", 443, "localhost:443"),
        ],
    )
    def test_spelling(self, host: str, port: int, key: str) -> None:
        """Hosts are lower-cased and IPv6 literals bracketed and compressed."""
        assert host_port_key(host, port) == key

    def test_normalize_allowed_hosts(self) -> None:
        """Config entries are normalised to the same spelling as request hosts."""
        assert normalize_allowed_hosts(["[0:0::1]:8080", "LOCALHOST:80"]) == {
            "[::1]:8080", "localhost:80",
        }
