"""The placement decision: a pure function of scores, source flags and tags, labels and policy.

Big parametrize tables, no I/O (STYLE §2): each row is one case a reviewer can read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np
import pytest

from crawler.decide import DEFAULT_TAG_THRESHOLD, Decision, Policy, decide, policy_from_config
from storage.records import Placement

LIBRARY, QUARANTINE, HELD = Placement.LIBRARY, Placement.QUARANTINE, Placement.HELD


def policy(
    thresholds: Mapping[str, float] | None = None,
    *,
    quarantine_tags: tuple[str, ...] = ("nsfw",),
    trust: bool = True,
    band: tuple[float, float] | None = None,
) -> Policy:
    """A Policy with nsfw=0.8 and megane=0.6 unless told otherwise."""
    return Policy(
        thresholds=MappingProxyType(dict(thresholds or {"nsfw": 0.8, "megane": 0.6})),
        quarantine_tags=quarantine_tags,
        trust_source_flags=trust,
        review_band=band,
    )


class TestThresholds:
    """A quarantine tag's score against its threshold."""

    @pytest.mark.parametrize(
        ("nsfw", "placement", "reason_start"),
        [
            (0.0, LIBRARY, "clean: nsfw=0.000 < 0.80"),
            (0.5, LIBRARY, "clean: nsfw=0.500 < 0.80"),
            (0.79, LIBRARY, "clean: nsfw=0.790 < 0.80"),
            (0.8, QUARANTINE, "score: nsfw=0.800 >= 0.80"),
            (0.81, QUARANTINE, "score: nsfw=0.810 >= 0.80"),
            (1.0, QUARANTINE, "score: nsfw=1.000 >= 0.80"),
        ],
    )
    def test_nsfw_at_below_above(self, nsfw: float, placement: Placement,
                                 reason_start: str) -> None:
        """Scores below the threshold go to the library; at or above, to quarantine."""
        decision = decide({"nsfw": nsfw}, (), policy())
        assert decision.placement is placement
        assert decision.reason.startswith(reason_start)

    def test_just_below_threshold_is_clean(self) -> None:
        """The comparison is `>=` on the exact float, not on the rounded one."""
        below = math.nextafter(0.8, 0.0)
        assert decide({"nsfw": below}, (), policy()).placement is LIBRARY
        assert decide({"nsfw": 0.8}, (), policy()).placement is QUARANTINE

    @pytest.mark.parametrize(
        ("threshold", "score", "placement"),
        [
            (0.0, 0.0, QUARANTINE),
            (1.0, 0.999, LIBRARY),
            (1.0, 1.0, QUARANTINE),
            (0.3, 0.3, QUARANTINE),
            (0.3, 0.299, LIBRARY),
        ],
    )
    def test_threshold_extremes(self, threshold: float, score: float,
                                placement: Placement) -> None:
        """Thresholds of 0 and 1 and in between apply with `>=`."""
        assert decide({"nsfw": score}, (), policy({"nsfw": threshold})).placement is placement

    def test_quarantined_image_has_no_library_tags(self) -> None:
        """A quarantined image carries no library tags, however high its tag scores."""
        decision = decide({"nsfw": 0.95, "megane": 0.99}, (), policy())
        assert decision == Decision(QUARANTINE, (), "score: nsfw=0.950 >= 0.80")

    def test_quarantine_tag_without_threshold_uses_default(self) -> None:
        """A quarantine tag with no threshold of its own uses 0.5."""
        rules = policy({"nsfw": 0.8}, quarantine_tags=("nsfw", "gore"))
        assert decide({"nsfw": 0.1, "gore": 0.5}, (), rules).placement is QUARANTINE
        assert decide({"nsfw": 0.1, "gore": 0.49}, (), rules).placement is LIBRARY

    @pytest.mark.parametrize(
        ("scores", "placement", "reason_start"),
        [
            ({"nsfw": 0.1, "gore": 0.1}, LIBRARY, "clean: nsfw=0.100 < 0.80, gore=0.100 < 0.70"),
            ({"nsfw": 0.9, "gore": 0.1}, QUARANTINE, "score: nsfw=0.900 >= 0.80"),
            ({"nsfw": 0.1, "gore": 0.7}, QUARANTINE, "score: gore=0.700 >= 0.70"),
            ({"nsfw": 0.9, "gore": 0.9}, QUARANTINE, "score: nsfw=0.900 >= 0.80"),
        ],
    )
    def test_several_quarantine_tags(self, scores: dict[str, float], placement: Placement,
                                     reason_start: str) -> None:
        """Any quarantine tag over its threshold quarantines; the first in policy order is named."""
        rules = policy({"nsfw": 0.8, "gore": 0.7}, quarantine_tags=("nsfw", "gore"))
        decision = decide(scores, (), rules)
        assert decision.placement is placement
        assert decision.reason.startswith(reason_start)


