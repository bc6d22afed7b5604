"""Facts about model files read from their headers only: sizes per block, quantization, template.

`model_file_facts(path)` reads a GGUF header (tensor sizes and metadata, no tensor data);
`catalog_rows()` lists the catalog (models/catalog.py) with, for every installed model, the
facts of its file in place of the stored ones. Listing never assembles or loads a model.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from gguf.constants import GGMLQuantizationType

from swarmllm.models.catalog import CATALOG, gemma3_package_present
from swarmllm.models.registry import family_for_gguf
from swarmllm.weights.gguf_file import GGUFFile  # header parser only


def model_file_facts(path: str) -> dict[str, Any]:
    """Sizes and traits of a GGUF file, from its header only (no tensor data is read).

    file_bytes_per_block: bytes of the largest block's tensors as stored (quantized);
    params_per_block: its weight count, i.e. its memory once dequantized (x2 bytes in bf16,
    x4 in fp32); file_quantization: the GGML type holding most of the block bytes.
    """

    file = GGUFFile(path)
    block_bytes: Counter[int] = Counter()
    block_params: Counter[int] = Counter()
    type_bytes: Counter[str] = Counter()
    for name, info in file.tensors.items():
        if not name.startswith("blk."):
            continue
        index = int(name.split(".")[1])
        block_bytes[index] += info.n_bytes
        block_params[index] += int(math.prod(info.shape))
        type_bytes[GGMLQuantizationType(info.type).name] += info.n_bytes
    spec = family_for_gguf(str(file.metadata["general.architecture"]))
    if file.metadata.get("tokenizer.chat_template"):
        template = "in file"
    else:
        template = "family default" if spec.default_chat_template else "none"
    return {
        "family": spec.name,
        "n_blocks": len(block_bytes),
        "file_bytes_per_block": max(block_bytes.values(), default=0),
        "params_per_block": max(block_params.values(), default=0),
        "file_quantization": type_bytes.most_common(1)[0][0] if type_bytes else "none",
        "chat_template": template,
    }


def catalog_rows(measure: bool = True) -> list[dict[str, Any]]:
    """One dict per catalog model: its recipe, whether it is installed, and (measure=True) the
    facts read from the installed file's header, which replace the stored ones."""
    rows = []
    for entry in CATALOG.values():
        path = entry.installed() if entry.installed else None
        row: dict[str, Any] = {
            "name": entry.name, "description": entry.description, "family": entry.family,
            "installed": path is not None, "path": path, "note": None, "source": entry.source,
            "default_dtype": entry.default_dtype, "default_quant": entry.default_quant,
            "file_quantization": entry.file_quantization, "n_blocks": entry.n_blocks,
            "file_bytes_per_block": entry.file_bytes_per_block, "params_per_block": entry.params_per_block,
            "chat_template": entry.chat_template, "draft": entry.draft, "sampling": dict(entry.sampling),
        }
        if measure and path is not None:
            facts = model_file_facts(path)
            facts.pop("family")  # a Mistral GGUF says "llama": the catalog keeps the model's own family
            row.update(facts)
        if path is None and entry.name == "gemma3-270m" and gemma3_package_present():
            row.update(installed=True, note="package present; the GGUF is assembled on first use")
        rows.append(row)
    return rows
