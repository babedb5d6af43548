"""The online path: sources, features, pipeline, ASGI app."""

import artifacts as _artifacts  # noqa: F401  (native load order: see artifacts/__init__.py)
