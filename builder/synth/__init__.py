"""The seeded synthetic store: the project's default data and its ground truth.

    from builder.synth import generate, SCALES
    summary = generate(scale="tiny", seed=7, out=Path("data/tiny"))

writes catalog, events and users in the canonical schema (artifacts.schema) plus `truth/`, the
hidden parameters that produced them (see `builder.synth.writer` for the layout). Modules:
`taxonomy`, `brands`, `sellers`, `catalog` (items), `shoppers`, `visits` (when sessions happen),
`sessions` (the numba session simulator), `identifiers`, `writer`, `store` (`generate`).
"""

from builder.synth.scales import SCALES, Scale
from builder.synth.store import SynthSummary, generate

__all__ = ["SCALES", "Scale", "SynthSummary", "generate"]
