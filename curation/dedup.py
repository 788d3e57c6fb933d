"""Semantic near-duplicates among clip embeddings: k-means clusters, then a greedy pass inside each cluster.

Pure array logic (numpy and faiss), no I/O; `jobs/dedup.py` reads the manifests, spreads the per-cluster
work over Ray and writes `manifest/dedup/`.

The method, as in SemDeDup (Abbas et al. 2023): L2-normalised embeddings are clustered with spherical
k-means (`k = ceil(n / target_cluster_size)`, one cluster when the corpus is tiny); inside a cluster the
clips are taken in keep order (best first: `keep_by` scores descending, then `clip_id`), and each is a
duplicate of the first clip already kept whose cosine similarity to it exceeds the threshold, else kept.
Clusters bound the work to about `n * target_cluster_size` dot products instead of `n^2` (a cluster
k-means makes much larger than the target costs its size squared, in blocks of bounded memory).

Cluster-based dedup misses a pair that straddles a cluster boundary. To catch most of them each clip
also visits its next `probe - 1` nearest clusters: there it is compared with the clips that cluster
kept, in the same matrix products (`dedup_cluster`'s `visitors`), and `resolve_cross` then applies
the same greedy rule to the pairs found across clusters. A pair whose clips lie in clusters that are
not among each other's `probe` nearest is still missed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NON_FINITE = "non_finite"
"""An embedding holding NaN or inf."""
ZERO_VECTOR = "zero_vector"
"""An embedding of (near) zero length: it has no direction to compare."""
BLOCK = 1024
"""Clips compared per matrix product: memory stays at BLOCK x (kept clips of the cluster) floats."""
MAX_CROSS_PAIRS = 64
"""Pairs above the threshold kept per visiting clip and cluster: a clip has few near copies."""


def normalize(
    embeddings: np.ndarray, dtype: type = np.float32, chunk: int = 65536, inplace: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(unit vectors [N, D] of `dtype`, reason per row: None for a usable row, else NON_FINITE or
    ZERO_VECTOR), computed `chunk` rows at a time so float16 input never exists as a float32 copy;
    `inplace` writes them over `embeddings` when it has that dtype (no second copy of the corpus).

    Unusable rows come back as zero vectors, so they can stay in the array without matching anything."""
    n = len(embeddings)
    if inplace and embeddings.dtype == dtype and embeddings.flags.writeable:
        out = embeddings
    else:
        out = np.empty((n, embeddings.shape[1] if n else 0), dtype=dtype)
    reasons = np.full(n, None, dtype=object)
    for start in range(0, n, chunk):
        x = embeddings[start : start + chunk].astype(np.float32)  # a copy: divided in place below
        sq = np.einsum("ij,ij->i", x, x)
        finite = np.ones(len(x), dtype=bool)
        odd = np.flatnonzero(~np.isfinite(sq))  # NaN or inf inside, or a sum too large for float32
        if len(odd):
            whole = np.isfinite(x[odd]).all(axis=1)
            finite[odd[~whole]] = False
            x[odd[~whole]], sq[odd[~whole]] = 0.0, 0.0
            big = odd[whole]
            wide = x[big].astype(np.float64)
            x[big], sq[big] = wide / np.linalg.norm(wide, axis=1, keepdims=True), 1.0
        norms = np.sqrt(sq)
        usable = finite & (norms > 1e-6)
        x /= np.where(usable, norms, 1.0)[:, None]
        x[~usable] = 0.0
        out[start : start + len(x)] = x
        part = reasons[start : start + len(x)]
        part[~finite] = NON_FINITE
        part[finite & ~usable] = ZERO_VECTOR
    return out, reasons


def num_clusters(n: int, target_cluster_size: int) -> int:
    """k for `n` clips: about `target_cluster_size` clips per cluster, at least one."""
    return max(1, math.ceil(n / max(1, target_cluster_size)))


def keep_order(columns: list[np.ndarray], clip_ids: np.ndarray) -> np.ndarray:
    """The rank of each clip in keep order (0: kept first): each of `columns` descending, nulls (NaN)
    after every number, then `clip_id` ascending so that ties are broken the same on every run."""
    ids = np.asarray(clip_ids, dtype=object)
    id_rank = np.empty(len(ids), dtype=np.int64)  # np.lexsort takes no strings: their sorted position
    id_rank[np.argsort(ids, kind="stable")] = np.arange(len(ids))
    keys = [id_rank]  # np.lexsort: the last key is the primary one
    for values in reversed(columns):
        v = np.asarray(values, dtype=np.float64)
        missing = ~np.isfinite(v)
        keys += [np.where(missing, 0.0, -v), missing]
    order = np.lexsort(keys)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


def _faiss():
    import faiss

    return faiss


