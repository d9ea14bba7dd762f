"""Config: defaults everywhere, `${NAME}` from the environment, typos named with path and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.app.cli import app
from gateway.app.settings import load_config, parse_config
from gateway.config import ConfigError


def test_a_file_with_only_knowledge_sources_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("knowledge: {sources: [docs]}\n")
    config = load_config(path)
    assert config.knowledge.sources == [str(tmp_path / "docs")]
    assert config.redis_url is None
    assert config.pipeline.dedupe_ttl >= 86_400


def test_an_empty_file_is_valid() -> None:
    assert parse_config("").server.port == 8080


def test_unknown_key_is_named_with_its_path_and_line() -> None:
    text = "pipeline:\n  max_concurrency: 8\n  max_concurency: 9\n"
    with pytest.raises(ConfigError) as error:
        parse_config(text)
    assert "pipeline.max_concurency (line 3): unknown key" in str(error.value)


def test_wrong_type_is_named_with_its_path_and_line() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config("server:\n  host: 127.0.0.1\n  port: eighty\n")
    assert "server.port (line 3)" in str(error.value)


def test_dedupe_ttl_below_a_day_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"pipeline\.dedupe_ttl"):
        parse_config("pipeline: {dedupe_ttl: 60}")


def test_environment_references_are_substituted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_REDIS", "redis://example:6379/0")
    monkeypatch.setenv("GATEWAY_API_TOKEN", "s3cret-token")
    config = parse_config("redis_url: ${TEST_REDIS}\nchannels: {webchat: {title: '${SHOP:-Acme}'}}")
    assert config.redis_url == "redis://example:6379/0"
    assert config.channels.webchat.title == "Acme"
    assert config.server.api_token is not None
    assert "s3cret-token" not in repr(config)  # secrets never print


def test_an_unset_reference_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    assert parse_config("server: {port: '${NOT_SET_ANYWHERE}'}").server.port == 8080


def test_port_from_the_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("server: {port: 9000}\n")
    monkeypatch.setenv("PORT", "5123")
    assert load_config(path).server.port == 5123


def test_invalid_yaml_is_reported() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config("server: [unclosed\n")


def test_gateway_check_exits_non_zero_and_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("knowledge:\n  sources: [docs]\n  colection: typo\n")
    result = CliRunner().invoke(app, ["check", "--config", str(path)])
    assert result.exit_code != 0
    assert "knowledge.colection (line 3): unknown key" in result.output
