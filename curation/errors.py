"""Input errors as values: a rejected input carries a short code and a detail for the manifest."""

from __future__ import annotations


class InputRejected(Exception):
    """An input video (or a part of it) cannot be used; this is about the input, not a bug.

    `code` is one of a small fixed vocabulary (not_found, empty_file, not_a_video, no_video_stream,
    truncated, undecodable, too_short, single_frame, unreadable) so runs can be aggregated by it;
    `detail` says what exactly was seen.
    """

    def __init__(self, code: str, detail: str = ""):
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail

    @property
    def reason(self) -> str:
        return str(self)