def use_gpu(device: str) -> bool:
    """Whether faiss runs on a GPU: `auto` when this faiss build sees one, `gpu` insists, `cpu` never."""
    if device == "cpu":
        return False
    gpus = _faiss().get_num_gpus()
    if device == "gpu" and gpus == 0:
        from curation.config import ConfigError

        raise ConfigError("device: gpu, but faiss sees no GPU (faiss-cpu is installed, or no CUDA device)")
    return gpus > 0


def kmeans(
    x: np.ndarray,
    rows: np.ndarray,
    k: int,
    seed: int = 0,
    iterations: int = 20,
    max_points_per_centroid: int = 256,
    gpu: bool = False,
    verbose: bool = False,
) -> np.ndarray:
    """Spherical k-means centroids [k, D] of the unit vectors `x[rows]`, trained on a seeded sample of
    at most `max_points_per_centroid * k` of them (only the sample is copied to float32); `verbose`:
    faiss prints each iteration (the progress of a long training)."""
    k = max(1, min(k, len(rows)))
    if len(rows) > k * max_points_per_centroid:
        rows = np.sort(np.random.default_rng(seed).choice(rows, k * max_points_per_centroid, replace=False))
    sample = np.ascontiguousarray(x[rows], dtype=np.float32)
    if k == 1:
        centre = sample.mean(axis=0, keepdims=True)
        norm = float(np.linalg.norm(centre))
        return (centre / norm if norm > 0 else centre).astype(np.float32)
    faiss = _faiss()
    km = faiss.Kmeans(
        x.shape[1], k, niter=iterations, seed=seed, spherical=True, gpu=gpu,
        max_points_per_centroid=max_points_per_centroid, min_points_per_centroid=1, verbose=verbose,
    )  # fmt: skip
    km.train(sample)
    return np.asarray(km.centroids, dtype=np.float32)


def assign(
    x: np.ndarray,
    rows: np.ndarray,
    centroids: np.ndarray,
    probe: int = 1,
    batch: int = 65536,
    gpu: bool = False,
) -> np.ndarray:
    """The `probe` nearest centroids of each of `x[rows]` [len(rows), probe] (int64), nearest first."""
    faiss = _faiss()
    probe = max(1, min(probe, len(centroids)))
    index = faiss.IndexFlatIP(centroids.shape[1])
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    out = np.empty((len(rows), probe), dtype=np.int64)
    for start in range(0, len(rows), batch):
        part = np.ascontiguousarray(x[rows[start : start + batch]], dtype=np.float32)
        _, out[start : start + len(part)] = index.search(part, probe)
    return out


@dataclass
class ClusterResult:
    """What `dedup_cluster` found, in the cluster's own positions (members as given, in keep order)."""

    duplicate_of: np.ndarray
    """[m] int64: the position of the kept clip each member duplicates, -1 for a kept one."""
    similarity: np.ndarray
    """[m] float32: cosine to that clip, NaN for a kept one."""
    nearest_kept: np.ndarray
    """[m] float32: for a kept clip, its highest cosine to another kept clip of the cluster (how close
    it came to being a duplicate), NaN when it is alone or a duplicate."""
    cross: list[tuple[int, int, float]]
    """(visitor position, member position, cosine) for each visitor and kept member above the
    threshold (at most MAX_CROSS_PAIRS per visitor, best-ranked members first)."""


def dedup_cluster(
    members: np.ndarray, threshold: float, visitors: np.ndarray | None = None, block: int = BLOCK
) -> ClusterResult:
    """The greedy pass over one cluster: `members` [m, D] unit vectors in keep order (best first); each
    is a duplicate of the first kept member whose cosine to it exceeds `threshold`, else kept.
    `visitors` [v, D]: clips of other clusters that have this one among their nearest; each is compared
    with the kept members (see `ClusterResult.cross`)."""
    m = len(members)
    dup = np.full(m, -1, dtype=np.int64)
    sim = np.full(m, np.nan, dtype=np.float32)
    nearest = np.full(m, -np.inf, dtype=np.float32)
    kept_pos = np.empty(m, dtype=np.int64)
    kept_vecs = np.empty_like(members, dtype=np.float32)
    n_kept = 0
    for start in range(0, m, block):
        rows = np.asarray(members[start : start + block], dtype=np.float32)
        before = rows @ kept_vecs[:n_kept].T if n_kept else np.empty((len(rows), 0), np.float32)
        inside = rows @ rows.T  # [b, b]
        above_before = before > threshold
        first_before = np.full(len(rows), -1, dtype=np.int64)
        if n_kept:
            first_before = np.where(above_before.any(axis=1), above_before.argmax(axis=1), -1)
        marked = first_before >= 0
        hit = np.flatnonzero(marked)
        dup[start + hit] = kept_pos[first_before[hit]]
        sim[start + hit] = before[hit, first_before[hit]]
        # in the block, only rows above the threshold to an earlier row need the sequential rule
        earlier = np.tril(inside > threshold, k=-1)
        kept_mask = ~marked
        for i in np.flatnonzero(earlier.any(axis=1) & ~marked):
            hits = np.flatnonzero(earlier[i, :i] & kept_mask[:i])
            if len(hits):
                j = hits[0]
                dup[start + i], sim[start + i], kept_mask[i] = start + j, inside[i, j], False
        here = np.flatnonzero(kept_mask)
        if len(here):
            if n_kept:  # closest calls between this block's kept clips and earlier ones, both ways
                against = before[here]
                nearest[start + here] = np.maximum(nearest[start + here], against.max(axis=1))
                nearest[kept_pos[:n_kept]] = np.maximum(nearest[kept_pos[:n_kept]], against.max(axis=0))
            if len(here) > 1:
                within = inside[np.ix_(here, here)]
                np.fill_diagonal(within, -np.inf)
                nearest[start + here] = np.maximum(nearest[start + here], within.max(axis=1))
            kept_pos[n_kept : n_kept + len(here)] = start + here
            kept_vecs[n_kept : n_kept + len(here)] = rows[here]
            n_kept += len(here)
    nearest[~np.isfinite(nearest)] = np.nan
    nearest[dup >= 0] = np.nan
    cross = _visits(visitors, kept_vecs[:n_kept], kept_pos[:n_kept], threshold, block)
    return ClusterResult(dup, sim, nearest, cross)


