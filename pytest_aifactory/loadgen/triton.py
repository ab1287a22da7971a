"""Client kind `triton`: inference requests to a Triton Inference Server over HTTP or gRPC.

Before the load, the model's configuration says its inputs, outputs and batching; every input
gets random values (`triton.dtype` in `triton.shape` per item, else what the model declares),
a few distinct payloads per process, sent in turn. One request is one `infer` call of
`triton.batch_size` items, timed from just before the call to the decoded answer; an answer
missing an output, or with another batch size than sent, is an error like any the server
reports.

gRPC is on the service's HTTP port + 1 (Triton's 8000/8001 layout, which the `triton` service
kind keeps).
"""

from __future__ import annotations

import asyncio
import urllib.parse
from dataclasses import dataclass
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np

from pytest_aifactory.loadgen.runner import LoadDriver, SendFn
from pytest_aifactory.services.kinds.triton_entry import (
    GRPC_KEY_HEADER,
    GRPC_OFFSET,
    KEY_ENV,
    KEY_HEADER,
)

if TYPE_CHECKING:
    from pytest_aifactory.loadgen.records import Clock
    from pytest_aifactory.loadgen.spec import LoadSpec

PAYLOADS = 8
"""Distinct inputs per process: the server does not see one tensor over and over."""
VARIABLE_DIM = 16
"""The size given to a variable (-1) dimension when the recipe gives no shape."""
MESSAGE_EXCERPT = 200


class TritonSetupError(Exception):
    """The model cannot be loaded as the recipe asks (unknown model, batch too large)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelInfo:
    """What the load needs of a model's configuration."""

    name: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelInfo:
        """From the configuration as JSON (HTTP's, or gRPC's, whose integers are strings)."""

        def tensor(entry: dict[str, Any]) -> TensorSpec:
            datatype = str(entry.get("data_type", "")).removeprefix("TYPE_")
            datatype = "BYTES" if datatype == "STRING" else datatype
            dims = tuple(int(d) for d in entry.get("dims", []))
            return TensorSpec(str(entry["name"]), datatype, dims)

        return cls(
            name=str(config.get("name", "")),
            max_batch_size=int(config.get("max_batch_size", 0) or 0),
            inputs=tuple(tensor(e) for e in config.get("input", [])),
            outputs=tuple(str(e["name"]) for e in config.get("output", [])),
        )


def split_url(base_url: str) -> tuple[str, int]:
    """(host as a URL writes it, port) of `http://host:port`."""
    parsed = urllib.parse.urlsplit(base_url)
    if not parsed.hostname or not parsed.port:
        raise TritonSetupError(f"expected http://host:port for the Triton service, got {base_url}")
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return host, parsed.port


def item_shape(tensor: TensorSpec, shape: list[int] | None) -> list[int]:
    if shape:
        return list(shape)
    return [VARIABLE_DIM if d < 0 else d for d in tensor.dims]


def make_payloads(
    info: ModelInfo, options: dict[str, Any], seed: int, count: int = PAYLOADS
) -> list[dict[str, np.ndarray]]:
    """`count` sets of input arrays (name -> array), batch dimension included when the model
    batches."""
    # deferred: tritonclient is optional (the triton extra)
    from tritonclient.utils import triton_to_np_dtype

    batch = int(options.get("batch_size") or 1)
    if info.max_batch_size == 0 and batch != 1:
        raise TritonSetupError(
            f"model '{info.name}' does not batch (max_batch_size 0): triton.batch_size must be 1"
        )
    if info.max_batch_size and batch > info.max_batch_size:
        raise TritonSetupError(
            f"triton.batch_size {batch} is more than model '{info.name}' takes "
            f"(max_batch_size {info.max_batch_size})"
        )
    if not info.inputs:
        raise TritonSetupError(f"model '{info.name}' declares no inputs")
    rng = np.random.default_rng(seed)
    payloads = []
    for _ in range(count):
        arrays = {}
        for tensor in info.inputs:
            datatype = options.get("dtype") or tensor.datatype
            dtype = triton_to_np_dtype(datatype)
            if dtype is None or datatype == "BYTES":
                raise TritonSetupError(
                    f"input '{tensor.name}' of model '{info.name}' is {datatype}: set "
                    "triton.dtype to a numeric type"
                )
            shape = item_shape(tensor, options.get("shape"))
            if info.max_batch_size:
                shape = [batch, *shape]
            arrays[tensor.name] = random_array(rng, shape, np.dtype(dtype))
        payloads.append(arrays)
    return payloads


def random_array(rng: np.random.Generator, shape: list[int], dtype: np.dtype) -> np.ndarray:
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 100, size=shape).astype(dtype)
    return rng.standard_normal(size=shape).astype(dtype)


