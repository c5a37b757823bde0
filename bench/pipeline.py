"""End-to-end throughput: `megane once` on a feed against the classifier alone.

    python -m bench.pipeline [--count 500] [--rounds 2] [--no-write]

`--count` JPEGs (30-300 KB, `bench.servers.corpus`) are listed in one RSS feed and served by
20 local hosts (40 ms added to every response). In one run, with one loaded classifier
(`builtin` open_nsfw, LiteRT engine, batch 16, every core):

- end to end: `Daemon(config).run(once=True)` with the shipped defaults (16 download
  workers, 2 decode threads, batch 16, `max_batch_delay_ms` 200, politeness 4 requests/s
  per host) and JSON logs rendered to /dev/null, as `megane once` does: poll, download,
  decode, preprocess, classify, decide, place, each committed to SQLite; every item is
  checked to have reached library/ or quarantine/;
- the baseline, the classifier alone: `classify` on the same images already decoded and
  preprocessed (the pipeline's own decode path), in batches of 16;
- for reference, one thread doing decode + preprocess + classify in turn (what a simple
  script would do).

Rounds are interleaved, best kept. The goal: end to end >= 90% of the classifier alone,
i.e. downloads and decoding hidden behind inference.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import stamp, summary_row, write_section
from bench.servers import MediaHosts, cache_root, corpus, corpus_files, corpus_stats

BATCH_SIZE = 16
GOAL = 0.90


def load(batch_size: int = BATCH_SIZE) -> Any:
    """The builtin model on LiteRT; the TFLite conversion is cached across benchmark runs."""
    from classifier.models import load_classifier

    return load_classifier("builtin", Path("/nonexistent-models"), engine="litert",
                           batch_size=batch_size, cache_dir=cache_root() / "tflite-cache")


def prepare(path: Path) -> np.ndarray:  # type: ignore[type-arg]
    """The pipeline's own decode path for one file: validate, draft-decode, preprocess."""
    from crawler.daemon import pipeline_settings  # noqa: F401 - the same modules the daemon loads
    from crawler.pipeline import _decode_and_prepare
    from classifier.decode import DecodeLimits

    _, tensor, _ = _decode_and_prepare(path, DecodeLimits(), True, True)
    assert tensor is not None  # noqa: S101 - with_tensor=True
    return tensor


def classifier_alone(classifier: Any, tensors: np.ndarray) -> tuple[float, float]:  # type: ignore[type-arg]
    """Wall and CPU seconds (every thread of this process) to classify `tensors` in batches."""
    size = classifier.batch_size
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(tensors), size):
        classifier.classify(tensors[start:start + size])
    return time.perf_counter() - started, time.process_time() - cpu


def serial(classifier: Any, files: list[Path]) -> tuple[float, float]:
    """Wall and CPU seconds for one thread to decode, preprocess and classify `files`."""
    size = classifier.batch_size
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(files), size):
        classifier.classify(np.stack([prepare(path) for path in files[start:start + size]]))
    return time.perf_counter() - started, time.process_time() - cpu


def decode_cpu_s(files: list[Path]) -> float:
    """CPU seconds for one thread to decode and preprocess `files` (no model)."""
    cpu = time.process_time()
    for path in files:
        prepare(path)
    return time.process_time() - cpu


def write_config(folder: Path, feed_url: str, allowed: list[str]) -> Path:
    hosts = ", ".join(f'"{host}"' for host in allowed)
    path = folder / "config.toml"
    path.write_text(textwrap.dedent(f"""\
        [daemon]
        data_dir = "{folder / 'data'}"
        log_format = "json"

        [http]
        allowed_private_hosts = [{hosts}]

        [classifier]
        engine = "litert"
        batch_size = {BATCH_SIZE}

        [[sources]]
        kind = "rss"
        name = "bench"
        url = "{feed_url}"
        interval = "1h"
        """))
    return path


async def _states(config: Any) -> dict[str, int]:
    from storage.catalogue import Catalogue
    from storage.placement import DataLayout

    catalogue = await Catalogue.open(DataLayout(config.data_dir).catalogue)
    try:
        return dict(await catalogue.counts_by_state())
    finally:
        await catalogue.close()


def end_to_end(classifier: Any, hosts: MediaHosts,
               count: int) -> tuple[float, float, dict[str, int]]:
    """Wall and CPU seconds of `Daemon.run(once=True)` over a feed of `count` images, and the
    final states. CPU counts every thread of this process (the server is another process)."""
    from crawler.config import load_config
    from crawler.daemon import Daemon

    with tempfile.TemporaryDirectory(prefix="megane-bench-pipeline-") as temporary:
        config = load_config(write_config(Path(temporary), hosts.feed_url(count), hosts.allowed))
        started, cpu = time.perf_counter(), time.process_time()
        asyncio.run(Daemon(config, classifier=classifier).run(once=True))
        seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
        return seconds, cpu_s, asyncio.run(_states(config))


def configure_logs() -> Any:
    """JSON logs as `megane once` renders them, written to /dev/null."""
    from crawler.logs import configure_logging

    sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    configure_logging("json", "info", stream=sink)
    return sink


