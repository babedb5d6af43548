"""The closed-loop shopper simulator: simulated shoppers of a synthetic store drive the real engine
over HTTP, and a feedback-loop study rebuilds the bundle from what they did.

- `world`: the store's catalog, shoppers and hidden truth as arrays (`World.load`);
- `market`: live prices, stock and new SKUs during a run;
- `shopper`: the behaviour model (position bias, click / add-to-cart / purchase logits, taste shift);
- `storefront`: the HTTP client (keep-alive, 503 retries);
- `inventory`: the inventory feed (a reference publisher: sales, restocks, prices, new SKUs);
- `run`: the driver, `simulate(world, url, ...) -> SimulationSummary`;
- `summary`: counters and the summary Struct;
- `loop`: `feedback_loop(...)`, rounds of serve → simulate → merge events → rebuild → swap;
- `cli`: `aisle simulate`.
"""
