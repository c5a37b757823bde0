"""Re-filing when the filing policy changes: at start, and the text rescore leaves behind.

Real `megane once` processes over a folder of real photos scored by the real model: a
threshold changed in config.toml while the daemon is stopped is applied at the next start
(library -> quarantine and back), and every row's reason and every quarantine sidecar
describe the policy in force after a pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from decimal import Decimal
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from crawler.applied_policy import SETTING, policy_fingerprint
from crawler.config import load_config
from crawler.daemon import Daemon, policy_of
from crawler.rescore import reconcile, refile_at_start, rescore
from storage.catalogue import Catalogue
from storage.placement import DataLayout
from tests.daemon_process import REPOSITORY, connect, small_photo

PHOTOS = 3


def write_config(work: Path, nsfw: str, band: str = "") -> Path:
    """config.toml for a folder source of `work/in` with `[thresholds] nsfw`."""
    path = work / "config.toml"
    path.write_text(
        f'[daemon]\ndata_dir = "{work}/data"\nlog_format = "json"\n\n'
        f'[thresholds]\nnsfw = {nsfw}\n\n'
        + (f"[quarantine]\nreview_band = {band}\n\n" if band else "")
        + f'[[sources]]\nkind = "folder"\nname = "inbox"\npath = "{work}/in"\nsettle_s = 0\n')
    return path


def fill_inbox(work: Path) -> None:
    """Three distinct real photos in `work/in`."""
    inbox = work / "in"
    inbox.mkdir()
    for index in range(PHOTOS):
        (inbox / f"photo{index}.jpg").write_bytes(small_photo(index))


def once(config: Path) -> str:
    """Run `megane once` in its own process; its log (stdout and stderr)."""
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    result = subprocess.run(
        [sys.executable, "-m", "crawler.cli", "once", "--config", str(config)],
        capture_output=True, text=True, cwd=config.parent, env=environment, timeout=300,
        check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def events(log: str, name: str) -> list[dict[str, Any]]:
    """The JSON log lines whose event is `name`."""
    found = []
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("event") == name:
            found.append(record)
    return found


def blobs(work: Path) -> list[sqlite3.Row]:
    """Every stored image's placement, reason and nsfw score."""
    with connect(work / "data" / "catalogue.sqlite") as connection:
        return connection.execute(
            """SELECT b.sha256, b.placement, b.reason, b.updated_at, s.score
               FROM blobs b JOIN scores s
               ON s.sha256 = b.sha256 AND s.model_version = b.model_version
               AND s.tag = 'nsfw' ORDER BY b.sha256""").fetchall()


def media_reasons(work: Path) -> set[str]:
    """The reasons of the media rows that hold a filing decision."""
    with connect(work / "data" / "catalogue.sqlite") as connection:
        rows = connection.execute("SELECT reason FROM media WHERE sha256 IS NOT NULL")
        return {row["reason"] for row in rows}


def visible(work: Path, folder: str) -> set[str]:
    """The sha256 of every image file under data/<folder>."""
    root = work / "data" / folder
    return {path.stem for path in root.rglob("*.jpg")} if root.is_dir() else set()


