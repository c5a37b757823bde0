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
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from classifier.base import Classifier
from classifier.cache import tflite_cache_dir
from classifier.decode import DecodeLimits
from classifier.errors import ClassifierError
from crawler.config import Config, SourceConfig, load_config
from crawler.decide import Policy, policy_from_config
from crawler.errors import ConfigError, FetchError, RetryableFetchError, SourceError
from crawler.hygiene import PhashIndex
from crawler.metrics import CatalogueCounts, Metrics, start_metrics_server
from crawler.pipeline import Pipeline, PipelineSettings, screen_refs
from crawler.promotion import backfill_at_start, follow_promotions, load_active_model
from crawler.rescore import reconcile, rescore
from crawler.review.refresher import IndexRefresher
from crawler.review.settings import ReviewSettings
from crawler.schedule import next_poll_delay_s, quiet_notice
from crawler.sdnotify import Notifier, ProgressWatchdog, watchdog_interval_s
from crawler.sources import Source, SourceContext, create_source
from storage.catalogue import Catalogue, SourceState
from storage.placement import DataLayout, sweep
from storage.records import State
from storage.untrusted import storable_cursor

log = structlog.get_logger("megane.daemon")
ONCE_MAX_EXTRA_POLLS = 100
MAX_BACKOFF_S = 6 * 3600.0


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

    try:
        classifier = load_classifier(
            config.classifier.model or BUILTIN_VERSION, layout.models,
            engine=config.classifier.engine,
            device=config.classifier.device, batch_size=config.classifier.batch_size,
            threads=config.classifier.threads, cache_dir=cache_dir,
        )
    except ClassifierError as error:
        log.error("model_unavailable", model=config.classifier.model, reason=str(error))
        return None, f"no_model: {error}"[:300]
    return classifier, None


class DaemonObserver:
    """Feeds pipeline progress to the watchdog and the metrics.

    Progress is movement, not success: a stage done, an item reaching any final state
    (rejected too), or a retry scheduled. A backlog of 404s keeps the watchdog fed.
    """

    def __init__(self, watchdog: ProgressWatchdog | None, metrics: Metrics) -> None:
        self.watchdog = watchdog
        self.metrics = metrics

    def progress(self, stage: str, count: int = 1) -> None:
        if self.watchdog is not None:
            self.watchdog.record_progress(time.monotonic())

    def downloaded(self, size_bytes: int, duration_s: float) -> None:
        self.metrics.observe_download(size_bytes, duration_s)

    def batch(self, size: int, duration_s: float) -> None:
        self.metrics.observe_batch(size, duration_s)


