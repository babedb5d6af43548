"""Experiment assignment: which variant of which experiment a shopper sees.

Deterministic and stateless: a shopper's place is a hash of their user id, so every worker, every
restart and the offline analysis agree without sharing anything. Two hashes:

- the traffic layer, hash("aisle-traffic", user): [0, holdout) is the holdout (never in an
  experiment, served the base settings); the next `traffic` of each experiment in turn is that
  experiment's, so experiments never overlap; the rest is served the base settings;
- inside an experiment, hash(salt, user) picks the variant by weight, independent of the layer,
  so changing one experiment's salt reshuffles its arms without moving anyone between experiments.

Shoppers without a user id are not in any experiment (label "default").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

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


class Assigner:
    def __init__(self, settings: Settings) -> None:
        self.holdout = settings.holdout
        self.experiments = list(settings.experiments)

    def assign(self, user_id: str | None) -> Assignment:
        if not user_id or (not self.experiments and self.holdout == 0):
            return Assignment(DEFAULT)
        u = unit(TRAFFIC_SALT, user_id)
        if u < self.holdout:
            return Assignment(HOLDOUT)
        edge = self.holdout
        for e in self.experiments:
            edge += e.traffic
            if u < edge:
                return self._variant(e, user_id)
        return Assignment(DEFAULT)

    @staticmethod
    def _variant(e: ExperimentSettings, user_id: str) -> Assignment:
        total = sum(v.weight for v in e.variants)
        x = unit(e.salt or e.name, user_id) * total
        for v in e.variants:
            x -= v.weight
            if x < 0:
                return Assignment(f"{e.name}:{v.name}", e, v)
        v = e.variants[-1]  # rounding at the very top of the range
        return Assignment(f"{e.name}:{v.name}", e, v)
