"""Errors raised while opening, verifying or publishing a bundle.

The split matters to an operator: a bundle from a newer builder needs an Aisle upgrade; a corrupt
one needs a rebuild. Messages say which, and name the file.
"""

from __future__ import annotations


class BundleError(Exception):
    """A bundle that cannot be used."""


class BundleFormatError(BundleError):
    """Made by a newer builder (an unknown `format_version`): upgrade Aisle to read it."""


class BundleCorruptError(BundleError):
    """Damaged, truncated, missing a part, or not an Aisle bundle at all: rebuild or re-copy it."""


class PublishError(BundleError):
    """Publishing a bundle (rename, `current` swap) failed; the previous `current` is untouched."""
