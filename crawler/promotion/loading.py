"""Loading the serving model at daemon start, and later versions on the running engine."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from classifier.base import Classifier
from storage.placement import DataLayout

if TYPE_CHECKING:
    from crawler.config import Config

log = structlog.get_logger("megane.promotion")

ModelLoader = Callable[[str], Classifier]


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
            version, layout.models, cache_dir=cache_dir, **config.classifier.engine_options())
        return classifier

    return load

