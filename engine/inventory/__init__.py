"""Live inventory: ZeroMQ deltas → one shared-memory item state per host (DESIGN.md §6).

- `wire`: the messages (msgspec Structs as MessagePack), validated at decode;
- `state`: the memory-mapped item state file, its readers and its one writer;
- `subscriber`: the Clone-pattern subscriber that keeps a state file in step with a publisher;
- `publisher`: the reference publisher (authoritative state, seq numbers, snapshots).

The protocol and the file format are documented in docs/inventory-wire.md. Names are imported
lazily, so `python -m engine.inventory.subscriber` runs without importing itself twice.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "wire": ("DeltaBatch", "Discount", "NewSku", "Price", "Promotion", "Retire", "Stock"),
    "state": ("Baseline", "InventoryStats", "ItemState", "Offers", "StateError", "StateWriter", "Status", "state_path"),
    "subscriber": ("Subscriber", "follow"),
    "publisher": ("InventoryPublisher", "PublishReport", "publish_from_file", "publish_one"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
