"""A plain baseline of Aisle's request pipeline, written the way a typical Python team would.

Same bundle, same candidate sources and sizes, same filters, features and ranker model as the
engine, but pure Python + NumPy (no numba), LightGBM's own ``Booster.predict`` (no compiled
ranker) and a mainstream ASGI stack (FastAPI + pydantic + uvicorn). It exists so Aisle's speed can
be reported as a ratio to it, measured in the same run.

    bench.baseline.pipeline   BaselineRecommender(bundle_root).recommend(query) -> list[dict]
    bench.baseline.server     python -m bench.baseline.server --bundle ROOT --port P --workers N
    bench.baseline.compare    python -m bench.baseline.compare --bundle ROOT [--requests 2000] [--json F]
"""