class TestLibraryTags:
    """The tag folders a clean image is filed under."""

    @pytest.mark.parametrize(
        ("scores", "tags"),
        [
            ({"nsfw": 0.1}, ()),
            ({"nsfw": 0.1, "megane": 0.59}, ()),
            ({"nsfw": 0.1, "megane": 0.6}, ("megane",)),
            ({"nsfw": 0.1, "megane": 0.61}, ("megane",)),
            ({"nsfw": 0.1, "megane": 0.9, "cat": 0.5, "food": 0.49}, ("cat", "megane")),
            ({"nsfw": 0.1, "zebra": 0.9, "cat": 0.9, "megane": 0.9}, ("cat", "megane", "zebra")),
        ],
    )
    def test_tags_over_threshold_sorted(self, scores: dict[str, float],
                                        tags: tuple[str, ...]) -> None:
        """Every non-quarantine tag at or over its threshold is a tag, sorted by name."""
        decision = decide(scores, (), policy())
        assert decision.placement is LIBRARY
        assert decision.tags == tags

    @pytest.mark.parametrize(("score", "tagged"), [(0.5, True), (0.4999, False), (0.51, True)])
    def test_tag_without_threshold_uses_half(self, score: float, tagged: bool) -> None:
        """A tag with no `[thresholds]` entry uses 0.5."""
        assert DEFAULT_TAG_THRESHOLD == 0.5
        decision = decide({"nsfw": 0.0, "cat": score}, (), policy())
        assert ("cat" in decision.tags) is tagged

    def test_reason_names_each_tag_score(self) -> None:
        """The reason lists the quarantine check and each tag's score."""
        decision = decide({"nsfw": 0.2, "megane": 0.75, "cat": 0.55}, (), policy())
        assert decision.reason == "clean: nsfw=0.200 < 0.80; tags: cat=0.550, megane=0.750"

    def test_untagged_reason_has_no_tag_part(self) -> None:
        """An image with no tag over threshold has only the clean part in its reason."""
        assert decide({"nsfw": 0.2, "megane": 0.1}, (), policy()).reason == \
            "clean: nsfw=0.200 < 0.80"


