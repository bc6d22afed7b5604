"""Fetch byte ranges of a remote file into a sparse local copy, verified and resumable.

The local copy has the remote file's full size, but only the fetched ranges hold data
(the rest are holes of a sparse file): each range is written at its original offset, so
the existing readers (memory-mapped GGUF, safetensors) open it unchanged and read only
what was fetched. Beside it, `<file>.download.json` records the completed ranges, each
with the sha256 of its bytes; it is rewritten after every range, so an interrupted
download resumes with what is missing.

What is verified:
- each response is exactly the requested bytes (HTTP 206 with a matching Content-Range,
  and the full length: a cut connection is an error, never a short range);
- the remote file is the one the record was made from: same size, and same header bytes
  (re-fetched and hashed on every start), else the local copy is started over;
- completed ranges are re-hashed from disk on every start (local corruption is re-fetched);
- with a manifest (tensor name -> sha256 of its bytes), every fetched tensor is hashed
  and compared; a mismatch is an error naming the tensor.
What is not verified without a manifest: that the tensor bytes are the publisher's.
GGUF and safetensors headers carry no checksums, so a server that sends consistent but
wrong data is caught only by a manifest.

Sources are objects with `size()`, `identity()` and `read(offset, length) -> bytes`
(`HttpRangeSource` here), so the same logic can fetch from anything that serves ranges.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Protocol

CHUNK_BYTES = 8 * 2**20   # largest single request; also the unit of resumption
MERGE_GAP = 4096          # ranges closer than this are fetched as one (alignment padding)
RETRIES = 3


class DownloadError(ConnectionError):
    """A range could not be fetched or did not verify; the sentence says what to do."""


class RangeSource(Protocol):
    name: str

    def size(self) -> int: ...

    def identity(self) -> str: ...

    def read(self, offset: int, length: int) -> bytes: ...


class HttpRangeSource:
    """A file behind a URL that honours `Range: bytes=a-b` (HTTP 206)."""

    def __init__(self, url: str, timeout: float = 30.0):
        self.url, self.name, self.timeout = url, url, timeout
        self._size: Optional[int] = None
        self._validator = ""

    def _open(self, offset: int, length: int):
        request = urllib.request.Request(self.url, headers={"Range": f"bytes={offset}-{offset + length - 1}"})
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            raise DownloadError(f"{self.url} answered HTTP {e.code} to a range request") from None
        except (urllib.error.URLError, OSError) as e:
            raise DownloadError(f"could not reach {self.url}: {getattr(e, 'reason', e)}") from None

    def _probe(self) -> None:
        with self._open(0, 1) as response:
            content_range = response.headers.get("Content-Range", "")
            match = re.fullmatch(r"bytes 0-0/(\d+)", content_range.strip())
            if response.status != 206 or not match:
                raise DownloadError(f"{self.url} does not serve byte ranges (HTTP {response.status}, "
                                    f"Content-Range {content_range!r}); download the whole file and pass its path")
            self._size = int(match.group(1))
            self._validator = response.headers.get("ETag") or response.headers.get("Last-Modified") or ""

    def size(self) -> int:
        if self._size is None:
            self._probe()
        return self._size

    def identity(self) -> str:
        """What identifies this version of the file, when the server says (ETag or Last-Modified)."""
        self.size()
        return self._validator

    def read(self, offset: int, length: int) -> bytes:
        try:
            with self._open(offset, length) as response:
                expected = f"bytes {offset}-{offset + length - 1}/"
                if response.status != 206 or not response.headers.get("Content-Range", "").startswith(expected):
                    raise DownloadError(f"{self.url} answered bytes {response.headers.get('Content-Range')!r} "
                                        f"(HTTP {response.status}) to a request for {expected}...")
                data = response.read(length)
        except (ConnectionError, OSError, ValueError) as e:  # incl. http.client.IncompleteRead
            if isinstance(e, DownloadError):
                raise
            raise DownloadError(f"reading bytes [{offset}, {offset + length}) of {self.url} failed: {e}") from None
        if len(data) != length:
            raise DownloadError(f"{self.url} sent {len(data)} of the {length} bytes asked for at offset {offset} "
                                "(connection cut); run again to resume")
        return data


class FallbackSource:
    """Reads from each source in turn until one has the range; size and identity are the
    last source's (the authority, e.g. the URL, with peers before it)."""

    def __init__(self, sources: list):
        self.sources = sources
        self.name = sources[-1].name

    def size(self) -> int:
        return self.sources[-1].size()

    def identity(self) -> str:
        return self.sources[-1].identity()

    def read(self, offset: int, length: int) -> bytes:
        for source in self.sources[:-1]:
            try:
                return source.read(offset, length)
            except DownloadError:
                continue
        return self.sources[-1].read(offset, length)


