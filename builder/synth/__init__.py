"""The seeded synthetic store: the project's default data and its ground truth.

    from builder.synth import generate, SCALES
    summary = generate(scale="tiny", seed=7, out=Path("data/tiny"))

writes catalog, events and users in the canonical schema (artifacts.schema) plus `truth/`, the
hidden parameters that produced them (see `builder.synth.writer` for the layout). Modules:
`taxonomy`, `brands`, `sellers`, `catalog` (items), `shoppers`, `visits` (when sessions happen),
`sessions` (the numba session simulator), `identifiers`, `writer`, `store` (`generate`).

`generate(..., purchase_delay_days=3.0)` (opt-in; default 0) makes purchases arrive an exponential
delay after checkout and cuts those due after the log's end: the store delayed-label handling
(builder.labels) is tested on. Without it the output is exactly what it always was.

`generate(..., slate_order="price")` (opt-in; default "draw") lists each logged slate's items by
a noisy logging score the model can see ("popularity" or "price") instead of in draw order, so the
slot is confounded with the features as under a production ranker: the store position-bias
correction (builder.heads) is tested on. The default output is unchanged.
"""

from builder.synth.scales import SCALES, Scale
from builder.synth.store import SynthSummary, generate

__all__ = ["SCALES", "Scale", "SynthSummary", "generate"]
