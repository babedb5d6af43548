"""The bundle as a file format: layout, manifest, loaders, publish."""

# Load order matters: importing usearch (2.26) before onnxruntime (1.31) makes onnxruntime's
# extension segfault on import in the same process. Every package of ours imports `artifacts`
# first, so onnxruntime is always in before anything can import usearch.
import onnxruntime as _onnxruntime  # noqa: F401
