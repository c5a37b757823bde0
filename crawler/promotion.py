"""The active model: `models/ACTIVE`, promotion without a restart, backfill, shadow runs.

`megane models promote VERSION` writes `models/ACTIVE` (JSON: version, promoted_at, and for
`--shadow N` a shadow request naming the model to keep serving meanwhile), atomically. The
daemon serves ACTIVE's version when the file exists, else `[classifier] model`, and logs
which. While it runs, `follow_promotions` polls the file every few seconds; on a change it:

1. loads the new version in a thread (heads only: every version shares the open_nsfw
   backbone, so the running engine is reused and nothing is converted again),
2. swaps it into the pipeline, which uses it from the next batch (the batch in flight
   finishes with the old one: nothing is lost),
3. backfills: every stored image with cached features is scored by the new heads (no image
   decoding; the nsfw score is the backbone's, carried over), the scores are stored under
   the new version, and everything is re-filed under the thresholds in force.

With a shadow request the candidate first runs beside the active model on the next N
classified images — its heads applied to the same batch's features — and the places where
their decisions differ are written to `models/<version>/shadow.json` and logged before the
switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
import structlog

from classifier.base import Classifier, ClassifyResult
from classifier.errors import ClassifierError, ModelError
from crawler.aio import wait_event
from crawler.decide import Policy, decide
from crawler.rescore import rescore
from storage.placement import DataLayout, write_file_atomic

if TYPE_CHECKING:
    from classifier.models import Heads
    from crawler.config import Config
    from storage.catalogue import Catalogue

log = structlog.get_logger("megane.promotion")

ACTIVE_FILENAME = "ACTIVE"
SHADOW_FILENAME = "shadow.json"
POLL_INTERVAL_S = 2.0
STRAGGLER_WAIT_S = 30.0
STRAGGLER_POLL_S = 0.2
BACKFILL_CHUNK = 500
SHADOW_EXAMPLES = 50
BACKBONE = "open_nsfw"
NSFW_TAG = "nsfw"

ModelLoader = Callable[[str], Classifier]


# -- the ACTIVE file --------------------------------------------------------------------


@dataclass(frozen=True)
class ActiveModel:
    """The content of `models/ACTIVE`.

    `shadow_images` set means the shadow run is still to do; until it is done the daemon
    keeps serving `previous`.
    """

    version: str
    promoted_at: str
    shadow_images: int | None = None
    previous: str | None = None
    shadow_report: str | None = None

    @property
    def key(self) -> tuple[str, str, int | None]:
        return (self.version, self.promoted_at, self.shadow_images)

    @property
    def serving(self) -> str:
        """The version to serve now (the previous one while a shadow run is pending)."""
        if self.shadow_images and self.previous:
            return self.previous
        return self.version

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"version": self.version, "promoted_at": self.promoted_at}
        if self.shadow_images:
            document["shadow"] = {"images": self.shadow_images, "previous": self.previous}
        if self.shadow_report:
            document["shadow_report"] = self.shadow_report
        return document

    @classmethod
    def from_json(cls, document: Any, where: Path) -> ActiveModel:
        if not isinstance(document, dict) or not isinstance(document.get("version"), str):
            raise ModelError(f"{where}: not an ACTIVE document ({{\"version\": ...}})")
        shadow = document.get("shadow")
        images = previous = None
        if isinstance(shadow, dict):
            images = shadow.get("images")
            previous = shadow.get("previous")
            if not isinstance(images, int) or images < 1 or not isinstance(previous, str):
                raise ModelError(f"{where}: bad shadow request {shadow!r}")
        return cls(document["version"], str(document.get("promoted_at", "")), images,
                   previous, document.get("shadow_report"))


def active_path(models_dir: Path) -> Path:
    return Path(models_dir) / ACTIVE_FILENAME


def read_active(models_dir: Path) -> ActiveModel | None:
    """ACTIVE, or None when absent; ModelError when it is unreadable."""
    path = active_path(models_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ModelError(f"{path}: unreadable: {error}") from error
    try:
        return ActiveModel.from_json(json.loads(text), path)
    except json.JSONDecodeError as error:
        raise ModelError(f"{path}: not JSON: {error}") from error


def _write_json_atomic(path: Path, document: Mapping[str, Any]) -> None:
    """Write a JSON document atomically and durably (storage's one atomic writer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(dict(document), indent=2, sort_keys=True) + "\n"
    write_file_atomic(path, text.encode("utf-8"), 0o644)


def write_active(models_dir: Path, active: ActiveModel) -> None:
    try:
        _write_json_atomic(active_path(models_dir), active.to_json())
    except OSError as error:
        raise ModelError(f"{active_path(models_dir)}: cannot write: {error}") from error


def serving_version(models_dir: Path, configured: str | None) -> tuple[str, str]:
    """(version to serve, origin): see `crawler.serving.resolve_serving`."""
    from crawler.serving import resolve_serving

    serving = resolve_serving(configured, models_dir)
    return serving.version, serving.origin


def promote(
    models_dir: Path, version: str, *, configured: str | None, now: datetime,
    shadow_images: int | None = None,
) -> ActiveModel:
    """Check VERSION loads, then make it active (after a shadow run of N images if asked)."""
    from classifier.models import read_model_version
    from crawler.serving import CONFIG_KEY

    read_model_version(Path(models_dir), version)
    if configured is not None and configured != version:
        raise ModelError(
            f"{CONFIG_KEY} = {configured!r} in config.toml pins the served version, so "
            f"{version!r} would never be served: remove the key (the daemon then serves "
            f"models/ACTIVE) or set it to {version!r}"
        )
    if shadow_images is not None and shadow_images < 1:
        raise ModelError("--shadow needs a number of images of at least 1")
    current, _ = serving_version(models_dir, configured)
    stamp = now.astimezone(UTC).isoformat(timespec="microseconds")
    active = ActiveModel(version, stamp, shadow_images if shadow_images else None,
                         current if shadow_images else None)
    write_active(Path(models_dir), active)
    log.info("model_promotion_requested", version=version, previous=current,
             shadow_images=shadow_images)
    return active


# -- loading ----------------------------------------------------------------------------


def load_active_model(
    config: Config, layout: DataLayout, cache_dir: Path | None = None,
) -> tuple[Classifier | None, str | None]:
    """The daemon's model at start: the serving version of `crawler.serving`."""
    from crawler.daemon import load_model
    from crawler.serving import resolve_serving

    serving = resolve_serving(config.classifier.model, layout.models)
    log.info("model_selected", version=serving.version, origin=serving.origin,
             source=serving.source, configured=config.classifier.model)
    if serving.problem is not None and serving.origin == "config":
        # The user's own config names a version that cannot be served: a user error (exit 1),
        # not a silent start that holds every image.
        from crawler.errors import ConfigError

        raise ConfigError(str(config.path), [serving.problem])
    if serving.problem is not None:
        log.error("model_problem", version=serving.version, reason=serving.problem)
    chosen = dataclasses.replace(config, classifier=dataclasses.replace(
        config.classifier, model=serving.version))
    return load_model(chosen, layout, cache_dir)


def reusing_loader(current: Classifier | None, config: Config, layout: DataLayout,
                   cache_dir: Path | None = None) -> ModelLoader:
    """Load versions on the running engine when there is one, else as configured."""
    from classifier.models import LoadedClassifier, load_classifier, read_model_version

    def load(version: str) -> Classifier:
        if isinstance(current, LoadedClassifier):
            metadata, heads = read_model_version(layout.models, version)
            return LoadedClassifier(version, metadata, heads, current.engine)
        classifier: Classifier = load_classifier(
            version, layout.models, engine=config.classifier.engine,
            device=config.classifier.device,
            batch_size=config.classifier.batch_size, threads=config.classifier.threads,
            cache_dir=cache_dir)
        return classifier

    return load


# -- backfill ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BackfillReport:
    rescored: int
    without_features: int
    refiled: int
    unchanged: int
    failed: int


async def backfill(
    catalogue: Catalogue, layout: DataLayout, version: str, heads: Heads, policy: Policy,
    now: float,
) -> BackfillReport:
    """Score every filed image with cached features under `version`, then re-file all.

    Reads in keyset-paged chunks (memory stays bounded); each chunk's scores and its
    blobs' new model version commit together. A blob whose model version changed meanwhile
    (the pipeline classified it again) is left as the pipeline wrote it.
    """
    from classifier.training.trainer import nsfw_scores

    after = ""
    rescored = 0
    while True:
        rows = await catalogue.fetch_all(
            """SELECT b.sha256, b.model_version, f.vector, s.score AS nsfw FROM blobs b
               JOIN features f ON f.sha256 = b.sha256 AND f.backbone = ?
               LEFT JOIN scores s ON s.sha256 = b.sha256 AND s.model_version = b.model_version
                    AND s.tag = ?
               WHERE b.placement IN ('library', 'quarantine', 'held')
                 AND b.model_version IS NOT NULL AND b.model_version != ? AND b.sha256 > ?
               ORDER BY b.sha256 LIMIT ?""",
            (BACKBONE, NSFW_TAG, version, after, BACKFILL_CHUNK),
        )
        if not rows:
            break
        after = rows[-1]["sha256"]
        features = np.stack([
            np.frombuffer(bytes(row["vector"]), dtype=np.float16).astype(np.float32)
            for row in rows])
        head_scores = heads.scores(features)
        carried = np.array([np.nan if row["nsfw"] is None else row["nsfw"] for row in rows])
        if np.isnan(carried).any():
            carried = np.where(np.isnan(carried), nsfw_scores(features), carried)
        score_rows = []
        for index, row in enumerate(rows):
            score_rows.append((row["sha256"], version, NSFW_TAG, float(carried[index])))
            score_rows.extend(
                (row["sha256"], version, tag, float(head_scores[index, column]))
                for column, tag in enumerate(heads.tags))
        async with catalogue.transaction() as connection:
            await connection.executemany(
                "INSERT OR REPLACE INTO scores (sha256, model_version, tag, score) "
                "VALUES (?, ?, ?, ?)", score_rows)
            await connection.executemany(
                "UPDATE blobs SET model_version = ?, updated_at = ? "
                "WHERE sha256 = ? AND model_version = ?",
                [(version, now, row["sha256"], row["model_version"]) for row in rows])
        rescored += len(rows)
    left = await catalogue.fetch_one(
        """SELECT count(*) FROM blobs WHERE placement IN ('library', 'quarantine', 'held')
           AND model_version IS NOT NULL AND model_version != ?""", (version,))
    report = await rescore(catalogue, layout, policy, now)
    return BackfillReport(rescored, int(left[0]) if left else 0, report.changed,
                          report.unchanged, report.failed)


async def backfill_at_start(
    catalogue: Catalogue, layout: DataLayout, classifier: Classifier, policy: Policy,
    now: float,
) -> BackfillReport | None:
    """At daemon start: bring images scored by another version over to the serving one.

    A version promoted while the daemon was stopped (or a changed `[classifier] model`)
    is applied exactly as a live promotion applies it (`backfill`: re-score from cached
    features, then re-file). None when every filed image is already on the serving version.
    """
    from classifier.models import Heads, LoadedClassifier

    version = classifier.version
    row = await catalogue.fetch_one(
        """SELECT count(*) FROM blobs WHERE placement IN ('library', 'quarantine', 'held')
           AND model_version IS NOT NULL AND model_version != ?""", (version,))
    if not row or not row[0]:
        return None
    heads = classifier.heads if isinstance(classifier, LoadedClassifier) else Heads()
    log.info("model_backfill_started", version=version, images=int(row[0]))
    report = await backfill(catalogue, layout, version, heads, policy, now)
    log.info("model_backfilled", version=version, rescored=report.rescored,
             without_features=report.without_features, refiled=report.refiled,
             unchanged=report.unchanged, failed=report.failed, at_start=True)
    return report


# -- shadow runs ------------------------------------------------------------------------


@dataclass
class ShadowRun:
    """Collects where a candidate's decisions differ from the active model's, N images long."""

    candidate: str
    active: str
    heads: Heads
    policy: Policy
    limit: int
    started_at: float
    seen: int = 0
    disagreements: int = 0
    placement_changes: int = 0
    per_tag: dict[str, dict[str, float]] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def listen(self, tensors: npt.NDArray[np.float32], result: ClassifyResult,
                     sha256s: list[str]) -> None:
        """A pipeline batch listener: score the batch's features with the candidate."""
        if self.done.is_set():
            return
        take = min(len(sha256s), self.limit - self.seen)
        candidate_scores = self.heads.scores(np.asarray(result.features[:take], np.float32))
        for index in range(take):
            active_scores = dict(result.scores[index])
            candidate = {NSFW_TAG: active_scores.get(NSFW_TAG, 0.0)}
            candidate.update({tag: float(candidate_scores[index, column])
                              for column, tag in enumerate(self.heads.tags)})
            self._compare(sha256s[index], active_scores, candidate)
        self.seen += take
        if self.seen >= self.limit:
            self.done.set()

    def _compare(self, sha256: str, active: Mapping[str, float],
                 candidate: Mapping[str, float]) -> None:
        for tag in sorted(set(active) | set(candidate)):
            stats = self.per_tag.setdefault(tag, {
                "compared": 0, "mean_abs_difference": 0.0, "max_abs_difference": 0.0,
                "newly_over_threshold": 0, "newly_under_threshold": 0})
            threshold = self.policy.threshold(tag)
            old, new = active.get(tag), candidate.get(tag)
            if old is not None and new is not None:
                difference = abs(new - old)
                stats["compared"] += 1
                stats["mean_abs_difference"] += difference
                stats["max_abs_difference"] = max(stats["max_abs_difference"], difference)
            was_over = old is not None and old >= threshold
            is_over = new is not None and new >= threshold
            stats["newly_over_threshold"] += int(is_over and not was_over)
            stats["newly_under_threshold"] += int(was_over and not is_over)
        before = decide(active, (), self.policy)
        after = decide(candidate, (), self.policy)
        if (before.placement, before.tags) != (after.placement, after.tags):
            self.disagreements += 1
            self.placement_changes += int(before.placement != after.placement)
            if len(self.examples) < SHADOW_EXAMPLES:
                self.examples.append({
                    "sha256": sha256,
                    "active": {"placement": before.placement.value, "tags": list(before.tags),
                               "scores": {k: round(v, 6) for k, v in active.items()}},
                    "candidate": {"placement": after.placement.value, "tags": list(after.tags),
                                  "scores": {k: round(v, 6) for k, v in candidate.items()}},
                })

    def report(self, finished_at: float) -> dict[str, Any]:
        per_tag = {}
        for tag, stats in self.per_tag.items():
            compared = int(stats["compared"])
            per_tag[tag] = {
                "compared": compared,
                "mean_abs_difference": round(stats["mean_abs_difference"] / compared, 6)
                if compared else None,
                "max_abs_difference": round(stats["max_abs_difference"], 6),
                "newly_over_threshold": int(stats["newly_over_threshold"]),
                "newly_under_threshold": int(stats["newly_under_threshold"]),
            }
        return {
            "candidate": self.candidate, "active": self.active, "images": self.seen,
            "disagreements": self.disagreements, "placement_changes": self.placement_changes,
            "per_tag": per_tag, "examples": self.examples,
            "thresholds": dict(self.policy.thresholds),
            "started_at": self.started_at, "finished_at": finished_at,
        }


# -- following ACTIVE in the daemon -----------------------------------------------------


class PromotionHost(Protocol):
    """What following promotions needs from the daemon (crawler.daemon.Daemon)."""

    config: Config
    layout: DataLayout
    catalogue: Catalogue | None
    pipeline: Any
    classifier: Classifier | None
    clock: Callable[[], float]


_followed: set[int] = set()


async def follow_promotions(
    host: PromotionHost, *, poll_interval_s: float = POLL_INTERVAL_S,
    loader: ModelLoader | None = None,
) -> None:
    """Poll ACTIVE and apply promotions to the running daemon, until cancelled.

    One follower per daemon: a second one for the same host returns at once.
    """
    if id(host) in _followed:
        return
    _followed.add(id(host))
    try:
        await _follow(host, poll_interval_s, loader)
    finally:
        _followed.discard(id(host))


async def _follow(host: PromotionHost, poll_interval_s: float,
                  loader: ModelLoader | None) -> None:
    applied: tuple[str, str, int | None] | None = None
    broken: str | None = None
    while True:
        try:
            active = await asyncio.to_thread(read_active, host.layout.models)
            broken = None
        except ModelError as error:
            if str(error) != broken:
                log.error("active_model_unreadable", reason=str(error))
            broken, active = str(error), None
        if host.config.classifier.model is not None:
            active = None  # [classifier] model pins the version (crawler.serving)
        if active is not None and active.key != applied and host.pipeline is not None:
            applied = active.key
            current = host.classifier.version if host.classifier is not None else None
            try:
                if active.shadow_images:
                    latest = await _shadow_then_activate(host, active, loader, poll_interval_s)
                    applied = latest.key if latest is not None else applied
                elif active.version != current:
                    await activate(host, active.version, loader)
            except ClassifierError as error:
                log.error("model_promotion_failed", version=active.version, reason=str(error),
                          serving=current)
        await asyncio.sleep(poll_interval_s)


async def activate(host: PromotionHost, version: str, loader: ModelLoader | None) -> None:
    """Swap `version` into the pipeline (from its next batch), then backfill and re-file."""
    from classifier.models import read_model_version
    from crawler.daemon import policy_of

    load = loader or reusing_loader(host.classifier, host.config, host.layout,
                                    getattr(host, "cache_dir", None))
    previous = host.classifier.version if host.classifier is not None else None
    classifier = await asyncio.to_thread(load, version)
    _, heads = await asyncio.to_thread(read_model_version, host.layout.models, version)
    host.pipeline.swap_classifier(classifier)
    host.classifier = classifier
    metrics = getattr(host, "metrics", None)
    if metrics is not None:
        metrics.set_model_version(version)
    log.info("model_promoted", version=version, previous=previous)
    catalogue = host.catalogue
    if catalogue is None:
        return
    if previous is None:
        requeued = await catalogue.requeue_unclassified_held(host.clock())
        if requeued:
            host.pipeline.notify()
            log.info("held_requeued", count=requeued)
    report = await backfill(catalogue, host.layout, version, heads, policy_of(host.config),
                            host.clock())
    log.info("model_backfilled", version=version, rescored=report.rescored,
             without_features=report.without_features, refiled=report.refiled,
             unchanged=report.unchanged, failed=report.failed)
    # Images the old model classified just before the swap are still on their way to
    # placement; once they are filed, bring them over too.
    if await _wait_for_unplaced(catalogue, version, STRAGGLER_WAIT_S):
        report = await backfill(catalogue, host.layout, version, heads,
                                policy_of(host.config), host.clock())
        log.info("model_backfilled", version=version, rescored=report.rescored,
                 without_features=report.without_features, refiled=report.refiled,
                 unchanged=report.unchanged, failed=report.failed, stragglers=True)


async def _wait_for_unplaced(catalogue: Catalogue, version: str, timeout_s: float) -> bool:
    """Wait (bounded) until no image scored by another version awaits placement; True if
    there were some."""
    query = """SELECT count(*) FROM blobs WHERE placement IS NULL
                 AND model_version IS NOT NULL AND model_version != ?"""
    row = await catalogue.fetch_one(query, (version,))
    if not row or not row[0]:
        return False
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(STRAGGLER_POLL_S)
        row = await catalogue.fetch_one(query, (version,))
        if not row or not row[0]:
            break
    return True


async def _shadow_then_activate(
    host: PromotionHost, active: ActiveModel, loader: ModelLoader | None,
    poll_interval_s: float,
) -> ActiveModel | None:
    """Run the shadow, write its report, switch, and mark ACTIVE done. None if superseded."""
    from classifier.models import read_model_version
    from crawler.daemon import policy_of

    _, heads = await asyncio.to_thread(read_model_version, host.layout.models, active.version)
    serving = host.classifier.version if host.classifier is not None else "none"
    run = ShadowRun(active.version, serving, heads, policy_of(host.config),
                    active.shadow_images or 1, host.clock())
    log.info("shadow_started", candidate=active.version, active=serving,
             images=active.shadow_images)
    host.pipeline.batch_listeners.append(run.listen)
    try:
        while not await wait_event(run.done, poll_interval_s):
            latest = await asyncio.to_thread(_read_quietly, host.layout.models)
            if latest is None or latest.key != active.key:
                log.warning("shadow_abandoned", candidate=active.version,
                            reason="ACTIVE changed during the shadow run", images=run.seen)
                return None
    finally:
        with contextlib.suppress(ValueError):
            host.pipeline.batch_listeners.remove(run.listen)
    report = run.report(host.clock())
    path = host.layout.models / active.version / SHADOW_FILENAME
    await asyncio.to_thread(_write_json_atomic, path, report)
    log.info("shadow_report", candidate=active.version, active=serving, images=run.seen,
             disagreements=run.disagreements, placement_changes=run.placement_changes,
             report=str(path))
    # Marked done first: a restart from here on serves the candidate without a new shadow.
    done = ActiveModel(active.version, active.promoted_at, shadow_report=str(path))
    await asyncio.to_thread(write_active, host.layout.models, done)
    await activate(host, active.version, loader)
    return done


def _read_quietly(models_dir: Path) -> ActiveModel | None:
    try:
        return read_active(models_dir)
    except ModelError:
        return None


# -- commands ---------------------------------------------------------------------------


def models_document(config: Config) -> list[dict[str, Any]]:
    """`megane models list --json`: every version with its metadata and whether it is active."""
    from classifier.models import list_models
    from classifier.training.seed2017 import read_seed2017_metadata

    layout = DataLayout(config.data_dir)
    serving, origin = serving_version(layout.models, config.classifier.model)
    try:
        pending = read_active(layout.models)
    except ModelError:
        pending = None
    listing = []
    for info in list_models(layout.models):
        metadata = dict(info.metadata)
        problem = info.problem
        if problem is not None and info.path is not None:
            seed = read_seed2017_metadata(info.path)
            if seed is not None:
                metadata, problem = seed, None
        entry = {**metadata, "version": info.version, "active": info.version == serving,
                 "active_origin": origin if info.version == serving else None,
                 "problem": problem}
        if pending is not None and pending.shadow_images and pending.version == info.version:
            entry["shadow_pending"] = pending.shadow_images
        listing.append(entry)
    return listing


def print_models(config: Config, *, as_json: bool) -> int:
    document = models_document(config)
    if as_json:
        sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="model versions")
    longest = max(len(entry["version"]) for entry in document)
    for name in ("", "version", "created", "tags", "AP per tag", "problem"):
        if name == "version":
            # Never shortened: it is what `megane models promote` needs, copied whole.
            table.add_column(name, no_wrap=True, min_width=longest, overflow="fold")
        else:
            table.add_column(name, overflow="fold")
    for entry in document:
        metrics = entry.get("metrics") or {}
        ap = ", ".join(
            f"{tag}={row['average_precision']:.3f}" for tag, row in metrics.items()
            if isinstance(row, dict) and row.get("average_precision") is not None)
        marker = "*" if entry["active"] else ("shadow" if entry.get("shadow_pending") else "")
        table.add_row(marker, entry["version"], str(entry.get("created_at") or ""),
                      ",".join(entry.get("tags") or []), ap or "-", entry.get("problem") or "")
    Console().print(table)
    return 0


def promote_command(config: Config, version: str, *, shadow_images: int | None) -> int:
    layout = DataLayout(config.data_dir)
    try:
        active = promote(layout.models, version, configured=config.classifier.model,
                         now=datetime.now(UTC), shadow_images=shadow_images)
    except ModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if active.shadow_images:
        print(f"{version}: will run in shadow beside {active.previous} on the next "
              f"{active.shadow_images} images, then become active (report: "
              f"{layout.models / version / SHADOW_FILENAME})")
    else:
        print(f"{version}: active; a running daemon swaps it in within "
              f"{POLL_INTERVAL_S:.0f} s and re-files the library")
    return 0
