"""How much of a level's prompts the server served from its prefix cache, by its own word per
request (the records' `cached_tokens`, from each response's usage or llama.cpp's timings).

The hit rate is the cached tokens over the prompt tokens of the completed requests whose server
said how many it had cached; requests it said nothing about count in neither sum, so a server
that reports for some requests only still gives a true rate for those. A server's counters give
the same figure for the whole window (`server.<service>.prefix_cache_hit_rate` in the summary,
from the service kind); this one is the clients' own and exists without monitoring.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

SOURCE = "per-request usage: prompt_tokens_details.cached_tokens, or llama.cpp's timings.cache_n"
"""Where `prefix_cache` figures come from, as the summary states it."""


def prefix_cache_figures(done: pd.DataFrame) -> tuple[float | None, dict[str, Any] | None]:
    """The hit rate of completed requests, and what it was taken from (None, None: the
    server said nothing about its cache)."""
    if "cached_tokens" not in done or "input_tokens" not in done:
        return None, None
    cached = pd.to_numeric(done["cached_tokens"], errors="coerce")
    prompt = pd.to_numeric(done["input_tokens"], errors="coerce")
    known = cached.notna() & prompt.notna()
    if not known.any():
        return None, None
    cached_sum = float(cached[known].sum())
    prompt_sum = float(prompt[known].sum())
    rate = cached_sum / prompt_sum if prompt_sum > 0 else None
    block = {
        "hit_rate": rate,
        "cached_tokens": int(cached_sum),
        "input_tokens": int(prompt_sum),
        "requests": int(known.sum()),
        "source": SOURCE,
    }
    return rate, block
