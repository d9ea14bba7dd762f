"""Content gaps become knowledge-base drafts: questions the bot could not answer, answered by an
agent in the fake Slack, archived in real SQLite, drafted one per question by the real embedder,
reviewed with `gateway kb drafts`; an accepted draft is ingested into the real Chroma knowledge
base, and the bot answers the same question from it the next time."""

from __future__ import annotations

import asyncio
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner, Result

from brain.embedder import Embedder
from brain.knowledge import KnowledgeBase
from gateway.app.cli import app
from gateway.app.settings import GatewayConfig
from gateway.archive import ArchiveEvent, EventKind
from gateway.archive.database import ArchiveDatabase, database_url
from gateway.archive.drafts import REVIEW_MARK, DraftError, DraftFolder, build_drafts
from gateway.archive.gaps import Gap, find_gaps
from gateway.archive.migrate import upgrade
from gateway.archive.schema import events
from gateway.message import Action, InboundKind, Reason, conversation_key
from tests.conftest import SAMPLE_KB
from tests.fakes import until
from tests.fakes.slack_api import FakeSlack
from tests.harness import Gateway
from tests.test_archive import archiving
from tests.test_handoff import DANA, DANA_NAME, LEE, LEE_NAME, Handoff, agent_event, handoff_config
from tests.test_report import DAY, NOW, happened, turn
from tests.test_topics import embedding

COMPOST = "are your bags compostable"
COMPOST_AGAIN = "is the packaging compostable or does it go in the bin"
SHOP = "do you have a shop in manchester where i can collect my beans"
LEE_SAYS = "Hi Lou, yes they can go in the compost."
DANA_SAYS = (
    "Yes: our coffee bags are certified home compostable. Cut off the valve, empty the bag and "
    "put it in your compost bin; it breaks down within six months."
)
SAME_QUESTION = 0.5  # archive.question_similarity's default
NO_SHOP = "We only sell online for now, but we deliver across the UK."


def kb_drafts(*args: str, config: Path) -> Result:
    return CliRunner().invoke(app, ["kb", "drafts", *args, "--config", str(config)])


@pytest.fixture
def knowledge_folder(tmp_path: Path) -> Path:
    """The sample help centre, copied: accepting a draft writes into it."""
    folder = tmp_path / "knowledge"
    shutil.copytree(SAMPLE_KB, folder)
    return folder


