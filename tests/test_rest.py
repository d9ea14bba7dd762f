"""The REST channel end to end: HTTP in, the whole pipeline, the answer in the same response."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.app.settings import GatewayConfig
from tests.harness import Gateway

PRICING = "How much is the Duo plan in the UK?"


async def test_a_question_is_answered_from_the_knowledge_base_with_sources(
    gateway: Gateway,
) -> None:
    body = await gateway.ask("alice", PRICING)
    assert set(body) == {
        "conversation_id",
        "replies",
        "decision",
        "first_response_ms",
        "latency_ms",
    }
    assert body["conversation_id"] == "alice"
    decision = body["decision"]
    assert decision["action"] == "answer" and decision["reason"] is None
    assert decision["sources"][0] == {
        "source": "subscription-plans-and-pricing.md",
        "title": "Subscription plans and pricing",
    }
    assert "£27" in body["replies"][0]["text"]
    assert 0 < decision["confidence"] <= 1 and body["latency_ms"] > 0
    # REST shows nothing before its response: the first text seen is the whole reply.
    assert 0 < body["first_response_ms"] <= body["latency_ms"]


async def test_asking_for_a_person_escalates_with_a_reason(gateway: Gateway) -> None:
    body = await gateway.ask("bob", "This is useless, I want to talk to a real person")
    assert body["decision"]["action"] == "escalate"
    assert body["decision"]["reason"] == "human_requested"
    # No agent console is connected yet, so the customer is told where a person can be reached.
    assert body["replies"][0]["text"] == gateway.runtime.config.brain.messages.no_agents


async def test_a_question_outside_the_knowledge_base_escalates_as_low_confidence(
    gateway: Gateway,
) -> None:
    body = await gateway.ask("carol", "Who won the 1998 football world cup final?")
    assert body["decision"]["action"] == "escalate"
    assert body["decision"]["reason"] == "low_confidence"


async def test_the_same_idempotency_key_twice_yields_one_reply_and_the_same_response(
    gateway: Gateway,
) -> None:
    headers = {"Idempotency-Key": "retry-123"}
    first = await gateway.http.post(
        "/api/messages", json={"conversation_id": "dave", "text": PRICING}, headers=headers
    )
    second = await gateway.http.post(
        "/api/messages", json={"conversation_id": "dave", "text": PRICING}, headers=headers
    )
    assert first.status == 200 and second.status == 200
    assert await second.json() == await first.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    transcript = await (await gateway.http.get("/api/conversations/dave")).json()
    assert [entry["role"] for entry in transcript["transcript"]] == ["customer", "bot"]


async def test_conversation_shows_mode_and_transcript(gateway: Gateway) -> None:
    await gateway.ask("erin", PRICING)
    response = await gateway.http.get("/api/conversations/erin")
    assert response.status == 200
    body = await response.json()
    assert body["mode"] == "bot"
    customer, bot = body["transcript"]
    assert customer["role"] == "customer" and customer["text"] == PRICING
    assert bot["role"] == "bot" and bot["sources"]


async def test_two_customers_never_share_context(gateway: Gateway) -> None:
    await asyncio.gather(gateway.ask("frank", PRICING), gateway.ask("grace", "Hello?"))
    frank = await (await gateway.http.get("/api/conversations/frank")).json()
    assert all("Hello?" not in entry["text"] for entry in frank["transcript"])


async def test_unknown_conversation_is_404(gateway: Gateway) -> None:
    response = await gateway.http.get("/api/conversations/nobody")
    assert response.status == 404
    assert "nobody" in (await response.json())["error"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"conversation_id": "x"}, 422, "text: Field required"),
        ({"conversation_id": "x", "text": "   "}, 422, "text: String should have at least 1"),
        ({"conversation_id": "x", "text": "hi", "color": "red"}, 422, "color: unknown field"),
        ({"conversation_id": "a b", "text": "hi"}, 422, "conversation_id: String should match"),
        ({"conversation_id": "x", "text": "y" * 4001}, 413, "limit is 4000"),
    ],
)
async def test_bad_requests_get_a_precise_error(
    gateway: Gateway, body: dict, status: int, message: str
) -> None:
    response = await gateway.http.post("/api/messages", json=body)
    assert response.status == status
    assert message in (await response.json())["error"]


async def test_malformed_json_is_400_and_wrong_content_type_is_415(gateway: Gateway) -> None:
    bad_json = await gateway.http.post(
        "/api/messages", data="{not json", headers={"Content-Type": "application/json"}
    )
    assert bad_json.status == 400 and "not valid JSON" in (await bad_json.json())["error"]
    form = await gateway.http.post("/api/messages", data={"text": "hi"})
    assert form.status == 415


async def test_bearer_token_is_required_when_configured(sample_data_dir: Path) -> None:
    config = GatewayConfig(data_dir=sample_data_dir, server={"api_token": "t0ken-value"})
    async with Gateway.open(config, embedded=True) as gateway:
        payload = {"conversation_id": "h", "text": PRICING}
        missing = await gateway.http.post("/api/messages", json=payload)
        wrong = await gateway.http.post(
            "/api/messages", json=payload, headers={"Authorization": "Bearer nope"}
        )
        assert missing.status == 401 and wrong.status == 401
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        assert (await gateway.http.get("/api/conversations/h")).status == 401
        right = await gateway.http.post(
            "/api/messages", json=payload, headers={"Authorization": "Bearer t0ken-value"}
        )
        assert right.status == 200