class _Protocol:
    """One protocol's client: model description, request objects, the call, its errors."""

    name = ""
    address = ""
    client: Any
    """The tritonclient aio client of the protocol (set by each subclass)."""

    async def describe(self, model: str, version: str) -> ModelInfo:
        raise NotImplementedError

    def inputs(self, arrays: dict[str, np.ndarray], datatypes: dict[str, str]) -> list[Any]:
        raise NotImplementedError

    def outputs(self, names: tuple[str, ...]) -> list[Any]:
        raise NotImplementedError

    async def infer(
        self, model: str, version: str, inputs: list[Any], outputs: list[Any], request_id: str
    ) -> Any:
        raise NotImplementedError

    def error(self, err: Exception) -> tuple[str, int | None]:
        """An error text (class first) and the HTTP status where there is one."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


def _excerpt(text: Any) -> str:
    return " ".join(str(text or "").split())[:MESSAGE_EXCERPT]


class _Http(_Protocol):
    name = "http"

    def __init__(self, address: str, timeout_s: float) -> None:
        # deferred: tritonclient is optional (the triton extra)
        import tritonclient.http as api
        import tritonclient.http.aio as aio

        self.api = api
        self.address = f"http://{address}"
        # conn_limit 0: as many connections as requests in flight (the load decides)
        self.client = aio.InferenceServerClient(address, conn_limit=0, conn_timeout=timeout_s)

    async def describe(self, model: str, version: str) -> ModelInfo:
        return ModelInfo.from_config(await self.client.get_model_config(model, version))

    def inputs(self, arrays: dict[str, np.ndarray], datatypes: dict[str, str]) -> list[Any]:
        made = []
        for name, array in arrays.items():
            item = self.api.InferInput(name, list(array.shape), datatypes[name])
            item.set_data_from_numpy(array, binary_data=True)
            made.append(item)
        return made

    def outputs(self, names: tuple[str, ...]) -> list[Any]:
        return [self.api.InferRequestedOutput(n, binary_data=True) for n in names]

    async def infer(
        self, model: str, version: str, inputs: list[Any], outputs: list[Any], request_id: str
    ) -> Any:
        return await self.client.infer(
            model, inputs, model_version=version, outputs=outputs, request_id=request_id
        )

    def error(self, err: Exception) -> tuple[str, int | None]:
        status = str(err.status() or "") if hasattr(err, "status") else ""
        message = err.message() if hasattr(err, "message") else str(err)
        code = int(status) if status.isdigit() else None
        return f"HTTPError: {status or 'error'}: {_excerpt(message)}", code

    async def close(self) -> None:
        await self.client.close()


class _Grpc(_Protocol):
    name = "grpc"

    def __init__(self, address: str) -> None:
        # deferred: tritonclient is optional (the triton extra)
        import tritonclient.grpc as api
        import tritonclient.grpc.aio as aio

        self.api = api
        self.address = f"grpc://{address}"
        self.client = aio.InferenceServerClient(address)

    async def describe(self, model: str, version: str) -> ModelInfo:
        answer = await self.client.get_model_config(model, version, as_json=True)
        return ModelInfo.from_config(answer.get("config", {}))

    def inputs(self, arrays: dict[str, np.ndarray], datatypes: dict[str, str]) -> list[Any]:
        made = []
        for name, array in arrays.items():
            item = self.api.InferInput(name, list(array.shape), datatypes[name])
            item.set_data_from_numpy(array)
            made.append(item)
        return made

    def outputs(self, names: tuple[str, ...]) -> list[Any]:
        return [self.api.InferRequestedOutput(n) for n in names]

    async def infer(
        self, model: str, version: str, inputs: list[Any], outputs: list[Any], request_id: str
    ) -> Any:
        return await self.client.infer(
            model, inputs, model_version=version, outputs=outputs, request_id=request_id
        )

    def error(self, err: Exception) -> tuple[str, int | None]:
        status = str(err.status() or "") if hasattr(err, "status") else ""
        message = err.message() if hasattr(err, "message") else str(err)
        return (
            f"GRPCError: {status.removeprefix('StatusCode.') or 'error'}: {_excerpt(message)}",
            None,
        )

    async def close(self) -> None:
        await self.client.close()


def connect(spec: LoadSpec, protocol: str) -> _Protocol:
    host, port = split_url(spec.base_url)
    if protocol == "grpc":
        return _Grpc(f"{host}:{port + GRPC_OFFSET}")
    return _Http(f"{host}:{port}", spec.timeout_s)


class TritonSender:
    """Sends one payload per request and turns the answer into a record."""

    def __init__(
        self,
        protocol: _Protocol,
        spec: LoadSpec,
        info: ModelInfo,
        payloads: list[dict[str, np.ndarray]],
        clock: Clock,
    ) -> None:
        options = spec.options
        self.protocol = protocol
        self.spec = spec
        self.info = info
        self.clock = clock
        self.model = spec.model
        self.version = str(options.get("model_version") or "")
        self.batch = int(options.get("batch_size") or 1) if info.max_batch_size else 1
        datatypes = {t.name: str(options.get("dtype") or t.datatype) for t in info.inputs}
        self.requests = [protocol.inputs(arrays, datatypes) for arrays in payloads]
        self.sent_bytes = [sum(a.nbytes for a in arrays.values()) for arrays in payloads]
        self.outputs = protocol.outputs(info.outputs)

    def check(self, result: Any) -> tuple[str, int]:
        """An error text for an answer that is not what was asked (or ""), and the bytes of
        the outputs it carries."""
        received = 0
        for name in self.info.outputs:
            array = result.as_numpy(name)
            if array is None:
                return f"BadResponse: no output '{name}' in the answer", received
            received += int(array.nbytes)
            if self.info.max_batch_size and (array.ndim == 0 or array.shape[0] != self.batch):
                return (
                    f"BadResponse: output '{name}' has shape {list(array.shape)} for a batch "
                    f"of {self.batch}",
                    received,
                )
        return "", received

    async def send(self, record: dict[str, Any], scheduled_ns: int) -> dict[str, Any]:
        index = record["request_id"] % len(self.requests)
        request_id = f"{self.spec.process}-{record['request_id']}"
        error, status, received = "", None, 0
        start_ns = perf_counter_ns()
        try:
            async with asyncio.timeout(self.spec.timeout_s):
                result = await self.protocol.infer(
                    self.model, self.version, self.requests[index], self.outputs, request_id
                )
            end_ns = perf_counter_ns()
            status = 200 if self.protocol.name == "http" else None
            error, received = self.check(result)
        except TimeoutError:
            end_ns = perf_counter_ns()
            error = f"Timeout: no answer within {self.spec.timeout_s:g} s"
        except Exception as err:
            end_ns = perf_counter_ns()
            error, status = self._classify(err)
        wall = self.clock.wall
        record.update(
            op="infer",
            send_ts=wall(start_ns),
            end_ts=wall(end_ns),
            latency_ms=(end_ns - start_ns) / 1e6,
            queue_ms=max(0, start_ns - scheduled_ns) / 1e6,
            http_status=status,
            error=error,
            bytes=self.sent_bytes[index] + received,
            items=self.batch,
        )
        return record

    def _classify(self, err: Exception) -> tuple[str, int | None]:
        # deferred: tritonclient is optional (the triton extra)
        from tritonclient.utils import InferenceServerException

        if isinstance(err, InferenceServerException):
            return self.protocol.error(err)
        if isinstance(err, aiohttp.ClientError | OSError):
            return f"ConnectionError: {type(err).__name__}: {_excerpt(err)}", None
        return f"ClientError: {type(err).__name__}: {_excerpt(err)}", None


async def describe_model(protocol: _Protocol, spec: LoadSpec) -> ModelInfo:
    """The model's configuration, or why it cannot be loaded (naming what the server has)."""
    # deferred: tritonclient is optional (the triton extra)
    from tritonclient.utils import InferenceServerException

    version = str(spec.options.get("model_version") or "")
    try:
        return await protocol.describe(spec.model, version)
    except InferenceServerException as err:
        text, _ = protocol.error(err)
        served = await _served_models(protocol, spec.service_env.get(KEY_ENV, ""))
        listed = f" (it serves: {', '.join(served)}; set the client's `model`)" if served else ""
        raise TritonSetupError(
            f"model '{spec.model}' is not available on {protocol.address}: {text}{listed}"
        ) from None


