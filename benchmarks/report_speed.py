"""How long the report takes over a large archive: 100,000 conversations in the last week
(about 3.5 rows each: turns, hand-off events, satisfaction answers), then `build_report` and
the HTML rendering, timed a few times. The report's topics embed the period's most asked
questions (at most `MAX_QUESTIONS` distinct ones) with the default embedder, as `gateway report`
does; `--no-topics` leaves them out.

    python benchmarks/report_speed.py                     # SQLite in a temporary folder
    python benchmarks/report_speed.py --database-url postgresql://user@host/db   # an empty db
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from brain.knowledge import KnowledgeBase  # noqa: E402
from gateway.app.runtime import batch_embed  # noqa: E402
from gateway.archive import ArchiveEvent, Decided, EventKind  # noqa: E402
from gateway.archive.database import ArchiveDatabase, database_url  # noqa: E402
from gateway.archive.migrate import upgrade  # noqa: E402
from gateway.archive.render import render_html  # noqa: E402
from gateway.archive.report import build_report  # noqa: E402
from gateway.message import Action, Reason, Source  # noqa: E402

CHANNELS = ("rest", "webchat", "sms", "whatsapp", "slack", "telegram", "email")
TOPICS = [f"Help page {n}" for n in range(60)]
AGENTS = ("Dana", "Lee", "Sam", "Kai")


def conversation_events(n: int, now: datetime, rng: random.Random) -> list[ArchiveEvent]:
    channel = rng.choice(CHANNELS)
    customer = f"customer-{rng.randrange(60_000)}"  # some come back: repeat contacts
    key = f"{channel}:{customer}:{n}"
    start = now - timedelta(seconds=rng.uniform(0, 7 * 86_400 - 3600))

    def event(suffix: str, kind: EventKind, at: datetime, **fields: object) -> ArchiveEvent:
        return ArchiveEvent(
            id=f"{n}:{suffix}",
            kind=kind,
            conversation=key,
            channel=channel,
            customer=customer,
            at=at,
            **fields,  # type: ignore[arg-type]
        )

    topic = rng.choice(TOPICS)
    answered = Decided(
        action=Action.ANSWER,
        confidence=rng.uniform(0.4, 0.9),
        sources=(Source(source=f"kb/{topic}.md", title=topic),),
        latency_ms=rng.uniform(20, 1800),
        replied=True,
    )
    rows = [event("t1", EventKind.TURN, start, text=f"question about {topic}", decision=answered)]
    roll = rng.random()
    if roll < 0.25:
        at = start + timedelta(minutes=2)
        reason = rng.choice((Reason.HUMAN_REQUESTED, Reason.LOW_CONFIDENCE, Reason.ACCOUNT_ACTION))
        escalate = Decided(action=Action.ESCALATE, reason=reason, latency_ms=50.0, replied=True)
        agent = rng.choice(AGENTS)
        rows += [
            event(
                "t2",
                EventKind.TURN,
                at,
                text=f"odd question {rng.randrange(5000)}",
                decision=escalate,
            ),
            event("e1", EventKind.ESCALATED, at),
            event(
                "e2", EventKind.CLAIMED, at + timedelta(seconds=rng.uniform(10, 900)), agent=agent
            ),
            event("e3", EventKind.AGENT_REPLY, at + timedelta(seconds=950), agent=agent),
            event(
                "e4",
                EventKind.RESOLVED,
                at + timedelta(seconds=rng.uniform(1000, 4000)),
                agent=agent,
            ),
        ]
    elif roll < 0.6:
        rows.append(
            event(
                "t2",
                EventKind.TURN,
                start + timedelta(minutes=1),
                text="and also?",
                decision=answered,
            )
        )
    if rng.random() < 0.2:
        rows.append(
            event("s", EventKind.SATISFACTION, start + timedelta(hours=1), score=rng.randint(1, 5))
        )
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--conversations", type=int, default=100_000)
    parser.add_argument("--database-url", help="an empty PostgreSQL database (default: SQLite)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-topics", action="store_true", help="the report without its topics")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        knowledge = KnowledgeBase(Path(tmp))
        knowledge.warm_up()  # the embedder's loading is not the report's
        embed = None if args.no_topics else batch_embed(knowledge)
        database = ArchiveDatabase(database_url(args.database_url, Path(tmp)))
        await upgrade(database)
        now, rng = datetime.now(UTC), random.Random(1)
        started, batch, rows = time.perf_counter(), [], 0
        for n in range(args.conversations):
            batch += conversation_events(n, now, rng)
            if len(batch) >= 5000:
                await database.write(batch)
                rows, batch = rows + len(batch), []
        await database.write(batch)
        rows += len(batch)
        print(
            f"archived {args.conversations:,} conversations ({rows:,} rows) on "
            f"{database.dialect} in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        timings, renders, cpu = [], [], []
        for _ in range(args.runs):
            started, used = time.perf_counter(), time.process_time()
            report = await build_report(
                database,
                since=timedelta(days=7),
                window=timedelta(days=1),
                repeat_window=timedelta(days=7),
                embed=embed,
            )
            timings.append(time.perf_counter() - started)
            started = time.perf_counter()
            render_html(report)
            renders.append(time.perf_counter() - started)
            cpu.append(time.process_time() - used)
        await database.close()
        knowledge.close()
    print(
        f"report over {report.contacts:,} contacts ({report.messages:,} messages): "
        f"build p50 {statistics.median(timings):.2f} s "
        f"(min {min(timings):.2f}, max {max(timings):.2f}), "
        f"HTML p50 {statistics.median(renders):.2f} s; total p50 "
        f"{statistics.median(t + r for t, r in zip(timings, renders, strict=True)):.2f} s "
        "(target under 10 s; shared, loaded 2-core machine)"
    )
    print(
        f"CPU time of this process per report (build and HTML): p50 {statistics.median(cpu):.2f} s"
        " (the wall time above includes waiting for the cores other processes hold)"
    )
    print(f"outcomes {report.outcomes}; repeats {report.repeat_contacts.count}")
    print(f"topics: {[(topic.name, topic.questions) for topic in report.topics[:5]]}")


if __name__ == "__main__":
    asyncio.run(main())
