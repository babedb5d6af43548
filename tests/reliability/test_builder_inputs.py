"""Bad builder inputs (issue 8): each has one clear outcome, and none leaves a half-written bundle.

| input                                    | outcome                                                           |
|------------------------------------------|-------------------------------------------------------------------|
| truncated Parquet                        | refused: "<file>: not a readable Parquet file: …"                 |
| wrong column types                       | refused: file, column (and row), what was expected and found      |
| duplicate SKUs                           | refused: the repeat's row and the first occurrence's              |
| events for unknown SKUs                  | dropped, counted (events_unknown_sku), noted with the first row   |
| dated after the build's clock            | dropped, counted (events_future); refused when every event is     |
| dated absurdly long before the newest    | dropped, counted (events_too_old)                                 |
| bots (inhuman action rates)              | all their events dropped, counted (bot_shoppers, bot_events);     |
|                                          | refused when they would be most of the log                        |
| too little behaviour left to build on    | refused after staging began: staging removed                      |
| a failure after the bundle is in place   | the bundle removed                                                |

A refused build leaves the bundle root exactly as it was: the same entries, `current` naming the
same bundle, no staging directory. Two bundles are built: the tiny store with every droppable
fault injected, bots included (published; its manifest and parts are checked), and a toy store
whose publish is made to fail. Every other case stops before training.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import polars as pl
import pytest

from artifacts import layout
from artifacts.bundle import open_bundle
from artifacts.errors import PublishError
from artifacts.publish import STAGING_PREFIX, current_build_id
from artifacts.snapshot import ShopperSnapshot
from builder.build import BuildError, BuildResult, build, build_store, screening_summary
from builder.config import BotConfig, BuildConfig
from builder.ingest import InputError, load_store
from builder.ingest.screen import iso
from builder.progress import silent
from tests._stores import make_toy_store
from tests.reliability._soak import Soak, report

DAY = 86_400
BURST_BOTS = ("bot-burst-0", "bot-burst-1", "bot-burst-2")
BURST_EVENTS = 3_000  # each: ten a second for five minutes
STEADY_BOT = "bot-steady"
STEADY_EVENTS = 3_600  # one every 30 s for 30 hours: 2,880 in any 24 hours, never more than 2 a minute
N_UNKNOWN = 5
N_FUTURE = 4
ANCIENT_TS = (0, 946_684_800, 1_000_000_000)  # a zeroed clock, a device reset to 2000-01-01, 2001


@dataclass(frozen=True)
class Faulty:
    """The tiny store with faults appended to its events (rows 1-based, as messages give them)."""

    data: Path
    human_events: int
    targets: list[str]  # SKUs the bots hammer; no human ever clicked, carted or bought them
    end: int  # the newest human event
    first_unknown_row: int
    first_future_row: int
    first_future_ts: int
    first_ancient_row: int

    @property
    def bot_events(self) -> int:
        return len(BURST_BOTS) * BURST_EVENTS + STEADY_EVENTS

    @property
    def events_read(self) -> int:
        return self.human_events + self.bot_events + N_UNKNOWN + N_FUTURE + len(ANCIENT_TS)


def events_like(template: pl.DataFrame, tag: str, ts: np.ndarray, user_id: str, sku: list[str], kind: list[str]) -> pl.DataFrame:
    """Events in the template's columns and types: no session, request or slate."""
    n = len(ts)
    return pl.DataFrame(
        {
            "ts": ts.astype(np.int64), "user_id": [user_id] * n, "session_id": [""] * n, "sku": sku, "type": kind,
            "dwell_ms": [0] * n, "surface": ["other"] * n, "request_id": [""] * n, "position": [-1] * n,
            "device": [""] * n, "region": [""] * n, "event_id": [f"{tag}-{i}" for i in range(n)],
        },
        schema=template.schema,
    )  # fmt: skip


def copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("truth"))
    return dst


def state_of(root: Path) -> tuple[list[str], str | None]:
    """Every entry of the bundle root (staging directories included) and what `current` names."""
    return sorted(p.name for p in root.iterdir()), current_build_id(root)


