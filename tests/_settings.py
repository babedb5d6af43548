"""Engine settings for in-process tests that check *what* is served.

The engine skips the ranker (fallback "deadline") once a request has used its share of
`deadlines.budget_ms`; on a shared, loaded test machine a request can run out of time for reasons
of the machine's, not the code's. Tests that assert no fallback use a budget no machine hits; the
deadline path has its own tests.
"""

from __future__ import annotations

from engine.settings import DeadlineSettings, Settings


def unhurried(settings: Settings | None = None) -> Settings:
    import msgspec

    base = settings if settings is not None else Settings()
    return msgspec.structs.replace(base, deadlines=DeadlineSettings(budget_ms=60_000.0))
