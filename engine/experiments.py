"""Experiment assignment: which variant of which experiment a shopper sees.

Deterministic and stateless: a shopper's place is a hash of their unit, so every worker, every
restart and the offline analysis agree without sharing anything. The unit is the user id, else the
session id (an anonymous shopper keeps one arm for the session), else there is none. Two hashes:

- the traffic layer, hash("aisle-traffic", unit): [0, holdout) is the holdout (never in an
  experiment, served the base settings); the next `traffic` of each experiment in turn is that
  experiment's, so experiments never overlap; the rest is served the base settings;
- inside an experiment, hash(salt, unit) picks the variant by weight, independent of the layer,
  so changing one experiment's salt reshuffles its arms without moving anyone between experiments.

Requests with neither id are not in any experiment (label "default"). A shopper who signs in
mid-session changes unit (session → user) and may change arm: analysis counts units, and the
slate log records the unit of every request.

A variant may name another bundle (`VariantSettings.bundle`, a build id under the bundle root):
`variant_bundles` lists them and `open_variant_bundle` opens one, for `aisle serve`'s check before
the workers start and for each worker's load. Which bundle answers an arm is decided once per
request by the worker (engine.app.Engine.serving), from the assignment made here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from artifacts.bundle import Bundle, Verify, open_bundle
from artifacts.errors import BundleCorruptError, BundleError
from engine.settings import ExperimentSettings, Settings, VariantSettings

TRAFFIC_SALT = "aisle-traffic"
DEFAULT = "default"
HOLDOUT = "holdout"


def unit(salt: str, key: str) -> float:
    """A uniform number in [0, 1) from (salt, key): 64 bits of BLAKE2b."""
    digest = hashlib.blake2b(f"{salt}\x1f{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True)
class Assignment:
    label: str  # "default", "holdout" or "experiment:variant" (the response's `variant`)
    experiment: ExperimentSettings | None = None
    variant: VariantSettings | None = None
    unit: str = ""  # what was hashed: the user id, else the session id, else ""
    # The share of the experiment's units this arm expects (weight / Σ weights): what a
    # sample-ratio check compares the observed split with. 1.0 outside an experiment.
    arm_share: float = 1.0


class Assigner:
    def __init__(self, settings: Settings) -> None:
        self.holdout = settings.holdout
        self.experiments = list(settings.experiments)

    def assign(self, user_id: str | None, session_id: str | None = None) -> Assignment:
        """The arm of a request: by its user id, else its session id; "default" with neither."""
        key = user_id or session_id or ""
        if not key or (not self.experiments and self.holdout == 0):
            return Assignment(DEFAULT, unit=key)
        u = unit(TRAFFIC_SALT, key)
        if u < self.holdout:
            return Assignment(HOLDOUT, unit=key)
        edge = self.holdout
        for e in self.experiments:
            edge += e.traffic
            if u < edge:
                return self._variant(e, key)
        return Assignment(DEFAULT, unit=key)

    @staticmethod
    def _variant(e: ExperimentSettings, key: str) -> Assignment:
        total = sum(v.weight for v in e.variants)
        x = unit(e.salt or e.name, key) * total
        chosen = e.variants[-1]  # also the arm at the very top of the range (rounding)
        for v in e.variants:
            x -= v.weight
            if x < 0:
                chosen = v
                break
        return Assignment(f"{e.name}:{chosen.name}", e, chosen, key, chosen.weight / total)


def variant_bundles(settings: Settings) -> dict[str, list[str]]:
    """The bundles experiment arms pin: build id → the labels ("experiment:variant") of the arms
    it serves, in settings order."""
    pinned: dict[str, list[str]] = {}
    for e in settings.experiments:
        for v in e.variants:
            if v.bundle is not None:
                pinned.setdefault(v.bundle, []).append(f"{e.name}:{v.name}")
    return pinned


def open_variant_bundle(root: Path, build_id: str, labels: list[str], verify: Verify) -> Bundle:
    """Open and verify `<root>/<build_id>` for the arms `labels`. Raises BundleError (of the same
    kind as open_bundle's: newer format vs corrupt) whose message names the arms: an arm must never
    be served silently by another bundle."""
    arms = ", ".join(labels)
    try:
        bundle = open_bundle(Path(root) / build_id, verify=verify)
    except BundleError as exc:
        raise type(exc)(f"experiment variant {arms}: bundle {build_id!r} cannot be served: {exc}") from exc
    if bundle.build_id != build_id:
        raise BundleCorruptError(
            f"experiment variant {arms}: {bundle.root} holds build {bundle.build_id!r}, not {build_id!r} "
            "(a renamed or copied directory); name the variant's bundle by its build id"
        )
    return bundle
