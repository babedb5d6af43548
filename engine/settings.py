"""Engine settings: one frozen object, validated before anything starts.

Only the retrieval plan lives here so far (which named sources feed each surface and how deep);
the builder trains the ranker on candidates from this same default plan, so what the ranker saw
in training is what it scores in serving.
"""

from __future__ import annotations

import msgspec

from artifacts.featurespec import SOURCE_ID


class SourceSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str  # one of artifacts.featurespec.SOURCE_NAMES
    k: int  # candidates requested from this source


def _plan(*pairs: tuple[str, int]) -> list[SourceSpec]:
    return [SourceSpec(name, k) for name, k in pairs]


class RetrievalSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    home: list[SourceSpec] = msgspec.field(
        default_factory=lambda: _plan(
            ("ann", 150), ("covisit", 100), ("copurchase", 40), ("trending", 40), ("category_popular", 40), ("popular", 30), ("new", 20)
        )
    )
    pdp: list[SourceSpec] = msgspec.field(
        default_factory=lambda: _plan(("coview", 100), ("similar", 100), ("copurchase", 40), ("category_popular", 40), ("popular", 20))
    )
    cart: list[SourceSpec] = msgspec.field(
        default_factory=lambda: _plan(("copurchase", 100), ("complements", 80), ("coview", 50), ("similar", 40), ("popular", 20))
    )
    recent_anchors: int = 10  # recent items used as anchors by item-to-item sources
    recency_decay: float = 0.85  # weight of the i-th most recent anchor: decay**i

    def plan(self, surface: str) -> list[SourceSpec]:
        return {"home": self.home, "pdp": self.pdp, "cart": self.cart}[surface]


class SettingsError(ValueError):
    """Settings that cannot be used."""


def validate_retrieval(settings: RetrievalSettings) -> RetrievalSettings:
    for surface in ("home", "pdp", "cart"):
        plan = settings.plan(surface)
        if not plan:
            raise SettingsError(f"retrieval.{surface}: at least one source is needed")
        for spec in plan:
            if spec.name not in SOURCE_ID:
                raise SettingsError(f"retrieval.{surface}: unknown source {spec.name!r}; known: {', '.join(SOURCE_ID)}")
            if not 1 <= spec.k <= 5000:
                raise SettingsError(f"retrieval.{surface}.{spec.name}: k must be in [1, 5000], got {spec.k}")
    if not 0 < settings.recency_decay <= 1:
        raise SettingsError("retrieval.recency_decay must be in (0, 1]")
    return settings
