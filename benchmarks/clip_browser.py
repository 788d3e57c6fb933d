"""How the clip browser (report/clips.html) scales: index build time and size, page load, filter and sort.

Writes a synthetic clip manifest of each size (ClipRecord rows, as curate writes them; the generator the
browser's tests use), builds the browser's files, then loads the page in headless Chromium over CDP and
times, in the page, a filter (kept clips) and a sort by a score, and counts the table rows in the DOM (virtual
scrolling keeps that bounded whatever the run's size).

    .venv/bin/python benchmarks/clip_browser.py                 # 10k and 100k rows, table on stdout
    .venv/bin/python benchmarks/clip_browser.py --rows 100000 300000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

FILTER_MS = """(() => { const t = performance.now(); const e = document.querySelector('#f-status');
e.value = 'kept'; e.dispatchEvent(new Event('change')); return performance.now() - t; })()"""
SORT_MS = """(() => { const t = performance.now();
document.querySelector("#clips-table .vt-head [data-col='motion']").click(); return performance.now() - t; })()"""


def measure(rows: int, directory: Path) -> dict:
    from cdp import Chromium
    from test_clip_browser import write_synthetic_run

    from captioning.report.browser import write_browser
    from captioning.report.collect import open_run
    from captioning.report.config import ReportConfig

    write_synthetic_run(directory, rows, "filter", [{"score": "motion", "min": 0.004}])
    started = time.perf_counter()
    counts = write_browser(
        open_run(str(directory)),
        ReportConfig(browser_previews=0),
        str(directory / "report"),
        log=lambda _: None,
    )
    build_s = time.perf_counter() - started
    with Chromium(1400, 900, timeout_s=120) as page:
        started = time.perf_counter()
        page.open(
            (directory / "report" / "clips.html").as_uri(), "document.documentElement.dataset.ready === '1'"
        )
        load_s = time.perf_counter() - started
        filter_ms = page.eval(FILTER_MS)
        sort_ms = page.eval(SORT_MS)
        dom_rows = page.eval("document.querySelectorAll('#clips-table .vt-row').length")
        errors = list(page.errors)
    return {
        "rows": rows, "build_s": build_s, "index_mb": counts["bytes"] / 1e6, "load_s": load_s,
        "filter_ms": filter_ms, "sort_ms": sort_ms, "dom_rows": dom_rows, "errors": errors,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="reelmill-browser-bench-") as tmp:
        for rows in args.rows:
            results.append(measure(rows, Path(tmp) / f"run-{rows}"))
    print(f"{os.cpu_count()} CPUs; load = navigation to the table drawn; filter and sort timed in the page\n")
    print("| rows | build s | index MB | page load s | filter ms | sort ms | rows in DOM | page errors |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['rows']:,} | {r['build_s']:.1f} | {r['index_mb']:.1f} | {r['load_s']:.1f} | "
            f"{r['filter_ms']:.0f} | {r['sort_ms']:.0f} | {r['dom_rows']} | {len(r['errors'])} |"
        )


if __name__ == "__main__":
    main()
