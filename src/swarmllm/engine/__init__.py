"""Pure compute: span blocks, KV cache, head, sampling, speculative verification and the
shared generation loop. No file I/O (loading is `swarmllm.runtime`) and no network.
"""
