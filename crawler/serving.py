"""Which model is serving: one answer for the daemon, `classify`, `status`, `check-config`
and the review UI.

The resolution, first match wins:

1. `[classifier] model` in config.toml, when set: it pins the version (`promote` then
   refuses, naming the key);
2. `models/ACTIVE`, written by `megane models promote` (while a shadow run is pending,
   the version it shadows);
3. `builtin` (Yahoo's open_nsfw alone).

`resolve_serving` reads files only (no model is loaded) and never raises: what is wrong
is in `ServingModel.problem`, which `check-config` turns into exit 1 and the daemon into
a fail-closed start (everything `held/`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from classifier.errors import ModelError

if TYPE_CHECKING:
    from crawler.config import Config

Origin = Literal["config", "active", "builtin"]
Coverage = Literal["head", "source_tags", "none"]
CONFIG_KEY = "[classifier] model"


@dataclass(frozen=True)
class ServingModel:
    """The version to serve, where that answer came from, and why it cannot load (if so)."""

    version: str
    origin: Origin
    source: str  # the key or file that named the version, for messages
    problem: str | None = None
    tags: tuple[str, ...] = ()  # the tags its outputs score ("nsfw" first); () if a problem

    def to_json(self) -> dict[str, object]:
        return {"version": self.version, "origin": self.origin, "source": self.source,
                "problem": self.problem, "tags": list(self.tags)}


def resolve_serving(configured: str | None, models_dir: Path) -> ServingModel:
    """The serving version for `[classifier] model` = `configured` (None: unset)."""
    from classifier.models import BUILTIN_VERSION
    from crawler.promotion import active_path, read_active

    if configured is not None:
        serving = ServingModel(configured, "config", CONFIG_KEY)
    else:
        try:
            active = read_active(models_dir)
        except ModelError as error:
            return ServingModel(BUILTIN_VERSION, "builtin", str(active_path(models_dir)),
                                f"{error}; serving {BUILTIN_VERSION!r} meanwhile",
                                _tags_of(models_dir, BUILTIN_VERSION)[0])
        if active is None:
            serving = ServingModel(BUILTIN_VERSION, "builtin", "default")
        else:
            serving = ServingModel(active.serving, "active", str(active_path(models_dir)))
    tags, problem = _tags_of(models_dir, serving.version)
    if problem is not None:
        remedy = ("set it to a version `megane models list` shows, or remove it"
                  if serving.origin == "config" else
                  "promote a version `megane models list` shows (`megane models promote "
                  "VERSION`), or remove that file to serve the builtin model")
        problem = f"{serving.source} names {serving.version!r}: {problem}; {remedy}"
    return ServingModel(serving.version, serving.origin, serving.source, problem, tags)


def serving_model(config: Config) -> ServingModel:
    """The serving model of a configuration (what the review UI shows)."""
    from storage.placement import DataLayout

    return resolve_serving(config.classifier.model, DataLayout(config.data_dir).models)


def _tags_of(models_dir: Path, version: str) -> tuple[tuple[str, ...], str | None]:
    from classifier.models import NSFW_TAG, read_model_version

    try:
        _, heads = read_model_version(models_dir, version)
    except ModelError as error:
        return (), str(error)
    return (NSFW_TAG, *heads.tags), None


def tag_coverage(thresholds: Sequence[str], model_tags: Sequence[str],
                 tag_aliases: Mapping[str, Sequence[str]]) -> dict[str, Coverage]:
    """Per threshold tag: a head of the model scores it, source tags ([tag_aliases]) file
    it, or nothing can produce it."""
    coverage: dict[str, Coverage] = {}
    for tag in thresholds:
        if tag in model_tags:
            coverage[tag] = "head"
        elif tag_aliases.get(tag):
            coverage[tag] = "source_tags"
        else:
            coverage[tag] = "none"
    return coverage


def serving_document(config: Config) -> dict[str, object]:
    """`status`'s model section: the serving version and what serves each threshold tag."""
    serving = serving_model(config)
    return {
        **serving.to_json(),
        "configured": config.classifier.model,
        "engine": config.classifier.engine,
        "tag_coverage": tag_coverage(list(config.thresholds), serving.tags, config.tag_aliases),
    }


def configuration_problems(config: Config) -> list[str]:
    """What `check-config` reports about the model: a version that cannot be served."""
    serving = serving_model(config)
    return [serving.problem] if serving.problem is not None else []


def raw_configuration_problems(raw: Mapping[str, Any], path: Path, text: str) -> list[str]:
    """`configuration_problems` for a config that does not load as a whole.

    `check-config` lists every problem at once: when other keys are wrong, the model check
    still runs from the parsed `[classifier] model` and `[daemon] data_dir`, each read by
    its own section loader. When one of those two is itself wrong, its problem is already
    listed and nothing is added.
    """
    from crawler.config_checks import Problems
    from crawler.config_sections import load_classifier, load_daemon
    from storage.placement import DataLayout

    daemon, classifier = raw.get("daemon", {}), raw.get("classifier", {})
    if not isinstance(daemon, Mapping) or not isinstance(classifier, Mapping):
        return []
    own = Problems(path, text)  # only these two keys are read: their problems alone
    data_dir = load_daemon({"daemon": {key: daemon[key] for key in ("data_dir",)
                                       if key in daemon}}, path.parent.resolve(), own).data_dir
    model = load_classifier({"classifier": {key: classifier[key] for key in ("model",)
                                            if key in classifier}}, own).model
    if own.items:
        return []
    problem = resolve_serving(model, DataLayout(data_dir).models).problem
    return [problem] if problem is not None else []