class TestReviewBand:
    """Scores inside the review band go to quarantine as `uncertain`."""

    @pytest.mark.parametrize(
        ("nsfw", "placement", "reason_start"),
        [
            (0.0, LIBRARY, "clean:"),
            (0.39, LIBRARY, "clean:"),
            (math.nextafter(0.4, 0.0), LIBRARY, "clean:"),
            (0.4, QUARANTINE, "uncertain: nsfw=0.400 in review band [0.40, 0.80)"),
            (0.6, QUARANTINE, "uncertain: nsfw=0.600 in review band [0.40, 0.80)"),
            (0.79, QUARANTINE, "uncertain: nsfw=0.790 in review band [0.40, 0.80)"),
            (0.8, QUARANTINE, "score: nsfw=0.800 >= 0.80"),
            (0.95, QUARANTINE, "score: nsfw=0.950 >= 0.80"),
        ],
    )
    def test_band_edges(self, nsfw: float, placement: Placement, reason_start: str) -> None:
        """The band is [low, high): low is inside, high is the threshold's business."""
        decision = decide({"nsfw": nsfw, "megane": 0.9}, (), policy(band=(0.4, 0.8)))
        assert decision.placement is placement
        assert decision.reason.startswith(reason_start)
        assert decision.tags == (("megane",) if placement is LIBRARY else ())

    def test_threshold_wins_inside_a_wide_band(self) -> None:
        """A score over the threshold is `score`, even when the band reaches higher."""
        decision = decide({"nsfw": 0.75}, (), policy({"nsfw": 0.7}, band=(0.3, 0.9)))
        assert decision.reason == "score: nsfw=0.750 >= 0.70"

    def test_no_band_means_no_uncertain(self) -> None:
        """Without a review band a mid score is simply clean."""
        assert decide({"nsfw": 0.6}, (), policy()).placement is LIBRARY

    def test_band_applies_to_every_quarantine_tag(self) -> None:
        """A second quarantine tag inside the band is uncertain too."""
        rules = policy({"nsfw": 0.8, "gore": 0.8}, quarantine_tags=("nsfw", "gore"),
                       band=(0.4, 0.8))
        decision = decide({"nsfw": 0.1, "gore": 0.5}, (), rules)
        assert decision.placement is QUARANTINE
        assert decision.reason.startswith("uncertain: gore=0.500")


class TestSourceFlags:
    """A source's own NSFW signals, trusted or not."""

    @pytest.mark.parametrize(
        ("flags", "trust", "nsfw", "placement", "reason"),
        [
            (("mastodon:sensitive",), True, 0.0, QUARANTINE, "source_flag: mastodon:sensitive"),
            (("mastodon:sensitive",), False, 0.0, LIBRARY, "clean: nsfw=0.000 < 0.80"),
            (("mastodon:sensitive",), False, 0.9, QUARANTINE, "score: nsfw=0.900 >= 0.80"),
            ((), True, 0.0, LIBRARY, "clean: nsfw=0.000 < 0.80"),
            (("rss:rating:adult", "booru:rating:e"), True, 0.0, QUARANTINE,
             "source_flag: booru:rating:e"),
            (("booru:rating:e",), True, 0.99, QUARANTINE, "source_flag: booru:rating:e"),
        ],
    )
    def test_trusted_and_untrusted_flags(self, flags: tuple[str, ...], trust: bool, nsfw: float,
                                         placement: Placement, reason: str) -> None:
        """A trusted flag quarantines (named in the reason); an untrusted one is ignored."""
        decision = decide({"nsfw": nsfw}, flags, policy(trust=trust))
        assert decision.placement is placement
        assert decision.reason == reason

    def test_trusted_flag_quarantines_even_without_scores_for_tags(self) -> None:
        """A trusted flag decides before the quarantine tag's score is looked at."""
        assert decide({"megane": 0.9}, ("mastodon:sensitive",), policy()).placement is QUARANTINE

    def test_flags_accept_any_sequence(self) -> None:
        """Flags may be a list as well as a tuple."""
        assert decide({"nsfw": 0.0}, ["x:flag"], policy()).reason == "source_flag: x:flag"


