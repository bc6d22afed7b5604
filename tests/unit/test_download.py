"""Partial downloads: only a span's tensors, over HTTP range requests, verified and resumable."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading

import pytest
import torch
from range_server import RangeServer  # tests/range_server.py

from swarmllm.download import DownloadError, RemoteModel, tensor_manifest
from swarmllm.download.fetcher import merge_ranges, missing
from swarmllm.download.layout import gguf_layout, span_tensors
from swarmllm.models.catalog import resolve_model
from swarmllm.weights import load_blocks, read_config


@pytest.fixture(scope="module")
def smollm_file():
    return resolve_model("smollm2-135m").path


@pytest.fixture
def served(tmp_path, smollm_file):
    root = tmp_path / "www"
    root.mkdir()
    os.symlink(smollm_file, root / os.path.basename(smollm_file))
    with RangeServer(root) as server:
        yield server, f"{server.url}/{os.path.basename(smollm_file)}"


def data_bytes(requests):
    return sum(end - start for _, start, end in requests if start > 0)


def test_merge_and_missing():
    assert merge_ranges([(10, 20), (0, 5), (22, 30)], gap=2, chunk=100) == [(0, 5), (10, 30)]
    assert merge_ranges([(0, 10)], gap=0, chunk=4) == [(0, 4), (4, 8), (8, 10)]
    assert missing([(0, 100)], [(10, 20), (50, 100)]) == [(0, 10), (20, 50)]


def test_span_download_fetches_only_the_span_and_loads_identically(served, tmp_path, smollm_file):
    server, url = served
    remote = RemoteModel(url, cache_dir=str(tmp_path / "cache"), progress=False)
    path = remote.local_path(10, 13)
    local = resolve_model(path)
    assert local.model_id == resolve_model(smollm_file).model_id  # same file stem: same DHT key prefix
    # Exactly the header and the span's tensors were fetched (plus the probe), nothing else.
    with open(smollm_file, "rb") as f:
        layout = gguf_layout(f.read(8 * 2**20), os.path.getsize(smollm_file))
    wanted = merge_ranges([layout.tensors[n] for n in span_tensors(layout, 10, 13)], chunk=2**62)
    assert data_bytes(server.requests) == sum(b - a for a, b in wanted)
    assert data_bytes(server.requests) < os.path.getsize(smollm_file) / 8
    assert os.stat(path).st_blocks * 512 < os.path.getsize(smollm_file) / 4  # sparse on disk
    config = read_config(local)
    original = load_blocks(resolve_model(smollm_file), config, 10, 13)
    fetched = load_blocks(local, config, 10, 13)
    for a, b in zip(original, fetched):
        for name, tensor in vars(a).items():
            if isinstance(tensor, torch.Tensor):
                assert torch.equal(tensor, getattr(b, name)), name
    # Starting again fetches no tensor: only the header, re-read to check the remote file is unchanged.
    before = len(server.requests)
    RemoteModel(url, cache_dir=str(tmp_path / "cache"), progress=False).local_path(10, 13)
    assert server.requests[before:] and data_bytes(server.requests[before:]) == 0


def test_interrupted_download_resumes_with_the_missing_ranges_only(served, tmp_path):
    server, url = served
    cache = str(tmp_path / "cache")
    server.cut_after = 9 * 2**20 + 12345  # of the ~13 MiB of blocks [0, 6): the server dies mid-range
    with pytest.raises(DownloadError):
        RemoteModel(url, cache_dir=cache, progress=False).local_path(0, 6)
    record_path = next(os.path.join(d, f) for d, _, fs in os.walk(cache) for f in fs if f.endswith(".download.json"))
    with open(record_path) as f:
        done = [(a, b) for a, b, _ in json.load(f)["done"]]
    assert len(done) >= 2  # the header and at least one chunk survived the cut
    first_run = list(server.requests)
    server.down, server.cut_after = False, None
    remote = RemoteModel(url, cache_dir=cache, progress=False)
    remote.local_path(0, 6)
    second = [(s, e) for _, s, e in server.requests[len(first_run):] if s > 0]
    header_end = remote._layout.header_end
    fetched = [(s, e) for s, e in second if s >= header_end]
    wanted = merge_ranges([remote._layout.tensors[n] for n in span_tensors(remote._layout, 0, 6)], chunk=2**62)
    assert merge_ranges(fetched, gap=0, chunk=2**62) == merge_ranges(missing(wanted, done), gap=0, chunk=2**62)
    assert not any(s < b and a < e for s, e in fetched for a, b in done)  # nothing fetched twice


def test_manifest_catches_wrong_bytes_and_changed_files_start_over(served, tmp_path, smollm_file):
    server, url = served
    manifest = tensor_manifest(smollm_file)
    good = tmp_path / "manifest.json"
    good.write_text(json.dumps(manifest))
    RemoteModel(url, cache_dir=str(tmp_path / "a"), manifest=str(good), progress=False).local_path(0, 1)
    name = "blk.0.attn_q.weight"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"tensors": {**manifest["tensors"], name: hashlib.sha256(b"x").hexdigest()}}))
    with pytest.raises(DownloadError, match=name):
        RemoteModel(url, cache_dir=str(tmp_path / "b"), manifest=str(bad), progress=False).local_path(0, 1)
    # A locally damaged range is found on the next start and fetched again.
    path = RemoteModel(url, cache_dir=str(tmp_path / "a"), progress=False).file_path
    partial_record = json.loads(open(path + ".download.json").read())
    a, b, _ = partial_record["done"][-1]
    with open(path, "r+b") as f:
        f.seek(a)
        f.write(b"\0" * 16)
    before = len(server.requests)
    RemoteModel(url, cache_dir=str(tmp_path / "a"), manifest=str(good), progress=False).local_path(0, 1)
    assert (a, b) in [(s, e) for _, s, e in server.requests[before:]]


def test_server_without_range_support_is_a_clear_error(tmp_path, smollm_file):
    class NoRanges(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    root = tmp_path / "plain"
    root.mkdir()
    (root / "m.gguf").write_bytes(b"GGUF" + b"\0" * 100)
    handler = lambda *a, **k: NoRanges(*a, directory=str(root), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(DownloadError, match="does not serve byte ranges"):
            RemoteModel(f"http://127.0.0.1:{httpd.server_address[1]}/m.gguf", cache_dir=str(tmp_path / "c"),
                        progress=False).local_path(0, 1)
    finally:
        httpd.shutdown()
        httpd.server_close()


class LyingPeer:
    """A peer source that has every range but sends zeros."""

    name = "liar"

    def __init__(self, size):
        self._size, self.reads = size, 0

    def size(self):
        return self._size

    def identity(self):
        return ""

    def read(self, offset, length):
        self.reads += 1
        return b"\0" * length


def test_peers_are_used_only_with_a_manifest_and_their_wrong_bytes_are_refetched_from_the_url(served, tmp_path,
                                                                                          smollm_file):
    server, url = served
    size = os.path.getsize(smollm_file)
    peer = LyingPeer(size)
    RemoteModel(url, cache_dir=str(tmp_path / "a"), progress=False).local_path(0, 1, peers=peer)
    assert peer.reads == 0  # no manifest: a peer's bytes could not be checked, so it is not asked
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(tensor_manifest(smollm_file)))
    before = len(server.requests)
    path = RemoteModel(url, cache_dir=str(tmp_path / "b"), manifest=str(manifest),
                       progress=False).local_path(0, 1, peers=peer)
    assert peer.reads > 0 and data_bytes(server.requests[before:]) > 0  # asked the peer, then the URL
    config = read_config(resolve_model(path))
    assert torch.equal(load_blocks(resolve_model(path), config, 0, 1)[0].q,
                       load_blocks(resolve_model(smollm_file), config, 0, 1)[0].q)


def test_a_safetensors_url_fetches_config_and_the_span_only(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    folder = tmp_path / "www" / "tiny-llama"
    LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=128)).save_pretrained(folder)
    with RangeServer(tmp_path / "www") as server:
        remote = RemoteModel(f"{server.url}/tiny-llama/model.safetensors", cache_dir=str(tmp_path / "cache"),
                             progress=False)
        path = remote.local_path(1, 2)
        ranges = [(s, e) for file, s, e in server.requests if s > 0 and file.endswith(".safetensors")]
        fetched = {name for name, (a, b) in remote._layout.tensors.items() if any(s < b and a < e for s, e in ranges)}
    assert path.endswith("tiny-llama") and resolve_model(path).model_id == "tiny-llama"
    assert fetched and all(".layers.1." in name for name in fetched)
    config = read_config(resolve_model(path))
    ours = load_blocks(resolve_model(path), config, 1, 2)[0]
    original = load_blocks(resolve_model(str(folder)), config, 1, 2)[0]
    assert torch.equal(ours.down, original.down) and torch.equal(ours.attn_norm, original.attn_norm)


def test_a_sharded_checkpoint_fetches_index_config_headers_and_the_span_only(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    folder = tmp_path / "www" / "tiny-sharded"
    LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=128)).save_pretrained(folder, max_shard_size="60KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3  # the test means something only if the blocks spread over several files
    wanted = {index["weight_map"][n] for n in index["weight_map"] if ".layers.2." in n}
    with RangeServer(tmp_path / "www") as server:
        remote = RemoteModel(f"{server.url}/tiny-sharded/model.safetensors.index.json",
                             cache_dir=str(tmp_path / "cache"), progress=False)
        path = remote.local_path(2, 3)
        # Every shard's header was read (shapes size the spans); tensor data only from block 2's shards.
        name = lambda file: file.rsplit("/", 1)[-1]  # noqa: E731
        headers = {name(f) for f, s, e in server.requests if s == 0 and f.endswith(".safetensors")}
        data = {name(f) for f, s, e in server.requests
                if f.endswith(".safetensors") and s >= 8 + _header_len(folder / name(f))}
    assert headers == set(shards)
    assert data and data <= wanted
    assert resolve_model(path).model_id == "tiny-sharded"
    config = read_config(resolve_model(path))
    ours = load_blocks(resolve_model(path), config, 2, 3)[0]
    original = load_blocks(resolve_model(str(folder)), config, 2, 3)[0]
    assert torch.equal(ours.q, original.q) and torch.equal(ours.down, original.down)
    assert tensor_manifest(str(folder))["tensors"].keys() == index["weight_map"].keys()


def _header_len(path) -> int:
    import struct

    with open(path, "rb") as f:
        return struct.unpack("<Q", f.read(8))[0]
