"""SeedError: what the generator raises when it cannot do what it is asked."""

from __future__ import annotations


class SeedError(RuntimeError):
    """The generator cannot model the policy or the database as asked."""
