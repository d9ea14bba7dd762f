"""The web chat page in a real browser (Debian's Chromium, driven by Playwright) against the
gateway on a loopback port: asking, history on reload, replies shown as text, a phone's width.

One browser and one gateway serve the whole file; each test gets a fresh browser context, so
fresh storage and so a conversation of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, ViewportSize, async_playwright, expect

from gateway.app.settings import GatewayConfig
from gateway.message import Inbound, InboundKind, Outbound, Role, utcnow
from tests.harness import Gateway

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright's own browser download is not possible here
# Without the background-networking flags Chromium's own connections (updates, sync, field
# trials) are refused on a closed network. Playwright adds --headless and a fresh temporary
# --user-data-dir itself.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = ViewportSize(width=375, height=667)
# Answers come from the offline answerer over the real embedder; generous for a loaded machine.
ANSWER_TIMEOUT_MS = 20_000


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        yield browser
        await browser.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(sample_data_dir: Path) -> AsyncIterator[Gateway]:
    """The gateway on the sample help centre, in process, on a free loopback port."""
    # Module scope runs before the per-test environment fixture: keep a developer's keys out.
    with pytest.MonkeyPatch.context() as environment:
        for name in ("ANTHROPIC_API_KEY", "GATEWAY_API_TOKEN"):
            environment.delenv(name, raising=False)
        config = GatewayConfig(data_dir=sample_data_dir)
    async with Gateway.open(config, embedded=True) as gateway:
        yield gateway


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser, site: Gateway) -> AsyncIterator[Page]:
    """A fresh context (no stored conversation) on the chat page, connected."""
    context = await browser.new_context()
    page = await context.new_page()
    await open_chat(page, site)
    yield page
    await context.close()


async def open_chat(page: Page, site: Gateway) -> None:
    await page.goto(str(site.http.make_url("/")))
    await expect(page.locator("#status")).to_have_text("Connected")


async def ask(page: Page, question: str) -> str:
    """Type a question, press send, and return the bot's answer once it is shown."""
    answers = page.locator(".msg--bot .bubble")
    before = await answers.count()
    await page.locator("#input").fill(question)
    await page.locator("#send").click()
    await expect(answers).to_have_count(before + 1, timeout=ANSWER_TIMEOUT_MS)
    return await answers.last.inner_text()


async def test_a_question_sent_is_answered_on_the_page(page: Page) -> None:
    answer = await ask(page, "How long does shipping to Canada take?")

    customer = page.locator(".msg--customer .bubble")
    await expect(customer).to_have_count(1)
    await expect(customer).to_contain_text("How long does shipping to Canada take?")
    assert "Canada" in answer
    await expect(page.locator("#input")).to_have_value("")
    # The answer carries its sources, by page title.
    await expect(page.locator(".msg--bot .sources li").first).to_be_visible()


async def test_a_reload_shows_the_conversation_again(page: Page) -> None:
    answer = await ask(page, "Can I pause my subscription?")

    await page.reload()

    messages = page.locator("#messages .msg")
    await expect(messages).to_have_count(2)
    await expect(messages.nth(0)).to_have_class("msg msg--customer")
    await expect(messages.nth(0).locator(".bubble")).to_contain_text("Can I pause my subscription?")
    await expect(messages.nth(1)).to_have_class("msg msg--bot")
    await expect(messages.nth(1).locator(".bubble")).to_have_text(answer)


async def test_markup_in_messages_is_shown_as_text(page: Page, site: Gateway) -> None:
    markup = '<img src=x onerror="window.pwned = true"><b>bold</b>'
    # A customer's message, then (after a reload) the same from the history the server keeps.
    await ask(page, f"Hello {markup}")
    # An agent's reply with markup in its text and in the agent's name.
    conversation_id = await page.evaluate("localStorage.getItem('gateway.conversation')")
    await site.runtime.channels["webchat"].send(
        Outbound(
            channel="webchat",
            conversation=f"webchat:{conversation_id.partition('.')[0]}",  # id.signature
            text=f"Agent says {markup}",
            role=Role.AGENT,
            author="<i>Ana</i>",
        )
    )
    agent = page.locator(".msg--agent")
    await expect(agent.locator(".bubble")).to_contain_text(f"Agent says {markup}")
    await expect(agent.locator(".author")).to_contain_text("<i>Ana</i>")
    await expect(page.locator(".msg--customer .bubble")).to_contain_text(f"Hello {markup}")
    await assert_no_markup_rendered(page)

    await page.reload()
    await expect(page.locator(".msg--customer .bubble")).to_contain_text(f"Hello {markup}")
    await assert_no_markup_rendered(page)


async def assert_no_markup_rendered(page: Page) -> None:
    """Messages are drawn synchronously, so once their text is shown, any element the markup
    would have made exists already."""
    assert await page.locator("#messages img, #messages b, #messages i").count() == 0
    assert await page.evaluate("window.pwned") is None


async def test_at_phone_width_the_composer_fits_without_horizontal_scroll(
    browser: Browser, site: Gateway
) -> None:
    context = await browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    try:
        page = await context.new_page()
        await open_chat(page, site)
        await assert_fits_the_phone(page)
        # A long unbroken word must wrap inside its bubble, not widen the page.
        await ask(page, "Do you ship to Canada? " + "x" * 200)
        await assert_fits_the_phone(page)
    finally:
        await context.close()


async def assert_fits_the_phone(page: Page) -> None:
    for control in (page.locator("#input"), page.locator("#send")):
        await expect(control).to_be_in_viewport(ratio=1)
        box = await control.bounding_box()
        assert box is not None
        assert 0 <= box["x"] <= PHONE["width"] - box["width"]
        assert 0 <= box["y"] <= PHONE["height"] - box["height"]
    # Neither the page nor the message list (which scrolls by itself) scrolls sideways.
    for scroller in ("document.documentElement", "document.getElementById('log')"):
        overflow = await page.evaluate(f"{scroller}.scrollWidth - {scroller}.clientWidth")
        assert overflow == 0, scroller


async def test_the_satisfaction_ask_is_five_buttons_and_a_press_rates_once(
    page: Page, site: Gateway
) -> None:
    errors: list[str] = []
    page.on(
        "console", lambda message: errors.append(message.text) if message.type == "error" else None
    )
    await ask(page, "How much is the Duo plan in the UK?")
    conversation_id = await page.evaluate("localStorage.getItem('gateway.conversation')")
    key = f"webchat:{conversation_id.partition('.')[0]}"
    # The bot answer's silence ran out: the timer's tick asks (as the worker's sweep would).
    store = site.runtime.store
    conversation = await store.load(key)
    assert conversation is not None and conversation.satisfaction.due_at is not None
    conversation.satisfaction.due_at = utcnow()
    await store.save(conversation)
    await site.runtime.bus.publish(
        Inbound(
            kind=InboundKind.TICK,
            channel="webchat",
            conversation=key,
            sender="handoff-timer",
            provider_message_id=f"tick:{key}:browser",
        )
    )

    buttons = page.locator(".rating button")
    await expect(buttons).to_have_count(5, timeout=ANSWER_TIMEOUT_MS)
    await buttons.nth(3).click()
    await expect(buttons.nth(3)).to_have_attribute("aria-pressed", "true")
    for index in range(5):
        await expect(buttons.nth(index)).to_be_disabled()
    await expect(page.locator(".msg--bot .bubble").last).to_contain_text("Thanks for your rating!")
    saved = await store.load(key)
    assert saved is not None and saved.satisfaction.score == 4
    assert errors == []
