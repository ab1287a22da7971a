"""What an `openai` client's requests carry beyond their prompt: the recipe's `openai:`
section (sampling options, `extra_body`, `batch_size`) and the model each request names.

A mix of models is drawn per request from one generator seeded by the process's seed, in
request-id order whatever order the requests are sent in, so a run's mix repeats exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pytest_aifactory.loadgen.kinds.openai import CLIENT_OWNED_KEYS, SAMPLING_KEYS
from pytest_aifactory.loadgen.spec import LoadSpec

_DRAW_BLOCK = 4096
"""Model draws made at a time: a mix costs one array lookup per request."""
_MIX_STREAM = 0x6D6978
"""Seeds the mix's generator apart from the prompts' (which use the process seed alone)."""


@dataclass(frozen=True)
class RequestOptions:
    """The `openai:` section as the load uses it; missing keys take the section's defaults."""

    sampling: dict[str, Any] = field(default_factory=lambda: {"temperature": 0.0})
    """The sampling keys to send (`temperature` always, the others when given)."""
    extra_body: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 1

    @classmethod
    def of(cls, spec: LoadSpec) -> RequestOptions:
        options = spec.options
        sampling = {"temperature": options.get("temperature", 0.0)}
        for key in SAMPLING_KEYS:
            if options.get(key) is not None:
                sampling[key] = options[key]
        extra_body = dict(options.get("extra_body") or {})
        check_extra_body(extra_body)
        return cls(sampling, extra_body, int(options.get("batch_size") or 1))


def check_extra_body(extra_body: dict[str, Any]) -> None:
    """ValueError naming the first key of `extra_body` that the client sets itself."""
    for key in extra_body:
        owner = CLIENT_OWNED_KEYS.get(key)
        if owner is not None:
            raise ValueError(f"extra_body: '{key}' is set by {owner}; extra_body may not set it")


class ModelMix:
    """The model each request names: `spec.models` drawn by weight, else `spec.model`."""

    def __init__(self, spec: LoadSpec) -> None:
        pairs = list(spec.models) or [(spec.model, 1.0)]
        self.names = [name for name, _ in pairs]
        weights = np.asarray([weight for _, weight in pairs], dtype=float)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"a model is named twice in the mix: {self.names}")
        if not np.all(np.isfinite(weights)) or np.any(weights <= 0):
            raise ValueError(f"mix weights must be positive, got {weights.tolist()}")
        self.shares = weights / weights.sum()
        self._rng = np.random.default_rng([spec.seed, _MIX_STREAM])
        self._draws = np.zeros(0, dtype=np.int64)

    def index(self, request_id: int) -> int:
        """The position in `names` of the model request `request_id` names."""
        if len(self.names) == 1:
            return 0
        while request_id >= len(self._draws):
            block = self._rng.choice(len(self.names), size=_DRAW_BLOCK, p=self.shares)
            self._draws = np.concatenate([self._draws, block])
        return int(self._draws[request_id])
