"""`gateway kb search`: what retrieval returns for a question, as a table or JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.app.cli import app

FIXTURES = Path(__file__).parent / "fixtures" / "hybrid"


@pytest.fixture
def ingested(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hybrid fixture pages ingested, through the CLI, into an embedded knowledge base."""
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    monkeypatch.delenv("CHROMA_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no config/gateway.yaml here: embedded defaults
    shutil.copytree(FIXTURES, tmp_path / "docs")
    result = CliRunner().invoke(app, ["kb", "ingest", "docs"])
    assert result.exit_code == 0, result.output


def test_json_lists_one_object_per_page_best_first(ingested: None) -> None:
    result = CliRunner().invoke(app, ["kb", "search", "what is QX-FERNWOOD-88", "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert [set(item) for item in found] == [{"source", "title", "score"}] * 5
    assert found[0]["source"] == "billing.md"
    assert found[0]["title"] == "Billing and invoices"
    assert len({item["source"] for item in found}) == 5
    assert all(0.0 <= item["score"] <= 1.0 for item in found)

    two = CliRunner().invoke(app, ["kb", "search", "reset my password", "--json", "--k", "2"])
    assert [item["source"] for item in json.loads(two.stdout)][:1] == ["reset-password.md"]
    assert len(json.loads(two.stdout)) == 2


def test_the_table_names_heading_score_and_retrievers(ingested: None) -> None:
    email = "Hi there,\n\nwhere do I see outbound link clicks?\n\nThanks,\nJonas"
    result = CliRunner().invoke(app, ["kb", "search", email, "--k", "3"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("searched: where do I see outbound link clicks?" in line for line in lines)
    first = next(line for line in lines if "outbound-links.md" in line)
    assert "Outbound link" in first and "dense + bm25" in first  # the title wraps at 80
    assert sum(".md" in line for line in lines) == 3


def test_an_empty_knowledge_base_says_to_ingest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    monkeypatch.delenv("CHROMA_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["kb", "search", "anything"])
    assert result.exit_code == 1
    assert "gateway kb ingest" in result.output