def test_threshold_changed_while_stopped_is_applied_at_next_start(tmp_path: Path) -> None:
    """Lowering nsfw below every score while stopped quarantines all at the next `once`;
    raising it back releases all; an unchanged config re-files nothing."""
    fill_inbox(tmp_path)
    first = once(write_config(tmp_path, "0.8"))
    stored = blobs(tmp_path)
    assert len(stored) == PHOTOS and all(row["placement"] == "library" for row in stored)
    shas = {row["sha256"] for row in stored}
    assert visible(tmp_path, "library") == shas
    assert events(first, "policy_refile_started")  # a new catalogue records its policy

    lowest = min(row["score"] for row in stored)
    assert 0 < lowest < 0.8
    strict = once(write_config(tmp_path, repr(lowest)))
    assert [event["refiled"] for event in events(strict, "policy_refiled")] == [PHOTOS]
    assert visible(tmp_path, "library") == set() and visible(tmp_path, "quarantine") == shas
    for row in blobs(tmp_path):
        shown, limit = row["reason"].removeprefix("score: nsfw=").split(" >= ")
        assert Decimal(shown) >= Decimal(limit) and float(limit) == lowest
        sidecar = json.loads((tmp_path / "data" / "quarantine" /
                              f"{row['sha256']}.json").read_text())
        assert sidecar["thresholds"]["nsfw"] == lowest and sidecar["reason"] == row["reason"]

    relaxed = once(write_config(tmp_path, "0.8"))
    assert [event["refiled"] for event in events(relaxed, "policy_refiled")] == [PHOTOS]
    assert visible(tmp_path, "library") == shas and visible(tmp_path, "quarantine") == set()
    assert not list((tmp_path / "data" / "quarantine").glob("*.json"))
    assert {row["reason"].split(" < ")[-1] for row in blobs(tmp_path)} == {"0.80"}
    assert all(reason.startswith("clean: ") for reason in media_reasons(tmp_path))

    again = once(write_config(tmp_path, "0.8"))
    assert events(again, "policy_refiled") == []
    assert visible(tmp_path, "library") == shas


async def filed(tmp_path: Path, shared_classifier: Any, nsfw: str,
                band: str = "") -> tuple[Any, DataLayout]:
    """Three photos filed in-process by the daemon under `nsfw` (and a review band)."""
    fill_inbox(tmp_path)
    config = load_config(write_config(tmp_path, nsfw, band))
    assert await Daemon(config, classifier=shared_classifier).run(once=True) == 0
    return config, DataLayout(config.data_dir)


async def test_rescore_rewrites_reasons_and_sidecars_of_images_that_stay(
        tmp_path: Path, shared_classifier: Any) -> None:
    """Images that stay in quarantine or the library get the new reason and sidecar."""
    config, layout = await filed(tmp_path, shared_classifier, "0.8")
    scores = sorted(row["score"] for row in blobs(tmp_path))
    # The two lower-scored images stay in the library; the highest is in the review band.
    assert scores[1] < scores[2] < 0.5
    low = (scores[1] + scores[2]) / 2
    write_config(tmp_path, "0.8", f"[{low!r}, 0.5]")
    async with open_catalogue(layout) as catalogue:
        first = await rescore(catalogue, layout, policy_of(load_config(config.path)), 1.0)
        assert (first.changed, first.failed) == (1, 0)
        band = (low, 0.6)
        write_config(tmp_path, "0.95", f"[{low!r}, 0.6]")
        policy = policy_of(load_config(config.path))
        report = await rescore(catalogue, layout, policy, 2.0)
    assert (report.changed, report.failed, report.reworded, report.sidecars) == (0, 0, 3, 1)
    rows = blobs(tmp_path)
    library = [row for row in rows if row["placement"] == "library"]
    assert len(library) == 2 and all(row["reason"].endswith(" < 0.95") for row in library)
    (kept,) = [row for row in rows if row["placement"] == "quarantine"]
    sidecar = json.loads(layout.sidecar(kept["sha256"]).read_text())
    assert sidecar["thresholds"] == {"nsfw": 0.95} and sidecar["reason"] == kept["reason"]
    assert sidecar["review_band"] == list(band)
    assert media_reasons(tmp_path) == {row["reason"] for row in rows}
    with connect(layout.catalogue) as connection:
        recorded = connection.execute("SELECT value FROM settings WHERE key = ?",
                                      (SETTING,)).fetchone()
    assert recorded["value"] == policy_fingerprint(policy)