class TestHumanLabels:
    """A reviewer's label overrides the model and the source, both ways."""

    @pytest.mark.parametrize(
        ("nsfw", "flags", "labels", "placement", "reason_start"),
        [
            (0.0, (), {"nsfw": True}, QUARANTINE, "human_label: nsfw=yes"),
            (0.99, (), {"nsfw": False}, LIBRARY, "human_label: nsfw=no"),
            (0.0, ("mastodon:sensitive",), {"nsfw": False}, LIBRARY, "human_label: nsfw=no"),
            (0.0, ("mastodon:sensitive",), {"nsfw": True}, QUARANTINE, "human_label: nsfw=yes"),
            (0.6, (), {"nsfw": False}, LIBRARY, "human_label: nsfw=no"),
            (0.9, (), {"megane": True}, QUARANTINE, "score: nsfw=0.900"),
        ],
    )
    def test_labels_override_model_and_flags(
        self, nsfw: float, flags: tuple[str, ...], labels: dict[str, bool],
        placement: Placement, reason_start: str,
    ) -> None:
        """nsfw=yes quarantines a clean image; nsfw=no releases a flagged or high-scored one."""
        decision = decide({"nsfw": nsfw}, flags, policy(band=(0.4, 0.8)), labels)
        assert decision.placement is placement
        assert decision.reason.startswith(reason_start)

    def test_release_requires_every_quarantine_tag(self) -> None:
        """Releasing nsfw alone does not release an image that gore quarantines."""
        rules = policy({"nsfw": 0.8, "gore": 0.5}, quarantine_tags=("nsfw", "gore"))
        decision = decide({"nsfw": 0.9, "gore": 0.9}, (), rules, {"nsfw": False})
        assert decision == Decision(QUARANTINE, (), "score: nsfw=0.900 >= 0.80")
        released = decide({"nsfw": 0.9, "gore": 0.9}, (), rules, {"nsfw": False, "gore": False})
        assert released.placement is LIBRARY
        assert released.reason == "human_label: nsfw=no, gore=no"

    def test_confirm_of_any_quarantine_tag_quarantines(self) -> None:
        """A yes label on any quarantine tag quarantines, naming that tag."""
        rules = policy({"nsfw": 0.8, "gore": 0.5}, quarantine_tags=("nsfw", "gore"))
        decision = decide({"nsfw": 0.0, "gore": 0.0}, (), rules, {"nsfw": False, "gore": True})
        assert decision == Decision(QUARANTINE, (), "human_label: gore=yes")

    @pytest.mark.parametrize(
        ("scores", "labels", "tags", "reason_tail"),
        [
            ({"nsfw": 0.1, "megane": 0.1}, {"megane": True}, ("megane",), "; tags: megane=0.100"),
            ({"nsfw": 0.1}, {"cat": True}, ("cat",), "; tags: cat=label"),
            ({"nsfw": 0.1, "megane": 0.9}, {"megane": False}, (), ""),
            ({"nsfw": 0.1, "megane": 0.9, "cat": 0.9}, {"cat": False, "food": True},
             ("food", "megane"), "; tags: food=label, megane=0.900"),
        ],
    )
    def test_tag_labels_add_and_remove(self, scores: dict[str, float], labels: dict[str, bool],
                                       tags: tuple[str, ...], reason_tail: str) -> None:
        """A yes label adds a tag below threshold; a no label removes one above it."""
        decision = decide(scores, (), policy(), labels)
        assert decision.placement is LIBRARY
        assert decision.tags == tags
        assert decision.reason == "clean: nsfw=0.100 < 0.80" + reason_tail

    def test_released_image_keeps_its_tags(self) -> None:
        """A released image is filed under its tags like any clean one."""
        decision = decide({"nsfw": 0.95, "megane": 0.7}, (), policy(), {"nsfw": False})
        assert decision == Decision(
            LIBRARY, ("megane",), "human_label: nsfw=no; tags: megane=0.700")

    def test_quarantine_tag_yes_label_is_never_a_library_tag(self) -> None:
        """A label on a quarantine tag never becomes a library folder."""
        rules = policy({"nsfw": 0.8, "gore": 0.5}, quarantine_tags=("nsfw", "gore"))
        decision = decide({"nsfw": 0.0, "gore": 0.0}, (), rules, {"nsfw": False, "gore": False})
        assert decision.tags == ()


