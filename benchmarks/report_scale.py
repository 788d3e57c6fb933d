"""How the report's manifest pass scales: rows/s and peak memory against loading the manifest whole.

Writes synthetic clip manifests (the real CLIP_SCHEMA, parts of 10,000 rows, captions of 2-5 segments
drawn from a 5,000-word vocabulary, a tenth of them exact duplicates) of growing size, then measures, each
in a fresh process, (a) `captioning.report.collect.collect`, the report's one streaming pass (funnel,
score distributions, caption statistics, the example pool), and (b) the peer: `pandas.read_parquet` of
the same manifest, what one would do by hand before computing anything. Peak resident memory is the
process's high-water mark (VmHWM, reset after imports) minus its size then.

    .venv/bin/python benchmarks/report_scale.py            # 50k and 200k rows, table on stdout
    .venv/bin/python benchmarks/report_scale.py --rows 20000 100000 400000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PART_ROWS = 10_000


def _reset_peak() -> None:
    """Start the kernel's high-water mark (VmHWM) afresh at the current resident size (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def write_run(directory: str, rows: int, seed: int = 0) -> None:
    from curation import storage
    from curation.layout import OutputLayout
    from curation.record import CLIP_SCHEMA, INTEGER_SCORES, SCORE_NAMES, manifest_row
    from curation.writer import parquet_bytes

    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(5000)]
    layout = OutputLayout(directory)
    previous = None
    for part in range(0, rows, PART_ROWS):
        batch = []
        for i in range(part, min(rows, part + PART_ROWS)):
            duration = rng.uniform(2, 10)
            n = rng.randint(2, 5)
            edges = sorted(rng.uniform(0, duration) for _ in range(n - 1))
            bounds = [0.0, *edges, duration]
            caption = previous if previous and rng.random() < 0.1 else {
                "summary": " ".join(rng.choices(vocabulary, k=15)),
                "segments": [{"start_s": bounds[k], "end_s": bounds[k + 1], "text": " ".join(rng.choices(vocabulary, k=10))}
                             for k in range(n)],
            }  # fmt: skip
            previous = caption
            batch.append(manifest_row({
                "clip_id": f"clip-{i:09d}", "source": f"s3://raw/video-{i // 20}.mp4", "duration_s": duration,
                "kept": True, "shard": f"shard-{i // 1000:06d}-000.tar", "location": "shards",
                "width": 1280, "height": 720,
                "scores": {n: rng.randint(0, 9) if n in INTEGER_SCORES else rng.random() for n in SCORE_NAMES},
                "caption": {**caption, "model": "bench", "prompt_id": "dense_v1"},
            }))  # fmt: skip
        storage.write_bytes(
            layout.manifest_part(layout.clips_manifest, part // PART_ROWS), parquet_bytes(batch, CLIP_SCHEMA)
        )
    run = {"job": "curate", "config": {"filters": {"rules": [{"score": "motion", "min": 0.1}]}}}
    storage.write_bytes(layout.run_json, json.dumps(run).encode())


def measure(kind: str, directory: str) -> dict:
    """In this (fresh) process: wall seconds and peak RSS above the post-import baseline."""
    import pandas as pd

    from captioning.report.collect import collect, open_run
    from captioning.report.config import ReportConfig

    _reset_peak()
    base = _status_mb("VmRSS")
    started = time.perf_counter()
    if kind == "report":
        found = collect(open_run(directory), ReportConfig(), log=lambda _: None)
        rows = found.captions["counts"]["clips"]
    else:
        frame = pd.read_parquet(os.path.join(directory, "manifest", "clips"))
        rows = len(frame)
    return {
        "kind": kind,
        "rows": rows,
        "wall_s": time.perf_counter() - started,
        "peak_mb": _status_mb("VmHWM") - base,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--measure", choices=["report", "pandas"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.dir)))
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="reelmill-report-bench-") as tmp:
        for rows in args.rows:
            directory = os.path.join(tmp, f"run-{rows}")
            write_run(directory, rows)
            for kind in ("report", "pandas"):
                out = subprocess.run(
                    [sys.executable, __file__, "--measure", kind, "--dir", directory],
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
                results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{os.cpu_count()} CPUs; peak = resident memory above the process after imports\n")
    print("| rows | report pass s | rows/s | report peak MB | pandas load s | pandas peak MB | peak ratio |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for rows in args.rows:
        r = next(x for x in results if x["kind"] == "report" and x["rows"] == rows)
        p = next(x for x in results if x["kind"] == "pandas" and x["rows"] == rows)
        print(
            f"| {rows:,} | {r['wall_s']:.1f} | {rows / r['wall_s']:,.0f} | {r['peak_mb']:.0f} | "
            f"{p['wall_s']:.1f} | {p['peak_mb']:.0f} | {r['peak_mb'] / max(p['peak_mb'], 1):.2f}x |"
        )


if __name__ == "__main__":
    main()
