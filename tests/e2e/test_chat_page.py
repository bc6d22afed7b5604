"""The chat page in headless Chromium against a real gateway and swarm: markdown rendered safely,
sampling controls, regenerate and edit, the system prompt, the context meter, and conversations
kept in localStorage across a reload.

The one stand-in: the markdown test replaces the gateway's reply with a fixed SSE stream (so the
markdown, and the attack in it, are known); every other reply comes from the real model.
Screenshots go to $SWARMLLM_ARTIFACTS (or a temporary folder) as test artifacts.
"""

from __future__ import annotations

import json
import os
import re

import pytest
expect = pytest.importorskip("playwright.sync_api").expect


pytestmark = pytest.mark.integration

MODEL = "smollm2-135m"
COMPLETIONS = "**/v1/chat/completions"
CODE = 'def greet(name):\n    return f"Hello, {name}!"'
MARKDOWN = (
    "Here is **bold** text.\n\n"
    "- first item\n- second item\n\n"
    f"```python\n{CODE}\n```\n\n"
    '<img src=x onerror="window.__xss=1">\n\n'
    "<script>window.__xss=2</script>\n"
    "[a link](javascript:window.__xss=3)\n"
)


@pytest.fixture(scope="module")
def site(gateway_swarm):
    """The API tests' swarm and gateway (tests/e2e/conftest.py): these tests only read it."""
    return gateway_swarm


@pytest.fixture
def page(browser):
    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"],
                                  viewport={"width": 1280, "height": 860})
    page = context.new_page()
    yield page
    context.close()


def _open(page, url: str) -> None:
    page.goto(url + "/")
    page.wait_for_selector(f"[data-testid=model-select] >> text={MODEL}", state="attached", timeout=30_000)


def _wait_replies(page, count: int) -> None:
    """Until `count` replies have finished (each shows its route line), failing on a shown error."""
    page.wait_for_function(
        "n => document.querySelector('[data-testid=chat-error]') || ("
        "document.querySelectorAll('[data-testid=reply-meta]').length === n"
        " && !document.querySelector('[data-testid=stop-button]'))", arg=count, timeout=120_000)
    errors = page.locator("[data-testid=chat-error]")
    assert errors.count() == 0, errors.first.inner_text()


def _send(page, text: str) -> dict:
    """Types `text`, sends it, and returns the JSON body of the request the page made."""
    page.fill("[data-testid=chat-input]", text)
    with page.expect_request(COMPLETIONS) as sent:
        page.click("[data-testid=send-button]")
    return sent.value.post_data_json


def _sse(text: str) -> str:
    """A streamed chat.completion in OpenAI's chunk format, as the gateway sends it."""
    base = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0, "model": MODEL}
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    pieces = [text[i:i + 17] for i in range(0, len(text), 17)]
    chunks += [{**base, "choices": [{"index": 0, "delta": {"content": p}}]} for p in pieces]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 21, "completion_tokens": 79, "total_tokens": 100},
                   "swarmllm": {"route": [{"peer_id": "12D3KooWtestpeerAAAA", "start": 0, "end": 30}],
                                "tokens_per_second": 12.5, "time_to_first_token": 0.25, "completion_tokens": 79}})
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


def test_markdown_reply_is_rendered_safely(page, site, artifacts_dir):
    _, url = site
    page.route(COMPLETIONS, lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}, body=_sse(MARKDOWN)))
    _open(page, url)
    _send(page, "Show me some markdown.")
    _wait_replies(page, 1)

    reply = page.locator("[data-testid=assistant-message]").first
    assert reply.locator("strong").inner_text() == "bold"
    assert reply.locator("li").all_inner_texts() == ["first item", "second item"]
    code = reply.locator("pre code.hljs")
    assert code.count() == 1 and "language-python" in code.get_attribute("class")
    assert code.locator(".hljs-keyword").count() >= 1  # highlighted, not just wrapped
    # The attack: nothing ran, and no image (with or without its handler), script or javascript: link is left.
    assert page.evaluate("() => window.__xss") is None
    assert reply.locator("img").count() == 0 and page.locator("[onerror]").count() == 0
    assert reply.locator("script").count() == 0
    assert all(not (h or "").startswith("javascript:") for h in
               reply.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))"))
    # the final chunk's usage drives the meter; its swarmllm object the route line
    assert page.inner_text("[data-testid=context-meter]") == "100 / 8192 tokens"
    assert "[0,30)" in page.inner_text("[data-testid=reply-meta]")

    copy = reply.locator("[data-testid=copy-code]")
    copy.click()
    page.wait_for_function("() => document.querySelector('[data-testid=copy-code]').innerText === 'Copied'")
    assert page.evaluate("() => navigator.clipboard.readText()") == CODE
    page.screenshot(path=os.path.join(artifacts_dir, "chat-markdown.png"), full_page=True)