class TestFailClosed:
    """Anything the function cannot trust goes to held/."""

    @pytest.mark.parametrize(
        ("scores", "reason_start"),
        [
            (None, "not_classified"),
            ({}, "no_score: the model has no 'nsfw' score"),
            ({"megane": 0.9}, "no_score: the model has no 'nsfw' score"),
            ({"nsfw": float("nan")}, "invalid_score: nsfw=nan"),
            ({"nsfw": float("inf")}, "invalid_score: nsfw=inf"),
            ({"nsfw": float("-inf")}, "invalid_score: nsfw=-inf"),
            ({"nsfw": -0.01}, "invalid_score: nsfw=-0.01"),
            ({"nsfw": 1.01}, "invalid_score: nsfw=1.01"),
            ({"nsfw": 0.1, "megane": float("nan")}, "invalid_score: megane=nan"),
            ({"nsfw": 0.1, "megane": 2.0}, "invalid_score: megane=2.0"),
            ({"nsfw": "0.1"}, "invalid_score: nsfw='0.1'"),
            ({"nsfw": None}, "invalid_score: nsfw=None"),
            ({"nsfw": True}, "invalid_score: nsfw=True"),
        ],
    )
    def test_unusable_scores_are_held(self, scores: dict[str, object] | None,
                                      reason_start: str) -> None:
        """No scores, a missing quarantine-tag score, NaN or out-of-range scores: held, no tags."""
        decision = decide(scores, (), policy(), None)  # type: ignore[arg-type]
        assert decision.placement is HELD
        assert decision.tags == ()
        assert decision.reason.startswith(reason_start)

    @pytest.mark.parametrize("labels", [{"nsfw": False}, {"nsfw": True}, {"megane": True}])
    def test_invalid_scores_are_held_whatever_the_labels(self, labels: dict[str, bool]) -> None:
        """A NaN score is held even when a human label exists (the caller decides what then)."""
        assert decide({"nsfw": float("nan")}, (), policy(), labels).placement is HELD

    def test_no_scores_held_even_with_trusted_flag(self) -> None:
        """An unclassified image is held, not quarantined, whatever the source says."""
        assert decide(None, ("mastodon:sensitive",), policy()).placement is HELD

    def test_missing_score_with_trusted_flag_is_quarantined(self) -> None:
        """A trusted flag is enough to quarantine before the missing score matters."""
        decision = decide({"megane": 0.2}, ("booru:rating:e",), policy())
        assert decision.reason == "source_flag: booru:rating:e"

    def test_missing_score_with_untrusted_flag_is_held(self) -> None:
        """With flags untrusted, a missing nsfw score is held."""
        assert decide({"megane": 0.2}, ("booru:rating:e",), policy(trust=False)).placement is HELD

    @pytest.mark.parametrize("score", [np.float32(0.9), np.float64(0.9), 1, 0])
    def test_numeric_types_are_scores(self, score: object) -> None:
        """numpy scalars and plain ints are valid scores, not `invalid_score`."""
        decision = decide({"nsfw": score}, (), policy())  # type: ignore[dict-item]
        assert decision.placement is (QUARANTINE if float(score) >= 0.8 else LIBRARY)  # type: ignore[arg-type]


class TestNoQuarantineTags:
    """A policy with `quarantine.tags = []`."""

    def test_clean_reason_claims_no_label(self) -> None:
        """Without quarantine tags the reason does not invent a human label."""
        decision = decide({"nsfw": 0.99, "cat": 0.7}, (), policy(quarantine_tags=()))
        assert decision.placement is LIBRARY
        assert not decision.reason.startswith("human_label")
        assert decision.tags == ("cat", "nsfw")

    def test_trusted_flags_still_quarantine(self) -> None:
        """A trusted source flag quarantines even when no model tag does."""
        decision = decide({"cat": 0.7}, ("mastodon:sensitive",), policy(quarantine_tags=()))
        assert decision == Decision(QUARANTINE, (), "source_flag: mastodon:sensitive")


