"""Repository-level pytest configuration.

The plugin itself is registered through the `pytest11` entry point, so `pytest benchmarks/
--recipe ...` works the same from a clone and from an installed package.
"""

from __future__ import annotations

collect_ignore = ["reports", "scripts", "recipes"]
