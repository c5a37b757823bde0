"""`megane train`: the command's glue (the CLI stays thin; the work is in trainer.py).

`config` is crawler.config.Config, passed in duck-typed: classifier never imports crawler.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from classifier.training.errors import NotEnoughLabelsError, TrainingError

EXIT_OK, EXIT_USER = 0, 1


def training_request(config: Any, tags: Sequence[str] | None, architecture: str,
                     version: str | None) -> Any:
    from classifier.decode import DecodeLimits
    from classifier.training.settings import TrainingSettings
    from classifier.training.trainer import TrainingRequest

    images = config.images
    return TrainingRequest(
        settings=TrainingSettings.from_mapping(config.training),
        tags=list(tags) if tags else None, architecture=architecture, version=version,
        aliases={tag: tuple(names) for tag, names in config.tag_aliases.items()},
        thresholds=dict(config.thresholds), jpeg_draft=images.jpeg_draft,
        limits=DecodeLimits(images.max_width, images.max_height, images.max_frames,
                            images.formats),
    )


def run_train(config: Any, *, tags: Sequence[str] | None, architecture: str,
              version: str | None, as_json: bool) -> int:
    from classifier.cache import tflite_cache_dir
    from classifier.models import load_classifier
    from classifier.native_logs import import_tensorflow
    from classifier.training.evaluate import print_report
    from classifier.training.features import classifier_extractor
    from classifier.training.trainer import train
    from storage.catalogue import Catalogue
    from storage.placement import DataLayout

    layout = DataLayout(config.data_dir)
    layout.ensure()
    import_tensorflow()  # training imports it anyway; its start-up lines are dropped here
    try:
        request = training_request(config, tags, architecture, version)
    except TrainingError as error:
        return _fail(error, as_json)

    def extractor() -> Any:
        # Features for training are float32 whatever serves: heads learn on exact features.
        options = {**config.classifier.engine_options(), "quantization": "none",
                   "batch_size": request.settings.feature_batch_size}
        return classifier_extractor(load_classifier(
            "builtin", layout.models, cache_dir=tflite_cache_dir(os.environ), **options))

    async def body() -> Any:
        catalogue = await Catalogue.open(layout.catalogue)
        try:
            return await train(catalogue, layout, request, extractor_factory=extractor,
                               progress=None if not as_json else False)
        finally:
            await catalogue.close()

    try:
        report = asyncio.run(body())
    except TrainingError as error:
        return _fail(error, as_json)
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
        return EXIT_OK
    print_report(report.metrics, title=f"model {report.version} ({report.architecture}), "
                                       f"held-out human labels")
    print(f"written to {report.folder} in {report.seconds:.1f} s"
          + (f"; {len(report.skipped_images)} labelled images skipped (no file)"
             if report.skipped_images else ""))
    print(f"promote it with: megane models promote {report.version} [--shadow N]")
    return EXIT_OK


def _fail(error: TrainingError, as_json: bool) -> int:
    if as_json:
        document: dict[str, Any] = {"error": str(error)}
        if isinstance(error, NotEnoughLabelsError):
            document["missing"] = error.missing
            document["counts"] = error.counts
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        print(f"error: {error}", file=sys.stderr)
    return EXIT_USER