def _visits(visitors, kept_vecs, kept_pos, threshold, block) -> list[tuple[int, int, float]]:
    """(visitor, member position, cosine) above `threshold` between visitors and kept members."""
    pairs: list[tuple[int, int, float]] = []
    if visitors is None or not len(visitors) or not len(kept_vecs):
        return pairs
    for start in range(0, len(visitors), block):
        sims = np.asarray(visitors[start : start + block], dtype=np.float32) @ kept_vecs.T
        for i, j in zip(*np.nonzero(sims > threshold), strict=True):  # row-major: members in keep order
            pairs.append((start + int(i), int(kept_pos[j]), float(sims[i, j])))
    if len(pairs) > MAX_CROSS_PAIRS:  # only ever a pile of near-identical clips
        counts: dict[int, int] = {}
        kept_pairs = []
        for p in pairs:
            counts[p[0]] = counts.get(p[0], 0) + 1
            if counts[p[0]] <= MAX_CROSS_PAIRS:
                kept_pairs.append(p)
        pairs = kept_pairs
    return pairs


def resolve_cross(
    duplicate_of: np.ndarray, similarity: np.ndarray, rank: np.ndarray, pairs: list[tuple[int, int, float]]
) -> int:
    """Apply the greedy rule to pairs found across clusters (global row indices, cosine above the
    threshold); `duplicate_of` (-1: kept) and `similarity` are updated in place. Clips are taken in keep
    order: a kept clip with a better-ranked, still kept partner becomes that partner's duplicate (the
    best-ranked one). The clips its own cluster had marked as its duplicates then point at the clip it
    duplicates, their `similarity` left as it was (their cosine to the clip that stood for them).
    Returns how many clips became duplicates here."""
    partners: dict[int, list[tuple[int, float]]] = {}
    for a, b, s in pairs:
        if duplicate_of[a] >= 0 or duplicate_of[b] >= 0:
            continue  # a duplicate inside its own cluster already
        partners.setdefault(a, []).append((b, s))
        partners.setdefault(b, []).append((a, s))
    changed = {}
    for clip in sorted(partners, key=lambda c: rank[c]):
        better = [(rank[p], p, s) for p, s in partners[clip] if rank[p] < rank[clip] and duplicate_of[p] < 0]
        if better:
            _, target, s = min(better)
            duplicate_of[clip], similarity[clip] = target, s
            changed[clip] = target
    if changed:  # a clip that became a duplicate took its own duplicates with it
        follow = np.flatnonzero(np.isin(duplicate_of, np.fromiter(changed, dtype=np.int64)))
        for clip in follow:
            if int(clip) not in changed:
                duplicate_of[clip] = changed[int(duplicate_of[clip])]
    return len(changed)


