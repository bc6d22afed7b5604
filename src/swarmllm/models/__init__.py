"""Model families: config dataclass, family registry (weight-name maps), catalog, tokenizer.

Nothing here runs compute or touches the network; see swarmllm.engine for compute.
"""