@dataclass
class PollerState:
    """In-memory schedule state of one source, mirrored from the catalogue."""

    source: Source
    consecutive_errors: int = 0
    empty_polls: int = 0
    polled_once: asyncio.Event = field(default_factory=asyncio.Event)


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
        """Run until stopped (or, with `once`, until every polled item is final). Returns 0."""
        from crawler.fetch import Fetcher, make_session

        # A SIGHUP while starting (loading a model can take minutes) is a reload to do once
        # running; its default action would kill the process. `_run_tasks` takes it over.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP,
                                                          self.reload_requested.set)
        self.layout.ensure()
        catalogue = await Catalogue.open(self.layout.catalogue)
        self.catalogue = catalogue
        try:
            removed = sweep(self.layout, await catalogue.spool_references())
            if removed:
                log.info("leftovers_removed", count=len(removed))
            repaired = await reconcile(catalogue, self.layout, policy_of(self.config))
            if repaired:
                log.info("placements_repaired", count=repaired)
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
        log.info("daemon_started", sources=[source.name for source in sources],
                 model_version=self.classifier.version if self.classifier else None,
                 data_dir=str(self.layout.root), once=once)
        try:
            async with asyncio.TaskGroup() as group:
                for poller in pollers:
                    group.create_task(self._poll_loop(catalogue, poller, once),
                                      name=f"poll-{poller.source.name}")
                group.create_task(self._sources_done(pollers), name="sources-done")
                pipeline_task = group.create_task(pipeline.run(until_idle=once), name="pipeline")
                group.create_task(self._watch_signals(), name="signals")
                group.create_task(self._report(catalogue), name="report")
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

    async def _report(self, catalogue: Catalogue) -> None:
        """Watchdog pings that depend on progress, STATUS= lines and metrics snapshots."""
        assert self.pipeline is not None
        period_s = min(self.watchdog_interval_s or 15.0, 15.0)
        while True:
            states = await catalogue.counts_by_state()
            pending = await catalogue.count_due(self.clock())
            if self.watchdog_interval_s:
                healthy = not self.pipeline.inference_hung and (
                    self.watchdog is None or self.watchdog.should_ping(time.monotonic(), pending))
                if healthy:
                    self.notifier.watchdog()
                else:
                    log.error("pipeline_stalled", pending=pending,
                              queues=self.pipeline.queue_depths())
            self.notifier.status(stats_for_status(states))
            by_source = {name: sum(counts.values())
                         for name, counts in (await catalogue.counts_by_source()).items()}
            self.metrics.refresh(CatalogueCounts(
                by_state=states, by_tag=await catalogue.counts_by_tag(), by_source=by_source))
            for queue, depth in self.pipeline.queue_depths().items():
                self.metrics.set_queue_depth(queue, depth)
            await asyncio.sleep(period_s)

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
        policy = policy_of(new_config)
        assert self.pipeline is not None and self.catalogue is not None
        self.pipeline.set_policy(policy)
        report = await rescore(self.catalogue, self.layout, policy, self.clock())
        if report.changed:
            self.refresher.mark_changed()
        self.reloads += 1
        log.info("config_reloaded", path=str(new_config.path), refiled=report.changed,
                 unchanged=report.unchanged,
                 needs_restart=restart_needed or None)
        return True

    async def _poll_loop(self, catalogue: Catalogue, poller: PollerState, once: bool) -> None:
        """Poll one source on its schedule: the one place that isolates a poll's failures.

        Whatever a poll raises (the source, the network, storing its rows or cursor) is
        caught here and costs that poll: `last_error`, backoff, and the other sources go
        on. Only a failure to record that (a broken catalogue) ends the daemon.
        """
        source = poller.source
        config = next(item for item in self.config.sources if item.name == source.name)
        state = await catalogue.ensure_source(source.name, source.kind, source.query_key())
        poller.consecutive_errors = state.consecutive_errors
        poller.empty_polls = state.empty_polls
        result_full = False
        extra_polls = 0
        while True:
            if not once and state.next_poll_at is not None:
                # Bounded by the longest delay we could have scheduled, so a wall clock
                # that jumped back cannot park the source.
                longest_s = MAX_BACKOFF_S if poller.consecutive_errors else config.max_interval_s
                wait_s = min(state.next_poll_at - self.clock(), longest_s)
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
            now = self.clock()
            try:
                result_full = await self._poll_once(catalogue, poller, config, state, now)
            except Exception as error:  # noqa: BLE001 - isolation: a failed poll costs that poll
                result_full = False
                await self._poll_failed(catalogue, poller, config, error, now)
            refreshed = await catalogue.source_state(source.name)
            if refreshed is not None:
                state = refreshed
            if once and result_full and extra_polls < ONCE_MAX_EXTRA_POLLS:
                # `once` drains a source that had more than a page, from the new cursor.
                extra_polls += 1
                continue
            poller.polled_once.set()
            if once:
                return


    async def _poll_once(self, catalogue: Catalogue, poller: PollerState,
                         config: SourceConfig, state: SourceState, now: float) -> bool:
        """Poll one source and store what it found; True when more is waiting (a full page).

        Anything raised here, from the source, the network or storing the result, costs
        this poll only (see `_poll_failed`).
        """
        source = poller.source
        result = await source.poll(state.cursor, now)
        refs = result.refs
        if self.pipeline is not None:
            refs = tuple(screen_refs(refs, self.pipeline.local_sources))
        rows = await catalogue.add_media(refs, now)
        poller.consecutive_errors = 0
        poller.empty_polls = 0 if rows else poller.empty_polls + 1
        delay = next_poll_delay_s(
            config, empty_polls=poller.empty_polls, full=result.full,
            errors=0, retry_after_s=result.retry_after_s,
        )
        notice = result.notice or quiet_notice(
            empty_polls=poller.empty_polls,
            last_new_at=now if rows else state.last_new_at,
            first_poll_at=state.first_poll_at or now, now=now,
        )
        cursor = result.cursor
        if cursor is not None and storable_cursor(cursor) is None:
            log.warning("cursor_not_stored", source=source.name,
                        reason="not valid text and not JSON; the previous cursor is kept")
            cursor = None
        await catalogue.record_poll(
            source.name, cursor=cursor, new_items=len(rows),
            next_poll_at=now + delay, notice=notice, now=now,
        )
        rejected = 0
        for row in rows:
            rejected += row.state is State.REJECTED
            log.info("media_found", url=row.url, source=source.name,
                     state=row.state.value, reason=row.reason, flags=list(row.flags))
        for item, reason in result.skipped:
            # An entry the source could not read costs that entry; the poll goes on.
            log.warning("entry_skipped", source=source.name, item=item, reason=reason)
        log.info("source_polled", source=source.name, found=len(result.refs),
                 new=len(rows), rejected=rejected, skipped=len(result.skipped),
                 next_poll_in_s=round(delay, 1), notice=result.notice)
        if self.pipeline is not None and rows:
            self.pipeline.notify()
        return result.full

    async def _poll_failed(self, catalogue: Catalogue, poller: PollerState,
                           config: SourceConfig, error: Exception, now: float) -> None:
        """Record a failed poll as the source's `last_error` and back off; the others go on.

        If even that cannot be stored, the catalogue itself is broken: that error ends the
        daemon (exit 2), as a fault of its own state.
        """
        source = poller.source
        poller.consecutive_errors += 1
        retry_after = (error.retry_after_s
                       if isinstance(error, SourceError | RetryableFetchError) else None)
        delay = next_poll_delay_s(config, empty_polls=poller.empty_polls, full=False,
                                  errors=poller.consecutive_errors, retry_after_s=retry_after)
        if isinstance(error, SourceError | FetchError):
            reason = str(error)
            log.warning("source_failed", source=source.name, reason=error.reason,
                        url=error.url, detail=reason, retry_in_s=round(delay, 1),
                        errors=poller.consecutive_errors)
        else:
            reason = f"internal_error: {type(error).__name__}: {error}"[:1000]
            log.error("source_failed", source=source.name, reason="internal_error",
                      detail=reason, retry_in_s=round(delay, 1),
                      errors=poller.consecutive_errors, exc_info=error)
        await catalogue.record_poll_error(source.name, reason, next_poll_at=now + delay,
                                          now=now)


def stats_for_status(counts: Mapping[str, Any]) -> str:
    """A one-line STATUS= text for systemd."""
    return ", ".join(f"{key}={value}" for key, value in sorted(counts.items()))


def metrics_port_error(config: Config, error: OSError) -> ConfigError:
    """The /metrics endpoint could not listen (a taken port): the config's fault, exit 1."""
    from crawler.metrics import LISTEN_ADDRESS

    port = config.daemon.metrics_port
    return ConfigError(str(config.path), [
        f"daemon.metrics_port: cannot listen on {LISTEN_ADDRESS}:{port} "
        f"({error.strerror or error}); choose a free port, or 0 to turn the endpoint off"])
