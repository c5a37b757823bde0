"""Which thresholds something can produce, and `megane check-config`'s warnings about the rest."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from classifier.models import write_model_version
from crawler.cli import main
from crawler.config import Config
from crawler.promotion import ActiveModel, write_active
from crawler.tag_coverage import tag_coverage
from storage.placement import DataLayout


class TestTagCoverage:
    @pytest.mark.parametrize(
        ("model_tags", "aliases", "file_by_source_tags", "expected"),
        [
            (("nsfw",), {}, True, {"nsfw": ("head",), "megane": (), "cat": ()}),
            (("nsfw",), {"megane": ("glasses",)}, True,
             {"nsfw": ("head",), "megane": ("source_tags",), "cat": ()}),
            (("nsfw", "megane"), {"megane": ("glasses",)}, True,
             {"nsfw": ("head",), "megane": ("head", "source_tags"), "cat": ()}),
            (("nsfw",), {"megane": ("glasses",)}, False,
             {"nsfw": ("head",), "megane": (), "cat": ()}),
            (("nsfw", "cat"), {"megane": ()}, True,
             {"nsfw": ("head",), "megane": (), "cat": ("head",)}),
        ],
    )
    def test_coverage(self, model_tags: tuple[str, ...], aliases: dict[str, tuple[str, ...]],
                      file_by_source_tags: bool,
                      expected: dict[str, tuple[str, ...]]) -> None:
        """A tag is produced by a head of the model, by aliases (when on), both, or nothing."""
        thresholds = {"nsfw": 0.8, "megane": 0.6, "cat": 0.6}
        assert tag_coverage(thresholds, model_tags, aliases, file_by_source_tags) == expected


CONFIG = """
    [thresholds]
    nsfw = 0.8
    megane = 0.6
    cat = 0.6

    [tag_aliases]
    megane = ["glasses"]
    """


class TestCheckConfig:
    def test_warns_about_thresholds_nothing_produces(
        self, write_config: Callable[..., Config], capfd: pytest.CaptureFixture[str]
    ) -> None:
        """`cat` has neither a head nor aliases: a warning naming file:line, and exit 0."""
        config = write_config(CONFIG)
        assert main(["check-config", "--config", str(config.path)]) == 0
        captured = capfd.readouterr()
        assert ": ok;" in captured.out
        line = config.path.read_text().splitlines().index("cat = 0.6") + 1
        [warning] = captured.err.strip().splitlines()
        assert warning.startswith(f"warning: {config.path}:{line}: thresholds.cat: ")
        assert "model 'builtin' has no 'cat' head" in warning and "[tag_aliases]" in warning

    def test_policy_off_makes_aliases_produce_nothing(
        self, write_config: Callable[..., Config], capfd: pytest.CaptureFixture[str]
    ) -> None:
        """With file_by_source_tags = false, aliased tags are warned about too."""
        config = write_config(CONFIG.replace('megane = ["glasses"]',
                                             'megane = ["glasses"]\nfile_by_source_tags = false'))
        assert main(["check-config", "--config", str(config.path)]) == 0
        err = capfd.readouterr().err
        assert "thresholds.megane" in err and "file_by_source_tags is off" in err
        assert "thresholds.cat" in err

    def test_a_promoted_head_silences_the_warning(
        self, write_config: Callable[..., Config], capfd: pytest.CaptureFixture[str]
    ) -> None:
        """A version with a cat head, active in models/ACTIVE, produces cat: no warning."""
        config = write_config(CONFIG)
        models = DataLayout(config.data_dir).models
        weights = np.random.default_rng(1).normal(0, 0.02, 1024).astype(np.float32)
        write_model_version(models, "v1", {"cat": (weights, 0.0)}, {})
        write_active(models, ActiveModel("v1", "2026-01-01T00:00:00+00:00"))
        assert main(["check-config", "--config", str(config.path)]) == 0
        assert capfd.readouterr().err == ""

    def test_unknown_active_model_is_an_error(
        self, write_config: Callable[..., Config], capfd: pytest.CaptureFixture[str]
    ) -> None:
        """An active version missing from the registry is a config error naming it (exit 1)."""
        config = write_config(CONFIG)
        write_active(DataLayout(config.data_dir).models,
                     ActiveModel("v9", "2026-01-01T00:00:00+00:00"))
        assert main(["check-config", "--config", str(config.path)]) == 1
        captured = capfd.readouterr()
        assert "v9" in captured.out + captured.err
