"""`aisle serve`: validate settings, hand them to Granian's worker processes, run.

Granian spawns the workers; each imports engine.app and reads the settings file named by
AISLE_SETTINGS_FILE (engine.settings.from_environment). Thread pools are pinned to one thread per
worker (STACK-NOTES pitfall 19): with one worker per core, extra threads only contend.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from artifacts.bundle import open_bundle
from engine.experiments import open_variant_bundle, variant_bundles
from engine.settings import SETTINGS_ENV, Settings, dump

log = logging.getLogger("aisle.engine")

SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}


def serve(settings: Settings) -> None:
    # Refuse to start on a bundle that does not verify: better a clear error at start than
    # workers that come up not ready. The same for every bundle an experiment arm pins (the error
    # names the arm): its shoppers must not be served another arm's bundle.
    open_bundle(Path(settings.bundles) / "current", verify=settings.verify_at_start)  # type: ignore[arg-type]
    for build_id, labels in variant_bundles(settings).items():
        open_variant_bundle(Path(settings.bundles), build_id, labels, settings.verify_at_start)  # type: ignore[arg-type]
    if not settings.security.api_keys:
        # Once, here, not per worker: an open write path is fine on a laptop, never in a fleet.
        log.warning("security.api_keys is empty: POST /v1/events and /status are open to anyone who can reach "
                    "%s:%d; set API keys in the settings before exposing this server", settings.server.host, settings.server.port)
    if not settings.security.read_keys and settings.server.host not in ("127.0.0.1", "::1", "localhost"):
        # The engine trusts `user_id`: whoever can ask for a shopper's slate sees reasons drawn
        # from that shopper's history ("Because you viewed X"). Fine behind the storefront's
        # backend, which asks with the logged-in shopper's id; not on a port browsers can reach.
        log.warning("security.read_keys is empty and the server listens on %s: anyone who can reach it can ask for any "
                    "user_id's recommendations, whose reasons cite that shopper's history; call it from the storefront's "
                    "backend only, or set read_keys", settings.server.host)
    state = Path(settings.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    settings_file = state / f"settings-{os.getpid()}.json"
    # The settings hold the API keys: readable by this user only, from before the first byte.
    settings_file.touch(mode=0o600)
    settings_file.chmod(0o600)
    dump(settings, settings_file)
    os.environ[SETTINGS_ENV] = str(settings_file.resolve())
    for key, value in SINGLE_THREAD_ENV.items():
        os.environ.setdefault(key, value)

    subscriber = _start_subscriber(settings) if settings.inventory.enabled else None

    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops, RuntimeModes

    server = Granian(
        target="engine.app:app",
        address=settings.server.host,
        port=settings.server.port,
        interface=Interfaces.ASGI,
        workers=settings.server.workers,
        loop=Loops(settings.server.loop),
        runtime_mode=RuntimeModes(settings.server.runtime_mode),
        http=HTTPModes(settings.server.http),
        backlog=settings.server.backlog,
        backpressure=settings.server.backpressure,
        respawn_failed_workers=True,
        log_access=False,
    )
    try:
        server.serve()
    finally:
        settings_file.unlink(missing_ok=True)
        if subscriber is not None:
            subscriber.terminate()
            try:
                subscriber.wait(timeout=10)
            except subprocess.TimeoutExpired:
                subscriber.kill()


def _start_subscriber(settings: Settings) -> subprocess.Popen:
    """One inventory subscriber per host, in its own process (its own GIL, no ZeroMQ context
    carried across Granian's worker fork). It follows `current`, and every bundle an experiment
    arm pins, and keeps their state files in step with the publisher; workers map them read-only."""
    inv = settings.inventory
    cmd = [
        sys.executable, "-m", "engine.inventory.subscriber",
        "--bundles", settings.bundles, "--state-dir", settings.state_dir,
        "--updates", inv.updates_endpoint, "--snapshot", inv.snapshot_endpoint,
        "--capacity", str(inv.capacity), "--text-dim", str(inv.text_dim),
    ]
    for build_id in variant_bundles(settings):
        cmd += ["--pin", build_id]
    return subprocess.Popen(cmd)