def refused(data: Path, root: Path, config: BuildConfig, error: type[Exception] = InputError) -> str:
    """Build `data` into `root`, expecting `error`; the root must be left exactly as it was."""
    before = state_of(root)
    with pytest.raises(error) as info:
        build(data, root, config, progress=silent)
    assert state_of(root) == before
    return str(info.value)


@pytest.fixture(scope="module")
def tally() -> Iterator[Counter[str]]:
    # Keys in the order the figure line shows them.
    figures: Counter[str] = Counter(dict.fromkeys(
        ("faults", "refused", "bots_injected", "bots_filtered", "bot_events_filtered", "humans", "humans_events",
         "humans_filtered", "events_unknown_sku", "events_future", "events_too_old"), 0
    ))  # fmt: skip
    yield figures
    report("builder_inputs", **figures)


@pytest.fixture(scope="module")
def faulty(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Faulty:
    data = copy_store(tiny_store, tmp_path_factory.mktemp("faulty") / "data")
    human = pl.read_parquet(data / "events.parquet")
    catalog = pl.read_parquet(data / "catalog.parquet")
    end = int(human["ts"].max())  # type: ignore[arg-type]
    start = end - 3 * DAY
    touched = human.filter(pl.col("type").is_in(["click", "add_to_cart", "purchase"]))["sku"].unique().implode()
    targets = catalog.filter(~pl.col("sku").is_in(touched) & (pl.col("created_at") < start))["sku"].head(5).to_list()
    shopper, known_sku = str(human["user_id"][0]), str(human["sku"][0])
    parts = [human]
    i = np.arange(BURST_EVENTS)
    for k, bot in enumerate(BURST_BOTS):
        # Click fraud: thousands of clicks and add-to-carts on a few items, in minutes.
        kinds = ["add_to_cart" if j % 3 == 0 else "click" for j in i]
        parts.append(events_like(human, bot, start + k * 3_600 + i // 10, bot, [targets[j % 5] for j in i], kinds))
    j = np.arange(STEADY_EVENTS)
    parts.append(events_like(human, STEADY_BOT, start + 30 * j, STEADY_BOT, [targets[x % 5] for x in j], ["click"] * STEADY_EVENTS))
    first_unknown_row = sum(p.height for p in parts) + 1
    parts.append(events_like(human, "gone", end - 100 + np.arange(N_UNKNOWN), shopper, [f"SKU-GONE-{x}" for x in range(N_UNKNOWN)], ["click"] * N_UNKNOWN))
    first_future_row = sum(p.height for p in parts) + 1
    first_future_ts = int(time.time()) + 2 * DAY
    parts.append(events_like(human, "future", first_future_ts + np.arange(N_FUTURE), shopper, [known_sku] * N_FUTURE, ["click"] * N_FUTURE))
    first_ancient_row = sum(p.height for p in parts) + 1
    parts.append(events_like(human, "ancient", np.asarray(ANCIENT_TS), shopper, [known_sku] * len(ANCIENT_TS), ["click"] * len(ANCIENT_TS)))
    pl.concat(parts).write_parquet(data / "events.parquet")
    return Faulty(
        data, human.height, targets, end,
        first_unknown_row, first_future_row, first_future_ts, first_ancient_row,
    )  # fmt: skip


@pytest.fixture(scope="module")
def published(faulty: Faulty, test_build_config: BuildConfig, tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    """The one tiny build: the faulty store, published into a fresh root (the 'previous good bundle'
    every refused build below must leave in place)."""
    return build(faulty.data, tmp_path_factory.mktemp("bundles"), test_build_config, progress=silent)


@pytest.fixture()
def root(published: BuildResult) -> Path:
    root = published.path.parent
    assert state_of(root) == ([published.build_id, "current"], published.build_id)  # no staging left by the build
    return root


# --- dropped and counted: one published build ---------------------------------------------------


def test_bots_are_filtered_from_everything_learned_and_counted(published: BuildResult, faulty: Faulty, tally: Counter[str]) -> None:
    counts, notes = published.manifest.counts, published.manifest.notes
    assert counts["bot_shoppers"] == len(BURST_BOTS) + 1
    assert counts["bot_events"] == faulty.bot_events
    # Every human event is learned from: no human shopper was taken for a bot.
    assert counts["events"] == faulty.human_events
    assert (
        "events.parquet: dropped 12,600 events of 4 bots, shoppers with more than 60 clicks and add-to-carts within "
        "60 seconds (3) or more than 2000 within 24 hours (4): 'bot-burst-0', 'bot-burst-1', 'bot-burst-2', 'bot-steady'"
    ) in notes
    bundle = open_bundle(published.path)
    targets = bundle.items.rows_of(faulty.targets)
    # Unfiltered, 12,600 clicks and carts would put the bots' items at the top of every list.
    assert not np.isin(targets, np.asarray(bundle.array(layout.POPULAR_GLOBAL))).any()
    covisit = bundle.csr(layout.COVISIT)
    assert all(len(covisit.row(int(r))[0]) == 0 for r in targets)
    snapshot = ShopperSnapshot(bundle.path(layout.SHOPPER_SNAPSHOT), map_size=bundle.manifest.dims["snapshot_map_size"])
    for bot in (*BURST_BOTS, STEADY_BOT):
        record = snapshot.get(bot)
        assert record is not None and record.recent_items == [] and record.purchased == []
    tally.update(faults=1, bots_injected=len(BURST_BOTS) + 1, bots_filtered=counts["bot_shoppers"],
                 bot_events_filtered=counts["bot_events"], humans_filtered=0)  # fmt: skip


def test_events_for_unknown_skus_are_dropped_and_counted(published: BuildResult, faulty: Faulty, tally: Counter[str]) -> None:
    assert published.manifest.counts["events_unknown_sku"] == N_UNKNOWN
    assert (
        f"events.parquet: dropped 5 events naming a sku the catalog does not have, the first at row "
        f"{faulty.first_unknown_row}: 'SKU-GONE-0'"
    ) in published.manifest.notes
    tally.update(faults=1, events_unknown_sku=published.manifest.counts["events_unknown_sku"])


def test_events_dated_after_the_build_are_dropped_and_counted(published: BuildResult, faulty: Faulty, tally: Counter[str]) -> None:
    assert published.manifest.counts["events_future"] == N_FUTURE
    [note] = [n for n in published.manifest.notes if "after" in n and "the build's clock" in n]
    assert note.startswith("events.parquet: dropped 4 events dated after ")
    assert note.endswith(f"(the build's clock + 60 minutes), the first at row {faulty.first_future_row}: {iso(faulty.first_future_ts)}")
    # Dropped, not clamped: the newest behaviour the bundle knows is the newest human event.
    assert published.manifest.dims["end_ts"] == faulty.end + 1
    tally.update(faults=1, events_future=published.manifest.counts["events_future"])


def test_absurdly_old_events_are_dropped_and_counted(published: BuildResult, faulty: Faulty, tally: Counter[str]) -> None:
    assert published.manifest.counts["events_too_old"] == len(ANCIENT_TS)
    assert (
        f"events.parquet: dropped 3 events dated more than 3650 days before the newest event "
        f"({iso(faulty.end - 3650 * DAY)}), the first at row {faulty.first_ancient_row}: 1970-01-01T00:00:00Z"
    ) in published.manifest.notes
    tally.update(faults=1, events_too_old=published.manifest.counts["events_too_old"])


def test_the_command_line_summary_counts_every_dropped_event(published: BuildResult, faulty: Faulty) -> None:
    assert screening_summary(published.manifest.counts) == (
        f"events: {faulty.human_events:,} learned from of {faulty.events_read:,} read; dropped 4 dated in the future, "
        "3 too old, 5 for unknown SKUs, 12,600 of 4 bots"
    )


# --- the bot and clock rules at their limits (ingest only, no build) -----------------------------


def small_store(directory: Path, events: pl.DataFrame) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "catalog.csv").write_text("sku,category_path\na,X\nb,X\n")
    events.write_parquet(directory / "events.parquet")
    return directory


def burst(user: str, n: int, t0: int, step: float, kind: str = "click") -> pl.DataFrame:
    return pl.DataFrame(
        {"ts": (t0 + np.arange(n) * step).astype(np.int64), "user_id": [user] * n, "sku": ["ab"[i % 2] for i in range(n)], "type": [kind] * n}
    )


def test_the_bot_rules_flag_only_rates_above_their_limits(tmp_path: Path) -> None:
    t0 = 1_750_000_000
    events = pl.concat(
        [
            burst("fast-human", 60, t0, 59 / 59),  # 60 in 60 s: at the limit, kept
            burst("bot-61", 61, t0, 59 / 60),  # 61 within 60 s
            burst("all-day", 2000, t0, 43),  # 2,000 in 24 hours: at the limit, kept
            burst("bot-day", 2001, t0, 43),  # 2,001 in 24 hours, 2 a minute
            burst("browser", 5000, t0, 0.01, kind="impression"),  # shown, not acted on: no taps
        ]
    )
    store = load_store(small_store(tmp_path, events), now=t0 + 2 * DAY)
    assert store.report.bot_user_ids == ("bot-61", "bot-day")
    assert store.report.bot_events == 61 + 2001
    assert len(store.events) == 60 + 2000 + 5000
    assert store.report.notes == (
        "events.parquet: dropped 2,062 events of 2 bots, shoppers with more than 60 clicks and add-to-carts within "
        "60 seconds (1) or more than 2000 within 24 hours (1): 'bot-61', 'bot-day'",
    )


def test_day_stamped_events_skip_the_minute_rule(tmp_path: Path) -> None:
    # Dates without times (Amazon reviews, daily exports): a day's 100 clicks share one second.
    t0 = 1_749_945_600  # 2025-06-15T00:00:00Z
    events = pl.concat([burst("reviewer", 100, t0, 0), burst("reviewer", 100, t0 + DAY, 0)])
    store = load_store(small_store(tmp_path, events), now=t0 + 3 * DAY)
    assert store.report.bot_user_ids == () and len(store.events) == 200
    assert store.report.notes == (
        "events.parquet: every timestamp is a whole number of days, too coarse to tell a burst from a day's shopping: "
        "the per-minute bot rule (bots.max_actions_per_minute) was skipped; the per-day rule applied",
    )


def test_the_clock_rules_keep_events_at_their_limits(tmp_path: Path) -> None:
    now = 1_750_000_000
    latest = now + 3_600  # the build's clock + the tolerance: kept, and so the newest event
    oldest = latest - 3650 * DAY  # kept: exactly max_age_days before the newest
    ts = [now - DAY, latest, latest + 1, oldest, oldest - 1]
    events = pl.DataFrame({"ts": ts, "user_id": ["u"] * 5, "sku": ["a"] * 5, "type": ["click"] * 5})
    store = load_store(small_store(tmp_path, events), now=now)
    assert store.events.ts.tolist() == [oldest, now - DAY, latest]
    assert (store.report.events_future, store.report.events_too_old) == (1, 1)
    assert store.report.notes == (
        f"events.parquet: dropped 1 event dated after {iso(latest)} (the build's clock + 60 minutes), "
        f"the first at row 3: {iso(latest + 1)}",
        f"events.parquet: dropped 1 event dated more than 3650 days before the newest event ({iso(oldest)}), "
        f"the first at row 5: {iso(oldest - 1)}",
    )


def test_synthetic_humans_are_never_taken_for_bots(tiny_store: Path, soak: Soak, tmp_path: Path, tally: Counter[str]) -> None:
    store_dir = tiny_store
    if soak.long:  # the demo's store: 20,000 shoppers, about a million events
        from builder.synth import generate

        store_dir = tmp_path / "small"
        generate(scale="small", seed=7, out=store_dir)
    store = load_store(store_dir)
    active = len(np.unique(store.events.user_row))
    assert store.report.bot_user_ids == () and store.report.bot_events == 0
    assert store.report.events_dropped == 0
    tally.update(humans=active, humans_events=len(store.events))


# --- refused: the previous bundle stays current, nothing new under the root ----------------------


@pytest.mark.parametrize("name", ["catalog.parquet", "events.parquet"])
def test_a_truncated_parquet_file_is_refused(name: str, tiny_store: Path, root: Path, test_build_config: BuildConfig,
                                             tmp_path: Path, tally: Counter[str]) -> None:  # fmt: skip
    data = copy_store(tiny_store, tmp_path / "data")
    whole = (data / name).read_bytes()
    (data / name).write_bytes(whole[: len(whole) // 2])
    assert refused(data, root, test_build_config).startswith(f"{name}: not a readable Parquet file: ")
    tally.update(faults=1, refused=1)


def test_a_column_of_the_wrong_type_is_refused(tiny_store: Path, root: Path, test_build_config: BuildConfig,
                                               tmp_path: Path, tally: Counter[str]) -> None:  # fmt: skip
    data = copy_store(tiny_store, tmp_path / "data")
    events = pl.read_parquet(data / "events.parquet")
    events.with_columns(pl.col("ts") > 0).write_parquet(data / "events.parquet")
    assert refused(data, root, test_build_config) == (
        "events.parquet, column 'ts': expected epoch seconds (an integer) or an ISO-8601 date-time in every row; "
        "got a column of type Boolean"
    )
    tally.update(faults=1, refused=1)


def test_a_wrong_value_in_a_typed_column_is_refused_at_its_row(tiny_store: Path, root: Path, test_build_config: BuildConfig,
                                                                tmp_path: Path, tally: Counter[str]) -> None:  # fmt: skip
    data = copy_store(tiny_store, tmp_path / "data")
    catalog = pl.read_parquet(data / "catalog.parquet")
    price = catalog["price"].cast(pl.String).scatter(41, "cheap")
    catalog.with_columns(price.alias("price")).write_parquet(data / "catalog.parquet")
    assert refused(data, root, test_build_config) == "catalog.parquet row 42, column 'price': expected a number; got 'cheap'"
    tally.update(faults=1, refused=1)


def test_duplicate_skus_are_refused(tiny_store: Path, root: Path, test_build_config: BuildConfig, tmp_path: Path,
                                    tally: Counter[str]) -> None:  # fmt: skip
    data = copy_store(tiny_store, tmp_path / "data")
    catalog = pl.read_parquet(data / "catalog.parquet")
    pl.concat([catalog, catalog.slice(6, 1)]).write_parquet(data / "catalog.parquet")
    assert refused(data, root, test_build_config) == (
        f"catalog.parquet row {catalog.height + 1}, column 'sku': expected a unique sku; "
        f"got '{catalog['sku'][6]}' again (first in row 7)"
    )
    tally.update(faults=1, refused=1)


def test_a_log_dated_entirely_after_the_build_is_refused(tiny_store: Path, root: Path, test_build_config: BuildConfig,
                                                         tmp_path: Path, tally: Counter[str]) -> None:  # fmt: skip
    data = copy_store(tiny_store, tmp_path / "data")
    events = pl.read_parquet(data / "events.parquet")
    shift = int(time.time()) - int(events["ts"].min()) + 30 * DAY  # type: ignore[operator]
    events.with_columns(pl.col("ts") + shift).write_parquet(data / "events.parquet")
    message = refused(data, root, test_build_config)
    assert message.startswith("events.parquet row 1, column 'ts': expected events dated no later than ")
    assert message.endswith(
        f"(this machine's clock + clock.future_tolerance_minutes); got {iso(int(events['ts'][0]) + shift)}, and all "
        f"{events.height:,} events are later than that: check the clock and time zone of the system that exported "
        "the file, and of this machine"
    )
    tally.update(faults=1, refused=1)


def test_a_log_that_is_mostly_bots_is_refused(tiny_store: Path, root: Path, test_build_config: BuildConfig,
                                              tmp_path: Path, tally: Counter[str]) -> None:  # fmt: skip
    data = copy_store(tiny_store, tmp_path / "data")
    human = pl.read_parquet(data / "events.parquet")
    sku = str(human["sku"][0])
    n = 16_000
    bots = [events_like(human, f"b{k}", int(human["ts"].min()) + np.arange(n) // 20, f"bot-{k}", [sku] * n, ["click"] * n)  # type: ignore[arg-type]
            for k in range(5)]  # fmt: skip
    pl.concat([human, *bots]).write_parquet(data / "events.parquet")
    total = human.height + 5 * n
    assert refused(data, root, test_build_config) == (
        "events.parquet, column 'user_id': expected at most 50% of the events (bots.max_dropped_share) from shoppers "
        "with more than 60 clicks and add-to-carts within 60 seconds or more than 2000 within 24 hours; got "
        f"80,000 of {total:,} events ({80_000 / total:.1%}) from 5 such shoppers, e.g. 'bot-0', 'bot-1', 'bot-2', "
        "'bot-3', 'bot-4'. A rule that removes most of a log more likely misreads it than finds bots: if the "
        "timestamps are coarser than they look, raise the [bots] limits in the build config or set bots.enabled = false"
    )
    # The refusal is the rule's guard, not a verdict on the data: with the guard raised, the same
    # log loads with exactly the injected shoppers dropped.
    store = load_store(data, bots=BotConfig(max_dropped_share=0.9))
    assert store.report.bot_user_ids == tuple(f"bot-{k}" for k in range(5)) and len(store.events) == human.height
    tally.update(faults=1, refused=1)


def test_too_little_behaviour_fails_after_staging_and_leaves_nothing(root: Path, test_build_config: BuildConfig,
                                                                     tmp_path: Path, tally: Counter[str]) -> None:  # fmt: skip
    # Ingest accepts this store; the build stops at its first stage, with staging directories made.
    data = tmp_path / "data"
    data.mkdir()
    (data / "catalog.csv").write_text("sku,category_path\na,X\nb,X\nc,X\n")
    t = int(time.time()) - DAY
    (data / "events.csv").write_text(f"ts,user_id,sku,type\n{t},u,a,click\n{t + 1},u,b,click\n{t + 2},v,c,purchase\n")
    message = refused(data, root, test_build_config, BuildError)
    assert message == "only 3 interactions (click, add_to_cart, purchase) in the events: too few to build on"
    assert not [p for p in root.iterdir() if p.name.startswith(STAGING_PREFIX)]
    tally.update(faults=1, refused=1)


def test_a_failure_after_the_bundle_is_in_place_removes_it(root: Path, test_build_config: BuildConfig,
                                                           monkeypatch: pytest.MonkeyPatch, tally: Counter[str]) -> None:  # fmt: skip
    # The last step, moving `current`, fails (a full disk, a permission): the finished bundle must
    # not stay beside the current one, where a later publish or a person could take it for good.
    config = msgspec.structs.replace(test_build_config, gate=msgspec.structs.replace(test_build_config.gate, enabled=False))
    finished: list[bool] = []

    def failing_set_current(out_root: Path, build_id: str) -> Path:
        finished.append((out_root / build_id / layout.MANIFEST).is_file())
        raise PublishError(f"cannot move {out_root / 'current'}: No space left on device")

    monkeypatch.setattr("builder.build.set_current", failing_set_current)
    before = state_of(root)
    with pytest.raises(PublishError, match="No space left on device"):
        build_store(make_toy_store(), root, config, progress=silent)
    assert finished == [True]  # it got as far as a finished bundle …
    assert state_of(root) == before  # … which is gone again
    tally.update(faults=1, refused=1)


def test_the_command_line_refuses_bad_input_with_one_line_and_exit_1(tiny_store: Path, root: Path, tmp_path: Path) -> None:
    data = copy_store(tiny_store, tmp_path / "data")
    events = pl.read_parquet(data / "events.parquet")
    events.with_columns(pl.col("ts") + 40 * 365 * DAY).write_parquet(data / "events.parquet")
    before = state_of(root)
    result = subprocess.run(
        [sys.executable, "-m", "builder.cli", "build", "--data", str(data), "--out", str(root)],
        capture_output=True, text=True, timeout=600, env={**os.environ},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("aisle build: error: events.parquet row 1, column 'ts': expected events dated no later than ")
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert state_of(root) == before
