"""Catalog resolution and model ids."""

from __future__ import annotations

import pytest

from swarmllm.models.catalog import UnknownModelError, list_catalog, resolve_model


def test_catalog_names():
    assert list_catalog() == ["smollm2-135m", "gemma3-270m"]
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
