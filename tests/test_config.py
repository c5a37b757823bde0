"""Loading and validating config.toml: typed frozen settings, every problem at once."""

from __future__ import annotations

import dataclasses
import math
import textwrap
from pathlib import Path

import pytest

from crawler.config import (
    Config,
    ConfigError,
    DaemonConfig,
    HttpConfig,
    config_from_mapping,
    find_config,
    load_config,
    parse_duration_s,
)

REPOSITORY = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    """Write dedented TOML text to tmp_path/name and return its path."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path) -> list[str]:
    """The problems load_config reports for `path` (fails if it loads)."""
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def line_of(path: Path, needle: str) -> int:
    """The 1-based line number of the first line of `path` that contains `needle`."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


class TestParseDuration:
    """parse_duration_s: numbers are seconds; strings carry a unit."""

    @pytest.mark.parametrize(
        ("value", "seconds"),
        [
            (300, 300.0),
            (1.5, 1.5),
            ("300", 300.0),
            ("90s", 90.0),
            ("5m", 300.0),
            ("1h", 3600.0),
            ("2d", 172800.0),
            ("250ms", 0.25),
            ("1.5h", 5400.0),
            (" 5 m ", 300.0),
            ("0.5s", 0.5),
        ],
    )
    def test_valid(self, value: object, seconds: float) -> None:
        """Numbers and unit strings normalise to seconds."""
        assert parse_duration_s(value) == pytest.approx(seconds)

    @pytest.mark.parametrize(
        "value",
        [0, -1, "0", "0s", "-5m", "5 fortnights", "5M", "m", "", "1e3", "five",
         True, False, None, [5], float("nan"), float("inf"), "5m30s"],
    )
    def test_invalid(self, value: object) -> None:
        """Zero, negatives, unknown units, booleans and non-finite values raise ValueError."""
        with pytest.raises(ValueError, match="duration"):
            parse_duration_s(value)


