"""Brands of the synthetic store: believable names, where each brand sells, its styles and tier.

Names are syllable pairs from fixed word lists ("Norvik", "Lumera"), with a descriptor word
("Norvik Home", "Lumera Labs") once the pairs run out, drawn without repetition by a seeded
permutation, so any scale up to about 30,000 brands gets unique names. A brand is active in one to
three departments, favours two or three style adjectives (its look), carries a price premium and a
quality offset, and has a Zipf-like share of its departments' items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_HEADS = (
    "Nor", "Lum", "Vel", "Ark", "Sol", "Bri", "Cor", "Dal", "Eve", "Fen", "Gal", "Hal", "Ivo", "Jun",
    "Kal", "Lin", "Mar", "Nov", "Oro", "Pax", "Qui", "Ros", "Sky", "Tor", "Ula", "Val", "Wen", "Xan",
    "Yor", "Zen", "Alt", "Bel", "Cal", "Dun", "Elm", "Fal", "Gry", "Hav", "Ist", "Kor", "Lys", "Mon",
    "Nim", "Orl", "Pel", "Rav", "Sen", "Tam",
)  # fmt: skip
_TAILS = (
    "vik", "era", "ona", "tek", "wood", "ly", "ara", "ix", "ora", "ford", "lux", "ana", "ano", "ette",
    "is", "ium", "ova", "ro", "sen", "ton", "ura", "via", "well", "wyn", "ex", "line", "mont", "nest",
    "port", "stone", "field", "craft", "hart", "dale", "more", "brook", "gate", "haven", "crest",
    "ridge", "bay", "ley", "mark", "shire", "ville", "worth", "ada", "ico",
)  # fmt: skip
_DESCRIPTORS = (
    "Home", "Labs", "Co.", "Goods", "Works", "Studio", "Supply", "Outfitters", "Collective",
    "Essentials", "Design", "Originals",
)  # fmt: skip

MAX_BRANDS = len(_HEADS) * len(_TAILS) * (1 + len(_DESCRIPTORS))


@dataclass(frozen=True)
class Brands:
    """Brand table; index = brand code used by the catalog and by shoppers' block lists."""

    name: tuple[str, ...]
    departments: np.ndarray  # int32 [n_brands, 3]: departments the brand is active in, -1 = none
    styles: np.ndarray  # int32 [n_brands, 3]: favoured style indices
    weight: np.ndarray  # float64 [n_brands]: Zipf-like share of items within a department
    premium: np.ndarray  # float64 [n_brands]: price multiplier (log-normal around 1)
    quality: np.ndarray  # float32 [n_brands]: attractiveness offset shared by the brand's items

    def __len__(self) -> int:
        return len(self.name)


def _names(n: int, rng: np.random.Generator) -> tuple[str, ...]:
    pairs = len(_HEADS) * len(_TAILS)
    # Plain pairs first (they read best); descriptor variants only for the very large scales.
    space = pairs if n <= pairs else MAX_BRANDS
    names = []
    for code in rng.permutation(space)[:n].tolist():
        pair, desc = code % pairs, code // pairs
        name = _HEADS[pair // len(_TAILS)] + _TAILS[pair % len(_TAILS)]
        names.append(name if desc == 0 else f"{name} {_DESCRIPTORS[desc - 1]}")
    return tuple(names)


def build_brands(n: int, n_departments: int, n_styles: int, rng: np.random.Generator) -> Brands:
    """`n` brands spread over `n_departments` so that every department has some."""
    if not 1 <= n <= MAX_BRANDS:
        raise ValueError(f"brands must be in [1, {MAX_BRANDS}], got {n}")
    names = _names(n, rng)
    n_active = rng.choice(np.array([1, 2, 3]), size=n, p=[0.5, 0.35, 0.15])
    departments = np.full((n, 3), -1, dtype=np.int32)
    # Round-robin home department first, so even the smallest scale covers every department.
    departments[:, 0] = rng.permutation(np.arange(n) % n_departments)
    for k in (1, 2):
        extra = rng.integers(n_departments, size=n).astype(np.int32)
        use = (n_active > k) & np.all(departments[:, :k] != extra[:, None], axis=1)
        departments[use, k] = extra[use]
    styles = rng.integers(n_styles, size=(n, 3)).astype(np.int32)
    ranks = rng.permutation(n) + 1
    weight = ranks.astype(np.float64) ** -0.9
    premium = np.exp(rng.normal(0.0, 0.35, size=n))
    quality = rng.normal(0.0, 0.3, size=n).astype(np.float32)
    return Brands(names, departments, styles, weight, premium, quality)


def brands_of_department(brands: Brands, department: int) -> np.ndarray:
    """int32 [k]: codes of the brands active in `department` (ascending)."""
    return np.flatnonzero(np.any(brands.departments == department, axis=1)).astype(np.int32)
