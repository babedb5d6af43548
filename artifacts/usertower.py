"""The user tower as a bundle file: `user_tower.onnx`, run with ONNX Runtime on the serving path.

File contract (written by `builder.twotower`, read here; both sides import the names below):

    inputs   hist       float32 [B, L, D]  item vectors of the shopper's L most recent interacted
                                           items (the bundle's item vectors), most recent LAST,
                                           left-padded with zeros
             hist_mask  float32 [B, L]     1 for a real item, 0 for padding (all zeros = no
                                           history: the output is still a finite unit vector)
             context    int64   [B, 2]     [region code, device code] (Store.regions / .devices)
    output   user_vec   float32 [B, D]     L2-normalised; score items by inner product

B is dynamic; L (history_len) and D (dim) are fixed in the graph. The model's metadata_props hold
`aisle.user_tower.format`, `aisle.history_len`, `aisle.dim`, `aisle.n_regions`,
`aisle.n_devices`. Context codes outside the trained vocabularies (a region or device first seen
after the build) are mapped to 0, "unknown", by this wrapper; the graph does the same.

Imports numpy, onnxruntime and the standard library only (the engine may not import torch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from artifacts.onnx_session import open_session

INPUT_NAMES: tuple[str, str, str] = ("hist", "hist_mask", "context")
OUTPUT_NAME = "user_vec"
FORMAT_VERSION = 1

META_FORMAT = "aisle.user_tower.format"
META_HISTORY_LEN = "aisle.history_len"
META_DIM = "aisle.dim"
META_N_REGIONS = "aisle.n_regions"
META_N_DEVICES = "aisle.n_devices"

_EXPECTED_IO = (
    "expected inputs hist float32[B,L,D], hist_mask float32[B,L], context int64[B,2] "
    "and output user_vec float32[B,D]"
)


class UserTowerError(Exception):
    """`user_tower.onnx` is missing, unreadable, or does not follow the file contract."""


class UserTower:
    """One ONNX Runtime session over a user tower file; cheap to call per request.

    `threads` is ORT's intra-op pool size: keep 1 when several engine workers share the cores.
    """

    def __init__(self, path: Path | str, threads: int = 1) -> None:
        self.path = Path(path)
        self._session = open_session(self.path, threads, UserTowerError, "user tower")
        self.history_len, self.dim = self._check_io()
        self.n_regions, self.n_devices = self._read_metadata()
        self._output_names = [OUTPUT_NAME]

    def encode(self, hist: np.ndarray, hist_mask: np.ndarray, context: np.ndarray) -> np.ndarray:
        """User vectors for a batch: hist float32 [B, L, D], hist_mask float32 [B, L], context
        int64 [B, 2] → float32 [B, D], L2-normalised. Out-of-vocabulary context codes become 0."""
        hist = np.ascontiguousarray(hist, dtype=np.float32)
        hist_mask = np.ascontiguousarray(hist_mask, dtype=np.float32)
        context = np.array(context, dtype=np.int64, copy=True)
        batch = hist.shape[0] if hist.ndim == 3 else -1
        if (
            hist.shape != (batch, self.history_len, self.dim)
            or hist_mask.shape != (batch, self.history_len)
            or context.shape != (batch, 2)
        ):
            raise UserTowerError(
                f"user tower input shapes: expected hist [B,{self.history_len},{self.dim}], "
                f"hist_mask [B,{self.history_len}], context [B,2]; got {hist.shape}, {hist_mask.shape}, {context.shape}"
            )
        self._clamp_context(context)
        feeds = {INPUT_NAMES[0]: hist, INPUT_NAMES[1]: hist_mask, INPUT_NAMES[2]: context}
        return self._session.run(self._output_names, feeds)[0]

    def encode_one(self, history_vectors: np.ndarray, region: int, device: int) -> np.ndarray:
        """One shopper: history_vectors float32 [n, D], most recent LAST (n may be 0 or exceed
        history_len: the newest history_len are used) → float32 [D], L2-normalised."""
        history_vectors = np.asarray(history_vectors, dtype=np.float32)
        if history_vectors.size == 0:
            history_vectors = history_vectors.reshape(0, self.dim)
        if history_vectors.ndim != 2 or history_vectors.shape[1] != self.dim:
            raise UserTowerError(f"history_vectors: expected float32 [n, {self.dim}], got shape {history_vectors.shape}")
        n = min(len(history_vectors), self.history_len)
        hist = np.zeros((1, self.history_len, self.dim), dtype=np.float32)
        hist_mask = np.zeros((1, self.history_len), dtype=np.float32)
        if n:
            # Left padding keeps the newest item in the last slot, where its recency embedding was trained.
            hist[0, self.history_len - n :] = history_vectors[len(history_vectors) - n :]
            hist_mask[0, self.history_len - n :] = 1.0
        context = np.array([[region, device]], dtype=np.int64)
        return self.encode(hist, hist_mask, context)[0]

    def _clamp_context(self, context: np.ndarray) -> None:
        region, device = context[:, 0], context[:, 1]
        region[(region < 0) | (region >= self.n_regions)] = 0
        device[(device < 0) | (device >= self.n_devices)] = 0

    def _check_io(self) -> tuple[int, int]:
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name: o for o in self._session.get_outputs()}

        def describe() -> str:
            got_in = ", ".join(f"{i.name} {i.type}{list(i.shape)}" for i in inputs.values())
            got_out = ", ".join(f"{o.name} {o.type}{list(o.shape)}" for o in outputs.values())
            return f"user tower incompatible: {_EXPECTED_IO}; got inputs {got_in} and outputs {got_out} in {self.path}"

        if set(inputs) != set(INPUT_NAMES) or OUTPUT_NAME not in outputs:
            raise UserTowerError(describe())
        hist, mask, context, out = (inputs["hist"], inputs["hist_mask"], inputs["context"], outputs[OUTPUT_NAME])
        types_ok = (
            hist.type == "tensor(float)"
            and mask.type == "tensor(float)"
            and context.type == "tensor(int64)"
            and out.type == "tensor(float)"
        )
        ranks_ok = len(hist.shape) == 3 and len(mask.shape) == 2 and len(context.shape) == 2 and len(out.shape) == 2
        if not (types_ok and ranks_ok):
            raise UserTowerError(describe())
        history_len, dim = hist.shape[1], hist.shape[2]
        fixed_ok = (
            isinstance(history_len, int)
            and isinstance(dim, int)
            and mask.shape[1] == history_len
            and context.shape[1] == 2
            and out.shape[1] == dim
        )
        if not fixed_ok:
            raise UserTowerError(describe())
        return history_len, dim

    def _read_metadata(self) -> tuple[int, int]:
        meta = self._session.get_modelmeta().custom_metadata_map
        fmt = meta.get(META_FORMAT)
        if fmt is None:
            raise UserTowerError(f"{self.path}: no {META_FORMAT} metadata; the file was not written by the Aisle builder")
        if not fmt.isdigit() or int(fmt) > FORMAT_VERSION:
            raise UserTowerError(
                f"{self.path}: user tower format {fmt!r} is made by a newer builder (this engine reads ≤ {FORMAT_VERSION})"
            )
        try:
            n_regions, n_devices = int(meta[META_N_REGIONS]), int(meta[META_N_DEVICES])
            meta_shape = (int(meta[META_HISTORY_LEN]), int(meta[META_DIM]))
        except (KeyError, ValueError) as exc:
            raise UserTowerError(f"{self.path}: user tower metadata incomplete or corrupt: {exc!r}") from exc
        if meta_shape != (self.history_len, self.dim) or n_regions < 1 or n_devices < 1:
            raise UserTowerError(
                f"{self.path}: user tower metadata (history_len, dim) = {meta_shape}, vocab sizes "
                f"({n_regions}, {n_devices}) disagree with the graph's [L, D] = ({self.history_len}, {self.dim}); corrupt"
            )
        return n_regions, n_devices
