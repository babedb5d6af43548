"""The inventory wire format: msgspec Structs encoded as MessagePack (docs/inventory-wire.md).

Three conversations, all on ZeroMQ:

- updates, PUB → SUB: two frames `[TOPIC, DeltaBatch]`, one batch per message;
- snapshot, DEALER → ROUTER: `SnapshotRequest`, answered by `SnapshotChunk`s, the last with
  `last=True`;
- publish, DEALER → ROUTER (the same socket): `PublishRequest`, answered by one `PublishAck`
  (how a short-lived client such as `aisle inventory` hands deltas to a running publisher).

Validation happens once, at decode: ranges are declared on the fields (`Meta`), the rest in
`__post_init__`. A delta that fails is rejected alone and counted; the batch keeps the others.
An unknown delta type (from a newer publisher) is rejected the same way, so old subscribers keep
working while new ones learn the new type (the schema-evolution rules are in the doc).
"""

from __future__ import annotations

import math
from typing import Annotated

import msgspec
from msgspec import Meta

TOPIC = b"aisle.inventory.1"  # first frame of every update message; the number is the wire major version

MAX_SKU_BYTES = 64  # = artifacts.idmap.MAX_ID_BYTES and the state's `sku` column width
TITLE_BYTES = 128  # longer titles are cut (on a UTF-8 character boundary) when stored
CATEGORY_PATH_BYTES = 256
BRAND_BYTES = 64
SELLER_BYTES = 64
MAX_PRICE = 1.0e9
MAX_EMBEDDING = 4096

Sku = Annotated[str, Meta(min_length=1, max_length=MAX_SKU_BYTES)]
PriceValue = Annotated[float, Meta(ge=0.0, le=MAX_PRICE)]  # also rejects NaN and infinities
DiscountValue = Annotated[float, Meta(ge=0.0, lt=1.0)]
Quantity = Annotated[int, Meta(ge=0, le=2**31 - 1)]  # int32 in the state
Flags = Annotated[int, Meta(ge=0, le=2**32 - 1)]  # uint32 in the state
Timestamp = Annotated[float, Meta(ge=0.0, le=1.0e11)]  # epoch seconds
Count = Annotated[int, Meta(ge=0, le=2**63 - 1)]  # int64 in the state header
PublisherId = Annotated[str, Meta(min_length=1, max_length=64)]


def _fits(name: str, value: str, limit: int) -> None:
    raw = value.encode("utf-8")
    if len(raw) > limit or "\x00" in value:
        raise ValueError(f"{name} must be at most {limit} UTF-8 bytes without NUL, got {len(raw)} bytes")


class Stock(msgspec.Struct, frozen=True, tag="stock"):
    sku: Sku
    in_stock: bool
    qty: Quantity


class Price(msgspec.Struct, frozen=True, tag="price"):
    sku: Sku
    price: PriceValue


class Discount(msgspec.Struct, frozen=True, tag="discount"):
    sku: Sku
    discount: DiscountValue  # a fraction of the price: 0.25 = 25 % off


class Promotion(msgspec.Struct, frozen=True, tag="promotion"):
    sku: Sku
    flags: Flags  # bitmask; the meaning of each bit is the storefront's (the engine stores it)


class NewSku(msgspec.Struct, frozen=True, tag="new_sku"):
    """A product the bundle may not know yet. Static fields are stored once, when its row is made;
    a NewSku for a SKU that already has a row resets only price, discount, stock and promotion
    (and lists it again if it was retired)."""

    sku: Sku
    title: str
    category_path: str  # "Home/Kitchen/Cookware", root first (artifacts.schema.CATEGORY_SEPARATOR)
    brand: str
    seller: str
    price: PriceValue
    discount: DiscountValue
    in_stock: bool
    qty: Quantity
    created_at: Timestamp
    text_embedding: Annotated[list[float], Meta(max_length=MAX_EMBEDDING)] | None = None

    def __post_init__(self) -> None:
        _fits("sku", self.sku, MAX_SKU_BYTES)
        _fits("category_path", self.category_path, CATEGORY_PATH_BYTES)
        _fits("brand", self.brand, BRAND_BYTES)
        _fits("seller", self.seller, SELLER_BYTES)
        if self.text_embedding is not None and not all(math.isfinite(x) for x in self.text_embedding):
            raise ValueError("text_embedding must hold finite numbers")


class Retire(msgspec.Struct, frozen=True, tag="retire"):
    """Delisted: never recommended again until a NewSku lists it anew."""

    sku: Sku


Delta = Stock | Price | Discount | Promotion | NewSku | Retire
DELTA_TYPES: tuple[type, ...] = (Stock, Price, Discount, Promotion, NewSku, Retire)


class DeltaBatch(msgspec.Struct, frozen=True):
    """One update message. `seq` starts at 1 and grows by exactly 1 per batch of one
    (publisher, epoch). A batch with no deltas is a heartbeat and repeats the latest seq (a
    publisher never sends an empty batch otherwise), so a heartbeat ahead of a subscriber means
    it lost that batch."""

    publisher: PublisherId
    epoch: Count  # changes whenever the publisher restarts (see the doc: what a restart must keep)
    seq: Count
    sent_at: float  # publisher's wall clock, epoch seconds (for the publish → apply lag)
    deltas: list[Delta]


class SnapshotRequest(msgspec.Struct, frozen=True, tag="snapshot_request", tag_field="msg"):
    subscriber: str


class SnapshotChunk(msgspec.Struct, frozen=True):
    """Part `part` (0, 1, …) of the publisher's full state as of `seq_at_snapshot`: per SKU its
    latest deltas, in the order NewSku, Stock, Price, Discount, Promotion, Retire."""

    publisher: PublisherId
    epoch: Count
    seq_at_snapshot: Count
    part: Count
    last: bool
    deltas: list[Delta]


