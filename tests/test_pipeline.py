"""The pipeline's own rules: redeliveries, half-done messages, human mode, empty input."""

from __future__ import annotations

from gateway.message import (
    Action,
    Attachment,
    Conversation,
    Inbound,
    Mode,
    Reason,
    Role,
    TranscriptEntry,
)
from tests.harness import Gateway


def inbound(text: str, provider_id: str = "p1", **fields) -> Inbound:  # type: ignore[no-untyped-def]
    return Inbound(
        channel="rest",
        conversation="rest:zoe",
        sender="zoe",
        text=text,
        provider_message_id=provider_id,
        **fields,
    )


async def roles(gateway: Gateway) -> list[str]:
    return [entry.role.value for entry in await gateway.runtime.store.transcript("rest:zoe")]


async def test_a_redelivered_message_gets_no_second_reply(gateway: Gateway) -> None:
    first = await gateway.runtime.pipeline.handle(inbound("Can I pause my subscription?"))
    again = await gateway.runtime.pipeline.handle(inbound("Can I pause my subscription?"))
    assert first.replies and not first.duplicate
    assert again.duplicate and again.replies == ()
    assert await roles(gateway) == ["customer", "bot"]


async def test_a_message_answered_before_its_worker_died_is_not_answered_again(
    gateway: Gateway,
) -> None:
    store = gateway.runtime.store
    message = inbound("Can I pause my subscription?")
    # What a worker that died just before marking the message done leaves behind.
    await store.append(
        "rest:zoe", TranscriptEntry(role=Role.CUSTOMER, text=message.text, message_id=message.id)
    )
    await store.append(
        "rest:zoe", TranscriptEntry(role=Role.BOT, text="Yes.", in_reply_to=message.id)
    )
    result = await gateway.runtime.pipeline.handle(message)
    assert result.replies == ()
    assert await roles(gateway) == ["customer", "bot"]
    assert await store.is_processed(message.dedupe_key)


async def test_a_message_recorded_but_unanswered_is_answered_once(gateway: Gateway) -> None:
    store = gateway.runtime.store
    message = inbound("Can I pause my subscription?")
    await store.append(
        "rest:zoe", TranscriptEntry(role=Role.CUSTOMER, text=message.text, message_id=message.id)
    )
    result = await gateway.runtime.pipeline.handle(message)
    assert result.replies
    assert await roles(gateway) == ["customer", "bot"]


async def test_the_bot_stays_silent_while_a_person_owns_the_conversation(gateway: Gateway) -> None:
    conversation = Conversation(key="rest:zoe", channel="rest", mode=Mode.HUMAN)
    await gateway.runtime.store.save(conversation)
    result = await gateway.runtime.pipeline.handle(inbound("Are you still there?"))
    assert result.decision.action is Action.HUMAN and result.decision.reason is Reason.HUMAN_ACTIVE
    assert result.replies == ()
    assert await roles(gateway) == ["customer"]


async def test_an_empty_message_gets_a_prompt_to_type(gateway: Gateway) -> None:
    result = await gateway.runtime.pipeline.handle(inbound("   "))
    assert result.decision.reason is Reason.EMPTY_MESSAGE
    assert "type your question" in result.replies[0]


async def test_an_attachment_only_message_is_noted_in_the_transcript(gateway: Gateway) -> None:
    photo = Attachment(kind="image", name="dented-kettle.jpg", mime_type="image/jpeg")
    await gateway.runtime.pipeline.handle(inbound("", attachments=(photo,)))
    transcript = await gateway.runtime.store.transcript("rest:zoe")
    assert transcript[0].text == "[image attached: dented-kettle.jpg]"
