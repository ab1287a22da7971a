"""What an `s3` client reads and writes: object contents, their checksums and their keys.

An object's content is a function of the seed and its key only (SHAKE-128 of `seed/key`), so any
process, on any node, in any later run, knows what every object must hold without keeping it:
a GET is checked against the md5 computed here (md5 because it is also the object's ETag on
S3 servers, so a HEAD can tell whether a stored object is still right).

GETs read a fixed set of objects created before the measurement; PUTs and DELETEs use keys of
their own process, so they never change what a GET expects.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections import deque
from dataclasses import dataclass

MAX_OBJECT_SIZE = 1024**3
"""Objects are held in memory while they are written; 1 GiB is far above what benchmarks use."""
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
OPS = ("GET", "PUT", "LIST", "DELETE")


def parse_size(value: int | str) -> int:
    """Bytes from `1048576`, `"4k"`, `"1M"`, `"1MiB"`, `"2G"` (k, M, G, T: powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size, got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        if match is None:
            raise ValueError(
                f"expected bytes or a number with k, M, G (e.g. 4k, 1M), got {value!r}"
            )
        size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size < 1:
        raise ValueError(f"a size must be at least 1 byte, got {value!r}")
    if size > MAX_OBJECT_SIZE:
        raise ValueError(f"at most 1G per object, got {value!r}")
    return size


def parse_sizes(value: int | str | list[int | str]) -> list[int]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError("expected a size or a list of sizes, got an empty list")
    return [parse_size(v) for v in values]


def content(seed: int, key: str, size: int) -> bytes:
    """The bytes object `key` holds for this seed."""
    return hashlib.shake_128(f"{seed}/{key}".encode()).digest(size)


def key_part(text: str) -> str:
    """A name made safe to stand in an object key."""
    return _UNSAFE_KEY_CHARS.sub("-", text).strip("-") or "x"


@dataclass(frozen=True)
class Payload:
    """A body to send, with the digests a PUT carries (Content-MD5, the signed SHA-256) and the
    ETag the server must answer with."""

    data: bytes
    md5_hex: str
    md5_b64: str
    sha256_hex: str

    @classmethod
    def of(cls, data: bytes) -> Payload:
        md5 = hashlib.md5(data, usedforsecurity=False).digest()
        return cls(
            data=data,
            md5_hex=md5.hex(),
            md5_b64=base64.b64encode(md5).decode(),
            sha256_hex=hashlib.sha256(data).hexdigest(),
        )


@dataclass(frozen=True)
class StoredObject:
    """One object GETs read: its key, its size, the md5 of its content."""

    key: str
    size: int
    md5_hex: str


class ObjectSet:
    """The objects GETs read: `count` of them under `prefix`, sizes taken in turn from `sizes`.

    The seed is part of the prefix so that runs with other seeds never mistake each other's
    objects for their own; the size is part of each key for the same reason."""

    def __init__(self, seed: int, count: int, sizes: list[int]) -> None:
        self.seed = seed
        self.prefix = f"aifactory/get/seed-{seed}/"
        self.objects = [
            StoredObject(key, size, "")
            for key, size in (
                (f"{self.prefix}{i:08d}-{sizes[i % len(sizes)]}", sizes[i % len(sizes)])
                for i in range(count)
            )
        ]

    def __len__(self) -> int:
        return len(self.objects)

    def payload(self, index: int) -> Payload:
        """The content of object `index`, made now (it is not kept: objects can be large)."""
        stored = self.objects[index]
        return Payload.of(content(self.seed, stored.key, stored.size))

    def set_digest(self, index: int, md5_hex: str) -> None:
        stored = self.objects[index]
        self.objects[index] = StoredObject(stored.key, stored.size, md5_hex)


def put_payloads(seed: int, sizes: list[int], budget: int = 256 * 1024**2) -> list[Payload]:
    """Bodies PUTs send in turn: up to 4 per size (fewer when large), so a server that
    deduplicates or caches the last body sees several, and memory stays within `budget`."""
    variants = max(1, min(4, budget // max(1, sum(sizes))))
    return [
        Payload.of(content(seed, f"put/{size}/{variant}", size))
        for variant in range(variants)
        for size in sizes
    ]


class SlotPool:
    """The keys a process PUTs and DELETEs: numbered slots, never two requests on one slot at a
    time (servers may refuse concurrent writes of one key), reused so the store does not grow
    with the length of the run: it holds at most as many objects as PUTs were ever in flight."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._written: deque[int] = deque()
        self._empty: deque[int] = deque()
        self._next = 0

    def key(self, slot: int) -> str:
        return f"{self.prefix}{slot:06d}"

    def for_put(self) -> int:
        """An idle slot: an empty one first, else the oldest written one (overwritten)."""
        if self._empty:
            return self._empty.popleft()
        if self._written:
            return self._written.popleft()
        return self._new()

    def for_delete(self) -> tuple[int, bool]:
        """The oldest idle written slot and True; an idle empty slot and False when none holds
        an object (deleting a missing key is still a valid S3 DELETE)."""
        if self._written:
            return self._written.popleft(), True
        if self._empty:
            return self._empty.popleft(), False
        return self._new(), False

    def release(self, slot: int, written: bool) -> None:
        (self._written if written else self._empty).append(slot)

    def _new(self) -> int:
        slot = self._next
        self._next += 1
        return slot