class TestPolicy:
    """The Policy record and its construction from config."""

    def test_defaults(self) -> None:
        """The default policy quarantines nsfw at 0.8, trusts flags, has no band."""
        rules = Policy()
        assert rules.threshold("nsfw") == 0.8
        assert rules.threshold("anything") == DEFAULT_TAG_THRESHOLD
        assert rules.quarantine_tags == ("nsfw",)
        assert rules.trust_source_flags is True
        assert rules.review_band is None

    def test_from_config_copies(self) -> None:
        """policy_from_config copies the thresholds so later changes do not leak in."""
        thresholds = {"nsfw": 0.7}
        rules = policy_from_config(thresholds, ["nsfw"], False, (0.3, 0.7))
        thresholds["nsfw"] = 0.1
        assert rules.threshold("nsfw") == 0.7
        assert rules.quarantine_tags == ("nsfw",)
        assert rules.trust_source_flags is False
        assert rules.review_band == (0.3, 0.7)

    def test_decision_is_frozen_and_pure(self) -> None:
        """The same inputs give equal decisions, and the inputs are left untouched."""
        scores = {"nsfw": 0.1, "megane": 0.7}
        labels = {"cat": True}
        first = decide(scores, ["x"], policy(trust=False), labels)
        assert first == decide(scores, ["x"], policy(trust=False), labels)
        assert scores == {"nsfw": 0.1, "megane": 0.7} and labels == {"cat": True}
        with pytest.raises(AttributeError):
            first.placement = HELD  # type: ignore[misc]


ALIASES = MappingProxyType({
    "megane": ("glasses", "megane", "メガネ"),
    "cat": ("cat", "neko"),
    "nsfw": ("r18",),
})


def aliased(file_by_source_tags: bool = True, trust: bool = True) -> Policy:
    """nsfw=0.8, megane=0.6, cat=0.7 with ALIASES."""
    return Policy(
        thresholds=MappingProxyType({"nsfw": 0.8, "megane": 0.6, "cat": 0.7}),
        trust_source_flags=trust, tag_aliases=ALIASES,
        file_by_source_tags=file_by_source_tags,
    )


