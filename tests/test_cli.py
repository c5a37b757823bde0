"""The `megane` command line: exit codes, JSON documents, review decisions, rescore.

Commands run in-process through `crawler.cli.main([...])` (and a few in a subprocess);
the catalogue state they read is built with the Catalogue API and `place()` on real files.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

from crawler.cli import build_parser, main
from crawler.decide import Policy, decide
from storage.catalogue import Catalogue
from storage.placement import DataLayout, place
from storage.records import MediaRef, Placement
from tests.conftest import photo

REPOSITORY = Path(__file__).resolve().parent.parent
NOW = 1_700_000_000.0


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """Each command configures structlog onto the captured stderr; undo it after the test."""
    yield
    structlog.reset_defaults()


@dataclass(frozen=True)
class Item:
    """One image filed for a test: its URL, sha256 and where it went."""

    url: str
    sha256: str
    placement: Placement
    tags: tuple[str, ...]


@dataclass
class Setup:
    """A config file, its data_dir and the images filed there."""

    config: Path
    layout: DataLayout
    items: dict[str, Item]

    def run(self, *argv: str) -> int:
        """Run `megane <argv> --config <config>` in-process and return its exit code."""
        command, rest = list(argv[:1]), list(argv[1:])
        if command[0] in ("media", "quarantine"):
            command, rest = list(argv[:2]), list(argv[2:])
        return main([*command, "--config", str(self.config), *rest])


def write_config(folder: Path, extra: str = "") -> Path:
    """A config.toml in `folder` with data_dir beside it and the given extra TOML."""
    path = folder / "config.toml"
    path.write_text(textwrap.dedent(f"""\
        [daemon]
        data_dir = "{folder / 'data'}"
        log_format = "json"

        [classifier]
        engine = "litert"

        [thresholds]
        nsfw = 0.8
        megane = 0.6
        """) + textwrap.dedent(extra))
    return path


async def file_image(catalogue: Catalogue, layout: DataLayout, url: str, data: bytes,
                     scores: dict[str, float] | None, flags: tuple[str, ...] = ()) -> Item:
    """Take one image through the catalogue and place it as decide() says."""
    (row,) = await catalogue.add_media([MediaRef(url=url, source="feed", flags=flags,
                                                 post_url=url + "/post")], NOW)
    digest = hashlib.sha256(data).hexdigest()
    layout.spool_file(digest).write_bytes(data)
    await catalogue.record_download(row.id, digest, len(data), NOW)
    await catalogue.record_decoded(row.id, digest, format="JPEG", width=8, height=8,
                                   extension=".jpg", phash=None, now=NOW)
    if scores is not None:
        await catalogue.record_scores([(row.id, digest, scores, None)], "builtin", "open_nsfw",
                                      NOW)
    policy = Policy(thresholds={"nsfw": 0.8, "megane": 0.6})
    decision = decide(scores, flags, policy)
    sidecar = {"reason": decision.reason} if decision.placement is Placement.QUARANTINE else None
    place(layout, digest, ".jpg", decision.placement, decision.tags, sidecar)
    await catalogue.record_placement(digest, decision.placement, decision.reason, decision.tags,
                                     NOW, media_id=row.id)
    return Item(url, digest, decision.placement, decision.tags)


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    """A data_dir with one clean, one tagged, one quarantined, one held image and a pending URL."""
    config = write_config(tmp_path)
    layout = DataLayout(tmp_path / "data")
    layout.ensure()

    async def build() -> dict[str, Item]:
        catalogue = await Catalogue.open(layout.catalogue)
        try:
            items = {
                "clean": await file_image(catalogue, layout, "https://e.org/coffee.jpg",
                                          photo("coffee"), {"nsfw": 0.05, "megane": 0.1}),
                "megane": await file_image(catalogue, layout, "https://e.org/astronaut.jpg",
                                           photo("astronaut"), {"nsfw": 0.1, "megane": 0.9}),
                "nsfw": await file_image(catalogue, layout, "https://e.org/chelsea.jpg",
                                         photo("chelsea"), {"nsfw": 0.93, "megane": 0.7}),
                "held": await file_image(catalogue, layout, "https://e.org/rocket.jpg",
                                         photo("rocket"), None, ("mastodon:sensitive",)),
            }
            await catalogue.add_media([MediaRef(url="https://e.org/later.jpg", source="other")],
                                      NOW)
            await catalogue.ensure_source("feed", "rss", "https://e.org/feed.xml")
            await catalogue.record_poll("feed", cursor="etag-1", new_items=4,
                                        next_poll_at=NOW + 600, notice=None, now=NOW)
            return items
        finally:
            await catalogue.close()

    return Setup(config, layout, asyncio.run(build()))


def json_stdout(capfd: pytest.CaptureFixture[str]) -> object:
    """Parse stdout as exactly one JSON document (fails on anything else)."""
    out = capfd.readouterr().out
    return json.loads(out)


class TestExitCodes:
    """0 success, 1 user error, 2 internal failure or bad usage."""

    def test_check_config_ok(self, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
        """A valid config exits 0 and says ok."""
        config = write_config(tmp_path)
        assert main(["check-config", "--config", str(config)]) == 0
        assert f"{config}: ok" in capfd.readouterr().out

    def test_check_config_lists_every_problem(self, tmp_path: Path,
                                              capfd: pytest.CaptureFixture[str]) -> None:
        """A bad config exits 1 and lists every problem with file:line on stderr."""
        config = write_config(tmp_path, """\
            [http]
            timeout_s = -1

            [quarantine]
            review_band = [0.9, 0.1]

            [[sources]]
            kind = "rss"
            name = "a"
            url = "ftp://x"
            """)
        assert main(["check-config", "--config", str(config)]) == 1
        captured = capfd.readouterr()
        assert captured.out == ""
        lines = config.read_text().splitlines()
        for needle, dotted in (("timeout_s", "http.timeout_s"),
                               ("review_band", "quarantine.review_band"),
                               ("ftp://", "sources[0].url")):
            number = next(n for n, line in enumerate(lines, 1) if needle in line)
            assert f"{config}:{number}: {dotted}: " in captured.err, captured.err
        assert "3 problem(s)" in captured.err

    def test_main_runs_with_a_stderr_without_fileno(
            self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """main() works in-process even when sys.stderr is not a real file."""
        config = write_config(tmp_path)
        assert main(["check-config", "--config", str(config)]) == 0
        assert "ok" in capsys.readouterr().out

    def test_missing_config(self, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
        """A config that does not exist is a user error naming the path."""
        assert main(["status", "--config", str(tmp_path / "absent.toml")]) == 1
        assert "file not found" in capfd.readouterr().err

    def test_config_errors_never_print_credentials(
            self, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
        """A config error quoting a bad value prints it with its credentials removed."""
        config = write_config(tmp_path, textwrap.dedent("""
            [[sources]]
            kind = "rss"
            name = "feed"
            url = "htps://bob:hunter2222@feeds.example.org/f.xml?token=SUPERSECRET99"
            """))
        assert main(["check-config", "--config", str(config)]) == 1
        err = capfd.readouterr().err
        assert "feeds.example.org" in err
        assert "SUPERSECRET99" not in err and "hunter2222" not in err

    @pytest.mark.parametrize("argv", [["frobnicate"], ["classify"], ["status", "--bogus"],
                                      ["media", "list", "--state", "lost"]])
    def test_bad_usage_is_a_user_error(self, argv: list[str],
                                       capfd: pytest.CaptureFixture[str]) -> None:
        """A usage error (unknown command, missing argument) exits 1 with the usage, not 2."""
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 1
        assert "usage" in capfd.readouterr().err

    def test_config_before_the_command(self, setup: Setup,
                                       capfd: pytest.CaptureFixture[str]) -> None:
        """`megane --config PATH status` reads PATH like `megane status --config PATH`."""
        assert main(["--config", str(setup.config), "status", "--json"]) == 0
        assert "states" in json_stdout(capfd)  # type: ignore[operator]

    def test_internal_failure_exits_2(self, tmp_path: Path,
                                      capfd: pytest.CaptureFixture[str]) -> None:
        """A corrupt catalogue is an internal failure: exit 2 with the path on stderr."""
        config = write_config(tmp_path)
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "catalogue.sqlite").write_bytes(b"garbage" * 1000)
        assert main(["status", "--config", str(config), "--json"]) == 2
        captured = capfd.readouterr()
        assert captured.out == ""
        assert "catalogue.sqlite" in captured.err


class TestStatus:
    """`megane status`."""

    def test_json_document(self, setup: Setup, capfd: pytest.CaptureFixture[str]) -> None:
        """--json prints one document with states, tags, sources, queue and model."""
        assert setup.run("status", "--json") == 0
        document = json_stdout(capfd)
        assert isinstance(document, dict)
        assert {"data_dir", "states", "tags", "sources", "queue", "model", "labels",
                "by_source"} <= set(document)
        assert document["states"] == {"library": 2, "quarantine": 1, "held": 1, "pending": 1}
        assert document["tags"] == {"untagged": 1, "megane": 1}
        assert document["queue"] == {"pending": 1, "downloaded": 0, "decoded": 0,
                                     "classified": 0}
        (source,) = document["sources"]
        assert (source["name"], source["kind"], source["cursor"], source["items_total"]) == (
            "feed", "rss", "etag-1", 4)
        assert document["model"]["configured"] is None  # unset: models/ACTIVE, else builtin
        assert (document["model"]["version"], document["model"]["origin"]) == ("builtin",
                                                                               "builtin")
        assert document["data_dir"] == str(setup.layout.root)

    def test_text(self, setup: Setup, capfd: pytest.CaptureFixture[str]) -> None:
        """Without --json a short human summary is printed."""
        assert setup.run("status") == 0
        out = capfd.readouterr().out
        assert "library=2" in out and "source feed (rss)" in out
        assert "last poll " in out and "cursor etag-1" in out


class TestMediaList:
    """`megane media list`."""

    def test_text_shows_flags_and_tags(self, setup: Setup,
                                       capfd: pytest.CaptureFixture[str]) -> None:
        """Each text line shows the URL's source flags and tags, as the README says."""
        assert setup.run("media", "list", "--json") == 0
        flagged = [item for item in json_stdout(capfd)  # type: ignore[attr-defined]
                   if item["flags"]]
        assert flagged
        assert setup.run("media", "list") == 0
        lines = capfd.readouterr().out.splitlines()
        for item in flagged:
            (line,) = [line for line in lines if item["url"] in line]
            assert f"flags: {', '.join(item['flags'])}" in line

    def test_json_every_url(self, setup: Setup, capfd: pytest.CaptureFixture[str]) -> None:
        """--json is an array with url, state, reason, sha256, source, flags, tags per URL."""
        assert setup.run("media", "list", "--json") == 0
        items = json_stdout(capfd)
        assert isinstance(items, list) and len(items) == 5
        for item in items:
            assert {"url", "state", "reason", "sha256", "source", "flags", "tags"} <= set(item)
            assert isinstance(item["flags"], list) and isinstance(item["tags"], list)
        by_url = {item["url"]: item for item in items}
        held = by_url["https://e.org/rocket.jpg"]
        assert (held["state"], held["reason"], held["flags"]) == (
            "held", "not_classified", ["mastodon:sensitive"])
        quarantined = by_url["https://e.org/chelsea.jpg"]
        assert quarantined["sha256"] == setup.items["nsfw"].sha256
        assert quarantined["reason"].startswith("score: nsfw=0.930")
        assert by_url["https://e.org/later.jpg"]["state"] == "pending"

    def test_state_filter(self, setup: Setup, capfd: pytest.CaptureFixture[str]) -> None:
        """--state keeps only rows in that state."""
        assert setup.run("media", "list", "--state", "library", "--json") == 0
        assert {item["url"] for item in json_stdout(capfd)} == {  # type: ignore[attr-defined]
            "https://e.org/coffee.jpg", "https://e.org/astronaut.jpg"}

    def test_unknown_state_is_usage_error(self, setup: Setup) -> None:
        """A state that does not exist is refused by the parser."""
        with pytest.raises(SystemExit) as caught:
            setup.run("media", "list", "--state", "lost")
        assert caught.value.code == 1