def dedup(
    embeddings: np.ndarray,
    rank: np.ndarray,
    threshold: float,
    target_cluster_size: int = 1000,
    probe: int = 3,
    seed: int = 0,
    iterations: int = 20,
    max_points_per_centroid: int = 256,
    gpu: bool = False,
    dtype: type = np.float32,
    timings: dict | None = None,
    inplace: bool = False,
) -> dict[str, np.ndarray]:
    """The whole method in one process (the job spreads the per-cluster step over Ray): `embeddings`
    [N, D], `rank` [N] (keep order, see `keep_order`), vectors held as `dtype` (float16 halves the
    memory; cosines then carry about 1e-3 of rounding; `inplace`: normalised over `embeddings` when it
    has that dtype). Returns per row: `cluster` (-1 for an unusable embedding), `duplicate_of` (row
    index, -1: kept), `similarity`, `nearest_kept`, `reason`; `timings`, when given, gets each phase's
    seconds."""
    clock = Clock(timings)
    x, reasons = normalize(embeddings, dtype, inplace=inplace)
    usable = np.flatnonzero(reasons == None)  # noqa: E711 (elementwise on an object array)
    out = empty_result(len(x), reasons)
    clock.lap("normalize_s")
    if not len(usable):
        return out
    k = num_clusters(len(usable), target_cluster_size)
    centroids = kmeans(x, usable, k, seed, iterations, max_points_per_centroid, gpu)
    clock.lap("kmeans_s")
    probes = assign(x, usable, centroids, probe, gpu=gpu)
    out["cluster"][usable] = probes[:, 0]
    clock.lap("assign_s")
    pairs: list = []
    for plan in plan_clusters(usable, probes, rank):
        result = dedup_cluster(x[plan.members], threshold, x[plan.visitors])
        apply_cluster(out, plan, result, pairs)
    clock.lap("clusters_s")
    resolve_cross(out["duplicate_of"], out["similarity"], rank, pairs)
    clock.lap("cross_s")
    return out


def empty_result(n: int, reasons: np.ndarray) -> dict[str, np.ndarray]:
    """`dedup`'s per-row arrays before any clip is compared: every clip kept, none clustered."""
    return {
        "cluster": np.full(n, -1, dtype=np.int64),
        "duplicate_of": np.full(n, -1, dtype=np.int64),
        "similarity": np.full(n, np.nan, dtype=np.float32),
        "nearest_kept": np.full(n, np.nan, dtype=np.float32),
        "reason": reasons,
    }


class Clock:
    """Seconds per phase into `timings` (nothing when it is None): `NAME_s` of wall time, and
    `NAME_cpu_s` of this process's CPU time (all its threads; on a busy machine the steadier number)."""

    def __init__(self, timings: dict | None):
        import time

        self.timings, self.now, self.cpu = timings, time.perf_counter, time.process_time
        self.last, self.last_cpu = self.now(), self.cpu()

    def lap(self, name: str) -> None:
        now, cpu = self.now(), self.cpu()
        if self.timings is not None:
            self.timings[name] = self.timings.get(name, 0.0) + now - self.last
            cpu_name = name.removesuffix("_s") + "_cpu_s"
            self.timings[cpu_name] = self.timings.get(cpu_name, 0.0) + cpu - self.last_cpu
        self.last, self.last_cpu = now, cpu


@dataclass
class ClusterPlan:
    """One cluster's work: its members (row indices, in keep order) and visiting rows."""

    cluster: int
    members: np.ndarray
    visitors: np.ndarray


def plan_clusters(rows: np.ndarray, probes: np.ndarray, rank: np.ndarray) -> list[ClusterPlan]:
    """Per cluster: `rows` whose nearest centroid it is (sorted by `rank`), and those that have it
    among their further `probes`. `rows` [n] are row indices, `probes` [n, P] their nearest clusters."""
    order = np.argsort(rank[rows], kind="stable")
    rows, probes = rows[order], probes[order]
    home = probes[:, 0]
    by_home = np.argsort(home, kind="stable")  # stable: keep order inside each cluster
    bounds = np.searchsorted(home[by_home], np.arange(home.max() + 2))
    none = np.empty(0, dtype=np.int64)
    visiting: dict[int, np.ndarray] = {}
    if probes.shape[1] > 1:
        other = probes[:, 1:].ravel()
        who = np.repeat(rows, probes.shape[1] - 1)
        by_other = np.argsort(other, kind="stable")
        other, who = other[by_other], who[by_other]
        starts = np.searchsorted(other, np.arange(home.max() + 2))
        visiting = {c: who[starts[c] : starts[c + 1]] for c in range(home.max() + 1)}
    plans = []
    for c in range(home.max() + 1):
        members = rows[by_home[bounds[c] : bounds[c + 1]]]
        if len(members):
            plans.append(ClusterPlan(c, members, visiting.get(c, none)))
    return plans


def apply_cluster(out: dict, plan: ClusterPlan, result: ClusterResult, pairs: list) -> None:
    """Write one cluster's result into `dedup`'s per-row arrays (row indices), its cross pairs to `pairs`."""
    dup = result.duplicate_of
    marked = dup >= 0
    out["duplicate_of"][plan.members[marked]] = plan.members[dup[marked]]
    out["similarity"][plan.members] = result.similarity
    out["nearest_kept"][plan.members] = result.nearest_kept
    pairs += [(int(plan.visitors[v]), int(plan.members[m]), s) for v, m, s in result.cross]
