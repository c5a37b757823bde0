"""The one redactor: every credential kind leaves any text, other text is kept as it was."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storage.redact import (
    REDACTED,
    is_secret_name,
    redact,
    redact_value,
    remember_secret,
    remember_secrets_in,
)

R = REDACTED


class TestRedact:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            # userinfo
            ("https://user:secret@example.com/a?b=1", "https://example.com/a?b=1"),
            ("https://user@example.com/a", "https://example.com/a"),
            ("http://u:secret@[::1:/x", "http://[::1:/x"),
            ("failed: URL('http://u:pw@h:81/x')", "failed: URL('http://h:81/x')"),
            # quoted values (a repr, a shell line) are masked whole, quotes included
            ("password='hunter22'", f"password={R}"),
            ('connect(token="abc def", host=1)', f"connect(token={R}, host=1)"),
            ("login='bob' password_hash='x y z'", f"login={R} password_hash={R}"),
            # the boorus' own keys
            ("https://g.org/index.php?page=dapi&api_key=K1&user_id=77&tags=a+b",
             f"https://g.org/index.php?page=dapi&api_key={R}&user_id={R}&tags=a+b"),
            ("https://m.org/post.json?login=bob&password_hash=0123abcd&limit=5",
             f"https://m.org/post.json?login={R}&password_hash={R}&limit=5"),
            # the usual query names, in any case
            *[(f"https://e.org/f?{name}=V4lue&x=1", f"https://e.org/f?{name}={R}&x=1")
              for name in ("token", "key", "api_key", "apikey", "access_token", "password",
                           "passwd", "password_hash", "secret", "client_secret", "sig",
                           "signature", "auth", "Token", "X-Amz-Signature", "oauth_token")],
            # inside longer messages
            ("not a feed at https://e.org/f.xml?token=zzz (text/html)",
             f"not a feed at https://e.org/f.xml?token={R} (text/html)"),
            ("400, message='Bad Request', url='http://h/x?key=abc'",
             f"400, message='Bad Request', url='http://h/x?key={R}'"),
            ("password_hash=abc in the form", f"password_hash={R} in the form"),
            # percent-encoded inside another URL
            ("https://h/?u=https%3A%2F%2Fx%2Fy%3Ftoken%3Dabc%26z%3D2",
             f"https://h/?u=https%3A%2F%2Fx%2Fy%3Ftoken%3D{R}%26z%3D2"),
            # Authorization and bearer values
            ("Authorization: Bearer abc.def-ghi", f"Authorization: Bearer {R}"),
            ("authorization=Basic dXNlcjpwYXNz", f"authorization=Basic {R}"),
            ('{"Authorization": "Basic dXNlcjpwYXNz"}', f'{{"Authorization": "{R}"}}'),
            ("sent Bearer tok3n.x to the server", f"sent Bearer {R} to the server"),
            # JSON and repr pairs
            ('{"access_token": "s3cret", "n": 1}', f'{{"access_token": "{R}", "n": 1}}'),
            ("{'api_key': 'K'}", f"{{'api_key': '{R}'}}"),
            # left alone
            ("https://mastodon.social/@user/1?max_id=5", "https://mastodon.social/@user/1?max_id=5"),
            ("https://e.org/plain.jpg", "https://e.org/plain.jpg"),
            ("query_key=rss and dedup_key=abc", "query_key=rss and dedup_key=abc"),
            ("Basic auth is not a secret", "Basic auth is not a secret"),
            ("Cannot connect to host 127.0.0.1:9 ssl:default [Connection refused]",
             "Cannot connect to host 127.0.0.1:9 ssl:default [Connection refused]"),
        ],
    )
    def test_table(self, text: str, expected: str) -> None:
        """Each credential kind is masked where it appears; everything else is unchanged."""
        assert redact(text) == expected

    @given(st.text())
    def test_idempotent(self, text: str) -> None:
        """Redacting twice changes nothing more than redacting once (and never raises)."""
        once = redact(text)
        assert redact(once) == once

    @given(secret=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.~", min_size=6),
           name=st.sampled_from(["token", "api_key", "password_hash", "sig", "access_token"]))
    def test_query_value_never_survives(self, secret: str, name: str) -> None:
        """Whatever a credential's value is, it is gone from a URL quoting it."""
        text = f"fetch of https://h.example/a?x=1&{name}={secret}&y=2 failed"
        assert f"={secret}" not in redact(text)

    def test_not_a_string(self) -> None:
        """Any object is shown through its text, redacted."""
        assert redact(ValueError("http://u:p@h/?token=t")) == f"http://h/?token={R}"


class TestRedactValue:
    def test_nested(self) -> None:
        """Strings inside dicts and lists are redacted; secret-named keys lose their value."""
        value = {"url": "https://h/x?sig=s", "api_key": "K", "n": 3, "none": None,
                 "list": ["http://a:b@h/"], "inner": {"password": "p"}}
        shown = redact_value(value)
        assert shown == {"url": f"https://h/x?sig={R}", "api_key": R, "n": 3, "none": None,
                         "list": ["http://h/"], "inner": {"password": R}}
        assert "K" not in json.dumps(shown)

    @pytest.mark.parametrize(
        ("name", "secret"),
        [("api_key", True), ("password_hash", True), ("csrf_token", True), ("Cookie", True),
         ("user_id", True), ("login", True), ("url", False), ("query_key", False),
         ("reason", False), ("tokens_total", True)],
    )
    def test_is_secret_name(self, name: str, secret: bool) -> None:
        """Known names and names containing a secret word count as credentials."""
        assert is_secret_name(name) is secret


class TestRememberedSecrets:
    def test_configured_values_are_masked_anywhere(self) -> None:
        """A source's configured credentials are masked even where no name announces them."""
        remember_secrets_in({
            "api_key": "Rm3mb3rKey01", "login": "remembered-login", "tags": "glasses",
            "url": "http://feeduser:Fe3dPassw0rd@h.example/f.xml?token=T0kenInUrl99",
        })
        text = ("echo: Rm3mb3rKey01 / remembered-login / Fe3dPassw0rd / feeduser / "
                "T0kenInUrl99 / Rm3mb3rKey01 url-encoded: Fe3dPassw0rd glasses")
        shown = redact(text)
        for secret in ("Rm3mb3rKey01", "remembered-login", "Fe3dPassw0rd", "feeduser",
                       "T0kenInUrl99"):
            assert secret not in shown
        assert shown.endswith("glasses")  # tags are no credential

    def test_url_encoded_form_is_masked(self) -> None:
        """A remembered value with reserved characters is masked in its URL-encoded form too."""
        remember_secret("p@ss w/rd+1")
        assert "p%40ss" not in redact("GET /x?h=p%40ss%20w%2Frd%2B1 failed")
        assert "p%40ss" not in redact("GET /x?h=p%40ss+w%2Frd%2B1 failed")

    def test_short_values_are_not_remembered(self) -> None:
        """Values too short to mask safely (a user id "7") leave ordinary text alone."""
        remember_secret("77")
        assert redact("77 items in 77 s") == "77 items in 77 s"