class TestQuarantine:
    """`megane quarantine list|release|confirm`."""

    def test_list_json(self, setup: Setup, capfd: pytest.CaptureFixture[str]) -> None:
        """The list holds quarantined and held images with scores, reasons and URLs."""
        assert setup.run("quarantine", "list", "--json") == 0
        items = json_stdout(capfd)
        by_sha = {item["sha256"]: item for item in items}  # type: ignore[attr-defined]
        assert set(by_sha) == {setup.items["nsfw"].sha256, setup.items["held"].sha256}
        nsfw = by_sha[setup.items["nsfw"].sha256]
        assert nsfw["placement"] == "quarantine"
        assert nsfw["scores"] == {"nsfw": 0.93, "megane": 0.7}
        assert nsfw["urls"] == ["https://e.org/chelsea.jpg"]

    def test_release_moves_to_library(self, setup: Setup,
                                      capfd: pytest.CaptureFixture[str]) -> None:
        """Releasing a quarantined image files it in the library and records nsfw=no."""
        item = setup.items["nsfw"]
        assert setup.run("quarantine", "release", item.sha256[:10]) == 0
        assert "library" in capfd.readouterr().out
        linked = setup.layout.library / "megane" / f"{item.sha256}.jpg"
        assert linked.exists() and oct(linked.stat().st_mode & 0o777) == "0o644"
        assert not (setup.layout.quarantine / f"{item.sha256}.jpg").exists()
        assert not setup.layout.sidecar(item.sha256).exists()
        assert setup.run("media", "list", "--state", "library", "--json") == 0
        assert item.url in {row["url"] for row in json_stdout(capfd)}  # type: ignore[attr-defined]
        assert setup.run("status", "--json") == 0
        assert json_stdout(capfd)["labels"] == {"nsfw": {"yes": 0, "no": 1}}  # type: ignore[index]

    def test_confirm_moves_to_quarantine(self, setup: Setup,
                                         capfd: pytest.CaptureFixture[str]) -> None:
        """Confirming a library image as NSFW takes it out of every library folder."""
        item = setup.items["megane"]
        assert setup.run("quarantine", "confirm", item.sha256) == 0
        capfd.readouterr()
        assert not list(setup.layout.library.rglob(f"{item.sha256}*"))
        quarantined = setup.layout.quarantine / f"{item.sha256}.jpg"
        assert oct(quarantined.stat().st_mode & 0o777) == "0o600"
        sidecar = json.loads(setup.layout.sidecar(item.sha256).read_text())
        assert sidecar["reason"] == "human_label: nsfw=yes"

    def test_release_held_image(self, setup: Setup) -> None:
        """A reviewer may release an image the model never classified."""
        item = setup.items["held"]
        assert setup.run("quarantine", "release", item.sha256) == 0
        assert (setup.layout.library / "untagged" / f"{item.sha256}.jpg").exists()
        assert not (setup.layout.held / f"{item.sha256}.jpg").exists()

    @pytest.mark.parametrize("command", ["release", "confirm"])
    def test_unknown_sha(self, setup: Setup, capfd: pytest.CaptureFixture[str],
                         command: str) -> None:
        """A SHA nothing matches exits 1 with a clear message and changes nothing."""
        unknown = next(p for p in ("0000", "ffff", "1234") if not any(
            item.sha256.startswith(p) for item in setup.items.values()))
        assert setup.run("quarantine", command, unknown) == 1
        captured = capfd.readouterr()
        assert f"no stored image has a sha256 starting with '{unknown}'" in captured.err
        assert captured.out == ""

    @pytest.mark.parametrize("command", ["release", "confirm"])
    def test_ambiguous_sha(self, tmp_path: Path, capfd: pytest.CaptureFixture[str],
                           command: str) -> None:
        """A prefix two images share exits 1 saying it is ambiguous."""
        config = write_config(tmp_path)
        layout = DataLayout(tmp_path / "data")
        layout.ensure()
        blobs: dict[str, bytes] = {}
        index = 0
        while True:
            data = f"image {index}".encode()
            first = hashlib.sha256(data).hexdigest()[0]
            if first in blobs:
                break
            blobs[first] = data
            index += 1

        async def build() -> None:
            catalogue = await Catalogue.open(layout.catalogue)
            try:
                await file_image(catalogue, layout, "https://e.org/1", blobs[first], {"nsfw": 0.9})
                await file_image(catalogue, layout, "https://e.org/2", data, {"nsfw": 0.9})
            finally:
                await catalogue.close()

        asyncio.run(build())
        assert main(["quarantine", command, "--config", str(config), first]) == 1
        assert "ambiguous" in capfd.readouterr().err

    @pytest.mark.parametrize("sha", ["not-hex", "zz", "ab%"])
    def test_non_hex_sha(self, setup: Setup, capfd: pytest.CaptureFixture[str],
                         sha: str) -> None:
        """A SHA that is not hex digits exits 1 before touching anything."""
        assert setup.run("quarantine", "release", sha) == 1
        assert "is not a sha256" in capfd.readouterr().err


