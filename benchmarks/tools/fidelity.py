"""How far a client's timings are from the token server's truth, event by event.

Both sides read the machine's monotonic clock: the server keeps the instant it handed each event
to the kernel, the client the instant its read returned it. For each request (matched by
`X-Request-Id`, which the `openai` kind sends as `<process>-<request_id>`):

- TTFT error: client first-event time minus the server's first send, i.e. the client's TTFT
  minus the true TTFT measured from the same send instant;
- ITL error: each client gap minus the server's gap between the same two events;
- TPOT error: client TPOT minus (last send - first send) / (events - 1).

A positive error is time the client added. Errors are in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class Fidelity:
    ttft_ms: np.ndarray
    itl_ms: np.ndarray
    tpot_ms: np.ndarray
    matched: int
    unmatched: int

    def p99_abs(self) -> dict[str, float]:
        def p99(values: np.ndarray) -> float:
            return float(np.percentile(np.abs(values), 99)) if values.size else float("nan")

        return {name: p99(getattr(self, name)) for name in ("ttft_ms", "itl_ms", "tpot_ms")}

    def describe(self) -> dict[str, Any]:
        def stats(values: np.ndarray) -> dict[str, float]:
            if not values.size:
                return {}
            p50, p99 = np.percentile(values, [50, 99])
            return {
                "p50": float(p50),
                "p99": float(p99),
                "p99_abs": float(np.percentile(np.abs(values), 99)),
                "max_abs": float(np.abs(values).max()),
            }

        return {
            "matched": self.matched,
            "unmatched": self.unmatched,
            "ttft_ms": stats(self.ttft_ms),
            "itl_ms": stats(self.itl_ms),
            "tpot_ms": stats(self.tpot_ms),
        }


def compare(records: pd.DataFrame, truth: dict[str, Any]) -> Fidelity:
    """Errors of every successful measured request of `records` against the server's truth."""
    anchor_ns = int(truth["anchor_ns"])
    anchor_wall = float(truth["anchor_wall"])
    served = {t["request_id"]: t for t in truth["requests"]}
    ttft: list[float] = []
    itl: list[float] = []
    tpot: list[float] = []
    matched = unmatched = 0
    ok = records[(records["phase"] == "measure") & (records["error"] == "")]
    for row in ok.itertuples(index=False):
        request = served.get(f"{row.process}-{row.request_id}")
        if request is None or not request["events_ns"]:
            unmatched += 1
            continue
        matched += 1
        sent_ns = np.asarray(request["events_ns"], dtype=np.int64)
        first_wall = anchor_wall + (int(sent_ns[0]) - anchor_ns) / 1e9
        ttft.append((float(row.first_token_ts) - first_wall) * 1000)
        server_gaps = np.diff(sent_ns) / 1e6
        client_gaps = np.asarray(row.itl_ms, dtype=float)
        if len(client_gaps) == len(server_gaps):
            itl.extend((client_gaps - server_gaps).tolist())
        if len(sent_ns) > 1 and row.tpot_ms == row.tpot_ms:  # not NaN
            true_tpot = (int(sent_ns[-1]) - int(sent_ns[0])) / 1e6 / (len(sent_ns) - 1)
            tpot.append(float(row.tpot_ms) - true_tpot)
    return Fidelity(
        ttft_ms=np.asarray(ttft),
        itl_ms=np.asarray(itl),
        tpot_ms=np.asarray(tpot),
        matched=matched,
        unmatched=unmatched,
    )
