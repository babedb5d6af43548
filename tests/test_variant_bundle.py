"""Experiment arms that serve another bundle (`VariantSettings.bundle`): the arm's shoppers get the
pinned bundle and the others `current`, responses and logged slates name the bundle that answered,
the pin survives `current` moving (either way), and a bundle that cannot be served stops
`aisle serve` with the arm's name instead of quietly serving that arm something else."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from artifacts.bundle import open_bundle
from artifacts.publish import set_current
from engine.experiments import Assigner, variant_bundles
from engine.schemas import RecommendQuery
from engine.settings import ExperimentSettings, Settings, SettingsError, VariantSettings, validate
from tests._server import REPO, Server, free_port


def _ab(bundle: str | None, **b: object) -> ExperimentSettings:
    return ExperimentSettings("ab", [VariantSettings("a"), VariantSettings("b", bundle=bundle, **b)])


@pytest.mark.parametrize("bad", ["", ".", "..", "../elsewhere", "a/b", "/abs/path", ".staging-x", "current"])
def test_a_bundle_that_is_not_a_plain_build_id_is_refused(bad: str) -> None:
    with pytest.raises(SettingsError, match=r"experiments\.ab\.b\.bundle must be a build id"):
        validate(msgspec.structs.replace(Settings(), experiments=[_ab(bad)]))


def test_pinned_bundles_are_listed_with_the_arms_they_serve() -> None:
    s = validate(
        msgspec.structs.replace(
            Settings(),
            experiments=[
                msgspec.structs.replace(_ab("20261122T061026Z-b0a64b33"), traffic=0.5),
                ExperimentSettings(
                    "other", [VariantSettings("x", bundle="20261122T061026Z-b0a64b33"), VariantSettings("y", bundle="B2"), VariantSettings("z")],
                    traffic=0.5,
                ),
            ],
        )
    )
    assert variant_bundles(s) == {"20261122T061026Z-b0a64b33": ["ab:b", "other:x"], "B2": ["other:y"]}
    assert variant_bundles(Settings()) == {}


# --- two real bundles --------------------------------------------------------------------------


@dataclass
class Bundles:
    root: Path
    first: str  # `current` at start
    second: str  # the one arm b pins


@pytest.fixture(scope="module")
def bundles(tiny_bundle: Path, tiny_store: Path, test_build_config, tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    """A root holding the session's tiny bundle (current) and a second real build of the same store
    with another ranker seed (so another build id), not published."""
    from builder.build import build
    from builder.progress import silent

    root = tmp_path_factory.mktemp("variant-bundles")
    first = open_bundle(tiny_bundle / "current").root
    shutil.copytree(first, root / first.name)
    set_current(root, first.name)
    config = msgspec.structs.replace(test_build_config, ranker=msgspec.structs.replace(test_build_config.ranker, seed=29))
    second = build(tiny_store, root, config, progress=silent, publish=False, allow_worse=True)
    assert second.build_id != first.name
    return Bundles(root, first.name, second.build_id)


def _settings_toml(second: str) -> str:
    return f"""
swap_check_seconds = 0.2

[[experiments]]
name = "ab"

[[experiments.variants]]
name = "a"