def _leaf_parsers(parser: argparse.ArgumentParser,
                 words: tuple[str, ...] = ()) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every command's parser, named by its words (`quarantine release`)."""
    children = [action for action in parser._actions
                if isinstance(action, argparse._SubParsersAction)]
    if not children:
        yield " ".join(words), parser
    for action in children:
        for name, child in action.choices.items():
            yield from _leaf_parsers(child, (*words, name))


class TestHelp:
    """`megane ... --help` says what each command and argument does today."""

    def test_every_command_and_argument_is_described(
            self, capsys: pytest.CaptureFixture[str]) -> None:
        """Each command's help exits 0, has a description, and describes every argument."""
        leaves = dict(_leaf_parsers(build_parser()))
        assert len(leaves) == 18 and "quarantine release" in leaves
        assert "SPEC" not in (build_parser().description or "")  # users have the README
        for words, parser in leaves.items():
            with pytest.raises(SystemExit) as exited:
                main([*words.split(), "--help"])
            assert exited.value.code == 0 and parser.description, words
            assert parser.description in " ".join(capsys.readouterr().out.split())
            undescribed = [action.dest for action in parser._actions
                           if not action.help and action.dest != "help"]
            assert undescribed == [], f"megane {words}: {undescribed} have no help"

    def test_release_and_confirm_say_which_labels_they_record(
            self, capsys: pytest.CaptureFixture[str]) -> None:
        """release labels every [quarantine] tag no; confirm labels nsfw (or the first tag)."""
        with pytest.raises(SystemExit):
            main(["quarantine", "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "label each [quarantine] tag no" in text
        assert "label nsfw=yes (the first [quarantine] tag if nsfw is not one)" in text

class TestLabel:
    """`megane label SHA TAG=yes|no ...`."""

    def test_labels_refile(self, setup: Setup, capfd: pytest.CaptureFixture[str]) -> None:
        """megane=yes adds the tag folder; megane=no removes it."""
        clean = setup.items["clean"]
        assert setup.run("label", clean.sha256[:12], "megane=yes", "cat=no") == 0
        assert (setup.layout.library / "megane" / f"{clean.sha256}.jpg").exists()
        assert not (setup.layout.library / "untagged" / f"{clean.sha256}.jpg").exists()
        tagged = setup.items["megane"]
        assert setup.run("label", tagged.sha256, "MEGANE=No") == 0
        assert not (setup.layout.library / "megane" / f"{tagged.sha256}.jpg").exists()
        assert (setup.layout.library / "untagged" / f"{tagged.sha256}.jpg").exists()
        capfd.readouterr()

    @pytest.mark.parametrize("label", ["megane", "megane=maybe", "=yes"])
    def test_bad_label_syntax(self, setup: Setup, capfd: pytest.CaptureFixture[str],
                              label: str) -> None:
        """A label that is not TAG=yes|no exits 1 naming it."""
        assert setup.run("label", setup.items["clean"].sha256, label) == 1
        assert "labels are TAG=yes or TAG=no" in capfd.readouterr().err

    def test_unknown_sha(self, setup: Setup, capfd: pytest.CaptureFixture[str]) -> None:
        """Labelling an unknown SHA exits 1."""
        unknown = next(p for p in ("0000", "ffff", "1234") if not any(
            item.sha256.startswith(p) for item in setup.items.values()))
        assert setup.run("label", unknown, "megane=yes") == 1
        assert "no stored image" in capfd.readouterr().err

    def test_tag_that_is_not_a_folder_name(self, setup: Setup,
                                           capfd: pytest.CaptureFixture[str]) -> None:
        """A tag with a path separator is a user error (exit 1) and records no label."""
        clean = setup.items["clean"]
        code = setup.run("label", clean.sha256, "../escape=yes")
        capfd.readouterr()
        assert setup.run("status", "--json") == 0
        labels = json_stdout(capfd)["labels"]  # type: ignore[index]
        assert (code, labels) == (1, {})


class TestRescore:
    """`megane rescore` re-files from stored scores."""

    def test_nothing_changes(self, setup: Setup, capfd: pytest.CaptureFixture[str]) -> None:
        """Under the same thresholds nothing moves."""
        assert setup.run("rescore", "--json") == 0
        document = json_stdout(capfd)
        assert isinstance(document, dict)
        assert set(document) == {"changed", "unchanged", "failed", "seconds"}
        assert (document["changed"], document["unchanged"], document["failed"]) == (0, 3, 0)

    def test_new_thresholds_move_images(self, setup: Setup,
                                        capfd: pytest.CaptureFixture[str]) -> None:
        """Raising nsfw to 0.95 and lowering megane to 0.05 re-files without the model."""
        text = setup.config.read_text().replace("nsfw = 0.8", "nsfw = 0.95").replace(
            "megane = 0.6", "megane = 0.05")
        setup.config.write_text(text)
        assert setup.run("rescore", "--json") == 0
        document = json_stdout(capfd)
        # coffee gains megane, chelsea is released by the higher nsfw threshold;
        # astronaut was already in megane/.
        assert (document["changed"], document["failed"]) == (2, 0)  # type: ignore[index]
        library = setup.layout.library / "megane"
        for name in ("clean", "megane", "nsfw"):
            assert (library / f"{setup.items[name].sha256}.jpg").exists(), name
        assert not list(setup.layout.quarantine.glob("*.jpg"))
        assert (setup.layout.held / f"{setup.items['held'].sha256}.jpg").exists()

    def test_text_output(self, setup: Setup, capfd: pytest.CaptureFixture[str]) -> None:
        """Without --json a one-line summary is printed."""
        assert setup.run("rescore") == 0
        assert "re-filed 0, unchanged 3, failed 0" in capfd.readouterr().out


class TestSubprocess:
    """The real `python -m crawler.cli` process: exit codes and clean stdout."""

    def run(self, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
        return subprocess.run([sys.executable, "-m", "crawler.cli", *argv], capture_output=True,
                              text=True, cwd=cwd, env=environment, timeout=120, check=False)

    def test_status_json_stdout_is_one_document(self, setup: Setup, tmp_path: Path) -> None:
        """stdout of `status --json` parses as one JSON document; logs stay off stdout."""
        result = self.run("status", "--config", str(setup.config), "--json", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["states"]["library"] == 2

    async def test_reader_closing_the_pipe_is_no_internal_error(
            self, setup: Setup, tmp_path: Path) -> None:
        """`megane media list | head -1`: the reader leaves early; no traceback, not exit 2."""
        catalogue = await Catalogue.open(setup.layout.catalogue)
        try:
            await catalogue.add_media([MediaRef(url=f"https://e.org/{index:05d}.jpg",
                                                source="feed") for index in range(3000)], 1.0)
        finally:
            await catalogue.close()
        environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
        process = subprocess.Popen(
            [sys.executable, "-m", "crawler.cli", "media", "list", "--config", str(setup.config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=environment)
        assert process.stdout is not None and process.stderr is not None
        process.stdout.readline()
        process.stdout.close()  # like `head -1`
        code = process.wait(timeout=120)
        errors = process.stderr.read().decode()
        process.stderr.close()
        assert code == 1 and "Traceback" not in errors and "internal_error" not in errors

    def test_check_config_bad(self, tmp_path: Path) -> None:
        """A bad config exits 1 with file:line problems on stderr and nothing on stdout."""
        config = write_config(tmp_path, "\n[deamon]\nx = 1\n")
        result = self.run("check-config", "--config", str(config), cwd=tmp_path)
        assert result.returncode == 1
        assert result.stdout == ""
        assert f"{config}:" in result.stderr and "deamon: unknown section" in result.stderr

    def test_default_config_in_cwd(self, tmp_path: Path) -> None:
        """Without --config, ./config.toml is found in the working directory."""
        write_config(tmp_path)
        result = self.run("check-config", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "config.toml: ok" in result.stdout


    @pytest.mark.parametrize("command", [["check-config"], ["status"], ["media", "list"]])
    def test_no_config_anywhere_names_every_path_tried(self, tmp_path: Path,
                                                        command: list[str]) -> None:
        """Without --config and no file found, exit 1 naming both defaults in order and the fix."""
        if Path("/etc/megane-crawler/config.toml").exists():
            pytest.skip("this machine has /etc/megane-crawler/config.toml")
        result = self.run(*command, cwd=tmp_path)
        assert result.returncode == 1 and result.stdout == ""
        tried = f"{tmp_path.resolve() / 'config.toml'}, then /etc/megane-crawler/config.toml"
        assert f"no config file found; looked at {tried};" in result.stderr, result.stderr
        assert "--config PATH" in result.stderr and "shipped config.toml" in result.stderr
        assert "Traceback" not in result.stderr

class TestClassify:
    """`megane classify FILE --json` with the real builtin model."""

    def test_one_photo(self, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
        """A real photo gets an nsfw score in [0, 1]; a missing file is reported and exits 1."""
        config = write_config(tmp_path)
        image = tmp_path / "coffee.jpg"
        image.write_bytes(photo("coffee"))
        missing = tmp_path / "missing.jpg"
        code = main(["classify", "--config", str(config), "--json", str(image), str(missing)])
        captured = capfd.readouterr()
        results = json.loads(captured.out)
        assert code == 1
        assert results[0]["file"] == str(image)
        score = results[0]["scores"]["nsfw"]
        assert 0.0 <= score < 0.5
        assert results[1]["file"] == str(missing) and "error" in results[1]
        assert str(missing) in captured.err

