"""Partial downloads: a node fetches only its span's tensors from a model URL.

    remote = RemoteModel("https://host/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    path = remote.local_path(0, 10)   # header + blocks [0, 10); a path resolve_model() accepts

The local copy is a sparse file of the remote's size with the fetched ranges at their
original offsets (fetcher.py: verification, resumption, progress), so the ordinary readers
load it unchanged; its name is the URL's file name, so the model id (the file stem) is the
same on every node that fetched the same URL and on a client holding the full file.
A GGUF URL is self-contained; a `.safetensors` URL needs `config.json` beside it. A sharded
checkpoint is named by its index (`.../model.safetensors.index.json`): the index and config
are fetched whole, every shard's header (tensor shapes, for sizing spans), and then only the
span's tensors, each from the shard the index names. The head's tensors are fetched only
with `head=True` (clients). This package does its own HTTP; it knows nothing about the swarm.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import posixpath
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional

from swarmllm.download.fetcher import (
    DownloadError, FallbackSource, HttpRangeSource, PartialFile, RangeSource, fetch_ranges,
)
from swarmllm.download.layout import FileLayout, TruncatedHeaderError, gguf_layout, safetensors_layout, span_tensors

__all__ = ["DownloadError", "RemoteModel", "is_url", "tensor_manifest"]

FIRST_READ = 2**20  # header bytes read at first; doubled until the header fits


def is_url(model: str) -> bool:
    return model.startswith(("http://", "https://"))


def default_cache_dir() -> str:
    return os.environ.get("SWARMLLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "swarmllm", "downloads")


def _layout(fmt: str, prefix: bytes, size: int, what: str) -> FileLayout:
    return (gguf_layout if fmt == "gguf" else safetensors_layout)(prefix, size, what)


INDEX_SUFFIX = ".safetensors.index.json"


def tensor_manifest(path: str) -> dict:
    """{"tensors": {name: sha256 of its bytes}} for a complete local model file (to publish beside it),
    or for every shard of a sharded checkpoint (its folder, or its index file)."""
    index = os.path.join(path, "model" + INDEX_SUFFIX) if os.path.isdir(path) else path
    if index.endswith(INDEX_SUFFIX):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        merged: dict = {}
        for shard in shards:
            merged.update(tensor_manifest(os.path.join(os.path.dirname(index), shard))["tensors"])
        return {"tensors": merged}
    fmt = "gguf" if path.endswith(".gguf") else "safetensors"
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        layout = _layout(fmt, f.read(min(size, 256 * 2**20)), size, path)
        hashes = {}
        for name, (start, end) in sorted(layout.tensors.items(), key=lambda item: item[1]):
            f.seek(start)
            hashes[name] = hashlib.sha256(f.read(end - start)).hexdigest()
    return {"tensors": hashes}


def _load_manifest(where: str) -> dict[str, str]:
    try:
        if is_url(where):
            with urllib.request.urlopen(where, timeout=30) as response:
                data = json.load(response)
        else:
            with open(where, encoding="utf-8") as f:
                data = json.load(f)
        return {str(k): str(v) for k, v in data["tensors"].items()}
    except (OSError, ValueError, KeyError, AttributeError, urllib.error.URLError) as e:
        raise DownloadError(f"could not read the manifest {where} ({e}); expected JSON "
                            '{"tensors": {name: sha256}}') from None


class RemoteModel:
    """A model file behind a URL, fetched piecewise into a local sparse copy."""

    def __init__(self, url: str, cache_dir: Optional[str] = None, manifest: Optional[str | dict] = None,
                 progress: bool = True, source: Optional[RangeSource] = None, folder: Optional[str] = None):
        """folder: where a safetensors file goes (a shard of a sharded checkpoint: its index's folder)."""
        self.url, self.progress = url, progress
        path = urllib.parse.unquote(urllib.parse.urlparse(url).path)
        filename = posixpath.basename(path)
        if filename.endswith(".gguf"):
            self.format = "gguf"
        elif filename.endswith(INDEX_SUFFIX):
            self.format = "sharded"
        elif filename.endswith(".safetensors"):
            self.format = "safetensors"
        else:
            raise ValueError(f"the model URL {url} must end in .gguf, .safetensors or {INDEX_SUFFIX}")
        root = os.path.join(cache_dir or default_cache_dir(), hashlib.sha256(url.encode()).hexdigest()[:16])
        if self.format == "gguf":
            self.model_path = self.file_path = os.path.join(root, filename)
        else:  # a folder named like the remote one, holding config.json and the weights file(s)
            self.model_path = folder or os.path.join(root, posixpath.basename(posixpath.dirname(path)) or "model")
            self.file_path = os.path.join(self.model_path, filename)
        self.source = None if self.format == "sharded" else source or HttpRangeSource(url)
        self.manifest = _load_manifest(manifest) if isinstance(manifest, str) else manifest
        self._shards: Optional[dict[str, "RemoteModel"]] = None  # sharded: file name -> its RemoteModel
        self._weight_map: dict[str, str] = {}
        self._layout: Optional[FileLayout] = None
        self._header_digest = ""
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _exclusive(self):
        """One fetcher per local copy at a time, across threads and processes (nodes may share a cache)."""
        os.makedirs(os.path.dirname(self.file_path), exist_ok=True)
        with self._lock, open(self.file_path + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_header(self) -> tuple[FileLayout, bytes]:
        size = self.source.size()
        length = min(FIRST_READ, size)
        while True:
            prefix = self.source.read(0, length)
            try:
                layout = _layout(self.format, prefix, size, self.url)
                break
            except TruncatedHeaderError:
                if length >= size:
                    raise ValueError(f"{self.url}: the header runs past the end of the file; it is not a model file")
                length = min(size, length * 2)
        return layout, prefix[:layout.header_end]

    def _prepare(self) -> tuple[PartialFile, FileLayout]:
        """Open (or resume) the local copy; the first time, check its header is the remote's current one."""
        partial = PartialFile.open(self.file_path, self.source)
        if self._layout is None:
            layout, header = self._read_header()
            digest = hashlib.sha256(header).hexdigest()
            if partial.done.get((0, layout.header_end), digest) != digest:
                partial.reset()  # the remote file changed since the partial copy was made: start over
            partial.revalidate()
            if (0, layout.header_end) not in partial.done:
                partial.write(0, header)
            self._layout, self._header_digest = layout, digest
        elif partial.done.get((0, self._layout.header_end)) != self._header_digest:
            raise DownloadError(f"the local copy {self.file_path} changed under this process; start again")
        if self.format == "safetensors":
            self._fetch_config()
        return partial, self._layout

    def _fetch_config(self) -> None:
        self._fetch_whole("config.json", "a safetensors model needs {url} beside the weights")

    def _fetch_whole(self, name: str, why: str) -> str:
        """A small file beside the URL (config, index), fetched once into the model folder."""
        target = os.path.join(self.model_path, name)
        if os.path.exists(target):
            return target
        url = urllib.parse.urljoin(self.url, name)
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                data = response.read()
        except (urllib.error.URLError, OSError) as e:
            raise DownloadError(f"{why.format(url=url)}; fetching it failed: {e}") from None
        os.makedirs(self.model_path, exist_ok=True)
        with open(target + ".tmp", "wb") as f:
            f.write(data)
        os.replace(target + ".tmp", target)
        return target

    def _sharded_path(self, start: Optional[int], end: Optional[int], head: bool) -> str:
        """Index + config whole, every shard's header, then the wanted tensors from their shards."""
        if self._shards is None:
            index = self._fetch_whole(posixpath.basename(self.file_path), "{url} is the checkpoint's index")
            try:
                with open(index, encoding="utf-8") as f:
                    self._weight_map = {str(k): str(v) for k, v in json.load(f)["weight_map"].items()}
            except (ValueError, KeyError, AttributeError) as e:
                os.remove(index)
                raise DownloadError(f"{self.url} is not a safetensors index ({e})") from None
            if any("/" in f or f.startswith(".") for f in self._weight_map.values()):
                raise DownloadError(f"{self.url}: the index names a shard outside its folder")
            self._fetch_config()
            self._shards = {file: RemoteModel(urllib.parse.urljoin(self.url, file), manifest=self.manifest,
                                              progress=self.progress, folder=self.model_path)
                            for file in sorted(set(self._weight_map.values()))}
        names = span_tensors(FileLayout("safetensors", 0, {n: (0, 0) for n in self._weight_map}),
                             start or 0, end if start is not None else 0, head)
        for file, shard in self._shards.items():
            shard.fetch([n for n in names if self._weight_map[n] == file])
        return self.model_path

    def local_path(self, start: Optional[int] = None, end: Optional[int] = None, head: bool = False,
                   peers: Optional[RangeSource] = None) -> str:
        """Fetch the header, blocks [start, end) (none if start is None) and optionally the head;
        returns the path to pass to resolve_model().

        `peers` (e.g. other nodes, server/file_sharing.py) are asked before the URL, but only
        with a manifest: their tensors are checked against it, and any that fail are fetched
        again from the URL."""
        if self.format == "sharded":  # peers serve whole files; shards come from the URL only
            return self._sharded_path(start, end, head)
        with self._exclusive():
            partial, layout = self._prepare()
            self._fetch(partial, layout, span_tensors(layout, start or 0, end if start is not None else 0, head),
                        peers)
        return self.model_path

    def fetch(self, names: list[str]) -> None:
        """The header (always) and the named tensors of this file."""
        with self._exclusive():
            self._fetch(*self._prepare(), names)

    def _fetch(self, partial: PartialFile, layout: FileLayout, names: list[str],
               peers: Optional[RangeSource] = None) -> None:
        """Fetch (and check against the manifest) the named tensors; the caller holds the lock."""
        unknown = [n for n in names if n not in layout.tensors]
        if unknown:
            raise DownloadError(f"{self.url} has no tensor {unknown[0]!r} although its index says so")
        ranges = [layout.tensors[n] for n in names]
        use_peers = peers is not None and self.manifest is not None
        fetch_ranges(partial, FallbackSource([peers, self.source]) if use_peers else self.source, ranges,
                     progress=self.progress)
        if self.manifest is not None:
            if self._drop_mismatches(partial, layout, names) and use_peers:
                fetch_ranges(partial, self.source, ranges, progress=self.progress)
            bad = self._drop_mismatches(partial, layout, names)
            if bad:
                raise DownloadError(f"tensor {bad[0]!r} from {self.url} does not match the manifest's sha256 "
                                    f"({len(bad)} tensors in all): the server sent different bytes; check the URL "
                                    "and the manifest")

    def _drop_mismatches(self, partial: PartialFile, layout: FileLayout, names: list[str]) -> list[str]:
        """Tensors whose bytes differ from the manifest; their ranges are forgotten (fetched again)."""
        bad = []
        for name in names:
            expected = self.manifest.get(name)
            if expected is None:
                raise DownloadError(f"the manifest has no sha256 for tensor {name!r}; it does not belong to {self.url}")
            start, end = layout.tensors[name]
            if hashlib.sha256(partial.read(start, end)).hexdigest() != expected:
                bad.append(name)
                for r in [r for r in partial.done if r[0] < end and start < r[1]]:
                    del partial.done[r]
        if bad:
            partial.save()
        return bad
