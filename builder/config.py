"""Build configuration: one frozen, typed object, loadable from TOML, recorded in the manifest.

Every key has a default and a comment saying what it does; `docs/build.example.toml` lists them
all. Validation happens once, here, before any stage runs.
"""

from __future__ import annotations

from pathlib import Path

import msgspec


class TwoTowerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    dim: int = 64  # embedding width (item vectors, user vectors, index)
    history_len: int = 20  # recent items the user tower reads (most recent last)
    hidden: int = 128  # width of the item tower's hidden layer and the user tower's feed-forward layers
    blocks: int = 2  # causal self-attention blocks in the user tower
    heads: int = 1  # attention heads per block (dim must be a multiple)
    dropout: float = 0.2  # user tower dropout (inputs, attention weights, residual branches)
    # Passes over the training targets (bounded by max_seconds too). With the full softmax,
    # full-ranking NDCG on Amazon Beauty and Sports peaks at 7-8 epochs and then declines.
    epochs: int = 8
    max_examples: int = 2_000_000  # training targets kept (the newest) per epoch
    max_seconds: float = 600.0  # wall-clock budget for training; stops at the first batch past it
    batch_size: int = 1024  # training targets per step (the sampled softmax's negatives are their items)
    learning_rate: float = 3e-3
    temperature: float = 0.07  # softmax temperature over cosine similarities (user · item)
    # Softmax over the whole catalog when catalog items × training targets (the logits of one epoch)
    # is at most this; above, an in-batch sampled softmax (logQ-corrected) whose cost ignores the catalog.
    full_softmax_logits: int = 10_000_000_000
    id_min_count: int = 2  # items with fewer training interactions get no id embedding (cold path)
    id_dropout: float = 0.1  # share of id embeddings zeroed in training, so metadata alone works
    threads: int = 2  # torch intra-op threads
    seed: int = 17


class IndexConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    dtype: str = "f16"  # usearch scalar kind: f32 | f16 | i8
    connectivity: int = 16  # HNSW M
    expansion_add: int = 128
    expansion_search: int = 256
    threads: int = 2


class TablesConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    covisit_window: int = 5  # items either side within a session that count as co-visited
    covisit_topn: int = 50  # neighbours kept per item
    copurchase_topn: int = 50
    complement_topn: int = 8  # complementary categories kept per category
    popular_topn: int = 500  # items kept per popularity / trending list
    popularity_half_life_days: float = 14.0
    trending_half_life_days: float = 2.0
    new_arrival_days: float = 14.0  # an item younger than this (at build time) is "new"


class RankerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    trees: int = 200
    leaves: int = 31
    learning_rate: float = 0.08
    min_data_in_leaf: int = 20
    early_stopping_rounds: int = 30  # stop adding trees after this many rounds without valid NDCG gain
    label_window_days: float = 7.0  # behaviour after the cut-off that labels the candidates
    max_queries: int = 20_000  # training queries (shopper × surface × time) sampled
    valid_fraction: float = 0.2  # queries held out for the ranker's validation NDCG
    quantize: bool = True  # TL2cgen quantize=1: about 2x faster predictions, same output
    parallel_comp: int = 4  # TL2cgen: split the trees over this many C files (gcc time)
    threads: int = 2
    seed: int = 23


class HeadsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # The ranking heads (builder/heads.py, docs/ranking-objectives.md): P(click | shown),
    # P(add-to-cart | click), P(purchase | click), from the slates logged after the ranker's cut-off.
    enabled: bool = True  # false: no heads in the bundle (the engine's `legacy` objective only)
    trees: int = 400
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 50
    early_stopping_rounds: int = 30
    position: str = "feature"  # feature: the slot is a training-only feature, served at slot 0 | none: ignored
    attribution_days: float = 7.0  # a cart / purchase within this long after the click is the click's
    labels: str = "weighted"  # open attribution windows: weighted (by the delay CDF) | exclude | naive
    max_slates: int = 30_000  # logged slates re-scored for training (a seeded sample beyond this)
    valid_fraction: float = 0.3  # shoppers whose slates fit and judge the calibration maps (and stop the trees)
    min_positives: int = 50  # fewer positives for any head (training side) and the bundle ships no heads
    threads: int = 2
    seed: int = 7


class GateConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # The evaluation gate (builder/gate.py): a bundle whose backtest is worse than the current
    # bundle's by more than `margin` is built but not published (`aisle build --allow-worse` overrides).
    enabled: bool = True
    metric: str = "NDCG@10"  # HR@10 | NDCG@10 | HR@20 | NDCG@20
    margin: float = 0.1  # relative: refuse below current × (1 − margin); backtests on a few thousand shoppers are noisy
    max_users: int = 5000  # held-out shoppers scored (a seeded sample)
    seed: int = 0


class ClockConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Events with a broken clock are dropped at ingest and counted (builder/ingest/screen.py), not
    # clamped: a future event clamped to "now" would become the freshest behaviour in the log.
    # Device and server clocks drift by minutes, and a time zone mistaken for UTC by hours; an
    # event later than the build's clock by more than this is dropped.
    future_tolerance_minutes: float = 60.0
    # An event this much older than the newest event (of those not in the future) is dropped: a zeroed or reset clock
    # (1970, 2000-01-01); a decade-old click says nothing about today's catalog either.
    max_age_days: float = 3650.0


class BotConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Shoppers acting faster than a person can are bots: every event of theirs is dropped before
    # anything learns from the log, and they are counted (builder/ingest/screen.py). Only clicks
    # and add-to-carts count as actions, one tap each: impressions, skips, dwells and checkout
    # lines are logged per page or per basket and grow with the page layout, not the shopper.
    enabled: bool = True
    max_actions_per_minute: int = 60  # more than this in any 60 seconds (a tap a second, for a minute) is a bot
    max_actions_per_day: int = 2000  # more than this in any 24 hours (one every 43 s, around the clock) is a bot
    # Refuse the build when bots would take more than this share of the events: a rule that
    # removes most of a log more likely misreads it (timestamps coarser than they look) than finds bots.
    max_dropped_share: float = 0.5


class BuildConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    two_tower: TwoTowerConfig = TwoTowerConfig()
    index: IndexConfig = IndexConfig()
    tables: TablesConfig = TablesConfig()
    ranker: RankerConfig = RankerConfig()
    gate: GateConfig = GateConfig()
    heads: HeadsConfig = HeadsConfig()
    recent_items: int = 50  # recent interactions kept per shopper in the feature snapshot
    purchased_items: int = 200  # past purchases kept per shopper (the already-purchased filter)
    clock: ClockConfig = ClockConfig()
    bots: BotConfig = BotConfig()


class ConfigError(ValueError):
    """A build configuration file that cannot be used."""


def load_build_config(path: Path | None) -> BuildConfig:
    """Read a TOML build config (missing keys take defaults); None gives all defaults."""
    if path is None:
        return validate(BuildConfig())
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read build config: {exc.strerror}") from exc
    try:
        config = msgspec.toml.decode(raw, type=BuildConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return validate(config)


def validate(config: BuildConfig) -> BuildConfig:
    problems: list[str] = []
    tt = config.two_tower
    if not 8 <= tt.dim <= 1024:
        problems.append(f"two_tower.dim must be in [8, 1024], got {tt.dim}")
    if not 1 <= tt.history_len <= 200:
        problems.append(f"two_tower.history_len must be in [1, 200], got {tt.history_len}")
    if tt.temperature <= 0:
        problems.append(f"two_tower.temperature must be > 0, got {tt.temperature}")
    if not 0 <= tt.id_dropout < 1:
        problems.append(f"two_tower.id_dropout must be in [0, 1), got {tt.id_dropout}")
    if not 0 <= tt.dropout < 1:
        problems.append(f"two_tower.dropout must be in [0, 1), got {tt.dropout}")
    if tt.blocks < 1 or tt.heads < 1 or tt.dim % max(tt.heads, 1):
        problems.append(
            f"two_tower.blocks and heads must be ≥ 1 and dim a multiple of heads, got {tt.blocks}, {tt.heads}, {tt.dim}"
        )
    if tt.batch_size < 1 or tt.epochs < 1:
        problems.append(f"two_tower.batch_size and epochs must be ≥ 1, got {tt.batch_size}, {tt.epochs}")
    if tt.full_softmax_logits < 0:
        problems.append(f"two_tower.full_softmax_logits must be ≥ 0, got {tt.full_softmax_logits}")
    if config.index.dtype not in ("f32", "f16", "i8"):
        problems.append(f"index.dtype must be f32, f16 or i8, got {config.index.dtype!r}")
    if config.ranker.trees < 1 or config.ranker.leaves < 2:
        problems.append("ranker.trees must be ≥ 1 and ranker.leaves ≥ 2")
    if not 0 < config.ranker.valid_fraction < 1:
        problems.append(f"ranker.valid_fraction must be in (0, 1), got {config.ranker.valid_fraction}")
    h = config.heads
    if h.trees < 1 or h.num_leaves < 2 or h.min_data_in_leaf < 1 or h.early_stopping_rounds < 1:
        problems.append("heads.trees, min_data_in_leaf and early_stopping_rounds must be ≥ 1 and heads.num_leaves ≥ 2")
    if h.position not in ("feature", "none"):
        problems.append(f"heads.position must be feature or none, got {h.position!r}")
    if h.labels not in ("weighted", "exclude", "naive"):
        problems.append(f"heads.labels must be weighted, exclude or naive, got {h.labels!r}")
    if not h.attribution_days > 0:
        problems.append(f"heads.attribution_days must be > 0, got {h.attribution_days}")
    if not 0 < h.valid_fraction < 1:
        problems.append(f"heads.valid_fraction must be in (0, 1), got {h.valid_fraction}")
    if h.max_slates < 100 or h.min_positives < 1:
        problems.append(f"heads.max_slates must be ≥ 100 and heads.min_positives ≥ 1, got {h.max_slates}, {h.min_positives}")
    if config.gate.metric not in ("HR@10", "NDCG@10", "HR@20", "NDCG@20"):
        problems.append(f"gate.metric must be HR@10, NDCG@10, HR@20 or NDCG@20, got {config.gate.metric!r}")
    if not 0 <= config.gate.margin < 1:
        problems.append(f"gate.margin must be in [0, 1), got {config.gate.margin}")
    if config.gate.max_users < 1:
        problems.append("gate.max_users must be ≥ 1")
    if config.tables.covisit_window < 1:
        problems.append("tables.covisit_window must be ≥ 1")
    if not config.clock.future_tolerance_minutes >= 0:  # `not >=` also refuses NaN
        problems.append(f"clock.future_tolerance_minutes must be ≥ 0, got {config.clock.future_tolerance_minutes}")
    if not config.clock.max_age_days > 0:
        problems.append(f"clock.max_age_days must be > 0, got {config.clock.max_age_days}")
    bots = config.bots
    if bots.max_actions_per_minute < 1 or bots.max_actions_per_day < 1:
        problems.append(
            f"bots.max_actions_per_minute and max_actions_per_day must be ≥ 1, got {bots.max_actions_per_minute}, "
            f"{bots.max_actions_per_day}"
        )
    if not 0 < bots.max_dropped_share <= 1:
        problems.append(f"bots.max_dropped_share must be in (0, 1], got {bots.max_dropped_share}")
    if problems:
        raise ConfigError("invalid build config: " + "; ".join(problems))
    return config
