"""The report's topics: customers' questions grouped by meaning with the gateway's own (offline,
multilingual) embedder, each group named by its most distinctive words."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
from pydantic import SecretStr

from brain.config import BrainConfig
from brain.embedder import Embedder
from brain.topic_names import TOOL_NAME, ClaudeTopicNamer
from gateway.archive import ArchiveEvent
from gateway.archive.clusters import Embed, distinctive_terms, embed_all, group
from gateway.archive.database import ArchiveDatabase
from gateway.archive.migrate import upgrade
from gateway.archive.render import render_html
from gateway.archive.report import NameTopics, Report, build_report
from gateway.message import Action, Reason
from tests.fakes.anthropic_api import API_KEY, FakeAnthropic, ToolCall
from tests.test_report import DAY, NOW, WINDOW, turn

SIMILARITY = 0.35  # archive.topic_similarity's default

# As customers write: typos, no capitals, several ways of asking the same thing.
ASKED = {
    "parcel": [
        "where is my parcel?? it was meant to arrive tuesday",
        "my order still hasnt arrived",
        "tracking says delivered but nothing came",
    ],
    "pause": [
        "how do i pause my subscription while im on holiday",
        "pause subscription for 2 weeks pls",
        "can i put my coffee plan on hold for a month",
    ],
    "grinder": [
        "my grinder makes a weird noise and wont grind",
        "the burr grinder is jammed",
    ],
    "compost": [
        "is your packaging compostable?",
        "can i put the coffee bags in my compost bin",
        "are the bags your beans come in home compostable??",
    ],
    "canada": ["Do you ship to Canada?"],
}


def embedding(embedder: Embedder) -> Embed:
    async def embed(texts: Sequence[str]) -> np.ndarray:
        return embedder.embed(list(texts), "query")  # as KnowledgeBase.embed asks

    return embed


async def test_paraphrases_share_a_topic_and_different_questions_do_not(
    embedder: Embedder,
) -> None:
    texts = [text for asked in ASKED.values() for text in asked]
    topic_of = {text: topic for topic, asked in ASKED.items() for text in asked}
    groups = group(await embed_all(embedding(embedder), texts), similarity=SIMILARITY)
    found = sorted(sorted(topic_of[texts[row]] for row in rows) for rows in groups)
    assert found == sorted([topic] * len(asked) for topic, asked in ASKED.items())


def test_a_topic_is_named_by_the_words_that_set_it_apart() -> None:
    names = distinctive_terms(list(ASKED.values()))
    named = dict(zip(ASKED, names, strict=True))
    assert "grinder" in named["grinder"] and "pause" in named["pause"]
    assert "compostable" in named["compost"] and "canada" in named["canada"]
    # A word every topic uses names none of them; a chat word never does.
    assert all("pls" not in terms and "coffee" not in terms[:1] for terms in names)
    assert distinctive_terms([["hi", "thanks!!"]]) == [[]]


async def questions_archive(tmp_path: Path) -> ArchiveDatabase:
    """Nine questions about parcels the bot answered, three about a grinder it could not."""
    database = ArchiveDatabase(f"sqlite+aiosqlite:///{tmp_path / 'archive.sqlite3'}")
    await upgrade(database)
    asked = ASKED["parcel"] * 3 + ASKED["grinder"] + ["the burr grinder is jammed"]
    events: list[ArchiveEvent] = []
    for n, text in enumerate(asked):
        unanswered = "grinder" in text
        events.append(
            turn(
                f"c{n}",
                NOW - timedelta(hours=n + 1),
                text=text,
                action=Action.ESCALATE if unanswered else Action.ANSWER,
                reason=Reason.LOW_CONFIDENCE if unanswered else None,
            )
        )
    await database.write(events)
    return database


async def report_of(
    database: ArchiveDatabase, embedder: Embedder, name_topics: NameTopics | None = None
) -> Report:
    try:
        return await build_report(
            database,
            since=7 * DAY,
            window=WINDOW,
            repeat_window=7 * DAY,
            now=NOW,
            embed=embedding(embedder),
            topic_similarity=SIMILARITY,
            name_topics=name_topics,
        )
    finally:
        await database.close()


async def test_the_report_lists_the_periods_topics_most_asked_first(
    embedder: Embedder, tmp_path: Path
) -> None:
    report = await report_of(await questions_archive(tmp_path), embedder)
    parcel, grinder = report.topics
    assert (parcel.questions, parcel.unanswered) == (9, 0)
    assert (grinder.questions, grinder.unanswered) == (3, 3)
    assert "grinder" in grinder.terms and grinder.name == " · ".join(grinder.terms)
    assert grinder.examples[0] == "the burr grinder is jammed"  # asked twice: ranked first
    assert set(parcel.examples) == set(ASKED["parcel"])
    page = render_html(report)
    assert grinder.name in page and "my order still hasnt arrived" in page


async def test_with_claude_a_topic_gets_a_short_name_and_keeps_its_words(
    embedder: Embedder, tmp_path: Path
) -> None:
    async with FakeAnthropic() as claude:
        config = BrainConfig(anthropic_api_key=SecretStr(API_KEY), anthropic_base_url=claude.url)
        named = ToolCall(name=TOOL_NAME, input={"names": ["Late parcels", "Jammed grinders"]})
        claude.script(named, ToolCall(name=TOOL_NAME, input={"names": ["Only one"]}))
        report = await report_of(
            await questions_archive(tmp_path), embedder, ClaudeTopicNamer(config)
        )
        (tmp_path / "again").mkdir()
        unnamed = await report_of(
            await questions_archive(tmp_path / "again"), embedder, ClaudeTopicNamer(config)
        )
        request = claude.requests[0].body
    assert [topic.name for topic in report.topics] == ["Late parcels", "Jammed grinders"]
    assert "grinder" in report.topics[1].terms
    assert request["tool_choice"] == {"type": "tool", "name": TOOL_NAME}
    assert "the burr grinder is jammed" in request["messages"][0]["content"]
    # A reply that does not name every topic leaves the words.
    assert [topic.name for topic in unnamed.topics] == [
        " · ".join(topic.terms) for topic in unnamed.topics
    ]
