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
import threading
import time
from pathlib import Path
from typing import Any, Self

import numpy as np

from bench.report import stamp, summary_row, write_section
from bench.servers import (
    MediaHosts,
    cache_root,
    corpus,
    corpus_files,
    corpus_stats,
    write_daemon_config,
)

BATCH_SIZE = 16
GOAL = 0.90


def load(batch_size: int = BATCH_SIZE, threads: int = 0) -> Any:
    """The builtin model on LiteRT; the TFLite conversion is cached across benchmark runs."""
    from classifier.models import load_classifier

    return load_classifier("builtin", Path("/nonexistent-models"), engine="litert",
                           batch_size=batch_size, threads=threads,
                           cache_dir=cache_root() / "tflite-cache")


def prepare(path: Path) -> np.ndarray:  # type: ignore[type-arg]
    """The pipeline's own decode path for one file: validate, draft-decode, preprocess."""
    from classifier.decode import DecodeLimits
    from crawler.daemon import pipeline_settings  # noqa: F401 - the same modules the daemon loads
    from crawler.pipeline import _decode_and_prepare

    _, tensor, _ = _decode_and_prepare(path, DecodeLimits(), True, True)
    assert tensor is not None
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


class TimedClassifier:
    """The loaded classifier, recording when each `classify` call ran (for the report)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: list[tuple[float, float, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def classify(self, batch: np.ndarray) -> Any:  # type: ignore[type-arg]
        started = time.perf_counter()
        try:
            return self._inner.classify(batch)
        finally:
            self.calls.append((started, time.perf_counter(), len(batch)))


def _thread_label(name: str) -> str:
    if "_connection_worker_thread" in name:
        return "aiosqlite (SQLite queries)"
    if name == "MainThread":
        return "MainThread (event loop; alone: the model's caller)"
    if name.startswith("asyncio_"):
        return "asyncio default executor (spool writes + sha256)"
    return name.rstrip("0123456789_")


class ThreadCpu:
    """CPU seconds per thread of this process while a block runs, grouped by thread name.

    Reads /proc/self/task/<tid>/stat every 0.2 s (threads may end before the block does);
    threads Python does not know (XNNPACK's workers, SQLite's) are grouped as "native".
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._stop = threading.Event()
        self._first: dict[str, tuple[str, float]] = {}
        self._last: dict[str, tuple[str, float]] = {}

    @staticmethod
    def _snapshot() -> dict[str, tuple[str, float]]:
        ticks = os.sysconf("SC_CLK_TCK")
        names = {str(thread.native_id): _thread_label(thread.name)
                 for thread in threading.enumerate()}
        result = {}
        for tid in os.listdir("/proc/self/task"):
            try:
                fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            name = names.get(tid, "native threads (XNNPACK workers, SQLite)")
            result[tid] = (name, (int(fields[11]) + int(fields[12])) / ticks)
        return result

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self._last.update(self._snapshot())

    def __enter__(self) -> Self:
        if not Path("/proc/self/task").is_dir():
            return self
        self._first = self._snapshot()
        self._thread = threading.Thread(target=self._sample, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._first:
            return
        self._stop.set()
        self._thread.join()
        self._last.update(self._snapshot())
        for tid, (name, cpu_s) in self._last.items():
            if name == "bench-sampler":
                continue
            before = self._first.get(tid, (name, 0.0))[1]
            self.seconds[name] = self.seconds.get(name, 0.0) + cpu_s - before


def write_config(folder: Path, feed_url: str, allowed: list[str]) -> Path:
    return write_daemon_config(folder, feed_url, allowed,
                               classifier=f'engine = "litert"\nbatch_size = {BATCH_SIZE}')


async def _states(config: Any) -> dict[str, int]:
    from storage.catalogue import Catalogue
    from storage.placement import DataLayout

    catalogue = await Catalogue.open(DataLayout(config.data_dir).catalogue)
    try:
        return dict(await catalogue.counts_by_state())
    finally:
        await catalogue.close()


def end_to_end(classifier: Any, hosts: MediaHosts,
               count: int) -> tuple[float, float, dict[str, Any]]:
    """Wall and CPU seconds of `Daemon.run(once=True)` over a feed of `count` images, and the
    final states and inference timeline. CPU counts every thread of this process (the
    server is another process)."""
    from crawler.config import load_config
    from crawler.daemon import Daemon

    with tempfile.TemporaryDirectory(prefix="megane-bench-pipeline-") as temporary:
        config = load_config(write_config(Path(temporary), hosts.feed_url(count), hosts.allowed))
        timed = TimedClassifier(classifier)
        started, cpu = time.perf_counter(), time.process_time()
        asyncio.run(Daemon(config, classifier=timed).run(once=True))
        ended, cpu_s = time.perf_counter(), time.process_time() - cpu
        calls = timed.calls
        timeline = {
            "first_batch_s": calls[0][0] - started if calls else 0.0,
            "after_last_batch_s": ended - calls[-1][1] if calls else 0.0,
            "busy_s": sum(end - start for start, end, _ in calls),
            "batches": len(calls),
            "images": sum(size for _, _, size in calls),
        }
        return ended - started, cpu_s, {"states": asyncio.run(_states(config)),
                                        "timeline": timeline}


def configure_logs() -> Any:
    """JSON logs as `megane once` renders them, written to /dev/null."""
    from crawler.logs import configure_logging

    sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    configure_logging("json", "info", stream=sink)
    return sink


def measure(count: int, rounds: int, with_serial: bool,
            end_to_end_threads: int = 0) -> dict[str, Any]:
    configure_logs()
    folder = corpus(count)
    files = corpus_files(folder, count)
    classifier = load()
    # The baseline always uses every core; end to end may be given fewer inference threads.
    pipeline_classifier = load(threads=end_to_end_threads) if end_to_end_threads else classifier
    tensors = np.stack([prepare(path) for path in files])
    classifier_alone(classifier, tensors[:BATCH_SIZE * 2])  # warm-up
    best = {"alone": float("inf"), "end_to_end": float("inf"), "serial": float("inf")}
    cpu = {"alone": float("inf"), "end_to_end": float("inf"), "serial": float("inf"),
           "decode": decode_cpu_s(files)}
    states: dict[str, int] = {}
    with MediaHosts(folder) as hosts:
        threads: dict[str, dict[str, float]] = {}
        timeline: dict[str, float] = {}
        per_round: list[tuple[float, float]] = []
        for round_number in range(rounds):
            with ThreadCpu() as alone_threads:
                alone, alone_cpu = classifier_alone(classifier, tensors)
            with ThreadCpu() as end_threads:
                seconds, seconds_cpu, outcome = end_to_end(pipeline_classifier, hosts, count)
            states = outcome["states"]
            if seconds < best["end_to_end"]:
                threads = {"alone": alone_threads.seconds, "end_to_end": end_threads.seconds}
                timeline = dict(outcome["timeline"], alone_s=alone, seconds=seconds)
            final = states.get("library", 0) + states.get("quarantine", 0)
            if final != count:
                raise RuntimeError(f"only {final} of {count} items filed: {states}")
            per_round.append((count / alone, count / seconds))
            print(f"  round {round_number + 1}: classifier alone {count / alone:.1f}/s, "
                  f"end to end {count / seconds:.1f}/s", file=sys.stderr)
            best["alone"] = min(best["alone"], alone)
            best["end_to_end"] = min(best["end_to_end"], seconds)
            cpu["alone"] = min(cpu["alone"], alone_cpu)
            cpu["end_to_end"] = min(cpu["end_to_end"], seconds_cpu)
        if with_serial:
            best["serial"], cpu["serial"] = serial(classifier, files)
    return {"count": count, "rounds": rounds, "corpus": corpus_stats(files), "seconds": best,
            "cpu": cpu, "states": states, "threads": threads, "timeline": timeline,
            "end_to_end_threads": end_to_end_threads, "per_round": per_round}


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
        f"cores; shipped defaults otherwise. Best of {results['rounds']} interleaved rounds "
        f"(each way's best round; noise only slows a round down). "
        f"Final states: {results['states']}."
        + (f" End to end with `[classifier] threads = {results['end_to_end_threads']}` "
           f"(the baseline uses every core)." if results.get("end_to_end_threads") else ""),
        "",
        summary_row("end to end (`once`), images/s vs classifier alone", f"{end:.1f}/s",
                    f"classifier alone {alone:.1f}/s", f"{ratio:.2f}x", f">= {GOAL:.2f}x",
                    "yes" if ratio >= GOAL else "no"),
        "",
        *(["Misses the goal: see the explanation and next step under \"## Profile\".", ""]
          if ratio < GOAL else []),
        "| way | seconds | images/s | ratio to classifier alone | CPU ms per image |",
        "|---|---|---|---|---|",
        (f"| classifier alone (preprocessed tensors, batches of {BATCH_SIZE}) | "
        f"{seconds['alone']:.2f} | {alone:.1f} | 1.00x | {cpu['alone'] / count * 1000:.1f} |"),
        (f"| end to end: `Daemon.run(once=True)` | {seconds['end_to_end']:.2f} | {end:.1f} | "
        f"{ratio:.2f}x | {cpu['end_to_end'] / count * 1000:.1f} |"),
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
        (f"CPU accounting (process time of every thread; the media server is another process): "
        f"the classifier alone costs {inference_ms:.1f} CPU-ms per image "
        f"({cpu['alone'] / seconds['alone']:.1f} cores busy); end to end costs "
        f"{extra_ms:.1f} CPU-ms more per image (download, hashing, SQLite, decode + "
        f"preprocess — {cpu['decode'] / count * 1000:.1f} ms of it, measured alone in one "
        f"thread — placement, logs). On {cores} cores, even with perfect overlap end to end "
        f"can reach at most {cores} x {seconds['alone'] / count * 1000:.1f} ms / "
        f"{cpu['end_to_end'] / count * 1000:.1f} CPU-ms = {bound:.2f}x of the classifier "
        f"alone; measured: {ratio:.2f}x."),
        "",
    ]
    per_round = results.get("per_round") or []
    if per_round:
        lines += ["Each round (classifier alone, end to end, ratio): " + "; ".join(
            f"{alone_rate:.1f}/s, {end_rate:.1f}/s, {end_rate / alone_rate:.2f}x"
            for alone_rate, end_rate in per_round)
            + ". The spread is the shared host; the headline ratio takes each way's best "
            "round.", ""]
    timeline = results.get("timeline") or {}
    if timeline:
        batches = timeline["batches"]
        alone_batch_ms = timeline["alone_s"] / count * BATCH_SIZE * 1000
        end_batch_ms = timeline["busy_s"] / max(batches, 1) * 1000
        idle_s = timeline["seconds"] - timeline["busy_s"]
        lines += [
            (f"Where the end-to-end time goes (the round with the best end-to-end time): "
            f"{batches} batches ({timeline['images']} images, so "
            f"{batches * BATCH_SIZE - timeline['images']} padded slots); one batch took "
            f"{end_batch_ms:.0f} ms end to end against {alone_batch_ms:.0f} ms alone in the "
            f"same round ({end_batch_ms / alone_batch_ms:.2f}x: inference shares the 2 cores "
            f"with the other stages); the model was idle {idle_s:.2f} s of "
            f"{timeline['seconds']:.2f} s ({idle_s / timeline['seconds']:.0%}): "
            f"{timeline['first_batch_s']:.2f} s before the first batch (poll, first downloads, "
            f"decode), {timeline['after_last_batch_s']:.2f} s after the last (placing, "
            f"shutdown), the rest between batches."), "",
        ]
    threads = results.get("threads") or {}
    if threads:
        names = sorted(set(threads["alone"]) | set(threads["end_to_end"]),
                       key=lambda name: -threads["end_to_end"].get(name, 0.0))
        lines += ["CPU ms per image by thread (the round with the best end-to-end time):", "",
                  "| thread | classifier alone | end to end |", "|---|---|---|"]
        for name in names:
            alone_ms = threads["alone"].get(name, 0.0) / count * 1000
            end_ms = threads["end_to_end"].get(name, 0.0) / count * 1000
            if alone_ms >= 0.05 or end_ms >= 0.05:
                lines.append(f"| {name} | {alone_ms:.1f} | {end_ms:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="images in the feed")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds, best kept")
    parser.add_argument("--no-serial", action="store_true", help="skip the one-thread reference")
    parser.add_argument("--end-to-end-threads", type=int, default=0,
                        help="inference threads end to end (default: every core)")
    parser.add_argument("--no-write", action="store_true", help="print, do not write the .md")
    arguments = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    results = measure(arguments.count, arguments.rounds, not arguments.no_serial,
                      arguments.end_to_end_threads)
    command = "python -m bench.pipeline" + (
        f" --count {arguments.count}" if arguments.count != 500 else "") + (
        f" --end-to-end-threads {arguments.end_to_end_threads}"
        if arguments.end_to_end_threads else "")
    section = render(results, command)
    print(section)
    if not arguments.no_write:
        write_section(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