[[experiments.variants]]
name = "b"
bundle = "{second}"
"""


def _users_by_arm(settings: Settings, users: list[str], per_arm: int) -> dict[str, list[str]]:
    assigner = Assigner(settings)
    arms: dict[str, list[str]] = {"ab:a": [], "ab:b": []}
    for user in users:
        label = assigner.assign(user).label
        if len(arms[label]) < per_arm:
            arms[label].append(user)
    assert all(len(v) == per_arm for v in arms.values())
    return arms


@pytest.mark.slow
def test_a_worker_keeps_a_pinned_bundle_across_swaps_in_either_direction(bundles: Bundles, tmp_path: Path) -> None:
    from engine.app import Engine

    settings = msgspec.toml.decode(_settings_toml(bundles.second).encode(), type=Settings)
    settings = validate(msgspec.structs.replace(settings, bundles=str(bundles.root), state_dir=str(tmp_path / "state")))
    engine = Engine(settings)
    engine.start()
    try:
        assert engine.problem == "" and set(engine.pinned) == {bundles.second}
        users = [f"u-{i}" for i in range(200)]
        arms = _users_by_arm(settings, users, 3)

        def answered_by() -> dict[str, set[str]]:
            seen: dict[str, set[str]] = {}
            for label, ids in arms.items():
                for user in ids:
                    rec, arm = engine.serving(user, None)
                    response, _ = rec.run(RecommendQuery("home", user_id=user, count=5), assignment=arm)
                    assert (response.variant, response.bundle) == (label, rec.build_id)
                    seen.setdefault(label, set()).add(response.bundle)
            return seen

        assert answered_by() == {"ab:a": {bundles.first}, "ab:b": {bundles.second}}
        pinned = engine.pinned[bundles.second]

        def swap_to(build_id: str) -> None:
            set_current(bundles.root, build_id)
            target = engine.current_target()
            recommender, extra = engine.prepare(target, "sizes")
            assert extra == {}  # a serving worker has every pin already
            engine.install(recommender, target, extra)

        # `current` moves onto the pinned build: both arms are answered by `current`, and the
        # worker drops its second copy of that build.
        swap_to(bundles.second)
        assert engine.pinned == {} and pinned.ranker is None  # closed
        assert answered_by() == {"ab:a": {bundles.second}, "ab:b": {bundles.second}}
        serving_second = engine.recommender
        # ... and away again: the outgoing `current` stays, as the pinned arm's recommender.
        swap_to(bundles.first)
        assert engine.pinned == {bundles.second: serving_second}
        assert answered_by() == {"ab:a": {bundles.first}, "ab:b": {bundles.second}}
    finally:
        if engine.events is not None:
            engine.events.close()


@dataclass
class Live:
    srv: Server
    arms: dict[str, list[str]]


@pytest.fixture(scope="module")
def live(bundles: Bundles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    toml = _settings_toml(bundles.second)
    settings = msgspec.toml.decode(toml.encode(), type=Settings)
    users = open_bundle(bundles.root / "current").users
    arms = _users_by_arm(settings, [users.id_of(row) for row in range(min(200, len(users)))], 4)
    srv = Server(bundles.root, tmp_path_factory.mktemp("variant-bundle-state"), workers=2, settings_toml=toml)
    try:
        srv.wait_ready(workers=2)
        yield Live(srv, arms)
    finally:
        srv.stop()
        set_current(bundles.root, bundles.first)


def _served(live: Live, surface: str = "home") -> dict[str, set[str]]:
    """Arm label → the bundles that answered its shoppers (two requests each: both workers, likely)."""
    seen: dict[str, set[str]] = {}
    for label, ids in live.arms.items():
        for user in ids:
            for _ in range(2):
                reply = live.srv.recommend(surface=surface, user_id=user, count=5)
                assert reply.status == 200, reply.body[:300]
                body = reply.json()
                assert body["variant"] == label and len(body["items"]) == 5
                seen.setdefault(label, set()).add(body["bundle"])
    return seen


def _until_current(srv: Server, build_id: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if {srv.get("/readyz").json()["bundle"] for _ in range(10)} == {build_id}:
            return
        time.sleep(0.2)
    raise TimeoutError(f"workers did not all switch to {build_id}: {srv.tail()}")


@pytest.mark.slow
def test_each_arm_is_answered_by_its_bundle_and_logged_with_it(live: Live, bundles: Bundles) -> None:
    ready = live.srv.get("/readyz").json()
    assert ready["bundle"] == bundles.first
    assert f"variant bundles: {bundles.second} (ab:b)" in ready["detail"]
    assert _served(live) == {"ab:a": {bundles.first}, "ab:b": {bundles.second}}
    pdp_item = live.srv.recommend(surface="home", count=1).json()["items"][0]["sku"]
    for label, ids in live.arms.items():  # another surface through the same routing
        body = live.srv.recommend(surface="pdp", item_id=pdp_item, user_id=ids[0], count=5).json()
        assert body["bundle"] == (bundles.second if label == "ab:b" else bundles.first)

    from engine.eventlog import EventLog

    deadline = time.monotonic() + 30
    while True:
        log = EventLog(live.srv.state, readonly=True)
        try:
            slates = [slate for _, slate in log.iter_slates()]
        finally:
            log.close()
        by_arm: dict[str, set[str]] = {}
        for slate in slates:
            by_arm.setdefault(slate.variant, set()).add(slate.bundle)
        if sum(s.variant in live.arms for s in slates) >= 2 * sum(map(len, live.arms.values())) + 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert by_arm["ab:a"] == {bundles.first} and by_arm["ab:b"] == {bundles.second}


@pytest.mark.slow
def test_moving_current_keeps_the_pinned_arm_on_its_bundle(live: Live, bundles: Bundles) -> None:
    set_current(bundles.root, bundles.second)
    _until_current(live.srv, bundles.second)
    assert _served(live) == {"ab:a": {bundles.second}, "ab:b": {bundles.second}}
    set_current(bundles.root, bundles.first)
    _until_current(live.srv, bundles.first)
    assert _served(live) == {"ab:a": {bundles.first}, "ab:b": {bundles.second}}
    assert f"variant bundles: {bundles.second} (ab:b)" in live.srv.get("/readyz").json()["detail"]
    metrics = live.srv.get("/metrics").body.decode()
    assert 'aisle_bundle_swaps_total{outcome="swapped"} 4' in metrics  # two swaps in each of two workers
    assert 'aisle_bundle_swaps_total{outcome="refused"} 0' in metrics


@pytest.mark.slow
@pytest.mark.parametrize("case", ["unknown", "renamed"])
def test_serve_refuses_to_start_when_an_arms_bundle_cannot_be_served(bundles: Bundles, tmp_path: Path, case: str) -> None:
    if case == "unknown":
        build_id = "20000101T000000Z-00000000"
    else:  # a copy under another name: its manifest names another build
        build_id = "renamed-copy"
        shutil.copytree(bundles.root / bundles.second, tmp_path / "root" / build_id)
        shutil.copytree(bundles.root / bundles.first, tmp_path / "root" / bundles.first)
        set_current(tmp_path / "root", bundles.first)
    root = bundles.root if case == "unknown" else tmp_path / "root"
    (tmp_path / "settings.toml").write_text(_settings_toml(build_id))
    cmd = [sys.executable, "-m", "builder.cli", "serve", "--bundles", str(root), "--settings", str(tmp_path / "settings.toml"),
           "--state", str(tmp_path / "state"), "--port", str(free_port()), "--workers", "1"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "ab:b" in done.stderr and build_id in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "state" / "metrics.bin").exists()  # no worker ever started


@pytest.mark.slow
def test_with_the_inventory_feed_a_pinned_bundle_gets_live_stock_too(bundles: Bundles, tmp_path: Path) -> None:
    """The host's subscriber follows `current` and every pinned bundle (`aisle serve` passes the
    pins), so an item published out of stock leaves arm b's slates as it leaves arm a's."""
    import time

    from engine.inventory import wire
    from engine.inventory.publisher import publish_one

    pub, snap = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    publisher = subprocess.Popen(
        [sys.executable, "-m", "builder.cli", "inventory", "serve", "--pub", pub, "--snapshot", snap, "--id", "variant-bundle-inventory"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    toml = _settings_toml(bundles.second) + f'\n[inventory]\nupdates_endpoint = "{pub}"\nsnapshot_endpoint = "{snap}"\nsync_timeout_s = 60.0\n'
    srv = Server(bundles.root, tmp_path / "state", workers=2, settings_toml=toml)
    try:
        srv.wait_ready(workers=2)
        for _ in range(6):  # whichever worker answers: nothing degraded, the pinned bundle included
            assert "live inventory" not in srv.get("/readyz").json()["detail"]
        settings = msgspec.toml.decode(toml.encode(), type=Settings)
        arms = _users_by_arm(settings, [f"u-{i}" for i in range(100)], 2)
        b_user = arms["ab:b"][0]
        first = srv.recommend(surface="home", user_id=b_user, count=5).json()
        assert first["bundle"] == bundles.second and len(first["items"]) == 5
        target = first["items"][0]["sku"]
        publish_one(wire.Stock(target, False, 0), snap)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            answers = [srv.recommend(surface="home", user_id=b_user, count=5).json() for _ in range(4)]
            if all(target not in {i["sku"] for i in a["items"]} for a in answers):
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"{target} still served to arm b after it sold out")
        assert all(a["bundle"] == bundles.second for a in answers)
    finally:
        srv.stop()
        os.killpg(publisher.pid, signal.SIGTERM)
        publisher.wait(timeout=20)


@pytest.mark.slow
def test_a_worker_whose_pinned_bundle_is_gone_serves_no_one_and_says_which_arm(bundles: Bundles, tmp_path: Path) -> None:
    """The bundle vanished between `aisle serve`'s check and the worker's start: the worker is not
    ready (503 from /readyz and /v1/recommendations) rather than serving arm b from `current`."""
    from engine.app import Engine
    from engine.errors import NotReady

    settings = msgspec.toml.decode(_settings_toml("20000101T000000Z-00000000").encode(), type=Settings)
    engine = Engine(validate(msgspec.structs.replace(settings, bundles=str(bundles.root), state_dir=str(tmp_path / "state"))))
    engine.start()
    try:
        assert engine.recommender is None and engine.pinned == {}
        assert "ab:b" in engine.problem and "20000101T000000Z-00000000" in engine.problem
        with pytest.raises(NotReady, match="ab:b"):
            engine.serving("u-1", None)
    finally:
        if engine.events is not None:
            engine.events.close()
