"""`OUT/shards/index.json`: every shard of a run with its sample count, members, bytes and key range.

A loader needs the sample count of each shard to size an epoch (webdataset's `with_epoch`), split shards
evenly over ranks and workers, or open a shard list by index; counting them means reading every tar.
The writers already know these numbers, so each task's summary (and marker) carries them
(`curation.writer.shard_index_entries`) and the driver merges the summaries of every finished task into
one file at the end of a run. The file follows webdataset's `wids` shard-index layout (`__kind__`,
`wids_version`, `shardlist` of `{url, nsamples}`), `url` relative to the index file's directory, with
reelmill's fields added. Shards of tasks whose markers predate the per-shard numbers are counted by
reading their tar headers once.
"""

from __future__ import annotations

import json

from curation import storage
from curation.layout import OutputLayout
from curation.shards import READ_ERRORS, iter_member_keys

KIND = "wids-shard-index-v1"


def write_shard_index(layout: OutputLayout, summaries: list[dict], log=print) -> dict:
    """Merge the tasks' shard numbers into `shards/index.json` (returned as written)."""
    entries: dict[str, dict] = {}
    for summary in summaries:
        known = summary.get("shard_index")
        if known is None:  # a marker from before the per-shard numbers
            known = {f"shards/{name}": None for name in summary.get("shards", [])}
        entries.update(known)
    shardlist = []
    for path in sorted(entries):
        stats = entries[path] or _scan(layout, path, log)
        if stats is None:
            continue
        location, name = path.split("/", 1)
        shardlist.append(
            {"url": name if location == "shards" else f"../{path}", "nsamples": stats["samples"],
             "location": location, "filesize": stats["bytes"], "members": stats["members"],
             "first_key": stats["first_key"], "last_key": stats["last_key"]}
        )  # fmt: skip
    kept = [s for s in shardlist if s["location"] == "shards"]
    index = {
        "__kind__": KIND,
        "wids_version": 1,
        "name": layout.root,
        "shardlist": kept,
        "dropped": [s for s in shardlist if s["location"] == "dropped"],
        "totals": {
            "shards": len(kept),
            "samples": sum(s["nsamples"] for s in kept),
            "bytes": sum(s["filesize"] for s in kept),
        },
    }
    storage.write_bytes(storage.join(layout.shards, "index.json"), json.dumps(index, indent=1).encode())
    return index


def _scan(layout: OutputLayout, path: str, log) -> dict | None:
    """A shard's numbers from its tar headers (None when it is gone or unreadable)."""
    uri = layout.path(*path.split("/"))
    keys: list[str] = []
    members = 0
    try:
        size = storage.size(uri)
        for key in iter_member_keys(uri):
            members += 1
            if key is not None and (not keys or keys[-1] != key):
                keys.append(key)
    except READ_ERRORS as exc:
        log(f"reelmill: shards/index.json: {path} left out ({type(exc).__name__}: {exc})")
        return None
    return {
        "samples": len(keys), "members": members, "bytes": size,
        "first_key": keys[0] if keys else None, "last_key": keys[-1] if keys else None,
    }  # fmt: skip