class PublishRequest(msgspec.Struct, frozen=True, tag="publish_request", tag_field="msg"):
    client: str
    deltas: list[Delta]


class PublishAck(msgspec.Struct, frozen=True):
    publisher: PublisherId
    epoch: Count
    seq: int  # the seq of the last batch that carried these deltas (0: nothing was published)
    accepted: int
    rejected: int
    errors: list[str] = []


Request = SnapshotRequest | PublishRequest


class WireError(ValueError):
    """A message that cannot be used at all (not MessagePack, or its envelope is wrong)."""


# Lenient twins of the envelopes: deltas stay raw so that each is validated on its own.
class _RawBatch(msgspec.Struct, frozen=True):
    publisher: PublisherId
    epoch: Count
    seq: Count
    sent_at: float
    deltas: list[msgspec.Raw]


class _RawChunk(msgspec.Struct, frozen=True):
    publisher: PublisherId
    epoch: Count
    seq_at_snapshot: Count
    part: Count
    last: bool
    deltas: list[msgspec.Raw]


class _RawPublish(msgspec.Struct, frozen=True, tag="publish_request", tag_field="msg"):
    client: str
    deltas: list[msgspec.Raw]


_encoder = msgspec.msgpack.Encoder()
encode = _encoder.encode
_batch = msgspec.msgpack.Decoder(DeltaBatch)
_raw_batch = msgspec.msgpack.Decoder(_RawBatch)
_chunk = msgspec.msgpack.Decoder(SnapshotChunk)
_raw_chunk = msgspec.msgpack.Decoder(_RawChunk)
_request = msgspec.msgpack.Decoder(Request)
_raw_request = msgspec.msgpack.Decoder(SnapshotRequest | _RawPublish)
_ack = msgspec.msgpack.Decoder(PublishAck)
_delta = msgspec.msgpack.Decoder(Delta)
_json_delta = msgspec.json.Decoder(Delta)


class Checked(msgspec.Struct):
    """Deltas that passed validation, and what happened to the others (errors: at most 10)."""

    deltas: list[Delta]
    rejected: int = 0
    errors: list[str] = []


def _check_raw(raw: list[msgspec.Raw]) -> Checked:
    out = Checked([])
    for i, item in enumerate(raw):
        try:
            out.deltas.append(_delta.decode(item))
        except msgspec.ValidationError as exc:
            out.rejected += 1
            if len(out.errors) < 10:
                out.errors.append(f"delta {i}: {exc}")
    return out


def decode_batch(payload: bytes) -> tuple[DeltaBatch, Checked]:
    """An update message → (the batch holding only its valid deltas, the rejection report).
    Raises WireError when the envelope itself is unusable."""
    try:
        batch = _batch.decode(payload)
        return batch, Checked(batch.deltas)
    except msgspec.ValidationError:
        pass  # some delta is bad (or the envelope): sort them out one by one below
    except msgspec.DecodeError as exc:
        raise WireError(f"update message is not MessagePack: {exc}") from exc
    try:
        raw = _raw_batch.decode(payload)
    except msgspec.ValidationError as exc:
        raise WireError(f"update message has a bad envelope: {exc}") from exc
    checked = _check_raw(raw.deltas)
    return DeltaBatch(raw.publisher, raw.epoch, raw.seq, raw.sent_at, checked.deltas), checked


def decode_chunk(payload: bytes) -> tuple[SnapshotChunk, Checked]:
    """A snapshot reply → (chunk with its valid deltas, rejection report). Raises WireError."""
    try:
        chunk = _chunk.decode(payload)
        return chunk, Checked(chunk.deltas)
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError as exc:
        raise WireError(f"snapshot chunk is not MessagePack: {exc}") from exc
    try:
        raw = _raw_chunk.decode(payload)
    except msgspec.ValidationError as exc:
        raise WireError(f"snapshot chunk has a bad envelope: {exc}") from exc
    checked = _check_raw(raw.deltas)
    return SnapshotChunk(raw.publisher, raw.epoch, raw.seq_at_snapshot, raw.part, raw.last, checked.deltas), checked


def decode_request(payload: bytes) -> tuple[Request, Checked]:
    """A message on the publisher's ROUTER socket → (request, report on its deltas). Raises WireError."""
    try:
        req = _request.decode(payload)
        return req, Checked(req.deltas if isinstance(req, PublishRequest) else [])
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError as exc:
        raise WireError(f"request is not MessagePack: {exc}") from exc
    try:
        raw = _raw_request.decode(payload)
    except msgspec.ValidationError as exc:
        raise WireError(f"unknown or malformed request: {exc}") from exc
    if isinstance(raw, SnapshotRequest):
        return raw, Checked([])
    checked = _check_raw(raw.deltas)
    return PublishRequest(raw.client, checked.deltas), checked


def decode_ack(payload: bytes) -> PublishAck:
    try:
        return _ack.decode(payload)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise WireError(f"publish reply is malformed: {exc}") from exc


def check(deltas: list[Delta]) -> Checked:
    """Validate deltas built in Python (constructors run `__post_init__` but not the `Meta` range
    checks, which msgspec applies only when decoding): a round trip through the wire format."""
    return _check_raw(msgspec.msgpack.decode(encode(deltas), type=list[msgspec.Raw]))


def decode_json_delta(line: bytes | str) -> Delta:
    """One JSON object, e.g. `{"type": "stock", "sku": "A1", "in_stock": false, "qty": 0}`.
    Raises msgspec.ValidationError / msgspec.DecodeError (both DecodeError) when it is not a delta."""
    return _json_delta.decode(line)
