"""What run.json records about the software a run used."""

from __future__ import annotations

import importlib.metadata
import platform

from curation import ffmpeg_tools

PACKAGES = (
    "reelmill",
    "ray",
    "pyarrow",
    "webdataset",
    "scenedetect",
    "opencv-python",
    "ffmpeg-python",
    "numpy",
)


def versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    out = {"python": platform.python_version(), "ffmpeg": ffmpeg_tools.version()}
    for name in (*PACKAGES, *extra):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