async def test_failed_pass_leaves_no_fingerprint_and_next_start_redoes_it(
        tmp_path: Path, shared_classifier: Any) -> None:
    """A pass that cannot move a file records no policy; the next start re-files again."""
    _, layout = await filed(tmp_path, shared_classifier, "0.8")
    lowest = min(row["score"] for row in blobs(tmp_path))
    strict = policy_of(load_config(write_config(tmp_path, repr(lowest))))
    aside = tmp_path / "quarantine-aside"
    layout.quarantine.rename(aside)
    layout.quarantine.write_bytes(b"not a folder")  # the disk refuses every move
    async with open_catalogue(layout) as catalogue:
        report = await refile_at_start(catalogue, layout, strict, 1.0)
        assert report is not None and report.failed == PHOTOS
        assert await catalogue.setting(SETTING) is None
        layout.quarantine.unlink()
        aside.rename(layout.quarantine)
        # The next start: reconcile finishes the moves the committed decisions name
        # (fail closed: out of the library), then the pass runs again and completes.
        assert await reconcile(catalogue, layout, strict) == PHOTOS
        again = await refile_at_start(catalogue, layout, strict, 2.0)
        assert again is not None and (again.failed, again.unchanged) == (0, PHOTOS)
        assert await catalogue.setting(SETTING) == policy_fingerprint(strict)
        assert await refile_at_start(catalogue, layout, strict, 3.0) is None
    assert visible(tmp_path, "library") == set()
    assert visible(tmp_path, "quarantine") == {row["sha256"] for row in blobs(tmp_path)}


@contextlib.asynccontextmanager
async def open_catalogue(layout: DataLayout) -> AsyncIterator[Catalogue]:
    """The catalogue under `layout`, open for the block."""
    catalogue = await Catalogue.open(layout.catalogue)
    try:
        yield catalogue
    finally:
        await catalogue.close()


async def test_policy_recorded_by_another_process_is_forgotten_at_stop(
        tmp_path: Path, shared_classifier: Any) -> None:
    """`megane rescore` with an edited config beside a running daemon records its policy;
    the daemon filed under its own meanwhile, so at stop it forgets that record."""
    fill_inbox(tmp_path)
    config = load_config(write_config(tmp_path, "0.8"))
    daemon = Daemon(config, classifier=shared_classifier)
    running = asyncio.create_task(daemon.run())
    await daemon.ready.wait()
    edited = policy_of(load_config(write_config(tmp_path, "0.5")))
    async with open_catalogue(DataLayout(config.data_dir)) as catalogue:
        assert await catalogue.setting(SETTING) == policy_fingerprint(policy_of(config))
        await catalogue.set_setting(SETTING, policy_fingerprint(edited), 1.0)
    daemon.stop_requested.set()
    assert await running == 0
    async with open_catalogue(DataLayout(config.data_dir)) as catalogue:
        assert await catalogue.setting(SETTING) is None
        # The next start with the edited config re-files, as it must.
        layout = DataLayout(config.data_dir)
        report = await refile_at_start(catalogue, layout, edited, 2.0)
        assert report is not None and report.failed == 0
        assert await catalogue.setting(SETTING) == policy_fingerprint(edited)


async def test_a_decision_planned_from_a_stale_row_is_not_committed(
        tmp_path: Path, shared_classifier: Any) -> None:
    """record_decisions with the updated_at a pass planned from leaves alone an image that
    another process (a reviewer's label and re-file) changed since, and says which."""
    from storage.records import Placement

    _, layout = await filed(tmp_path, shared_classifier, "0.8")
    first, second, _ = blobs(tmp_path)
    async with open_catalogue(layout) as catalogue:
        # The reviewer's process re-files `first` after the pass took its snapshot.
        assert await catalogue.record_decisions(
            [(first["sha256"], Placement.QUARANTINE, "label: nsfw=yes", ["nsfw"])], 50.0) \
            == set()
        refused = await catalogue.record_decisions(
            [(first["sha256"], Placement.LIBRARY, "clean: nsfw=0.010 < 0.99", []),
             (second["sha256"], Placement.QUARANTINE, "score: nsfw=0.300 >= 0.20", ["nsfw"])],
            60.0, {first["sha256"]: first["updated_at"], second["sha256"]: second["updated_at"]})
    assert refused == {first["sha256"]}
    after = {row["sha256"]: row for row in blobs(tmp_path)}
    assert (after[first["sha256"]]["placement"], after[first["sha256"]]["reason"]) == (
        "quarantine", "label: nsfw=yes")
    assert after[second["sha256"]]["placement"] == "quarantine"


