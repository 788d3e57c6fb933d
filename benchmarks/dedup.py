"""Semantic dedup at scale: 1 million 768-d float16 embeddings on 2 cores, time per phase and peak memory,
recall of injected near-copies, and the exact all-pairs pass beside it on a 50k subset.

The embeddings are synthetic, with a known truth: scenes of five distinct shots (cosine 0.9 to the
scene's centre, so about 0.81 to each other, as different shots of one scene are with CLIP ViT-L/14),
then `--copy-rate` of the rows replaced by near-copies of a random other row (cosine 0.985-0.998 to it,
as re-encodes and small crops are). They are written once to an .npy file; each measurement runs in a
fresh process that loads it (the `load` phase), so its peak resident memory (VmHWM) is the method's.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/dedup.py               # 1M rows, table on stdout
    .venv/bin/python benchmarks/dedup.py --n 200000 --subset 20000        # smaller and quicker

`curation.dedup.dedup` is measured in one process (`reelmill dedup` runs its per-cluster phase as Ray
tasks over the same arrays; on one machine that adds Ray's start and the object-store copy). The exact
pass is the same greedy rule over all pairs (`dedup_cluster` on the whole subset as one cluster): the
peer the clustering approximates; the table shows its time against the clustered pass on the same rows,
and how many of its duplicates the clustered pass also found.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CHUNK = 50_000
SHOTS_PER_SCENE = 5


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _near(v, cos, rng):
    """Rows of unit vectors whose cosine to the rows of `v` (unit) is `cos` (a scalar or one per row)."""
    import numpy as np

    u = rng.standard_normal(v.shape, dtype=np.float32)
    u -= (u * v).sum(axis=1, keepdims=True) * v
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    cos = np.asarray(cos, dtype=np.float32).reshape(-1, 1)
    return cos * v + np.sqrt(1 - cos**2) * u


def generate(path: str, n: int, dim: int, copy_rate: float, seed: int) -> None:
    """`path`.npy: float16 [n, dim] embeddings; `path`.truth.npy: for each row the row it copies, or -1."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = np.lib.format.open_memmap(path + ".npy", mode="w+", dtype=np.float16, shape=(n, dim))
    for start in range(0, n, CHUNK):
        rows = min(CHUNK, n - start)
        scenes = rng.standard_normal((-(-rows // SHOTS_PER_SCENE), dim), dtype=np.float32)
        scenes /= np.linalg.norm(scenes, axis=1, keepdims=True)
        centres = np.repeat(scenes, SHOTS_PER_SCENE, axis=0)[:rows]
        x[start : start + rows] = _near(centres, 0.9, rng)
    copies = np.sort(rng.choice(n, int(n * copy_rate), replace=False))
    originals = rng.choice(np.setdiff1d(np.arange(n), copies), len(copies))  # never a copy itself
    truth = np.full(n, -1, dtype=np.int64)
    for start in range(0, len(copies), CHUNK):
        rows, of = copies[start : start + CHUNK], originals[start : start + CHUNK]
        source = x[of].astype(np.float32)
        source /= np.linalg.norm(source, axis=1, keepdims=True)
        x[rows] = _near(source, rng.uniform(0.985, 0.998, len(rows)), rng)
        truth[rows] = of
    x.flush()
    np.save(path + ".truth.npy", truth)


def score(duplicate_of, group) -> dict:
    """Recall of the injected copies: each row of a group (an original and its copies, those present) ends
    with the same kept clip as the group's first row; false merges: rows marked as duplicates of a row of
    another group."""
    import numpy as np

    kept_for = np.where(duplicate_of >= 0, duplicate_of, np.arange(len(duplicate_of)))
    first = {}
    for i, g in enumerate(group.tolist()):
        first.setdefault(g, i)
    head = np.array([first[g] for g in group.tolist()])
    copies = np.flatnonzero(head != np.arange(len(group)))
    found = kept_for[copies] == kept_for[head[copies]]
    marked = np.flatnonzero(duplicate_of >= 0)
    wrong = group[marked] != group[duplicate_of[marked]]
    return {
        "copies": len(copies),
        "recall": float(found.mean()) if len(copies) else 1.0,
        "duplicates": len(marked),
        "false_merges": int(wrong.sum()),
    }


def measure(path: str, args) -> dict:
    """One fresh process: load, run the clustered method with its phase timings, score it."""
    import faiss
    import numpy as np

    from curation import dedup as method

    faiss.omp_set_num_threads(args.threads)
    base_mb = _status_mb("VmRSS")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    cpu_started = time.process_time()
    x = np.load(path + ".npy")
    truth = np.load(path + ".truth.npy")
    rng = np.random.default_rng(args.seed + 1)
    aesthetic, duration = rng.normal(5, 1, len(x)), rng.uniform(2, 10, len(x))
    rank = method.keep_order(
        [aesthetic, duration], np.array([f"{i:07d}" for i in range(len(x))], dtype=object)
    )
    timings["load_s"] = time.perf_counter() - started
    timings["load_cpu_s"] = time.process_time() - cpu_started
    out = method.dedup(
        x, rank, args.threshold, args.target_cluster_size, args.probe, args.seed, args.kmeans_iterations,
        args.max_points_per_centroid, dtype=np.float16, timings=timings, inplace=True,
    )  # fmt: skip
    total = time.perf_counter() - started
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {"n": len(x), "wall_s": total, **timings, "peak_mb": _status_mb("VmHWM"), "base_mb": base_mb}
    result |= {"cpu_s": usage.ru_utime + usage.ru_stime, "load_avg": os.getloadavg()[0]}
    group = np.where(truth >= 0, truth, np.arange(len(truth)))
    result |= score(out["duplicate_of"], group)
    if args.subset:
        result["subset"] = compare_exact(x, truth, rank, args)
    return result


def compare_exact(x, truth, rank, args) -> dict:
    """On a random subset: the exact all-pairs greedy pass against the clustered one, same rows."""
    import numpy as np

    from curation import dedup as method

    rng = np.random.default_rng(args.seed + 2)
    rows = np.sort(rng.choice(len(x), args.subset, replace=False))
    sub = x[rows]
    group = np.where(truth >= 0, truth, np.arange(len(truth)))[rows]  # original's row, for all present
    sub_rank = np.argsort(np.argsort(rank[rows]))
    started = time.perf_counter()
    clustered = method.dedup(
        sub, sub_rank, args.threshold, args.target_cluster_size, args.probe, args.seed,
        args.kmeans_iterations, args.max_points_per_centroid, dtype=np.float16,
    )  # fmt: skip
    clustered_s = time.perf_counter() - started
    started = time.perf_counter()
    unit, _ = method.normalize(sub, np.float16)
    order = np.argsort(sub_rank)
    exact = method.dedup_cluster(unit[order], args.threshold)
    exact_s = time.perf_counter() - started
    exact_dup = np.full(len(sub), -1)
    marked = exact.duplicate_of >= 0
    exact_dup[order[marked]] = order[exact.duplicate_of[marked]]
    same = (clustered["duplicate_of"] >= 0) == (exact_dup >= 0)
    return {
        "rows": len(rows),
        "clustered_s": clustered_s,
        "exact_s": exact_s,
        "speedup": exact_s / clustered_s,
        "exact_duplicates": int((exact_dup >= 0).sum()),
        "clustered_duplicates": int((clustered["duplicate_of"] >= 0).sum()),
        "same_decision": float(same.mean()),
        "exact": score(exact_dup, group),
        "clustered": score(clustered["duplicate_of"], group),
    }


def table(r: dict, args) -> str:
    phases = ("load_s", "normalize_s", "kmeans_s", "assign_s", "clusters_s", "cross_s")
    lines = [
        f"{r['n']:,} x {args.dim} float16 embeddings, {args.copy_rate:.0%} injected near-copies, threshold "
        f"{args.threshold}, target cluster size {args.target_cluster_size} "
        f"(k = {-(-r['n'] // args.target_cluster_size)}), probe {args.probe}, k-means "
        f"{args.kmeans_iterations} iterations on {args.max_points_per_centroid} clips per centroid, "
        f"{args.threads} threads",
        "",
        "| phase | wall s | CPU s |",
        "| --- | ---: | ---: |",
        *[f"| {p[:-2]} | {r.get(p, 0.0):.1f} | {r.get(p[:-2] + '_cpu_s', 0.0):.1f} |" for p in phases],
        f"| **total** | **{r['wall_s']:.1f}** | **{r['cpu_s']:.1f}** |",
        "",
        f"load average {r['load_avg']:.1f} at the end (over {args.threads}: other work shared the cores, "
        "and wall time is longer than the CPU time would take alone)",
        f"peak resident memory {r['peak_mb'] / 1024:.2f} GiB (the embeddings alone: "
        f"{r['n'] * args.dim * 2 / 2**30:.2f} GiB float16); recall of injected copies {r['recall']:.4f} "
        f"({r['copies']:,} copies), {r['duplicates']:,} duplicates marked, {r['false_merges']} false merges",
    ]
    s = r.get("subset")
    if s:
        lines += [
            "",
            f"| {s['rows']:,}-row subset | seconds | duplicates | recall of copies | false merges |",
            "| --- | ---: | ---: | ---: | ---: |",
            f"| exact all-pairs greedy | {s['exact_s']:.1f} | {s['exact_duplicates']:,} | "
            f"{s['exact']['recall']:.4f} | {s['exact']['false_merges']} |",
            f"| clustered (k-means + probe {args.probe}) | {s['clustered_s']:.1f} | "
            f"{s['clustered_duplicates']:,} | {s['clustered']['recall']:.4f} | "
            f"{s['clustered']['false_merges']} |",
            "",
            f"clustered / exact: {s['speedup']:.1f}x faster, the same decision for {s['same_decision']:.2%} "
            "of the rows",
        ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--copy-rate", type=float, default=0.1)
    p.add_argument("--subset", type=int, default=50_000, help="rows for the exact comparison (0: none)")
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--target-cluster-size", type=int, default=1000)
    p.add_argument("--probe", type=int, default=3)
    # DedupConfig's defaults (not imported: jobs.job_configs brings torch, which would count in the peak)
    p.add_argument("--kmeans-iterations", type=int, default=20)
    p.add_argument("--max-points-per-centroid", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="directory for the generated embeddings (kept; default: a temp dir)")
    p.add_argument("--json", help="also write the numbers here")
    p.add_argument("--measure", help=argparse.SUPPRESS)  # internal: the fresh measuring process
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.data or tmp
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"emb-{args.n}-{args.dim}-{args.copy_rate}-{args.seed}")
        if not os.path.exists(path + ".truth.npy"):
            started = time.perf_counter()
            generate(path, args.n, args.dim, args.copy_rate, args.seed)
            print(
                f"generated {args.n:,} embeddings in {time.perf_counter() - started:.0f} s", file=sys.stderr
            )
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "OPENBLAS_NUM_THREADS": str(args.threads)}
        done = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--measure", path],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            sys.exit(done.stderr[-4000:])
        result = json.loads(done.stdout.strip().splitlines()[-1])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(table(result, args))


if __name__ == "__main__":
    main()
