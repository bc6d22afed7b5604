"""Pure compute: span blocks, KV cache, head, sampling and the shared generation loop.

No file I/O (except LocalModel.load, which delegates to swarmllm.weights) and no network.
"""