def measure(count: int, rounds: int, with_serial: bool) -> dict[str, Any]:
    configure_logs()
    folder = corpus(count)
    files = corpus_files(folder, count)
    classifier = load()
    tensors = np.stack([prepare(path) for path in files])
    classifier_alone(classifier, tensors[:BATCH_SIZE * 2])  # warm-up
    best = {"alone": float("inf"), "end_to_end": float("inf"), "serial": float("inf")}
    cpu = {"alone": float("inf"), "end_to_end": float("inf"), "serial": float("inf"),
           "decode": decode_cpu_s(files)}
    states: dict[str, int] = {}
    with MediaHosts(folder) as hosts:
        for round_number in range(rounds):
            alone, alone_cpu = classifier_alone(classifier, tensors)
            seconds, seconds_cpu, states = end_to_end(classifier, hosts, count)
            final = states.get("library", 0) + states.get("quarantine", 0)
            if final != count:
                raise RuntimeError(f"only {final} of {count} items filed: {states}")
            print(f"  round {round_number + 1}: classifier alone {count / alone:.1f}/s, "
                  f"end to end {count / seconds:.1f}/s", file=sys.stderr)
            best["alone"] = min(best["alone"], alone)
            best["end_to_end"] = min(best["end_to_end"], seconds)
            cpu["alone"] = min(cpu["alone"], alone_cpu)
            cpu["end_to_end"] = min(cpu["end_to_end"], seconds_cpu)
        if with_serial:
            best["serial"], cpu["serial"] = serial(classifier, files)
    return {"count": count, "rounds": rounds, "corpus": corpus_stats(files), "seconds": best,
            "cpu": cpu, "states": states}


def render(results: dict[str, Any], command: str) -> str:
    count = results["count"]
    seconds = results["seconds"]
    cpu = results["cpu"]
    alone = count / seconds["alone"]
    end = count / seconds["end_to_end"]
    ratio = end / alone
    stats = results["corpus"]
    lines = [
        "## Pipeline", "", stamp(command), "",
        f"{count} JPEGs ({stats['min_kb']:.0f}-{stats['max_kb']:.0f} KB, mean "
        f"{stats['mean_kb']:.0f} KB) in one RSS feed, served by 20 local hosts with 40 ms "
        f"added to every response. `builtin` model, LiteRT engine, batch {BATCH_SIZE}, both "
        f"cores; shipped defaults otherwise. Best of {results['rounds']} interleaved rounds. "
        f"Final states: {results['states']}.", "",
        summary_row("end to end (`once`), images/s vs classifier alone", f"{end:.1f}/s",
                    f"classifier alone {alone:.1f}/s", f"{ratio:.2f}x", f">= {GOAL:.2f}x",
                    "yes" if ratio >= GOAL else "no"),
        "",
        "| way | seconds | images/s | ratio to classifier alone | CPU ms per image |",
        "|---|---|---|---|---|",
        f"| classifier alone (preprocessed tensors, batches of {BATCH_SIZE}) | "
        f"{seconds['alone']:.2f} | {alone:.1f} | 1.00x | {cpu['alone'] / count * 1000:.1f} |",
        f"| end to end: `Daemon.run(once=True)` | {seconds['end_to_end']:.2f} | {end:.1f} | "
        f"{ratio:.2f}x | {cpu['end_to_end'] / count * 1000:.1f} |",
    ]
    if seconds["serial"] != float("inf"):
        rate = count / seconds["serial"]
        lines.append(f"| one thread: decode + preprocess + classify in turn | "
                     f"{seconds['serial']:.2f} | {rate:.1f} | {rate / alone:.2f}x | "
                     f"{cpu['serial'] / count * 1000:.1f} |")
    extra_ms = (cpu["end_to_end"] - cpu["alone"]) / count * 1000
    inference_ms = cpu["alone"] / count * 1000
    cores = os.cpu_count() or 1
    # Whatever overlaps, the cores can give at most cores x wall seconds of CPU.
    bound = min(1.0, cores * seconds["alone"] / cpu["end_to_end"])
    lines += [
        "",
        f"CPU accounting (process time of every thread; the media server is another process): "
        f"the classifier alone costs {inference_ms:.1f} CPU-ms per image "
        f"({cpu['alone'] / seconds['alone']:.1f} cores busy); end to end costs "
        f"{extra_ms:.1f} CPU-ms more per image (download, hashing, SQLite, decode + "
        f"preprocess — {cpu['decode'] / count * 1000:.1f} ms of it, measured alone in one "
        f"thread — placement, logs). On {cores} cores, even with perfect overlap end to end "
        f"can reach at most {cores} x {seconds['alone'] / count * 1000:.1f} ms / "
        f"{cpu['end_to_end'] / count * 1000:.1f} CPU-ms = {bound:.2f}x of the classifier "
        f"alone; measured: {ratio:.2f}x.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="images in the feed")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds, best kept")
    parser.add_argument("--no-serial", action="store_true", help="skip the one-thread reference")
    parser.add_argument("--no-write", action="store_true", help="print, do not write the .md")
    arguments = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    results = measure(arguments.count, arguments.rounds, not arguments.no_serial)
    command = "python -m bench.pipeline" + (
        f" --count {arguments.count}" if arguments.count != 500 else "")
    section = render(results, command)
    print(section)
    if not arguments.no_write:
        write_section(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