async def test_an_agents_answer_becomes_a_draft_and_accepted_the_bot_answers_it(
    tmp_path: Path, knowledge_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GATEWAY_API_TOKEN", raising=False)
    data_dir, archive_url = tmp_path / "data", f"sqlite+aiosqlite:///{tmp_path / 'archive.db'}"
    await asyncio.to_thread(KnowledgeBase(data_dir).ingest, [knowledge_folder])
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(
        f"data_dir: {data_dir}\nknowledge:\n  sources: [{knowledge_folder}]\n"
        f"archive:\n  database_url: {archive_url}\n"
    )

    # Three questions the help centre does not answer, two of them the same; agents answer.
    async with FakeSlack(users={DANA: DANA_NAME, LEE: LEE_NAME}) as slack:
        config = _with(handoff_config(data_dir, slack), knowledge_folder, archive_url)
        async with Handoff.open(config, slack=slack) as gw, archiving(gw):
            for customer, question, agent, name, answer in (
                ("lou", COMPOST_AGAIN, LEE, LEE_NAME, LEE_SAYS),
                ("max", SHOP, DANA, DANA_NAME, NO_SHOP),
                ("kim", COMPOST, DANA, DANA_NAME, DANA_SAYS),
            ):
                asked = await gw.ask(customer, question)
                assert asked["decision"]["action"] == "escalate", asked
                assert asked["decision"]["reason"] == "low_confidence"
                key = conversation_key("rest", customer)
                await gw.publish(agent_event(InboundKind.AGENT_REPLY, key, agent, name, answer))
                await gw.publish(agent_event(InboundKind.RESOLVE, key, agent, name))
            archive = ArchiveDatabase(archive_url)
            await until(lambda: _agent_replies(archive, 3), within=15)
            await archive.close()

    built = await asyncio.to_thread(kb_drafts, "build", "--since", "1d", config=config_file)
    assert built.exit_code == 0, built.output
    assert "2 draft(s) written" in built.output
    folder = DraftFolder(data_dir / "kb-drafts")
    compost, shop = sorted(folder.drafts(), key=lambda draft: -len(draft.conversations))
    assert compost.questions == [COMPOST_AGAIN, COMPOST]  # one gap, one draft
    assert compost.answer == DANA_SAYS and compost.other_answers == [LEE_SAYS]
    assert compost.title == "Is the packaging compostable or does it go in the bin"
    assert [asked.conversation for asked in compost.conversations] == [
        conversation_key("rest", "lou"),
        conversation_key("rest", "kim"),
    ]
    assert all(asked.thread.startswith("C0ESCALATE:") for asked in compost.conversations)
    assert shop.questions == [SHOP] and shop.answer == NO_SHOP

    listed = await asyncio.to_thread(kb_drafts, "list", config=config_file)
    assert listed.exit_code == 0 and compost.id in listed.output and shop.id in listed.output
    shown = await asyncio.to_thread(kb_drafts, "show", compost.id, config=config_file)
    assert shown.exit_code == 0, shown.output
    assert "Customers asked" in shown.output and "rest:kim" in shown.output
    missing = await asyncio.to_thread(kb_drafts, "show", "no-such-draft", config=config_file)
    assert missing.exit_code == 1 and "no draft 'no-such-draft'" in missing.output

    rejected = await asyncio.to_thread(kb_drafts, "reject", shop.id, config=config_file)
    assert rejected.exit_code == 0, rejected.output
    assert [draft.id for draft in folder.drafts()] == [compost.id]
    accepted = await asyncio.to_thread(kb_drafts, "accept", compost.id, config=config_file)
    assert accepted.exit_code == 0, accepted.output
    assert folder.drafts() == []
    page = (knowledge_folder / f"{compost.id}.md").read_text()
    assert page == f"# {compost.title}\n\n{DANA_SAYS}\n"  # no customers' words, no keys
    assert REVIEW_MARK not in page and "rest:kim" not in page
    again = await asyncio.to_thread(kb_drafts, "build", "--since", "1d", config=config_file)
    assert again.exit_code == 0 and "0 draft(s) written" in again.output
    assert "3 answered question(s) already drafted" in again.output

    # The next customer who asks gets the agent's answer, from the accepted page.
    plain = _with(GatewayConfig(data_dir=data_dir), knowledge_folder, archive_url)
    async with Gateway.open(plain) as gw:
        for customer, question in (("ned", COMPOST), ("ola", COMPOST_AGAIN)):
            answered = await gw.ask(customer, question)
            decision = answered["decision"]
            assert decision["action"] == "answer", answered
            assert decision["sources"][0]["source"] == f"{compost.id}.md"
            assert "home compostable" in answered["replies"][0]["text"]


async def test_a_gap_is_an_unanswered_question_an_agent_answered(
    archive_url: str, tmp_path: Path
) -> None:
    """Not a gap: a person asked for, a model outage, an escalation nobody answered."""
    t = NOW - timedelta(hours=5)
    database = ArchiveDatabase(database_url(archive_url, tmp_path))
    await upgrade(database)
    await database.write(
        [
            turn("ann", t, action=Action.ESCALATE, reason=Reason.LOW_CONFIDENCE, text=COMPOST),
            said("ann", EventKind.ESCALATED, t, "C0ESCALATE:1.000001"),
            said("ann", EventKind.AGENT_REPLY, t + timedelta(minutes=2), "Yes, they are."),
            said("ann", EventKind.AGENT_REPLY, t + timedelta(minutes=3), "In a home compost bin."),
            said("ann", EventKind.RESOLVED, t + timedelta(minutes=4)),
            said("ann", EventKind.AGENT_REPLY, t + timedelta(minutes=9), "Anything else?"),
            turn(
                "ann", t + timedelta(hours=1), action=Action.ESCALATE, reason=Reason.LOW_CONFIDENCE
            ),
            said("ann", EventKind.ESCALATED, t + timedelta(hours=1), "C0ESCALATE:2.000001"),
            said("ann", EventKind.TIMED_OUT, t + timedelta(hours=2)),
            turn("bob", t, action=Action.ESCALATE, reason=Reason.HUMAN_REQUESTED),
            said("bob", EventKind.AGENT_REPLY, t + timedelta(minutes=1), "Hello Bob"),
            turn("cid", t, action=Action.ESCALATE, reason=Reason.MODEL_UNAVAILABLE),
            said("cid", EventKind.AGENT_REPLY, t + timedelta(minutes=1), "Hello Cid"),
        ]
    )
    try:
        (gap,) = await find_gaps(database, NOW - DAY)
        assert await find_gaps(database, NOW - timedelta(minutes=30)) == []
    finally:
        await database.close()
    assert (gap.conversation, gap.questions, gap.thread) == (
        conversation_key("rest", "ann"),
        [COMPOST],
        "C0ESCALATE:1.000001",
    )
    assert gap.answer == "Yes, they are.\n\nIn a home compost bin." and gap.agents == ["Dana"]


async def test_a_question_asked_like_a_decided_draft_is_not_drafted_again(
    embedder: Embedder, tmp_path: Path
) -> None:
    folder = DraftFolder(tmp_path / "drafts")

    def gap(turn_id: str, question: str) -> Gap:
        customer = f"c-{turn_id}"
        return Gap(
            conversation_key("rest", customer),
            "rest",
            customer,
            NOW,
            [turn_id],
            [question],
            ["An answer."],
        )

    embed = embedding(embedder)
    first = await build_drafts(folder, [gap("t1", COMPOST)], embed, similarity=SAME_QUESTION)
    (draft,) = first.written
    folder.reject(draft.id)
    later = [gap("t2", COMPOST_AGAIN), gap("t3", SHOP)]  # new conversations, one asked alike
    second = await build_drafts(folder, later, embed, similarity=SAME_QUESTION)
    assert [d.questions for d in second.written] == [[SHOP]] and second.covered == 1
    assert [d.decision for d in folder.decisions()] == ["rejected"]

    # A reviewer who deleted the review line would publish the customers' words: refused.
    path = folder.path / f"{second.written[0].id}.md"
    path.write_text(path.read_text().replace(REVIEW_MARK, ""))
    with pytest.raises(DraftError, match="review line"):
        folder.accept(second.written[0].id, tmp_path / "knowledge")


def test_a_draft_cannot_be_accepted_without_a_knowledge_folder(tmp_path: Path) -> None:
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(f"data_dir: {tmp_path}\n")
    result = kb_drafts("accept", "some-draft", config=config_file)
    assert result.exit_code == 2 and "No knowledge folder" in result.output


def _with(config: GatewayConfig, knowledge: Path, archive_url: str) -> GatewayConfig:
    return config.model_copy(
        update={
            "knowledge": config.knowledge.model_copy(update={"sources": [str(knowledge)]}),
            "archive": config.archive.model_copy(
                update={"database_url": _secret(archive_url), "flush_interval": 0.05}
            ),
        }
    )


def said(customer: str, kind: EventKind, at: datetime, detail: str = "") -> ArchiveEvent:
    return happened(customer, kind, at).model_copy(update={"text": detail})


async def _agent_replies(archive: ArchiveDatabase, expected: int) -> bool:
    async with archive.engine.connect() as connection:
        rows = await connection.execute(
            select(events.c.detail).where(events.c.kind == "agent_reply")
        )
        return len([detail for detail in rows.scalars() if detail]) == expected


def _secret(value: str) -> object:
    from pydantic import SecretStr

    return SecretStr(value)
