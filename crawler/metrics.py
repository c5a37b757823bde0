"""Prometheus metrics of the daemon, in a registry of their own, served on 127.0.0.1.

The daemon owns one `Metrics` and records into it whether or not the endpoint is on
(recording is cheap). Counts that live in the catalogue (items per state, tag, source)
are not counted here: the daemon reads them from SQLite now and then and hands them over
with `Metrics.refresh`; scrapes see the latest snapshot, replaced whole so that a scrape
never sees half an update.

The endpoint (`start_metrics_server`) is off unless `[daemon] metrics_port` is set. It runs
on its own threads, so it still answers while the event loop is stuck: the process
metrics then show what the watchdog is about to act on.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from storage.records import State

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

NAMESPACE = "megane"
LISTEN_ADDRESS = "127.0.0.1"

DOWNLOAD_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
INFERENCE_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)

@dataclass(frozen=True)
class CatalogueCounts:
    """Item counts read from the catalogue: media URLs per state and per source, images per tag."""

    by_state: Mapping[str, int] = field(default_factory=dict)
    by_tag: Mapping[str, int] = field(default_factory=dict)
    by_source: Mapping[str, int] = field(default_factory=dict)


class _CatalogueCollector(Collector):
    """Exposes the latest `CatalogueCounts` snapshot as three labelled gauges."""

    def __init__(self) -> None:
        self.counts = CatalogueCounts()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        counts = self.counts  # one read: the snapshot may be replaced meanwhile
        # Every state is always shown, so that alerts on e.g. `held` see 0 rather than nothing.
        by_state = {state.value: 0 for state in State} | dict(counts.by_state)
        for name, label, values, documentation in (
            ("items", "state", by_state, "Media URLs in the catalogue per state."),
            ("images_by_tag", "tag", counts.by_tag, "Stored images per tag."),
            ("items_by_source", "source", counts.by_source, "Media URLs per source."),
        ):
            family = GaugeMetricFamily(f"{NAMESPACE}_{name}", documentation, labels=[label])
            for label_value, count in sorted(values.items()):
                family.add_metric([str(label_value)], count)
            yield family


class Metrics:
    """Every metric the daemon exports, registered in `registry` (a fresh one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        self._catalogue = _CatalogueCollector()
        self.registry.register(self._catalogue)
        ProcessCollector(registry=self.registry)
        self.download_bytes = Counter(
            "download_bytes", "Bytes of media downloaded.",
            namespace=NAMESPACE, registry=self.registry,
        )
        self.download_seconds = Histogram(
            "download_duration_seconds", "Time to download one media file, successful or not.",
            namespace=NAMESPACE, registry=self.registry, buckets=DOWNLOAD_SECONDS_BUCKETS,
        )
        self.batch_size = Histogram(
            "classifier_batch_size", "Images per classifier batch.",
            namespace=NAMESPACE, registry=self.registry, buckets=BATCH_SIZE_BUCKETS,
        )
        self.inference_seconds = Histogram(
            "classifier_inference_duration_seconds", "Time to classify one batch.",
            namespace=NAMESPACE, registry=self.registry, buckets=INFERENCE_SECONDS_BUCKETS,
        )
        self.queue_depth = Gauge(
            "queue_depth", "Items waiting in an in-memory pipeline queue.", ["queue"],
            namespace=NAMESPACE, registry=self.registry,
        )
        self.model = Info(
            "model", "The classifier model in use.", namespace=NAMESPACE, registry=self.registry,
        )

    def refresh(self, counts: CatalogueCounts) -> None:
        """Replace the counts scrapes see; tags and sources absent from `counts` disappear."""
        self._catalogue.counts = counts

    def observe_download(self, size_bytes: int, duration_s: float) -> None:
        """One download finished (`size_bytes` may be 0 for a failed one)."""
        self.download_bytes.inc(size_bytes)
        self.download_seconds.observe(duration_s)

    def observe_batch(self, size: int, duration_s: float) -> None:
        """One classifier batch of `size` images took `duration_s`."""
        self.batch_size.observe(size)
        self.inference_seconds.observe(duration_s)

    def set_queue_depth(self, queue: str, depth: int) -> None:
        """`queue` (e.g. ``"download"``, ``"decode"``, ``"classify"``) now holds `depth` items."""
        self.queue_depth.labels(queue=queue).set(depth)

    def set_model_version(self, version: str) -> None:
        """The model now in use (after start-up or a hot swap)."""
        self.model.info({"version": version})


class MetricsServer:
    """The running HTTP endpoint; `close()` stops it and releases the port."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        host, port = server.socket.getsockname()[:2]
        self.host: str = host
        self.port: int = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving; blocks up to half a second (the server's poll interval)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def start_metrics_server(port: int, registry: CollectorRegistry) -> MetricsServer | None:
    """Serve `registry` at ``http://127.0.0.1:<port>/metrics``; None (off) when `port` is 0.

    Only the loopback address is bound: the metrics name sources and tags, which are the
    operator's business. Put a reverse proxy in front to scrape from elsewhere.
    Raises OSError when the port is taken.
    """
    if port == 0:
        return None
    if not 0 < port < 65536:
        raise ValueError(f"metrics port out of range: {port}")
    app = _host_checked(make_wsgi_app(registry))
    server = make_server(LISTEN_ADDRESS, port, app, ThreadingWSGIServer,
                         handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return MetricsServer(server, thread)


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: scrapes are frequent and the daemon's log is JSON."""

    def log_message(self, format: str, *args: Any) -> None:
        return None


def _host_checked(app: WSGIApplication) -> WSGIApplication:
    """`app` behind the review UI's Host check (`crawler.review.security.host_refusal`)."""
    from crawler.review.security import host_refusal

    def checked(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        refusal = host_refusal(environ.get("HTTP_HOST"), int(environ["SERVER_PORT"]))
        if refusal is None:
            return app(environ, start_response)
        status, text = refusal
        reason = "Bad Request" if status == 400 else "Misdirected Request"
        start_response(f"{status} {reason}", [("Content-Type", "text/plain; charset=utf-8")])
        return [text.encode()]

    return checked
