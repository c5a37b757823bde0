"""`megane classify FILE...`: image files scored by the serving model, in batches.

The same runtime as the daemon: the serving model of `crawler.serving` on its engine,
fixed batches of `[classifier] batch_size`, the daemon's decode and preprocessing (JPEG draft
mode included), decoding in worker threads while the engine scores the previous batch. At
most two batches of decoded images wait at any time, so memory stays flat for any number of
files. A progress bar (rich) is drawn on stderr when it is a terminal and there are many files.
"""

from __future__ import annotations

import functools
import json
import sys
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from classifier.base import Classifier
from classifier.decode import DecodeLimits, decode_image
from classifier.errors import DecodeError
from classifier.preprocess import preprocess

if TYPE_CHECKING:
    from crawler.config import Config

PROGRESS_MIN_FILES = 32
DRAFT_SIZE = (256, 256)  # as the daemon's pipeline decodes


@dataclass(frozen=True)
class FileScores:
    """One file's result: its per-tag scores, or why it could not be scored."""

    file: str
    scores: dict[str, float] | None = None
    error: str | None = None

    def to_json(self) -> dict[str, object]:
        if self.scores is None:
            return {"file": self.file, "error": self.error}
        return {"file": self.file, "scores": {tag: round(score, 6)
                                              for tag, score in self.scores.items()}}


class FolderGivenError(Exception):
    """A folder among the FILE arguments: classify scores files, `megane import` files trees."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path} is a folder: classify takes image files (`megane import "
                         f"{path}` classifies and files a folder tree)")
        self.path = path


def _decode(path: str, limits: DecodeLimits, jpeg_draft: bool) -> npt.NDArray[np.float32]:
    if Path(path).is_dir():
        raise FolderGivenError(path)
    decoded = decode_image(Path(path), limits, draft_size=DRAFT_SIZE if jpeg_draft else None)
    return preprocess(decoded.image)


def classify_files(
    files: Sequence[str],
    classifier: Classifier,
    limits: DecodeLimits,
    *,
    jpeg_draft: bool = True,
    decode_workers: int = 2,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[FileScores]:
    """Score `files` in order (a generator: results come batch by batch).

    Decoding runs `decode_workers` files ahead in threads, at most two batches deep, while
    the calling thread runs the engine; a file that cannot be decoded yields its error and
    takes no slot in a batch.
    """
    batch_size = max(1, classifier.batch_size)
    window = 2 * batch_size
    with ThreadPoolExecutor(max(1, decode_workers), thread_name_prefix="decode") as pool:
        pending: deque[tuple[str, Future[npt.NDArray[np.float32]]]] = deque()
        upcoming = iter(files)

        def refill() -> None:
            while len(pending) < window:
                name = next(upcoming, None)
                if name is None:
                    return
                pending.append((name, pool.submit(_decode, name, limits, jpeg_draft)))

        refill()
        while pending:
            slots: list[tuple[str, FileScores | None]] = []  # input order; None: in the batch
            tensors: list[npt.NDArray[np.float32]] = []
            while pending and len(tensors) < batch_size:
                name, future = pending.popleft()
                refill()  # keep the decoders busy while this batch is being scored
                try:
                    tensors.append(future.result())
                    slots.append((name, None))
                except (DecodeError, FolderGivenError, OSError) as error:
                    slots.append((name, FileScores(name, error=str(error))))
            scored = iter(classifier.classify(np.stack(tensors)).scores if tensors else [])
            for name, failure in slots:
                if failure is not None:
                    yield failure
                else:
                    scores = next(scored)
                    yield FileScores(name, scores={tag: float(value)
                                                   for tag, value in scores.items()})
            if on_progress is not None:
                on_progress(len(slots))


def classify_command(config: Config, files: Sequence[str], *, as_json: bool,
                     environ: Mapping[str, str]) -> int:
    """`megane classify`: print per-tag scores; exit 1 if the model or any file fails, 2 if
    the engine fails mid-run."""
    from classifier.cache import tflite_cache_dir
    from classifier.errors import ClassifierError
    from classifier.models import load_classifier
    from crawler.conversion_notice import print_conversion_notice
    from crawler.serving import resolve_serving
    from storage.placement import DataLayout

    serving = resolve_serving(config.classifier.model, DataLayout(config.data_dir).models)
    if serving.problem is not None and serving.origin != "builtin":
        print(f"error: {serving.problem}", file=sys.stderr)
        return 1
    if serving.problem is not None:  # an unreadable ACTIVE: builtin serves meanwhile
        print(f"warning: {serving.problem}", file=sys.stderr)
    print_conversion_notice(config.classifier, tflite_cache_dir(environ))
    try:
        classifier = load_classifier(
            serving.version, DataLayout(config.data_dir).models,
            cache_dir=tflite_cache_dir(environ), **config.classifier.engine_options())
    except ClassifierError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    limits = DecodeLimits(config.images.max_width, config.images.max_height,
                          config.images.max_frames, config.images.formats)
    run = functools.partial(classify_files, files, classifier, limits,
                            jpeg_draft=config.images.jpeg_draft,
                            decode_workers=config.daemon.decode_workers)
    try:
        if sys.stderr.isatty() and len(files) >= PROGRESS_MIN_FILES:
            from rich.console import Console
            from rich.progress import Progress

            with Progress(console=Console(stderr=True), transient=True,
                          redirect_stdout=False, redirect_stderr=False) as progress:
                task = progress.add_task(f"classifying ({serving.version})", total=len(files))
                results = list(run(on_progress=lambda count: progress.advance(task, count)))
        else:
            results = list(run())
    except ClassifierError as error:  # the engine failed: no score can be trusted
        print(f"error: model {serving.version}: {error}", file=sys.stderr)
        return 2  # an internal failure, not the user's input (SPEC §3)
    for result in results:
        if result.error is not None:
            print(f"error: {result.error}", file=sys.stderr)
    if as_json:
        sys.stdout.write(json.dumps([result.to_json() for result in results], indent=2) + "\n")
    else:
        for result in results:
            if result.scores is not None:
                print(result.file + ": " + ", ".join(
                    f"{tag}={score:.4f}" for tag, score in result.scores.items()))
    return 1 if any(result.error is not None for result in results) else 0
