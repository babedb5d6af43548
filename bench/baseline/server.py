"""The baseline served the mainstream way: FastAPI, pydantic response models, uvicorn.

    python -m bench.baseline.server --bundle ROOT --port P [--workers N] [--host 127.0.0.1] [--threads T]

GET /v1/recommendations takes Aisle's query string (surface, user_id, item_id, cart as
comma-separated SKUs, count 1-100, plus recent, exclude, block_brands, block_sellers, category,
price_min, price_max, region, device) and answers {items: [{sku, score, reason, source}], bundle,
variant, request_id, took_ms}. GET /readyz is 200 once the bundle is loaded. Errors: 400 for a bad
query (FastAPI's 422 validation errors are answered as 400, as Aisle does), 404 for an unknown
item, with a JSON body {error, detail}.

uvicorn runs with its standard settings (`uvicorn.run(app, workers=N)`: its default event loop
and HTTP implementation as installed, access log on; `--no-access-log` turns that off). With
several workers uvicorn needs an import string, so the bundle path reaches the worker processes in
the environment variable AISLE_BASELINE_BUNDLE (and the thread setting in
AISLE_BASELINE_THREADS). The endpoint is a plain `def`, so FastAPI runs it in its thread pool, as
its documentation recommends for blocking work.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from artifacts.bundle import resolve
from bench.baseline.pipeline import BadRequest, BaselineRecommender, UnknownItem
from engine.schemas import RecommendQuery

BUNDLE_ENV = "AISLE_BASELINE_BUNDLE"
THREADS_ENV = "AISLE_BASELINE_THREADS"


class Item(BaseModel):
    sku: str
    score: float
    reason: str
    source: str


class Recommendations(BaseModel):
    items: list[Item]
    bundle: str
    variant: str = "baseline"
    fallback: str | None = None
    request_id: str
    took_ms: float


class Ready(BaseModel):
    status: str
    bundle: str
    pid: int


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def create_app(bundle_root: str | Path | None = None, threads: int | None = None) -> FastAPI:
    """The app; the bundle is loaded at start-up (lifespan), from `bundle_root` or $AISLE_BASELINE_BUNDLE."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        root = bundle_root or os.environ.get(BUNDLE_ENV)
        if not root:
            raise RuntimeError(f"no bundle: pass bundle_root or set {BUNDLE_ENV}")
        env_threads = os.environ.get(THREADS_ENV)
        n_threads = threads if threads is not None else (int(env_threads) if env_threads else None)
        recommender = BaselineRecommender(root, threads=n_threads)
        recommender.warm()
        app.state.recommender = recommender
        yield
        recommender.close()

    app = FastAPI(title="Aisle plain baseline", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def bad_query(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": "bad_request", "detail": detail}, status_code=400)

    @app.get("/readyz", response_model=Ready)
    def readyz(request: Request):
        recommender = getattr(request.app.state, "recommender", None)
        if recommender is None:
            return JSONResponse({"error": "not_ready", "detail": "bundle not loaded yet"}, status_code=503)
        return Ready(status="ready", bundle=recommender.build_id, pid=os.getpid())

    @app.get("/v1/recommendations", response_model=Recommendations)
    def recommendations(
        request: Request,
        surface: Literal["home", "pdp", "cart"],
        user_id: str | None = Query(None, min_length=1, max_length=64),
        item_id: str | None = Query(None, min_length=1, max_length=64),
        cart: str | None = None,
        count: int = Query(20, ge=1, le=100),
        recent: str | None = None,
        exclude: str | None = None,
        block_brands: str | None = None,
        block_sellers: str | None = None,
        category: str | None = None,
        price_min: float | None = Query(None, ge=0),
        price_max: float | None = Query(None, ge=0),
        region: str | None = None,
        device: str | None = None,
    ):
        started = time.perf_counter()
        recommender: BaselineRecommender = request.app.state.recommender
        query = RecommendQuery(
            surface=surface, user_id=user_id, item_id=item_id, cart=_split(cart), count=count, recent=_split(recent),
            exclude=_split(exclude), block_brands=_split(block_brands), block_sellers=_split(block_sellers),
            category=category, price_min=price_min, price_max=price_max, region=region, device=device,
        )
        try:
            items = recommender.recommend(query)
        except UnknownItem as exc:
            return JSONResponse({"error": "not_found", "detail": str(exc)}, status_code=404)
        except BadRequest as exc:
            return JSONResponse({"error": "bad_request", "detail": str(exc)}, status_code=400)
        return Recommendations(
            items=[Item(**item) for item in items],
            bundle=recommender.build_id,
            request_id=uuid.uuid4().hex,
            took_ms=round((time.perf_counter() - started) * 1e3, 3),
        )

    return app


# What `uvicorn bench.baseline.server:app` (and every worker process) imports; the bundle comes
# from $AISLE_BASELINE_BUNDLE at start-up.
app = create_app()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.baseline.server", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True, help="bundle dir, ROOT/current or ROOT")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--threads", type=int, default=None,
                   help="pin ONNX Runtime and LightGBM to this many threads (default: the libraries' defaults)")
    p.add_argument("--no-access-log", action="store_true", help="turn off uvicorn's access log (on by default)")
    args = p.parse_args(argv)
    bundle = resolve(Path(args.bundle))
    if not (bundle / "manifest.json").is_file():
        p.error(f"{args.bundle}: not a bundle (no manifest.json)")
    os.environ[BUNDLE_ENV] = str(bundle)
    if args.threads is not None:
        os.environ[THREADS_ENV] = str(args.threads)
    uvicorn.run("bench.baseline.server:app", host=args.host, port=args.port, workers=args.workers,
                access_log=not args.no_access_log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