async def test_media_rows_follow_their_blob_after_a_crash_between_commits(
        tmp_path: Path, shared_classifier: Any) -> None:
    """A crash after a re-file committed the blobs but before their media rows: the next
    start's reconcile gives the media rows the committed placement and reason."""
    from storage.records import Placement

    _, layout = await filed(tmp_path, shared_classifier, "0.8")
    target = blobs(tmp_path)[0]
    async with open_catalogue(layout) as catalogue:
        # The first commit of a re-file (blobs), files moved, then the process died.
        await catalogue.record_decisions(
            [(target["sha256"], Placement.QUARANTINE, "score: nsfw=0.010 >= 0.001", ["nsfw"])],
            10.0)
        strict = policy_of(load_config(write_config(tmp_path, "0.001")))
        await reconcile(catalogue, layout, strict)  # moves the files; aligns the media rows
    with connect(layout.catalogue) as connection:
        rows = connection.execute("SELECT state, reason FROM media WHERE sha256 = ?",
                                  (target["sha256"],)).fetchall()
    assert rows and all((row["state"], row["reason"]) ==
                        ("quarantine", "score: nsfw=0.010 >= 0.001") for row in rows)


async def test_a_daemon_that_died_serving_another_policy_is_repaired_at_start(
        tmp_path: Path, shared_classifier: Any) -> None:
    """`megane rescore` recorded policy P2 while a daemon filed under P1, then the daemon was
    killed (no clean stop): the next start with P2 sees the serving record and re-files."""
    from crawler.applied_policy import SERVING

    _, layout = await filed(tmp_path, shared_classifier, "0.8")
    lenient = policy_of(load_config(write_config(tmp_path, "0.8")))
    strict = policy_of(load_config(write_config(tmp_path, repr(
        min(row["score"] for row in blobs(tmp_path))))))
    async with open_catalogue(layout) as catalogue:
        assert await catalogue.setting(SERVING) is None  # the in-process run stopped cleanly
        # The state kill -9 leaves: the dead daemon's serving record (P1), P2 recorded as
        # applied by `megane rescore`, images filed under P1 (all in the library).
        await catalogue.set_setting(SERVING, policy_fingerprint(lenient), 1.0)
        await catalogue.set_setting(SETTING, policy_fingerprint(strict), 1.0)
        report = await refile_at_start(catalogue, layout, strict, 2.0)
        assert report is not None and report.changed == PHOTOS
        assert await catalogue.setting(SERVING) == policy_fingerprint(strict)
        assert await refile_at_start(catalogue, layout, strict, 3.0) is None
    assert visible(tmp_path, "library") == set()


async def test_the_daemon_asks_for_time_only_when_a_pass_runs(
        tmp_path: Path, shared_classifier: Any) -> None:
    """`before_pass` (the daemon's EXTEND_TIMEOUT_USEC) is called once when a pass runs and
    not at a start with nothing to re-file."""
    _, layout = await filed(tmp_path, shared_classifier, "0.8")
    calls: list[int] = []
    policy = policy_of(load_config(write_config(tmp_path, "0.5")))
    async with open_catalogue(layout) as catalogue:
        await refile_at_start(catalogue, layout, policy, 1.0, before_pass=lambda: calls.append(1))
        await refile_at_start(catalogue, layout, policy, 2.0, before_pass=lambda: calls.append(1))
    assert calls == [1]
