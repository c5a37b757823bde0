"""The daemon: one TaskGroup owns the pollers, the pipeline and the signal watcher.

`megane run` polls forever; `megane once` polls each source once and then processes
everything pending to a final state. SIGTERM/SIGINT stop polling and cancel the pipeline
(every stage has committed its rows, placements in progress finish under a shield) and
exit 0. SIGHUP re-reads config.toml: thresholds and quarantine rules take effect at once
and every stored image is re-filed from its stored scores; a bad config keeps the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import structlog

from classifier.base import Classifier
from classifier.cache import tflite_cache_dir
from classifier.decode import DecodeLimits
from classifier.errors import ClassifierError
from crawler.applied_policy import record_serving
from crawler.config import Config, load_config
from crawler.decide import Policy, policy_from_config
from crawler.errors import ConfigError
from crawler.hygiene import PhashIndex
from crawler.metrics import Metrics, start_metrics_server
from crawler.pipeline import Pipeline, PipelineSettings
from crawler.polling import MAX_BACKOFF_S, ONCE_MAX_EXTRA_POLLS, PollerState, poll_loop
from crawler.promotion import backfill_at_start, follow_promotions, load_active_model
from crawler.reporting import DaemonObserver, report_loop, stats_for_status
from crawler.rescore import reconcile, refile_at_start, release_applied, rescore
from crawler.review.refresher import IndexRefresher
from crawler.review.settings import ReviewSettings
from crawler.sdnotify import Notifier, ProgressWatchdog, watchdog_interval_s
from crawler.sources import Source, SourceContext, create_source
from storage.catalogue import Catalogue
from storage.errors import CatalogueError
from storage.placement import DataLayout, sweep

log = structlog.get_logger("megane.daemon")

# Moved to crawler.polling and crawler.reporting; still importable from here.
__all__ = [
    "MAX_BACKOFF_S",
    "ONCE_MAX_EXTRA_POLLS",
    "Daemon",
    "DaemonObserver",
    "PollerState",
    "Shutdown",
    "load_model",
    "pipeline_settings",
    "policy_of",
    "stats_for_status",
]


class Shutdown(Exception):
    """Raised inside the TaskGroup to stop every task (SIGTERM/SIGINT, or `once` finished)."""


def policy_of(config: Config) -> Policy:
    return policy_from_config(
        config.thresholds, config.quarantine.tags, config.quarantine.trust_source_flags,
        config.quarantine.review_band, config.tag_aliases, config.file_by_source_tags,
    )


def pipeline_settings(config: Config) -> PipelineSettings:
    return PipelineSettings(
        download_workers=config.daemon.download_workers,
        decode_workers=config.daemon.decode_workers,
        queue_size=config.daemon.queue_size,
        batch_size=config.classifier.batch_size,
        max_batch_delay_s=config.classifier.max_batch_delay_ms / 1000,
        inference_timeout_s=config.classifier.inference_timeout_s,
        max_attempts=config.daemon.max_attempts,
        max_bytes=config.http.max_bytes,
        shutdown_grace_s=config.daemon.shutdown_grace_s,
        limits=DecodeLimits(
            max_width=config.images.max_width, max_height=config.images.max_height,
            max_frames=config.images.max_frames, formats=config.images.formats,
        ),
        jpeg_draft=config.images.jpeg_draft,
        once_max_retry_delay_s=min(10.0, config.http.timeout_s),
    )


def load_model(config: Config, layout: DataLayout,
               cache_dir: Path | None = None) -> tuple[Classifier | None, str | None]:
    """Load the configured model (blocking). On failure: None and the reason (fail closed)."""
    from classifier.models import BUILTIN_VERSION, load_classifier
    from crawler.conversion_notice import log_conversion_notice

    log_conversion_notice(config.classifier, cache_dir)  # the first start converts (~10 s)
    try:
        classifier = load_classifier(
            config.classifier.model or BUILTIN_VERSION, layout.models, cache_dir=cache_dir,
            **config.classifier.engine_options(),
        )
    except ClassifierError as error:
        log.error("model_unavailable", model=config.classifier.model, reason=str(error))
        return None, f"no_model: {error}"[:300]
    return classifier, None



class Daemon:
    """Owns the catalogue, HTTP session, sources, model and pipeline of one process."""

    def __init__(
        self,
        config: Config,
        *,
        classifier: Classifier | None = None,
        classifier_problem: str | None = None,
        clock: Callable[[], float] = time.time,
        environ: Mapping[str, str] | None = None,
        sources: Sequence[Source] | None = None,
    ) -> None:
        """`sources`, when given, are polled instead of those built from the config (each
        named like one of its `[[sources]]` tables, whose schedule it keeps)."""
        self.config = config
        self.given_sources = list(sources) if sources is not None else None
        self.layout = DataLayout(config.data_dir)
        self.clock = clock
        self.environ = dict(environ or {})
        self.classifier = classifier
        self.classifier_problem = classifier_problem
        self.cache_dir = tflite_cache_dir(self.environ)
        # What this process runs with; SIGHUP compares the new file against it.
        self.running_config = config
        self.pipeline: Pipeline | None = None
        self.catalogue: Catalogue | None = None
        self.ready = asyncio.Event()
        self.stop_requested = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self.reloads = 0
        self.notifier = Notifier.from_environment(self.environ)
        self.metrics = Metrics()
        try:
            self.watchdog_interval_s = watchdog_interval_s(self.environ)
        except ValueError as error:
            log.warning("watchdog_ignored", reason=str(error))
            self.watchdog_interval_s = None
        self.watchdog = (
            ProgressWatchdog(self.watchdog_interval_s * 2)
            if self.watchdog_interval_s and config.daemon.watchdog else None
        )

    async def run(self, *, once: bool = False) -> int:
        """Run until stopped (or, with `once`, until every polled item is final). Returns 0.

        Raises DataDirInUseError when another daemon holds data_dir (`DataLayout.exclusive`).
        """
        # A SIGHUP while starting (loading a model can take minutes) is a reload to do once
        # running; its default action would kill the process. `_run_tasks` takes it over.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP,
                                                          self.reload_requested.set)
        self.layout.ensure()
        with self.layout.exclusive():  # one daemon per data_dir
            return await self._run_locked(once)

    async def _run_locked(self, once: bool) -> int:
        """`run` while holding data_dir's lock."""
        from crawler.fetch import Fetcher, make_session

        catalogue = await Catalogue.open(self.layout.catalogue)
        self.catalogue = catalogue
        try:
            removed = sweep(self.layout, await catalogue.spool_references())
            if removed:
                log.info("leftovers_removed", count=len(removed))
            repaired = await reconcile(catalogue, self.layout, policy_of(self.config))
            if repaired:
                log.info("placements_repaired", count=repaired)
            # A policy changed while stopped is applied before anything is served.
            # A large catalogue can take minutes: ask systemd for time (EXTEND_TIMEOUT_USEC).
            await refile_at_start(catalogue, self.layout, policy_of(self.config), self.clock(),
                                  before_pass=lambda: self.notifier.extend_timeout(
                                      REFILE_START_TIMEOUT_S))
            if self.classifier is None and self.classifier_problem is None:
                self.classifier, self.classifier_problem = await asyncio.to_thread(
                    load_active_model, self.config, self.layout, self.cache_dir
                )
            if self.classifier is not None:
                await backfill_at_start(catalogue, self.layout, self.classifier,
                                        policy_of(self.config), self.clock())
                requeued = await catalogue.requeue_unclassified_held(self.clock())
                if requeued:
                    log.info("held_requeued", count=requeued)
            hashes = await PhashIndex.load(catalogue)
            review = ReviewSettings.from_mapping(self.config.review, str(self.config.path))
            self.refresher = IndexRefresher(catalogue, self.layout,
                                            blur_radius=review.blur_radius)
            session = make_session(self.config.http)
            try:
                fetcher = Fetcher(session, self.config.http, self.layout.spool)
                context = SourceContext(
                    http=fetcher, user_agent=self.config.http.user_agent,
                    settings={"safe_rating_is_nsfw": self.config.quarantine.safe_rating_is_nsfw},
                )
                sources = (self.given_sources if self.given_sources is not None
                           else [create_source(item, context) for item in self.config.sources])
                self.pipeline = Pipeline(
                    catalogue=catalogue, layout=self.layout, fetcher=fetcher,
                    classifier=self.classifier, classifier_problem=self.classifier_problem,
                    policy=policy_of(self.config), settings=pipeline_settings(self.config),
                    local_sources=frozenset(
                        item.name for item in self.config.sources if item.kind == "folder"
                    ),
                    clock=self.clock,
                    observer=DaemonObserver(self.watchdog, self.metrics),
                    hashes=hashes,
                    near_duplicate_distance=review.near_duplicate_distance,
                    on_quarantine=self.refresher.mark_changed,
                )
                if self.classifier is not None:
                    self.metrics.set_model_version(self.classifier.version)
                try:
                    server = start_metrics_server(self.config.daemon.metrics_port,
                                                  self.metrics.registry)
                except OSError as error:
                    raise metrics_port_error(self.config, error) from error
                try:
                    await self._run_tasks(catalogue, sources, once)
                finally:
                    if server is not None:
                        server.close()
            finally:
                await session.close()
        finally:
            try:
                await release_applied(catalogue, policy_of(self.config))
            except CatalogueError as error:
                log.warning("policy_record_failed", reason=str(error),
                            action="run `megane rescore` to re-file under config.toml")
            await catalogue.close()
        return 0

    async def _run_tasks(self, catalogue: Catalogue, sources: list[Source], once: bool) -> None:
        assert self.pipeline is not None
        pipeline = self.pipeline
        pollers = [PollerState(source) for source in sources]
        loop = asyncio.get_running_loop()
        handled: list[signal.Signals] = []
        for signum, event in ((signal.SIGTERM, self.stop_requested),
                              (signal.SIGINT, self.stop_requested),
                              (signal.SIGHUP, self.reload_requested)):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, event.set)
                handled.append(signum)
        log_precision_warnings(self.config)
        log.info("daemon_started", sources=[source.name for source in sources],
                 model_version=self.classifier.version if self.classifier else None,
                 engine=getattr(getattr(self.classifier, "engine", None), "name", None),
                 data_dir=str(self.layout.root), once=once)
        try:
            async with asyncio.TaskGroup() as group:
                for poller in pollers:
                    group.create_task(poll_loop(catalogue, poller, self.config.sources,
                                                pipeline=pipeline, clock=self.clock,
                                                once=once),
                                      name=f"poll-{poller.source.name}")
                group.create_task(self._sources_done(pollers), name="sources-done")
                pipeline_task = group.create_task(pipeline.run(until_idle=once), name="pipeline")
                group.create_task(self._watch_signals(), name="signals")
                group.create_task(report_loop(
                    catalogue, pipeline, notifier=self.notifier, watchdog=self.watchdog,
                    watchdog_interval_s=self.watchdog_interval_s, metrics=self.metrics,
                    clock=self.clock), name="report")
                group.create_task(self.refresher.run(), name="contact-sheet")
                group.create_task(follow_promotions(self), name="promotions")
                self.ready.set()
                self.notifier.ready(stats_for_status(await catalogue.counts_by_state()))
                if once:
                    group.create_task(self._stop_when(pipeline_task), name="once")
        except* Shutdown:
            pass
        finally:
            for signum in handled:
                loop.remove_signal_handler(signum)
        counts = await catalogue.counts_by_state()
        log.info("daemon_stopped", counts=counts)

    async def _stop_when(self, task: asyncio.Task[None]) -> None:
        await task
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.refresher.wait_idle(), 30.0)
        raise Shutdown

    async def _sources_done(self, pollers: list[PollerState]) -> None:
        for poller in pollers:
            await poller.polled_once.wait()
        assert self.pipeline is not None
        self.pipeline.sources_done.set()
        self.pipeline.notify()

    async def _watch_signals(self) -> None:
        while True:
            stop = asyncio.ensure_future(self.stop_requested.wait())
            reload = asyncio.ensure_future(self.reload_requested.wait())
            try:
                await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                reload.cancel()
            if self.stop_requested.is_set():
                log.info("shutdown_requested")
                self.notifier.stopping()
                raise Shutdown
            self.reload_requested.clear()
            self.notifier.reloading()
            # A stop request during a long re-filing wins: rescore is safe to cancel
            # between chunks (decisions are committed before files move).
            reloading = asyncio.ensure_future(self.reload())
            stopping = asyncio.ensure_future(self.stop_requested.wait())
            try:
                await asyncio.wait({reloading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                if not reloading.done():
                    reloading.cancel()
                    # Wait for it to unwind without catching a cancellation of this task.
                    await asyncio.wait({reloading})
            if self.stop_requested.is_set():
                continue
            self.notifier.ready()

    async def reload(self) -> bool:
        """Re-read config.toml; apply thresholds and quarantine rules and re-file everything."""
        try:
            new_config = await asyncio.to_thread(load_config, self.config.path)
        except ConfigError as error:
            log.error("reload_failed", path=str(self.config.path), problems=error.problems,
                      action="keeping the running configuration")
            return False
        restart_needed = [
            name for name in ("daemon", "http", "classifier", "sources", "images")
            if getattr(new_config, name) != getattr(self.running_config, name)
        ]
        if new_config.review != self.running_config.review:
            restart_needed.append("review")  # read once at start-up, like [daemon]
        self.config = new_config
        # The running engine keeps its [classifier] settings until a restart.
        log_precision_warnings(dataclasses.replace(
            new_config, classifier=self.running_config.classifier))
        policy = policy_of(new_config)
        assert self.pipeline is not None and self.catalogue is not None
        self.pipeline.set_policy(policy)
        await record_serving(self.catalogue, policy, self.clock())
        report = await rescore(self.catalogue, self.layout, policy, self.clock())
        if report.changed:
            self.refresher.mark_changed()
        self.reloads += 1
        log.info("config_reloaded", path=str(new_config.path), refiled=report.changed,
                 unchanged=report.unchanged,
                 needs_restart=restart_needed or None)
        return True


REFILE_START_TIMEOUT_S = 1800.0  # ~5M images at the measured 25-35 s per 100k re-filed


def log_precision_warnings(config: Config) -> None:
    """Log each int8 decision `crawler.precision` finds (opt-in quantization only)."""
    from crawler.precision import precision_warnings

    for warning in precision_warnings(config):
        log.warning("precision_warning", detail=warning)


def metrics_port_error(config: Config, error: OSError) -> ConfigError:
    """The /metrics endpoint could not listen (a taken port): the config's fault, exit 1."""
    from crawler.metrics import LISTEN_ADDRESS

    port = config.daemon.metrics_port
    return ConfigError(str(config.path), [
        f"daemon.metrics_port: cannot listen on {LISTEN_ADDRESS}:{port} "
        f"({error.strerror or error}); choose a free port, or 0 to turn the endpoint off"])
