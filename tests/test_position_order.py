"""Position-bias correction recovers the store's true relevance *order* (issue 9,
docs/ranking-objectives.md §2), on a store whose logging policy confounds the slot.

The default synthetic store lists a slate's items in draw order, so the slot is nearly independent
of the features and a click model that ignores it is biased in level only (tests/test_heads.py).
Here the store is generated with the opt-in `slate_order="price"` (builder/synth/sessions.py): each
slate's drawn items are listed by log effective price plus noise (0.5 of the score's spread), most
expensive first, as a revenue-first ranker would. The price is a feature the click head sees
(`item_log_price`), and it is not the attractiveness: price-sensitive shoppers click cheaper items
more. A head that ignores the slot (`method="none"`) learns "expensive items get clicked" from
the top slots' examination; the head with the slot as a training-only feature, asked at slot 0
(`method="feature"`), does not.

The check: Kendall τ_b between each held-out impression's slot-0 margin and the store's true
attractiveness (its click logit less the position term and constant, from `truth/`), corrected
≥ uncorrected + MARGIN. Measured (tiny store, seed 7, 25 days of slates after the cut-off,
~14k held-out impressions; LightGBM single-threaded): corrected τ 0.31, uncorrected 0.14 (gap 0.17);
per item (mean over an item's impressions, items shown ≥ 5 times) 0.38 against 0.03. On seeds
1, 2, 3 the per-impression gap was 0.22, 0.12 and 0.18, so MARGIN = 0.08 leaves room.
The corrected head's mean slot-0 probability is 0.19 against the store's true mean P(click |
examined) of 0.25; the uncorrected head's is 0.06 (the average over slots, most rarely looked at).

Not every confounded logger shows this. With `slate_order="popularity"` the corrected head orders
no better than the uncorrected one, mostly worse (τ corrected / uncorrected: 0.28 / 0.31 on seed 7;
0.18 / 0.23, 0.26 / 0.32, 0.30 / 0.28 on seeds 1–3): popularity is correlated with quality in the
store, so the slot's effect leaks into the features in a direction the truth shares, while the
corrected head has to extrapolate to slot 0 for unpopular items that are rarely listed on top.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgspec
import numpy as np
import polars as pl
import pytest
from scipy.stats import kendalltau

from artifacts.bundle import open_bundle
from builder.build import build
from builder.config import HeadsConfig
from builder.heads import train_click_head
from builder.impressions import SlateExamples, logged_slates, slate_examples
from builder.ingest import load_store
from builder.progress import silent
from builder.store import Store
from builder.synth import generate
from builder.synth.sessions import BrowsingModel
from engine.catalog import CatalogView
from engine.settings import RetrievalSettings
from tests._truth import true_attractiveness

pytestmark = pytest.mark.slow

SEED = 7
SLATE_ORDER = "price"
LABEL_DAYS = 25  # slates of the store's last days are the examples; everything before, the state
MARGIN = 0.08  # corrected τ ≥ uncorrected τ + MARGIN
ITEM_MARGIN = 0.15  # the same on per-item means
MIN_ITEM_SHOWINGS = 5


@pytest.fixture(scope="module")
def confounded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("confounded") / "tiny"
    generate("tiny", seed=SEED, out=out, slate_order=SLATE_ORDER)
    return out


@pytest.fixture(scope="module")
def examples(confounded: Path, test_build_config, tmp_path_factory: pytest.TempPathFactory):
    """As in tests/test_heads.py: the view comes from a bundle built on the events before the
    cut-off (without its own heads: only the item tables and vectors are used), the shoppers are as
    of the cut-off, the slates come after it."""
    store = load_store(confounded)
    cutoff = int(store.events.ts.max()) - LABEL_DAYS * 86_400
    before = tmp_path_factory.mktemp("confounded-before-cutoff")
    for name in ("catalog.parquet", "users.parquet"):
        shutil.copy(confounded / name, before / name)
    pl.read_parquet(confounded / "events.parquet").filter(pl.col("ts") < cutoff).write_parquet(before / "events.parquet")
    root = tmp_path_factory.mktemp("confounded-bundles")
    config = msgspec.structs.replace(test_build_config, heads=msgspec.structs.replace(test_build_config.heads, enabled=False))
    build(before, root, config, progress=silent)
    view = CatalogView(open_bundle(root / "current"), load_snapshot=False)
    slates = logged_slates(store, since_ts=cutoff)
    data = slate_examples(store, view, slates, cutoff, 50, 0.6, RetrievalSettings())
    return store, data


def _item_means(items: np.ndarray, *values: np.ndarray) -> list[np.ndarray]:
    """Per item shown at least MIN_ITEM_SHOWINGS times: the mean of each of `values`."""
    _, inverse = np.unique(items, return_inverse=True)
    count = np.bincount(inverse)
    keep = count >= MIN_ITEM_SHOWINGS
    return [(np.bincount(inverse, weights=v) / count)[keep] for v in values]


@pytest.fixture(scope="module")
def heads(confounded: Path, examples: tuple[Store, SlateExamples]):
    store, data = examples
    config = HeadsConfig(threads=1)
    corrected = train_click_head(data, config, method="feature")
    naive = train_click_head(data, config, method="none")
    X, users, items = data.X["valid"], data.user_row["valid"], data.item_row["valid"]
    return corrected, naive, X, items, true_attractiveness(confounded, store, users, items)


# ---- the opt-in store -----------------------------------------------------------------------------


def _within_slate_rank_correlation(store: Store) -> float:
    """Pooled correlation of the slot with the item's log effective price centred on its slate's
    mean (slates of at least two items): strongly negative when slates are listed by price."""
    slates = logged_slates(store)
    sizes = np.diff(slates.start)
    price = store.items.price[slates.item_row].astype(np.float64) * (1.0 - store.items.discount[slates.item_row])
    ok = np.isfinite(price) & (price > 0)
    assert ok.mean() > 0.99
    log_price = np.log(np.where(ok, price, 1.0))
    slate_of = np.repeat(np.arange(slates.n_slates), sizes)
    centred = log_price - (np.bincount(slate_of, weights=log_price) / np.maximum(sizes, 1))[slate_of]
    slot = slates.position.astype(np.float64)
    slot_centred = slot - (np.bincount(slate_of, weights=slot) / np.maximum(sizes, 1))[slate_of]
    use = ok & (sizes[slate_of] >= 2)
    return float(np.corrcoef(slot_centred[use], centred[use])[0, 1])


def test_the_opt_in_lists_slates_by_the_logging_score(confounded: Path, tiny_store: Path) -> None:
    r_price = _within_slate_rank_correlation(load_store(confounded))
    r_draw = _within_slate_rank_correlation(load_store(tiny_store))
    print(f"\nwithin-slate correlation of slot and log price: slate_order=price {r_price:.3f}, draw {r_draw:.3f}")
    assert r_price < -0.6
    assert abs(r_draw) < 0.05
    info = json.loads((confounded / "truth" / "store.json").read_text())
    assert info["parameters"]["slate_order"]["score"] == SLATE_ORDER


def test_default_store_is_unchanged_by_the_slate_order_option(tiny_store: Path, tmp_path: Path) -> None:
    explicit = tmp_path / "tiny"
    generate("tiny", seed=SEED, out=explicit, slate_order="draw")
    files = sorted(p.relative_to(tiny_store) for p in tiny_store.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(explicit) for p in explicit.rglob("*") if p.is_file())
    for name in files:
        assert (tiny_store / name).read_bytes() == (explicit / name).read_bytes(), name
    assert "slate_order" not in json.loads((explicit / "truth" / "store.json").read_text())["parameters"]


def test_generate_rejects_an_unknown_slate_order(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="slate_order"):
        generate("micro", seed=1, out=tmp_path / "s", slate_order="random")
    assert not (tmp_path / "s").exists()


# ---- the correction, against the truth ----------------------------------------------------------


def test_position_correction_recovers_the_true_order(heads) -> None:
    corrected, naive, X, items, attractiveness = heads
    m_corrected, m_naive = corrected.margin_at_top(X), naive.margin_at_top(X)
    tau_corrected = float(kendalltau(m_corrected, attractiveness).statistic)
    tau_naive = float(kendalltau(m_naive, attractiveness).statistic)
    a_item, c_item, n_item = _item_means(items, attractiveness, m_corrected, m_naive)
    item_corrected = float(kendalltau(c_item, a_item).statistic)
    item_naive = float(kendalltau(n_item, a_item).statistic)
    print(f"\nKendall τ against the true attractiveness ({len(X)} held-out impressions): corrected {tau_corrected:.4f}, "
          f"uncorrected {tau_naive:.4f}; per item ({len(a_item)} items): corrected {item_corrected:.4f}, "
          f"uncorrected {item_naive:.4f}")
    assert tau_corrected >= tau_naive + MARGIN, (tau_corrected, tau_naive)
    assert item_corrected >= item_naive + ITEM_MARGIN, (item_corrected, item_naive)


def test_corrected_slot0_probability_approaches_the_true_click_probability(heads) -> None:
    """At slot 0 (always examined in the store's cascade) the corrected head estimates the true
    P(click | examined); the uncorrected one the average over slots, far lower."""
    corrected, naive, X, _, attractiveness = heads
    true_p = 1.0 / (1.0 + np.exp(-(BrowsingModel().click_bias + attractiveness)))
    p_corrected, p_naive = corrected.probability_at_top(X), naive.probability_at_top(X)
    err_corrected, err_naive = float(np.abs(p_corrected - true_p).mean()), float(np.abs(p_naive - true_p).mean())
    print(f"\nP(click | examined): mean true {true_p.mean():.4f}, corrected {p_corrected.mean():.4f}, "
          f"uncorrected {p_naive.mean():.4f}; mean abs error corrected {err_corrected:.4f}, uncorrected {err_naive:.4f}")
    assert abs(p_corrected.mean() - true_p.mean()) < 0.5 * abs(p_naive.mean() - true_p.mean())
    assert err_corrected < 0.8 * err_naive
