"""Operations endpoints: liveness, readiness of every backend, Prometheus metrics."""

from __future__ import annotations

from pathlib import Path

from brain.config import KnowledgeConfig
from gateway.app.settings import GatewayConfig
from tests.conftest import free_port
from tests.harness import Gateway


async def test_healthz_answers_ok(gateway: Gateway) -> None:
    response = await gateway.http.get("/healthz")
    assert response.status == 200 and (await response.json()) == {"status": "ok"}


async def test_readyz_checks_bus_store_and_knowledge(gateway: Gateway) -> None:
    response = await gateway.http.get("/readyz")
    assert response.status == 200
    assert await response.json() == {
        "status": "ready",
        "checks": {"bus": "ok", "store": "ok", "knowledge": "ok"},
    }


async def test_readyz_is_503_and_names_the_failing_part(tmp_path: Path) -> None:
    dead_chroma = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = GatewayConfig(data_dir=tmp_path, knowledge=KnowledgeConfig(chroma_url=dead_chroma))
    async with Gateway.open(config) as gateway:
        response = await gateway.http.get("/readyz")
        body = await response.json()
    assert response.status == 503
    assert body["status"] == "not ready"
    assert body["checks"]["bus"] == "ok" and body["checks"]["store"] == "ok"
    assert dead_chroma in body["checks"]["knowledge"]


async def test_metrics_count_messages_decisions_and_latency(gateway: Gateway) -> None:
    await gateway.ask("metrics-1", "How much is the Duo plan in the UK?")
    await gateway.ask("metrics-2", "I want to speak to a human")
    response = await gateway.http.get("/metrics")
    assert response.status == 200
    text = await response.text()
    assert 'gateway_messages_total{channel="rest"}' in text
    assert 'gateway_decisions_total{action="answer",reason="none"}' in text
    assert 'gateway_decisions_total{action="escalate",reason="human_requested"}' in text
    assert 'gateway_turn_latency_seconds_bucket{channel="rest",le="2.0"}' in text