async def _served_models(protocol: _Protocol, key: str) -> list[str]:
    """The repository index is one of the protocols the service locks with its own key."""
    grpc = isinstance(protocol, _Grpc)
    headers = {GRPC_KEY_HEADER if grpc else KEY_HEADER: key} if key else None
    try:
        if grpc:
            index = await protocol.client.get_model_repository_index(headers=headers, as_json=True)
            entries = index.get("models", [])
        else:
            entries = await protocol.client.get_model_repository_index(headers=headers)
    except Exception:  # only a hint for the message above
        return []
    return sorted({str(e.get("name")) for e in entries if e.get("name")})


async def run_triton(spec: LoadSpec) -> dict[str, Any]:
    """One process of a `triton` client: read the model's configuration, then drive the load."""
    protocol_name = str(spec.options.get("protocol") or "http")
    if protocol_name not in ("http", "grpc"):
        raise ValueError(f"unknown triton.protocol '{protocol_name}' (expected http or grpc)")
    driver = LoadDriver(spec)
    protocol = connect(spec, protocol_name)
    try:

        async def prepare() -> SendFn:
            info = await describe_model(protocol, spec)
            payloads = make_payloads(info, spec.options, spec.seed)
            return TritonSender(protocol, spec, info, payloads, driver.clock).send

        return await driver.run(prepare)
    finally:
        await protocol.close()