def test_sampling_regenerate_edit_and_system_prompt_with_the_real_model(page, site, artifacts_dir):
    _, url = site
    _open(page, url)
    expect(page.get_by_test_id("context-meter")).to_have_text("~0 / 8192 tokens")  # estimated before a reply
    page.fill("[data-testid=max-tokens]", "12")

    first = _send(page, "Name a colour.")
    # Untouched controls are not sent (the gateway applies the model's defaults).
    assert first["max_tokens"] == 12 and first["stream"] is True
    assert not {"temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed"} & first.keys()
    _wait_replies(page, 1)
    meter = page.inner_text("[data-testid=context-meter]")
    assert re.fullmatch(r"\d+ / 8192 tokens", meter), meter  # exact: the reply's usage
    assert int(meter.split()[0]) > 12
    # The gateway's default verification ran: the reply says what was checked.
    assert "verified (sample)" in page.inner_text("[data-testid=reply-verification]")

    page.select_option("[data-testid=verify-select]", "off")
    page.click("[data-testid=sampling-toggle]")
    page.fill("[data-testid=temperature]", "0")
    page.fill("[data-testid=repetition-penalty]", "1.3")
    second = _send(page, "And another one?")
    assert second["temperature"] == 0 and second["repetition_penalty"] == 1.3 and second["verify"] == "off"
    assert "top_p" not in second and "top_k" not in second and "seed" not in second
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    _wait_replies(page, 2)
    page.screenshot(path=os.path.join(artifacts_dir, "chat-sampling.png"), full_page=True)

    replies = page.locator("[data-testid=assistant-message]")
    with page.expect_request(COMPLETIONS) as again:
        page.click("[data-testid=regenerate-button]")
    assert again.value.post_data_json["messages"] == second["messages"]
    assert again.value.post_data_json["temperature"] == 0
    _wait_replies(page, 2)
    assert replies.count() == 2

    page.locator("[data-testid=user-message]").first.locator("[data-testid=edit-button]").click()
    page.fill("[data-testid=edit-input]", "Name a fruit.")
    with page.expect_request(COMPLETIONS) as edited:
        page.click("[data-testid=edit-save]")
    assert edited.value.post_data_json["messages"] == [{"role": "user", "content": "Name a fruit."}]
    _wait_replies(page, 1)
    assert page.locator("[data-testid=user-message]").all_inner_texts()[0].startswith("Name a fruit.")
    assert page.locator("[data-testid=user-message]").count() == 1 and replies.count() == 1

    page.fill("[data-testid=system-prompt]", "You are a terse assistant.")
    with_system = _send(page, "Why that one?")
    assert with_system["messages"][0] == {"role": "system", "content": "You are a terse assistant."}
    assert [m["role"] for m in with_system["messages"]] == ["system", "user", "assistant", "user"]
    _wait_replies(page, 2)

    page.click("[data-testid=reset-sampling]")
    assert page.input_value("[data-testid=temperature]") == ""
    reset = _send(page, "Thanks.")
    assert not {"temperature", "repetition_penalty", "max_tokens"} & reset.keys()
    page.click("[data-testid=stop-button]")  # the gateway's default length would take a while
    page.wait_for_selector("[data-testid=send-button]", state="attached", timeout=30_000)


def test_conversations_survive_a_reload_and_can_be_switched(page, site, artifacts_dir):
    _, url = site
    _open(page, url)
    page.fill("[data-testid=max-tokens]", "8")
    page.fill("[data-testid=system-prompt]", "Answer in one word.")
    _send(page, "Name a planet.")
    _wait_replies(page, 1)
    first_reply = page.inner_text("[data-testid=assistant-message]")

    page.reload()
    _open(page, url)
    assert page.locator("[data-testid=user-message]").all_inner_texts()[0].startswith("Name a planet.")
    assert page.inner_text("[data-testid=assistant-message]") == first_reply
    assert page.input_value("[data-testid=system-prompt]") == "Answer in one word."
    items = page.locator("[data-testid=conversation-item]")
    assert items.all_inner_texts()[0].startswith("Name a planet.")

    page.click("[data-testid=new-chat]")
    assert page.locator("[data-testid=user-message]").count() == 0
    assert page.input_value("[data-testid=system-prompt]") == ""  # the prompt is per conversation
    page.fill("[data-testid=max-tokens]", "8")
    _send(page, "Name a river.")
    _wait_replies(page, 1)
    titles = [t.strip("× \n") for t in items.all_inner_texts()]
    assert titles[:2] == ["Name a river.", "Name a planet."]  # newest first

    items.filter(has_text="Name a planet.").locator("button.conversation-title").click()
    assert page.locator("[data-testid=user-message]").all_inner_texts()[0].startswith("Name a planet.")
    assert page.input_value("[data-testid=system-prompt]") == "Answer in one word."
    page.screenshot(path=os.path.join(artifacts_dir, "chat-conversations.png"), full_page=True)

    page.once("dialog", lambda dialog: dialog.accept())
    items.filter(has_text="Name a river.").locator("[data-testid=delete-conversation]").click()
    page.wait_for_function("() => document.querySelectorAll('[data-testid=conversation-item]').length === 1")
    page.reload()
    _open(page, url)
    assert [t.strip("× \n") for t in items.all_inner_texts()] == ["Name a planet."]


def test_a_browser_that_refuses_storage_still_chats(page, site):
    _, url = site
    page.add_init_script("Storage.prototype.setItem = function () {"
                         " throw new DOMException('quota exceeded', 'QuotaExceededError') }")
    _open(page, url)
    page.fill("[data-testid=max-tokens]", "6")
    _send(page, "Hello.")
    _wait_replies(page, 1)
    page.wait_for_selector("[data-testid=storage-warning]", timeout=10_000)
    assert page.inner_text("[data-testid=assistant-message]").strip()
