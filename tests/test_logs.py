"""What a `reelmill` process prints besides its own lines: each log line once, no retries against an
unreachable hub, none of Ray's notices that nobody can act on. Each check runs in a fresh process: the
settings are process-wide."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time


def python(code: str, env: dict | None = None, text: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=text, timeout=300, env=env or dict(os.environ)
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_hub_fails_model_lookups_in_a_second(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env |= {"HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_HOME": str(tmp_path / "hf")}
    code = """
import os, time
from captioning.caption_config import VLMConfig
from captioning.vlm import ModelLoadError, check_model_available
from training.encoders import VAEConfig, vae_latent_channels
from curation.config import ConfigError
start = time.monotonic()
for look_up in (lambda: check_model_available(VLMConfig(model="reelmill-tests/no-vlm")),
                lambda: vae_latent_channels(VAEConfig(model="reelmill-tests/no-vae"))):
    try:
        look_up()
    except (ModelLoadError, ConfigError) as exc:
        print("ERROR", exc)
print("SECONDS", time.monotonic() - start)
print("ENV", os.environ.get("HF_HUB_OFFLINE"))
"""
    proc = python(code, env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "captioning.vlm.model: cannot load 'reelmill-tests/no-vlm'" in out and "did not answer" in out
    assert "vae.model" in out and "reelmill-tests/no-vae" in out
    assert float(out.split("SECONDS ")[1].split()[0]) < 10  # retries with backoff take 23 s a look-up
    assert "ENV 1" in out  # the Ray workers started afterwards inherit offline mode
    assert "Retrying" not in proc.stderr and "thrown while requesting" not in proc.stderr


def test_each_log_record_prints_once():
    code = """
import logging
from jobs.logs import configure_logging
configure_logging()
import lightning.pytorch  # its own handler on "lightning", and it propagates
from huggingface_hub.utils import logging as hub_logging
logging.getLogger("lightning.pytorch.utilities.rank_zero").info("seed set")
logging.getLogger("lightning.pytorch.utilities.rank_zero").info("💡 Tip: For seamless cloud logging, ...")
hub_logging.get_logger("huggingface_hub.utils._http").warning("hub says")
logging.warning("root says")  # open_clip's way: would add a second root handler if none were there
logging.getLogger("training.data").warning("ours says")
"""
    proc = python(code)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    for message in ("seed set", "hub says", "root says", "ours says"):
        assert err.count(message) == 1, err
    assert "Tip" not in err


def test_native_notices_are_dropped_from_stderr_and_nothing_else():
    notice = (
        "[2026-12-02 07:30:34,603 E 894 894] core_worker.cc:2465: Actor with class name: "
        "'MapWorker(MapBatches(_AestheticActor))' and ID: 'f78112238cd4d0ec39bc618401000000' has constructor "
        "arguments in the object store and max_restarts > 0. If the arguments in the object store go out of "
        "scope or are lost, the actor restart will fail."
    )
    code = f"""
import os, sys
from jobs.ray_runtime import native_notices_hidden
with native_notices_hidden():
    os.write(2, {notice!r}.encode() + b"\\n")
    os.write(2, b"[2026-12-02 07:30:35,000 E 894 894] core_worker.cc:99: a real error\\n")
    print("from python", file=sys.stderr)
    os.write(2, b"\\rbar 1/2")
print("after", file=sys.stderr)
"""
    start = time.monotonic()
    proc = python(code, text=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == (
        b"[2026-12-02 07:30:35,000 E 894 894] core_worker.cc:99: a real error\nfrom python\n\rbar 1/2after\n"
    )
    assert time.monotonic() - start < 60
