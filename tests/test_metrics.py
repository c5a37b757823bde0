"""The metrics endpoint, scraped over real HTTP on 127.0.0.1 and parsed as Prometheus text."""

from __future__ import annotations

import http.client
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from crawler.metrics import CatalogueCounts, Metrics, MetricsServer, start_metrics_server

Scrape = Callable[[], dict[str, list[Sample]]]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def server(metrics: Metrics) -> Iterator[MetricsServer]:
    started = start_metrics_server(free_port(), metrics.registry)
    assert started is not None
    with started:
        yield started


@pytest.fixture
def scrape(server: MetricsServer) -> Scrape:
    """GET /metrics and return the samples grouped by metric family name."""

    def scrape() -> dict[str, list[Sample]]:
        with urllib.request.urlopen(server.url, timeout=10) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = response.read().decode()
        return {family.name: family.samples for family in text_string_to_metric_families(text)}

    return scrape


def values(samples: list[Sample], label: str) -> dict[str, float]:
    return {sample.labels[label]: sample.value for sample in samples}


def sample_value(samples: list[Sample], name: str) -> float:
    [value] = [sample.value for sample in samples if sample.name == name]
    return value


class TestEndpoint:
    def test_off_when_port_is_zero(self, metrics: Metrics) -> None:
        """Port 0 means no endpoint at all."""
        assert start_metrics_server(0, metrics.registry) is None

    def test_binds_loopback_only(self, server: MetricsServer) -> None:
        """The server listens on 127.0.0.1, never on every interface."""
        assert server.host == "127.0.0.1"
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"

    def test_close_releases_the_port(self, metrics: Metrics) -> None:
        """After close() nothing answers on the port any more."""
        started = start_metrics_server(free_port(), metrics.registry)
        assert started is not None
        started.close()
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(started.url, timeout=2)

    def test_port_out_of_range_is_refused(self, metrics: Metrics) -> None:
        """A port outside 1..65535 is a ValueError."""
        with pytest.raises(ValueError, match="port"):
            start_metrics_server(70000, metrics.registry)

    def test_dedicated_registry(self, metrics: Metrics, scrape: Scrape) -> None:
        """The daemon's metrics stay out of the global registry, which is not served."""
        assert REGISTRY.get_sample_value("megane_download_bytes_total") is None
        families = scrape()
        assert "python_gc_objects_collected" not in families
        assert "megane_download_bytes" in families

    def test_process_metrics_are_served(self, scrape: Scrape) -> None:
        """Resident memory is exported, to watch the bounded-memory invariant."""
        rss = scrape()["process_resident_memory_bytes"]
        assert sample_value(rss, "process_resident_memory_bytes") > 0


def get_with_host(server: MetricsServer, host: str | None) -> tuple[int, bytes]:
    """GET /metrics over a real connection with the given Host header (None: none sent)."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        connection.putrequest("GET", "/metrics", skip_host=True)
        if host is not None:
            connection.putheader("Host", host)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class TestHostCheck:
    """The endpoint answers only to a loopback Host with its own port, like the review UI."""

    @pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}"])
    def test_loopback_host_is_served(self, server: MetricsServer, host: str) -> None:
        """A loopback name with the endpoint's port gets the metrics."""
        status, body = get_with_host(server, host.format(port=server.port))
        assert status == 200 and b"megane_download_bytes" in body

    @pytest.mark.parametrize(
        "host",
        ["evil.example:{port}", "attacker.localhost.example:{port}", "127.0.0.1:1",
         "localhost", "127.0.0.1:{port}.evil"],
    )
    def test_foreign_host_is_misdirected(self, server: MetricsServer, host: str) -> None:
        """A DNS-rebinding name or another port is answered 421 with no metrics in it."""
        status, body = get_with_host(server, host.format(port=server.port))
        assert status in (400, 421)
        assert b"megane_" not in body

    def test_missing_host_is_a_bad_request(self, server: MetricsServer) -> None:
        """A request without a Host header is 400."""
        status, body = get_with_host(server, None)
        assert status == 400 and b"Host" in body

    def test_same_function_as_the_review_ui(self) -> None:
        """The endpoint reuses the review UI's check instead of a copy of it."""
        import crawler.metrics
        from crawler.review import security

        assert "host_refusal" in crawler.metrics._host_checked.__code__.co_names
        assert security.host_refusal("evil.example:80", 80) == (
            421, "421: this server answers only to its own URL (port 80)\n")
        assert security.host_refusal("127.0.0.1:80", 80) is None


