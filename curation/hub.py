"""Model look-ups on the Hugging Face Hub that fail in about a second when the hub cannot be reached.

Offline, huggingface_hub retries every request five times with backoff (about 23 s, with two warnings a
try) before a look-up gives up, and a job looks up several models. So the first look-up of a process asks
the hub once, with a short timeout; when it does not answer, the process switches to offline mode
(HF_HUB_OFFLINE, also in the environment, so the Ray workers it starts afterwards inherit it), where a
look-up reads the local cache and fails at once when the model is not there.
"""

from __future__ import annotations

import os
import threading

PROBE_TIMEOUT_S = 3.0
"""How long the hub has to answer one request before the process goes offline."""

_reachable: bool | None = None  # asked once per process


def hub_reachable(timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether model look-ups can reach the hub. False when offline mode was set by the user, or when the
    hub did not answer here (then offline mode is set for the rest of the process and its children)."""
    global _reachable
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if _reachable is None:
        _reachable = _answers(constants.ENDPOINT, timeout_s)
        if not _reachable:
            os.environ["HF_HUB_OFFLINE"] = "1"
            constants.HF_HUB_OFFLINE = True  # read at call time by huggingface_hub and transformers
    return _reachable


def probe_failure() -> str | None:
    """Why this process went offline, when it was our probe (for error messages); None otherwise."""
    if _reachable is False:
        return f"the hub {_endpoint()} did not answer within {PROBE_TIMEOUT_S:g} s"
    return None


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _answers(endpoint: str, timeout_s: float) -> bool:
    """Whether the endpoint answers one HEAD request (any status) within `timeout_s`. Asked through the hub
    client's own session (its proxies and certificates), in a thread: name resolution is not bounded by
    the request's timeout."""
    from huggingface_hub.utils import get_session

    answered: list[bool] = []

    def ask() -> None:
        try:
            get_session().head(endpoint, timeout=timeout_s)
            answered.append(True)
        except Exception:  # noqa: BLE001 (whatever failed, the hub did not answer)
            answered.append(False)

    thread = threading.Thread(target=ask, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout_s + 0.5)
    return bool(answered and answered[0])