class TestSourceTags:
    """Source tags matching `[tag_aliases]` file images from day one; heads and labels too."""

    @pytest.mark.parametrize(
        ("scores", "source_tags", "labels", "tags", "reason_tail"),
        [
            # A source tag files the image although the model has no megane head.
            ({"nsfw": 0.1}, ("glasses",), {}, ("megane",),
             "; tags: megane (source_tag: glasses)"),
            # Matching is on normalize_tag of both sides; a leading # is ignored.
            ({"nsfw": 0.1}, ("ＭＥＧＡＮＥ",), {}, ("megane",),
             "; tags: megane (source_tag: ＭＥＧＡＮＥ)"),
            ({"nsfw": 0.1}, ("#Glasses",), {}, ("megane",),
             "; tags: megane (source_tag: #Glasses)"),
            ({"nsfw": 0.1}, ("メガネ",), {}, ("megane",), "; tags: megane (source_tag: メガネ)"),
            # Several tags, each from its own alias; the first matching name is named.
            ({"nsfw": 0.1}, ("neko", "glasses", "cat"), {}, ("cat", "megane"),
             "; tags: cat (source_tag: cat), megane (source_tag: glasses)"),
            # A trained head adds the tag to an image without a source tag.
            ({"nsfw": 0.1, "megane": 0.7}, (), {}, ("megane",), "; tags: megane=0.700"),
            ({"nsfw": 0.1, "megane": 0.5}, (), {}, (), ""),
            # With both, the source tag is named; the head and the source tag agree.
            ({"nsfw": 0.1, "megane": 0.9}, ("glasses",), {}, ("megane",),
             "; tags: megane (source_tag: glasses)"),
            # A source tag files even when the head scores low (it is the source's word).
            ({"nsfw": 0.1, "megane": 0.2}, ("glasses",), {}, ("megane",),
             "; tags: megane (source_tag: glasses)"),
            # A human label always wins: no removes, yes adds.
            ({"nsfw": 0.1}, ("glasses",), {"megane": False}, (), ""),
            ({"nsfw": 0.1}, ("glasses",), {"megane": True}, ("megane",), "; tags: megane=label"),
            ({"nsfw": 0.1}, (), {"cat": True}, ("cat",), "; tags: cat=label"),
            # Unaliased source tags file nothing.
            ({"nsfw": 0.1}, ("landscape", "sunset"), {}, (), ""),
        ],
    )
    def test_tags(self, scores: dict[str, float], source_tags: tuple[str, ...],
                  labels: dict[str, bool], tags: tuple[str, ...], reason_tail: str) -> None:
        """The library tags and reason from scores, source tags and labels."""
        decision = decide(scores, (), aliased(), labels, source_tags)
        assert decision == Decision(LIBRARY, tags, "clean: nsfw=0.100 < 0.80" + reason_tail)

    @pytest.mark.parametrize(
        ("file_by_source_tags", "trust", "scores", "source_tags", "labels", "expected"),
        [
            # Policy off: source tags file nothing, heads still do.
            (False, True, {"nsfw": 0.1}, ("glasses",), {},
             Decision(LIBRARY, (), "clean: nsfw=0.100 < 0.80")),
            (False, True, {"nsfw": 0.1, "megane": 0.8}, ("glasses",), {},
             Decision(LIBRARY, ("megane",), "clean: nsfw=0.100 < 0.80; tags: megane=0.800")),
            # A source tag aliased to a quarantine tag quarantines like a source flag...
            (True, True, {"nsfw": 0.1}, ("R18",), {},
             Decision(QUARANTINE, (), "source_tag: R18")),
            # ...unless source flags are not trusted, or a human released the image.
            (True, False, {"nsfw": 0.1}, ("r18",), {},
             Decision(LIBRARY, (), "clean: nsfw=0.100 < 0.80")),
            (True, True, {"nsfw": 0.1}, ("r18", "glasses"), {"nsfw": False},
             Decision(LIBRARY, ("megane",),
                      "human_label: nsfw=no; tags: megane (source_tag: glasses)")),
            # No scores: held, whatever the source tags say (nothing unvetted is visible).
            (True, True, None, ("glasses",), {},
             Decision(HELD, (), "not_classified")),
            # The model's nsfw score still quarantines a source-tagged image.
            (True, True, {"nsfw": 0.9}, ("glasses",), {},
             Decision(QUARANTINE, (), "score: nsfw=0.900 >= 0.80")),
        ],
    )
    def test_policy(self, file_by_source_tags: bool, trust: bool,
                    scores: dict[str, float] | None, source_tags: tuple[str, ...],
                    labels: dict[str, bool], expected: Decision) -> None:
        """file_by_source_tags, trusted flags, held and quarantine interplay."""
        decision = decide(scores, (), aliased(file_by_source_tags, trust), labels, source_tags)
        assert decision == expected

    def test_policy_from_config_carries_aliases(self) -> None:
        """policy_from_config passes the aliases and the switch through."""
        rules = policy_from_config({"nsfw": 0.8}, ("nsfw",), True, None,
                                   {"megane": ["glasses"]}, False)
        assert rules.tag_aliases == {"megane": ("glasses",)}
        assert rules.file_by_source_tags is False
        assert policy_from_config({"nsfw": 0.8}, ("nsfw",), True, None).file_by_source_tags

    @pytest.mark.parametrize(
        ("source_tags", "expected"),
        [((), {}), (("glasses", "megane"), {"megane": "glasses"}),
         (("neko", "r18"), {"cat": "neko", "nsfw": "r18"}), (("dog",), {})],
    )
    def test_source_tag_matches(self, source_tags: tuple[str, ...],
                                expected: dict[str, str]) -> None:
        """tag -> the first matching source tag, in sorted order."""
        assert aliased().source_tag_matches(source_tags) == expected