# --- ranges ----------------------------------------------------------------------------
def merge_ranges(ranges: Iterable[tuple[int, int]], gap: int = MERGE_GAP,
                 chunk: int = CHUNK_BYTES) -> list[tuple[int, int]]:
    """Sorted, merged (across gaps up to `gap`) and split into pieces of at most `chunk` bytes."""
    merged: list[list[int]] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if merged and start - merged[-1][1] <= gap:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, min(s + chunk, end)) for start, end in merged for s in range(start, end, chunk)]


def missing(wanted: Iterable[tuple[int, int]], done: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Parts of `wanted` not inside any `done` range."""
    done = sorted(done)
    out = []
    for start, end in wanted:
        position = start
        for done_start, done_end in done:
            if done_end <= position or done_start >= end:
                continue
            if done_start > position:
                out.append((position, done_start))
            position = max(position, done_end)
        if position < end:
            out.append((position, end))
    return out


# --- progress --------------------------------------------------------------------------
class Progress:
    """tqdm when installed, else one stderr line per second (and a last one)."""

    def __init__(self, total: int, description: str, enabled: bool = True):
        self.total, self.description, self.enabled, self.done = total, description, enabled, 0
        self._bar, self._last = None, 0.0
        if enabled:
            try:
                from tqdm import tqdm
                self._bar = tqdm(total=total, unit="B", unit_scale=True, desc=description, file=sys.stderr,
                                 mininterval=1.0)
            except ImportError:
                pass

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and (time.monotonic() - self._last > 1.0 or self.done >= self.total):
            self._last = time.monotonic()
            print(f"{self.description}: {self.done / 2**20:.1f} / {self.total / 2**20:.1f} MiB "
                  f"({100 * self.done / max(1, self.total):.0f} %)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# --- the sparse local copy ---------------------------------------------------------------
@dataclass
class PartialFile:
    """A local file of the remote's size holding some of its ranges, and the record of which."""

    path: str
    source_name: str
    size: int
    identity: str = ""
    done: dict[tuple[int, int], str] = field(default_factory=dict)  # [start, end) -> sha256

    @property
    def record_path(self) -> str:
        return self.path + ".download.json"

    @classmethod
    def open(cls, path: str, source: RangeSource) -> "PartialFile":
        """The local copy for `source`: resumed if its record matches, else started over."""
        size, identity = source.size(), source.identity()
        try:
            with open(path + ".download.json", encoding="utf-8") as f:
                record = json.load(f)
            done = {(int(a), int(b)): str(h) for a, b, h in record["done"]}
            if record["size"] == size and record["identity"] == identity and os.path.getsize(path) == size:
                return cls(path, source.name, size, identity, done)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        partial = cls(path, source.name, size, identity)
        partial.reset()
        return partial

    def reset(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "wb") as f:
            f.truncate(self.size)  # sparse: no disk used for the holes
        self.done = {}
        self.save()

    def save(self) -> None:
        record = {"source": self.source_name, "size": self.size, "identity": self.identity,
                  "done": [[a, b, h] for (a, b), h in sorted(self.done.items())]}
        tmp = self.record_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(tmp, self.record_path)

    def read(self, start: int, end: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(end - start)

    def write(self, start: int, data: bytes) -> None:
        """Write a fetched range and record it (data is synced before the record names it)."""
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, start)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.done[(start, start + len(data))] = hashlib.sha256(data).hexdigest()
        self.save()

    def revalidate(self) -> list[tuple[int, int]]:
        """Re-hash completed ranges from disk; forget (and return) those that changed."""
        bad = [r for r, digest in self.done.items() if hashlib.sha256(self.read(*r)).hexdigest() != digest]
        for r in bad:
            del self.done[r]
        if bad:
            self.save()
        return bad


def fetch_ranges(partial: PartialFile, source: RangeSource, ranges: Iterable[tuple[int, int]],
                 progress: bool = True, log: Optional[Callable[[tuple[int, int]], None]] = None) -> int:
    """Fetch what of `ranges` is not done yet into `partial`; returns the bytes fetched."""
    todo = merge_ranges(missing(merge_ranges(ranges, chunk=2**62), partial.done.keys()), gap=0)
    total = sum(end - start for start, end in todo)
    bar = Progress(total, os.path.basename(partial.path), enabled=progress and total > 0)
    try:
        for start, end in todo:
            for attempt in range(RETRIES):
                try:
                    data = source.read(start, end - start)
                    break
                except DownloadError:
                    if attempt == RETRIES - 1:
                        raise
                    time.sleep(0.2 * 2**attempt)
            if log is not None:
                log((start, end))
            partial.write(start, data)
            bar.update(len(data))
    finally:
        bar.close()
    return total
