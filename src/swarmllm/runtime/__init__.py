"""Files -> engine objects: the one place that loads a model's spans, head and tokenizer.

- `load_span(source, start, end, dtype, quant)`: blocks [start, end) as an engine `SpanModel`
  (servers, the local reference, the early-exit drafter, tests and benchmarks all load here);
- `load_model_head(...)`: embedding, final norm and LM head as a `ModelHead`;
- `ClientModel`: what a client keeps of a model (config, head, tokenizer, prompt formatting);
- `LocalModel`: a `ClientModel` plus every block — the single-process reference that swarm
  output must equal (`swarmllm generate --local`, tests, benchmarks).

Reading goes through `swarmllm.weights`; what comes back is pure compute (`swarmllm.engine`).
No network.
"""

from swarmllm.runtime.loading import (
    ClientModel, LocalModel, PromptTooLongError, load_model_head, load_span, resolve_compute_dtype,
)

__all__ = ["ClientModel", "LocalModel", "PromptTooLongError", "load_model_head", "load_span",
           "resolve_compute_dtype"]
