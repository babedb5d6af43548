"""One way to open an ONNX model of a bundle for serving: a single-threaded, sequential CPU
session (engine workers share the cores), with a clear error for a missing or unreadable file."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort


def open_session(path: Path, threads: int, error: type[Exception], what: str) -> ort.InferenceSession:
    """`error(message)` is raised for a missing file or one ONNX Runtime cannot load; `what`
    names the part in the message (e.g. "user tower")."""
    if not path.is_file():
        raise error(f"{what} not found: {path} (expected the bundle's models/{path.name})")
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises several private exception types for a bad file
        raise error(f"{path}: not a loadable ONNX model ({exc}); the file is corrupt or truncated, rebuild the bundle") from exc
