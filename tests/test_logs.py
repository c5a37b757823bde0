"""structlog setup: JSON lines off a terminal, and no secret ever reaches a log line."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from crawler.logs import configure_logging, redact_event
from storage.redact import redact


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Leave structlog as other tests expect it."""
    yield
    structlog.reset_defaults()


class TestRedaction:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("https://user:hunter2@example.org/a.jpg", "https://example.org/a.jpg"),
            ("https://e.org/api?access_token=abc123&x=1",
             "https://e.org/api?access_token=[redacted]&x=1"),
            ("https://e.org/index.php?api_key=K&user_id=7",
             "https://e.org/index.php?api_key=[redacted]&user_id=[redacted]"),
            ("fetch failed: https://e.org/?token=zzz (timeout)",
             "fetch failed: https://e.org/?token=[redacted] (timeout)"),
            ("https://e.org/plain.jpg", "https://e.org/plain.jpg"),
        ],
    )
    def test_secrets_inside_text_are_masked(self, text: str, expected: str) -> None:
        """Passwords in URLs and token-like query values are masked, other text is kept."""
        assert redact(text) == expected


class TestConfigureLogging:
    def test_json_lines_without_secrets(self) -> None:
        """With log_format json, each event is one JSON object and secret keys are masked."""
        stream = io.StringIO()
        configure_logging("json", "info", stream)
        log = structlog.get_logger("test")
        log.info("source_polled", source="mastodon", access_token="s3cret",
                 url="https://u:pw@e.org/x?api_key=K")
        log.debug("hidden")
        [line] = stream.getvalue().splitlines()
        event = json.loads(line)
        assert event["event"] == "source_polled"
        assert event["access_token"] == "[redacted]"
        assert "s3cret" not in line and "pw@" not in line and "api_key=K" not in line
        assert event["level"] == "info" and "timestamp" in event

    def test_auto_is_json_when_not_a_terminal(self) -> None:
        """"auto" renders JSON when the stream is not a terminal (journald)."""
        stream = io.StringIO()
        configure_logging("auto", "warning", stream)
        structlog.get_logger("test").warning("media_rejected", reason="too_large")
        assert json.loads(stream.getvalue())["reason"] == "too_large"

    def test_console_renderer_on_request(self) -> None:
        """"console" renders a human line, not JSON."""
        stream = io.StringIO()
        configure_logging("console", "info", stream)
        structlog.get_logger("test").info("media_filed", placement="library")
        output = stream.getvalue()
        assert "media_filed" in output and "placement" in output
        with pytest.raises(json.JSONDecodeError):
            json.loads(output)


class TestRedactionIsTheLastProcessor:
    """`redact_event` runs after every processor but the renderer: every line is safe."""

    def test_position_in_the_chain(self) -> None:
        """The redaction processor sits right before the renderer."""
        configure_logging("json", "info", io.StringIO())
        processors = structlog.get_config()["processors"]
        assert processors[-2] is redact_event

    @pytest.mark.parametrize("log_format", ["json", "console"])
    def test_every_kind_of_value(self, log_format: str) -> None:
        """Secrets in plain values, nested values, bound context and tracebacks are masked."""
        stream = io.StringIO()
        configure_logging(log_format, "info", stream)
        log = structlog.get_logger("test").bind(feed="https://h/f.xml?token=B0undTok3n")
        try:
            raise ValueError("failed: https://u:Tr4cebackPw@h/x?password_hash=Tr4ceHash")
        except ValueError:
            log.exception("source_failed",
                          detail={"urls": ["https://h/?api_key=N3stedKey"]},
                          header="Authorization: Bearer H3aderTok3n",
                          password_hash="Plain5ecret")
        output = stream.getvalue()
        assert "source_failed" in output and "ValueError" in output
        for secret in ("B0undTok3n", "Tr4cebackPw", "Tr4ceHash", "N3stedKey", "H3aderTok3n",
                       "Plain5ecret"):
            assert secret not in output