class TestCatalogueCounts:
    def test_counts_per_state_tag_and_source(self, metrics: Metrics, scrape: Scrape) -> None:
        """A refresh shows up as one gauge sample per state, tag and source."""
        metrics.refresh(
            CatalogueCounts(
                by_state={"library": 7, "quarantine": 2, "pending": 30},
                by_tag={"megane": 5, "cat": 3},
                by_source={"mastodon-megane": 25, "danbooru": 14},
            )
        )
        families = scrape()
        states = values(families["megane_items"], "state")
        assert states["library"] == 7 and states["quarantine"] == 2 and states["pending"] == 30
        assert values(families["megane_images_by_tag"], "tag") == {"megane": 5, "cat": 3}
        assert values(families["megane_items_by_source"], "source") == {
            "mastodon-megane": 25,
            "danbooru": 14,
        }

    def test_every_state_is_shown_even_when_zero(self, scrape: Scrape) -> None:
        """States with no items are exported as 0, so alerts never see a missing series."""
        states = values(scrape()["megane_items"], "state")
        assert set(states) == {
            "pending", "downloaded", "decoded", "classified",
            "library", "quarantine", "held", "rejected",
        }
        assert set(states.values()) == {0}

    def test_refresh_replaces_the_snapshot(self, metrics: Metrics, scrape: Scrape) -> None:
        """A tag or source missing from the next refresh disappears instead of going stale."""
        metrics.refresh(CatalogueCounts(by_tag={"megane": 5, "cat": 3}, by_source={"old": 1}))
        metrics.refresh(CatalogueCounts(by_tag={"megane": 6}))
        families = scrape()
        assert values(families["megane_images_by_tag"], "tag") == {"megane": 6}
        assert families["megane_items_by_source"] == []


class TestPipelineMetrics:
    def test_downloads(self, metrics: Metrics, scrape: Scrape) -> None:
        """Downloaded bytes add up in a counter and each download's time lands in a histogram."""
        metrics.observe_download(1000, 0.2)
        metrics.observe_download(500, 3.0)
        families = scrape()
        downloaded = families["megane_download_bytes"]
        assert sample_value(downloaded, "megane_download_bytes_total") == 1500
        latency = families["megane_download_duration_seconds"]
        assert sample_value(latency, "megane_download_duration_seconds_count") == 2
        assert sample_value(latency, "megane_download_duration_seconds_sum") == pytest.approx(3.2)
        buckets = values([s for s in latency if s.name.endswith("_bucket")], "le")
        assert buckets["0.25"] == 1 and buckets["5.0"] == 2

    def test_batches(self, metrics: Metrics, scrape: Scrape) -> None:
        """Batch sizes and inference times are histograms."""
        metrics.observe_batch(16, 0.8)
        metrics.observe_batch(3, 0.1)
        families = scrape()
        sizes = families["megane_classifier_batch_size"]
        assert sample_value(sizes, "megane_classifier_batch_size_sum") == 19
        assert sample_value(sizes, "megane_classifier_batch_size_count") == 2
        inference = families["megane_classifier_inference_duration_seconds"]
        assert sample_value(
            inference, "megane_classifier_inference_duration_seconds_sum"
        ) == pytest.approx(0.9)

    def test_queue_depths(self, metrics: Metrics, scrape: Scrape) -> None:
        """Each queue has its own depth gauge, holding the latest value."""
        metrics.set_queue_depth("download", 12)
        metrics.set_queue_depth("classify", 3)
        metrics.set_queue_depth("download", 4)
        assert values(scrape()["megane_queue_depth"], "queue") == {"download": 4, "classify": 3}

    def test_model_version(self, metrics: Metrics, scrape: Scrape) -> None:
        """The model version is a label on an info metric, replaced on a hot swap."""
        metrics.set_model_version("builtin")
        metrics.set_model_version("2024-06-01T12-00")
        [sample] = scrape()["megane_model_info"]
        assert sample.name == "megane_model_info"
        assert sample.labels == {"version": "2024-06-01T12-00"}
        assert sample.value == 1