class TestFindConfig:
    """find_config: explicit path, else ./config.toml, else /etc."""

    def test_explicit_wins(self, tmp_path: Path) -> None:
        """An explicit path is returned as given, even when it does not exist."""
        assert find_config(str(tmp_path / "nope.toml")) == tmp_path / "nope.toml"

    def test_current_directory(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without --config, ./config.toml is used when present."""
        monkeypatch.chdir(tmp_path)
        (tmp_path / "config.toml").write_text("")
        assert find_config(None) == Path("config.toml")

    def test_default_when_nothing_exists(self, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
        """With no file anywhere the default ./config.toml is named (load then says missing)."""
        monkeypatch.chdir(tmp_path)
        if Path("/etc/megane-crawler/config.toml").exists():
            pytest.skip("this machine has /etc/megane-crawler/config.toml")
        assert find_config(None) == Path("config.toml")
        assert find_config("") == Path("config.toml")


class TestLoadValid:
    """A valid file becomes frozen, typed settings."""

    def test_empty_file_gives_defaults(self, tmp_path: Path) -> None:
        """An empty file is valid: every setting has its default."""
        config = load_config(write(tmp_path, ""))
        assert config.daemon == dataclasses.replace(DaemonConfig(), data_dir=tmp_path / "data")
        assert config.http == HttpConfig()
        assert dict(config.thresholds) == {"nsfw": 0.8}
        assert config.quarantine.tags == ("nsfw",)
        assert config.quarantine.review_band is None
        assert config.sources == ()
        assert config.file_by_source_tags is True
        assert dict(config.tag_aliases) == {}

    @pytest.mark.parametrize(("line", "expected"), [
        ("", True), ("file_by_source_tags = true", True),
        ("file_by_source_tags = false", False),
    ])
    def test_file_by_source_tags(self, tmp_path: Path, line: str, expected: bool) -> None:
        """The [tag_aliases] policy key is on by default and is not read as a tag."""
        config = load_config(write(tmp_path, f"[tag_aliases]\n{line}\ncat = [\" Neko \"]\n"))
        assert config.file_by_source_tags is expected
        assert dict(config.tag_aliases) == {"cat": ("neko",)}

    def test_shipped_config_is_valid(self) -> None:
        """The repository's annotated config.toml loads without problems."""
        config = load_config(REPOSITORY / "config.toml")
        assert config.sources
        assert "nsfw" in config.thresholds

    def test_full_config(self, tmp_path: Path) -> None:
        """Every section is read into its typed field, with units normalised."""
        feed_dir = tmp_path / "inbox"
        feed_dir.mkdir()
        path = write(tmp_path, f"""\
            [daemon]
            data_dir = "state"
            log_format = "console"
            log_level = "debug"
            download_workers = 3
            shutdown_grace_s = 2

            [http]
            user_agent = "test/1.0 (me@example.org)"
            timeout_s = 7
            max_bytes = 2048
            allowed_private_hosts = ["LocalHost:8080", "[::1]:9000"]

            [images]
            formats = ["jpeg", "png"]

            [classifier]
            model = "v2.1-rc"
            engine = "litert"
            device = "cpu"
            batch_size = 8

            [thresholds]
            nsfw = 0.75
            megane = 1

            [quarantine]
            tags = ["nsfw"]
            trust_source_flags = false
            review_band = [0.4, 0.75]

            [tag_aliases]
            megane = ["Glasses", "メガネ"]

            [review]
            near_duplicate_distance = 4

            [[sources]]
            kind = "rss"
            name = "feed-1"
            url = "https://example.org/feed.xml"
            interval = "5m"

            [[sources]]
            kind = "folder"
            name = "inbox"
            path = "{feed_dir}"
            interval = 30
            max_interval = "1h"
            """)
        config = load_config(path)
        assert isinstance(config, Config)
        assert config.path == path
        assert config.data_dir == tmp_path / "state"
        assert config.daemon.log_format == "console"
        assert config.daemon.download_workers == 3
        assert config.daemon.shutdown_grace_s == 2.0
        assert isinstance(config.daemon.shutdown_grace_s, float)
        assert config.http.timeout_s == 7.0 and isinstance(config.http.timeout_s, float)
        assert config.http.allowed_private_hosts == frozenset({"localhost:8080", "[::1]:9000"})
        assert config.images.formats == ("JPEG", "PNG")
        assert config.classifier.model == "v2.1-rc"
        assert config.classifier.engine == "litert"
        assert dict(config.thresholds) == {"nsfw": 0.75, "megane": 1.0}
        assert config.quarantine.trust_source_flags is False
        assert config.quarantine.review_band == (0.4, 0.75)
        assert dict(config.tag_aliases) == {"megane": ("glasses", "メガネ")}
        assert dict(config.review) == {"near_duplicate_distance": 4}
        rss, folder = config.sources
        assert (rss.kind, rss.name, rss.interval_s) == ("rss", "feed-1", 300.0)
        assert rss.get("url") == "https://example.org/feed.xml"
        assert "kind" not in rss.settings and "interval" not in rss.settings
        assert rss.min_interval_s == 75.0 and rss.max_interval_s == 2400.0
        assert folder.interval_s == 30.0
        assert folder.min_interval_s == 30.0  # max(30/4, 30) capped at the interval
        assert folder.max_interval_s == 3600.0

    def test_settings_are_frozen(self, tmp_path: Path) -> None:
        """Settings objects and their mappings cannot be changed after loading."""
        config = load_config(write(tmp_path, "[thresholds]\nmegane = 0.6\n"))
        with pytest.raises(dataclasses.FrozenInstanceError):
            config.daemon.log_level = "debug"  # type: ignore[misc]
        with pytest.raises(TypeError):
            config.thresholds["nsfw"] = 0.1  # type: ignore[index]

    def test_relative_data_dir_is_relative_to_the_file(self, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
        """A relative data_dir is resolved against the config file's folder, not the cwd."""
        folder = tmp_path / "etc"
        folder.mkdir()
        monkeypatch.chdir(tmp_path)
        config = load_config(write(folder, '[daemon]\ndata_dir = "../var/data"\n'))
        assert config.data_dir == tmp_path / "var" / "data"

    def test_home_in_data_dir_is_expanded(self, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
        """`~` in data_dir means the home folder."""
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        config = load_config(write(tmp_path, '[daemon]\ndata_dir = "~/megane"\n'))
        assert config.data_dir == tmp_path / "home" / "megane"

    def test_empty_review_band_means_none(self, tmp_path: Path) -> None:
        """`review_band = []` turns the band off."""
        config = load_config(write(tmp_path, "[quarantine]\nreview_band = []\n"))
        assert config.quarantine.review_band is None

    def test_write_config_fixture_loads(self, write_config: object) -> None:
        """The shared write_config fixture produces a valid config."""
        config = write_config()  # type: ignore[operator]
        assert config.classifier.engine == "litert"


class TestProblems:
    """Each kind of mistake is reported with file:line and the dotted key."""

    @pytest.mark.parametrize(
        ("section", "line", "dotted", "message"),
        [
            ("daemon", "log_format = \"xml\"", "daemon.log_format",
             "must be one of json, console, auto"),
            ("daemon", "log_level = \"loud\"", "daemon.log_level", "must be one of"),
            ("daemon", "download_workers = 0", "daemon.download_workers", "must be at least 1"),
            ("daemon", "download_workers = 5000", "daemon.download_workers",
             "must be at most 1024"),
            ("daemon", "download_workers = \"4\"", "daemon.download_workers",
             "expected an integer, got '4'"),
            ("daemon", "download_workers = 4.5", "daemon.download_workers", "expected an integer"),
            ("daemon", "watchdog = \"yes\"", "daemon.watchdog", "expected true or false"),
            ("daemon", "queue_size = true", "daemon.queue_size", "got a boolean"),
            ("daemon", "data_dir = 5", "daemon.data_dir", "expected a string"),
            ("daemon", "metrics_port = 70000", "daemon.metrics_port", "must be at most 65535"),
            ("http", "timeout_s = 0", "http.timeout_s", "must be at least 0.1"),
            ("http", "timeout_s = nan", "http.timeout_s", "must be a finite number"),
            ("http", "per_host_rate = inf", "http.per_host_rate", "must be a finite number"),
            ("http", "max_bytes = 10", "http.max_bytes", "must be at least 1024"),
            ("http", "max_redirects = -1", "http.max_redirects", "must be at least 0"),
            ("http", "user_agent = \"  \"", "http.user_agent", "must not be empty"),
            ("http", "allowed_private_hosts = [\"localhost\"]", "http.allowed_private_hosts",
             "'localhost' is not host:port"),
            ("http", "allowed_private_hosts = \"127.0.0.1:80\"", "http.allowed_private_hosts",
             "expected an array of strings"),
            ("http", "allowed_private_hosts = [1]", "http.allowed_private_hosts",
             "expected an array of strings"),
            ("images", "max_width = 0", "images.max_width", "must be at least 1"),
            ("images", "formats = \"JPEG\"", "images.formats", "expected an array of strings"),
            ("classifier", "engine = \"cuda\"", "classifier.engine",
             "must be one of auto, tensorflow, litert"),
            ("classifier", "device = \"tpu\"", "classifier.device",
             "must be one of auto, cpu, gpu"),
            ("classifier", "model = \"../evil\"", "classifier.model",
             "is not a model version name"),
            ("classifier", "batch_size = 0", "classifier.batch_size", "must be at least 1"),
            ("thresholds", "nsfw = 1.5", "thresholds.nsfw", "must be between 0 and 1, got 1.5"),
            ("thresholds", "nsfw = -0.1", "thresholds.nsfw", "must be between 0 and 1"),
            ("thresholds", "nsfw = nan", "thresholds.nsfw", "must be between 0 and 1"),
            ("thresholds", "cat = \"high\"", "thresholds.cat", "expected a number between 0 and 1"),
            ("thresholds", "cat = true", "thresholds.cat", "expected a number between 0 and 1"),
            ("quarantine", "review_band = [0.8, 0.4]", "quarantine.review_band",
             "0 <= low < high <= 1"),
            ("quarantine", "review_band = [0.4]", "quarantine.review_band", "expected [low, high]"),
            ("quarantine", "review_band = [0.4, 1.2]", "quarantine.review_band",
             "expected [low, high]"),
            ("quarantine", "review_band = [0.4, nan]", "quarantine.review_band",
             "expected [low, high]"),
            ("quarantine", "review_band = [true, 0.5]", "quarantine.review_band",
             "expected [low, high]"),
            ("quarantine", "trust_source_flags = 1", "quarantine.trust_source_flags",
             "expected true or false"),
            ("quarantine", "tags = [\"gore\"]", "quarantine.tags", "tag 'gore' has no threshold"),
            ("tag_aliases", "megane = \"glasses\"", "tag_aliases.megane",
             "expected an array of strings"),
            ("tag_aliases", "file_by_source_tags = \"yes\"", "tag_aliases.file_by_source_tags",
             "expected true or false"),
            ("tag_aliases", "file_by_source_tags = [\"x\"]", "tag_aliases.file_by_source_tags",
             "this name is the policy key, not a tag"),
            ("training", "use_source_labels = 1", "training.use_source_labels", "expected bool"),
        ],
    )
    def test_one_bad_value(self, tmp_path: Path, section: str, line: str, dotted: str,
                           message: str) -> None:
        """A bad value is reported as `file:line: section.key: message`."""
        path = write(tmp_path, f"# a comment\n[{section}]\n{line}\n")
        problems = problems_of(path)
        assert len(problems) == 1, problems
        where = line_of(path, line) if dotted != "quarantine.tags" else line_of(path, "tags")
        assert problems[0].startswith(f"{path}:{where}: {dotted}: "), problems[0]
        assert message in problems[0]

    def test_unknown_key_lists_known_keys(self, tmp_path: Path) -> None:
        """A misspelt key is named with its line and the keys that are known."""
        path = write(tmp_path, "[http]\ntimeout_s = 3\ntimeout = 3\n")
        (problem,) = problems_of(path)
        assert problem.startswith(f"{path}:3: http.timeout: unknown key; known keys are: ")
        assert "timeout_s" in problem and "max_bytes" in problem

    @pytest.mark.parametrize("section", ["daemon", "http", "images", "classifier", "quarantine"])
    def test_unknown_key_in_each_checked_section(self, tmp_path: Path, section: str) -> None:
        """Every section with fixed keys refuses unknown ones."""
        path = write(tmp_path, f"[{section}]\nnot_a_key = 1\n")
        (problem,) = problems_of(path)
        assert problem.startswith(f"{path}:2: {section}.not_a_key: unknown key")

    def test_unknown_section(self, tmp_path: Path) -> None:
        """A misspelt section header is named with its own line."""
        path = write(tmp_path, "[daemon]\nlog_level = \"info\"\n\n[deamon]\nx = 1\n")
        (problem,) = problems_of(path)
        assert problem.startswith(f"{path}:4: deamon: unknown section; known sections are: ")

    def test_top_level_key_is_not_called_a_section(self, tmp_path: Path) -> None:
        """A key above every header (a forgotten `[daemon]`) is named as a key, with its line."""
        path = write(tmp_path, "# settings\nlog_level = \"debug\"\n[http]\ntimeout_s = 3\n")
        (problem,) = problems_of(path)
        assert problem.startswith(f"{path}:2: log_level: unknown top-level key")

    @pytest.mark.parametrize(
        ("text", "dotted", "message"),
        [
            ("daemon = 5\n", "daemon", "must be a table"),
            ("thresholds = [1]\n", "thresholds", "must be a table"),
            ("sources = 5\n", "sources", "must be an array of tables"),
            ("[sources]\nkind = \"rss\"\n", "sources", "must be an array of tables"),
        ],
    )
    def test_section_of_the_wrong_shape(self, tmp_path: Path, text: str, dotted: str,
                                        message: str) -> None:
        """A section that is not a table (or sources not an array of tables) is a problem."""
        problems = problems_of(write(tmp_path, text))
        assert any(f" {dotted}: {message}" in problem for problem in problems), problems

    def test_every_problem_at_once(self, tmp_path: Path) -> None:
        """Problems in many sections are all reported in one error, each with its own line."""
        path = write(tmp_path, """\
            [daemon]
            log_format = "xml"
            bogus = 1

            [http]
            max_bytes = 1

            [classifier]
            engine = "cuda"

            [thresholds]
            nsfw = 2

            [quarantine]
            review_band = [0.9, 0.1]

            [[sources]]
            kind = "rss"
            name = "a"
            url = "ftp://example.org/feed"
            """)
        problems = problems_of(path)
        expected = {
            "daemon.log_format": line_of(path, "log_format"),
            "daemon.bogus": line_of(path, "bogus"),
            "http.max_bytes": line_of(path, "max_bytes"),
            "classifier.engine": line_of(path, "engine"),
            "thresholds.nsfw": line_of(path, "nsfw = 2"),
            "quarantine.review_band": line_of(path, "review_band"),
            "sources[0].url": line_of(path, "ftp://"),
        }
        assert len(problems) == len(expected), problems
        for dotted, line in expected.items():
            assert any(problem.startswith(f"{path}:{line}: {dotted}: ") for problem in problems), \
                (dotted, problems)

    def test_error_message_lists_every_problem(self, tmp_path: Path) -> None:
        """str(ConfigError) counts the problems and lists each on its own line."""
        path = write(tmp_path, "[daemon]\nlog_format = \"xml\"\nlog_level = \"loud\"\n")
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        text = str(caught.value)
        assert text.startswith(f"{path}: 2 problem(s):")
        assert "daemon.log_format" in text and "daemon.log_level" in text
        assert caught.value.path == str(path)

    def test_mapping_without_text_has_no_lines(self, tmp_path: Path) -> None:
        """config_from_mapping without the file text names the file and key, no line."""
        with pytest.raises(ConfigError) as caught:
            config_from_mapping({"http": {"timeout_s": -1}}, tmp_path / "c.toml")
        assert caught.value.problems == [
            f"{tmp_path / 'c.toml'}: http.timeout_s: must be at least 0.1, got -1.0"
        ]

    def test_mapping_valid(self, tmp_path: Path) -> None:
        """config_from_mapping accepts an already parsed document."""
        config = config_from_mapping({"thresholds": {"cat": 0.3}}, tmp_path / "c.toml")
        assert config.thresholds["cat"] == 0.3


class TestFileProblems:
    """Problems reading the file itself."""

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file says so and how to fix it."""
        (problem,) = problems_of(tmp_path / "absent.toml")
        assert problem.startswith(f"{tmp_path / 'absent.toml'}: file not found")
        assert "--config" in problem

    def test_invalid_toml(self, tmp_path: Path) -> None:
        """A TOML syntax error names the file and the parser's line."""
        path = write(tmp_path, "[daemon]\nlog_level = \n")
        (problem,) = problems_of(path)
        assert problem.startswith(f"{path}: not valid TOML: ")
        assert "line 2" in problem

    def test_not_utf8(self, tmp_path: Path) -> None:
        """A file that is not UTF-8 is a readable problem, not a traceback."""
        path = tmp_path / "config.toml"
        path.write_bytes(b"[daemon]\nlog_level = \"\xff\xfe\"\n")
        (problem,) = problems_of(path)
        assert problem.startswith(f"{path}: cannot read")

    def test_a_folder_is_not_a_config(self, tmp_path: Path) -> None:
        """A folder given as the config is a readable problem."""
        (problem,) = problems_of(tmp_path)
        assert problem.startswith(f"{tmp_path}: cannot read")


class TestSources:
    """`[[sources]]` tables: common keys here, kind keys by the kind's own validate()."""

    def test_problems_name_the_index_and_line(self, tmp_path: Path) -> None:
        """A problem in the second source names sources[1] and the line in that table."""
        path = write(tmp_path, """\
            [[sources]]
            kind = "rss"
            name = "one"
            url = "https://example.org/a.xml"

            [[sources]]
            kind = "rss"
            name = "two"
            url = "gopher://example.org/b"
            """)
        (problem,) = problems_of(path)
        assert problem.startswith(f"{path}:9: sources[1].url: must be an http(s) URL")

    def test_missing_key_points_at_the_table_header(self, tmp_path: Path) -> None:
        """A required key that is absent is reported at its `[[sources]]` header line."""
        path = write(tmp_path, """\
            [[sources]]
            kind = "rss"
            name = "one"
            url = "https://example.org/a.xml"

            [[sources]]
            kind = "rss"
            name = "two"
            """)
        (problem,) = problems_of(path)
        assert problem.startswith(f"{path}:6: sources[1].url: required")

    @pytest.mark.parametrize(
        ("body", "dotted", "message"),
        [
            ('kind = "ftp"\nname = "a"', "sources[0].kind", "must be one of mastodon, bluesky"),
            ('name = "a"', "sources[0].kind", "must be one of"),
            ('kind = "rss"\nurl = "https://e.org/f"', "sources[0].name", "required"),
            ('kind = "rss"\nname = "has space"\nurl = "https://e.org/f"', "sources[0].name",
             "required"),
            ('kind = "rss"\nname = "a"\nurl = "https://e.org/f"\ninterval = "5 fortnights"',
             "sources[0].interval", "expected a duration"),
            ('kind = "rss"\nname = "a"\nurl = "https://e.org/f"\ninterval = 0',
             "sources[0].interval", "must be positive"),
            ('kind = "rss"\nname = "a"\nurl = "https://e.org/f"\nmin_interval = "x"',
             "sources[0].min_interval", "expected a duration"),
            ('kind = "rss"\nname = "a"\nurl = "https://e.org/f"\nurll = "x"',
             "sources[0].urll", "unknown key for an rss source"),
            ('kind = "rss"\nname = "a"', "sources[0].url", "required"),
            ('kind = "folder"\nname = "a"\npath = "relative/dir"', "sources[0].path",
             "must be an absolute path"),
            ('kind = "folder"\nname = "a"\npath = "/nonexistent/megane/inbox"', "sources[0].path",
             "does not exist"),
            ('kind = "folder"\nname = "a"', "sources[0].path", "required"),
            ('kind = "mastodon"\nname = "a"\nhashtag = "megane"',
             "sources[0].instance", "required"),
            ('kind = "mastodon"\nname = "a"\ninstance = "https://m.example"\nhashtag = "a"\n'
             'timeline = "public"', "sources[0].timeline", "give exactly one of"),
            ('kind = "mastodon"\nname = "a"\ninstance = "https://m.example"\ntimeline = "home"',
             "sources[0].timeline", "must be \"public\" or \"local\""),
        ],
    )
    def test_source_problems(self, tmp_path: Path, body: str, dotted: str, message: str) -> None:
        """Common and kind-specific source keys are validated and named by index."""
        path = write(tmp_path, "[[sources]]\n" + body + "\n")
        problems = problems_of(path)
        matching = [problem for problem in problems if f": {dotted}: " in problem]
        assert matching, problems
        assert message in matching[0]
        assert matching[0].startswith(f"{path}:")

    def test_duplicate_names(self, tmp_path: Path) -> None:
        """Two sources with one name: the second is named as the problem."""
        path = write(tmp_path, """\
            [[sources]]
            kind = "rss"
            name = "same"
            url = "https://example.org/a.xml"

            [[sources]]
            kind = "rss"
            name = "same"
            url = "https://example.org/b.xml"
            """)
        (problem,) = problems_of(path)
        assert problem.startswith(f"{path}:8: sources[1].name: 'same' is used by another source")

    def test_several_source_problems_together(self, tmp_path: Path) -> None:
        """Problems in several sources and sections all come back in one error."""
        path = write(tmp_path, """\
            [http]
            timeout_s = -5

            [[sources]]
            kind = "rss"
            name = "one"

            [[sources]]
            kind = "nope"
            name = "two"
            """)
        problems = problems_of(path)
        assert len(problems) == 3, problems
        assert any(": http.timeout_s: " in problem for problem in problems)
        assert any(": sources[0].url: " in problem for problem in problems)
        assert any(problem.startswith(f"{path}:9: sources[1].kind: ") for problem in problems)

    def test_default_intervals(self, tmp_path: Path) -> None:
        """Without `interval` a source polls every 600 s, backing off up to 8x."""
        path = write(tmp_path, """\
            [[sources]]
            kind = "rss"
            name = "one"
            url = "https://example.org/a.xml"
            """)
        (source,) = load_config(path).sources
        assert source.interval_s == 600.0
        assert source.min_interval_s == 150.0
        assert source.max_interval_s == 4800.0
        assert math.isfinite(source.max_interval_s)

    @pytest.mark.parametrize(
        ("bounds", "expected"),
        [
            ('interval = "10s"', (10.0, 10.0, 80.0)),
            ('interval = "10m"\nmin_interval = "10m"\nmax_interval = "10m"', (600.0, 600.0, 600.0)),
            ('interval = "5m"\nmin_interval = "1m"\nmax_interval = "1h"', (300.0, 60.0, 3600.0)),
            ('min_interval = "10m"\nmax_interval = "2h"', (600.0, 600.0, 7200.0)),
        ],
    )
    def test_interval_bounds_in_order_load(
        self, tmp_path: Path, bounds: str, expected: tuple[float, float, float]
    ) -> None:
        """Bounds in order (min <= interval <= max) load; a default minimum is capped."""
        path = write(tmp_path, '[[sources]]\nkind = "rss"\nname = "one"\n'
                               f'url = "https://example.org/a.xml"\n{bounds}\n')
        (source,) = load_config(path).sources
        assert (source.interval_s, source.min_interval_s, source.max_interval_s) == expected


RSS_KEYS = "interval, kind, max_interval, min_interval, name, url"
IMAGE_FORMATS = "JPEG, PNG, GIF, WEBP, BMP, TIFF, ICO, AVIF, HEIF, JPEG2000, JXL, QOI, PSD"
MASTODON_KEYS = ("access_token, account, backfill, hashtag, instance, interval, kind, list, "
                 "max_interval, min_interval, name, only_media, timeline")


class TestEveryProblemListed:
    """`megane check-config` lists every problem of a file, cross-key ones included."""

    @pytest.mark.parametrize(
        ("toml", "expected"),
        [
            pytest.param("""\
                [[sources]]
                kind = "rss"
                name = "c"
                url = "https://example.org/a.xml"

                [[sources]]
                kind = "rss"
                name = "c"
                url = "ftp://x"
                interval = "5 minutes"
                bogus_key = 1
                """, [
                (8, "sources[1].name",
                 "'c' is used by another source; give each source its own name"),
                (10, "sources[1].interval",
                 "expected a duration such as 300 or \"5m\", got '5 minutes'"),
                (11, "sources[1].bogus_key", f"unknown key for an rss source (known: {RSS_KEYS})"),
                (9, "sources[1].url", "must be an http(s) URL, got 'ftp://x'"),
            ], id="duplicate-name-hides-nothing"),
            pytest.param("""\
                [[sources]]
                kind = "ftp"
                name = "has space"
                interval = 0
                """, [
                (2, "sources[0].kind",
                 "must be one of mastodon, bluesky, booru, rss, folder; got 'ftp'"),
                (3, "sources[0].name",
                 "required: a short name of letters, digits, '.', '_' or '-'"),
                (4, "sources[0].interval", "a duration must be positive, got 0"),
            ], id="bad-kind-and-name-hide-nothing"),
            pytest.param("""\
                [[sources]]
                kind = "rss"
                name = "a"
                url = "https://example.org/a.xml"
                min_interval = "1h"
                max_interval = "1m"
                """, [
                (5, "sources[0].min_interval", "'1h' is longer than max_interval '1m'; "
                 "make min_interval <= interval <= max_interval"),
            ], id="min-over-max"),
            pytest.param("""\
                [[sources]]
                kind = "rss"
                name = "a"
                url = "https://example.org/a.xml"
                interval = "30s"
                min_interval = "10m"
                """, [
                (6, "sources[0].min_interval", "'10m' is longer than interval ('30s'); "
                 "make min_interval <= interval, or raise interval"),
            ], id="min-over-interval"),
            pytest.param("""\
                [[sources]]
                kind = "rss"
                name = "a"
                url = "https://example.org/a.xml"
                min_interval = "1h"
                """, [
                (5, "sources[0].min_interval", "'1h' is longer than interval (600s by default); "
                 "make min_interval <= interval, or raise interval"),
            ], id="min-over-default-interval"),
            pytest.param("""\
                [[sources]]
                kind = "rss"
                name = "a"
                url = "https://example.org/a.xml"
                interval = "1h"
                max_interval = "10m"
                """, [
                (6, "sources[0].max_interval", "'10m' is shorter than interval ('1h'); "
                 "make max_interval >= interval, or lower interval"),
            ], id="max-under-interval"),
            pytest.param("""\
                [[sources]]
                kind = "mastodon"
                name = "m"
                instance = "https://m.example"
                hashtag = "megane"
                url = "https://m.example/tags/megane.rss"
                """, [
                (6, "sources[0].url",
                 f"unknown key for a mastodon source (known: {MASTODON_KEYS})"),
            ], id="mastodon-known-keys-complete"),
            pytest.param("""\
                [http]
                max_connections = 2
                per_host_connections = 8
                """, [
                (3, "http.per_host_connections",
                 "8 is more than max_connections (2); lower per_host_connections or raise "
                 "max_connections"),
            ], id="per-host-over-total"),
            pytest.param("""\
                [http]
                max_connections = 0
                per_host_connections = 40
                """, [
                (2, "http.max_connections", "must be at least 1, got 0"),
            ], id="no-cross-check-on-a-rejected-value"),
            pytest.param("""\
                [thresholds]
                nsfw = 0.7

                [quarantine]
                review_band = [0.75, 0.9]
                """, [
                (5, "quarantine.review_band", "[0.75, 0.9] starts at or above thresholds.nsfw "
                 "(0.7), so it never applies; make its low end lower than 0.7"),
            ], id="review-band-above-threshold"),
            pytest.param("""\
                [images]
                formats = ["jpg", "PNG", "WebP", "heic"]
                """, [
                (2, "images.formats", f"'{name}' is not an image format name; use Pillow's "
                 f"names: {IMAGE_FORMATS} (or another Pillow format)")
                for name in ("jpg", "heic")
            ], id="unknown-image-formats"),
            pytest.param("""\
                [images]
                formats = []
                """, [
                (2, "images.formats", "must list at least one format, e.g. [\"JPEG\", \"PNG\"]; "
                 "with none every image would be refused"),
            ], id="no-image-formats"),
            pytest.param("""\
                [training]
                epoch = 3

                [review]
                page = 1
                """, [
                (5, "review.page", "unknown key (known: blur_radius, login_backoff_s, "
                 "near_duplicate_distance, page_size, session_idle_s)"),
                (2, "training.epoch", "unknown key; known keys are: balance, batch_size, epochs, "
                 "feature_batch_size, holdout_fraction, l2, learning_rate, min_negatives, "
                 "min_positives, mining_rounds, negative_ratio, nsfw_min_recall, seed, "
                 "source_label_weight, target_precision, use_source_labels"),
            ], id="review-and-training-unknown-keys-with-line-and-known-list"),
            pytest.param("""\
                [daemon]
                download_workers = 0

                [http]
                max_connections = 0
                per_host_rate = 0
                max_bytes = -1

                [classifier]
                batch_size = 0

                [thresholds]
                nsfw = 1.5
                megane = -0.1

                [quarantine]
                review_band = [0.9, 0.2]

                [review]
                page_size = 0

                [training]
                feature_batch_size = 0
                """, [
                (2, "daemon.download_workers", "must be at least 1, got 0"),
                (5, "http.max_connections", "must be at least 1, got 0"),
                (6, "http.per_host_rate", "must be at least 0.01, got 0.0"),
                (7, "http.max_bytes", "must be at least 1024, got -1"),
                (10, "classifier.batch_size", "must be at least 1, got 0"),
                (13, "thresholds.nsfw", "must be between 0 and 1, got 1.5"),
                (14, "thresholds.megane", "must be between 0 and 1, got -0.1"),
                (17, "quarantine.review_band",
                 "expected [low, high] with 0 <= low < high <= 1, got [0.9, 0.2]"),
                (20, "review.page_size", "an integer from 1 to 1000, got 0"),
                (23, "training.feature_batch_size", "at least 1"),
            ], id="every-section-at-once"),
        ],
    )
    def test_check_config_lists_every_problem(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str,
        expected: list[tuple[int, str, str]],
    ) -> None:
        """check-config exits 1 and prints exactly these problems, each with file:line and key."""
        from crawler.cli import main

        path = write(tmp_path, toml)
        assert main(["check-config", "--config", str(path)]) == 1
        err = capsys.readouterr().err
        printed = [line.removeprefix("  - ") for line in err.splitlines()
                   if line.startswith("  - ")]
        assert printed == [f"{path}:{line}: {dotted}: {message}"
                           for line, dotted, message in expected]
        assert f"{len(expected)} problem(s)" in err
