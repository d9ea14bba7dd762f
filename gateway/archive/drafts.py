"""Knowledge-base drafts: one Markdown page per content gap, in a folder an operator reviews.

A draft is the page to be (the most typical question as its title, the agent's answer as its
text, both for the reviewer to edit), then, under `REVIEW_MARK`, what the reviewer needs and
customers must not read: the questions as customers asked them, other answers agents gave and
the conversations they came from. Its front matter is the record the folder keeps (which turns
and questions it covers). Accepting a draft writes the page alone into the knowledge base;
accepting or rejecting it leaves a line in `DECISIONS`, so the same gap is not drafted again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ValidationError

from gateway.archive.clusters import Embed, central, embed_all, group
from gateway.archive.gaps import Gap

REVIEW_MARK = "<!-- review: everything below is removed when the draft is accepted -->"
DECISIONS = "decisions.jsonl"
MAX_GAPS = 2000  # drafted per build at most (the clustering's memory grows with the square)
_FRONT = re.compile(r"\A---\n(.*?)\n---\n(.*)\Z", re.DOTALL)
_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,80}")


class DraftError(Exception):
    """A draft that is not there, not readable, or cannot be accepted where asked."""


class Asked(BaseModel):
    """One conversation a draft came from."""

    conversation: str
    channel: str
    customer: str
    at: datetime
    agents: list[str] = []
    thread: str = ""  # the agents' Slack thread, `channel:ts`


class Draft(BaseModel):
    id: str
    created: datetime
    title: str
    answer: str
    questions: list[str]  # as customers asked them, distinct
    other_answers: list[str] = []
    conversations: list[Asked]
    turns: list[str]  # the escalated turns' ids

    @property
    def page(self) -> str:
        """What the knowledge base gets: the title and the answer."""
        return f"# {self.title}\n\n{self.answer.strip()}\n"


class Decision(BaseModel):
    id: str
    decision: Literal["accepted", "rejected"]
    at: datetime
    questions: list[str]
    turns: list[str]
    page: str | None = None  # where an accepted draft went


def new_draft(gaps: list[Gap], title: str) -> Draft:
    """The draft of one gap: `gaps` asked the same (the latest answer leads), `title` the most
    typical question."""
    latest = max(gaps, key=lambda gap: gap.asked_at)
    turns = [turn for gap in gaps for turn in gap.turns]
    digest = hashlib.sha256("\n".join(sorted(turns)).encode()).hexdigest()[:6]
    answers = list(dict.fromkeys(gap.answer for gap in gaps if gap.answer != latest.answer))
    return Draft(
        id=f"{_slug(title)}-{digest}",
        created=datetime.now(UTC),
        title=_titled(title),
        answer=latest.answer,
        questions=list(dict.fromkeys(q for gap in gaps for q in gap.questions)),
        other_answers=answers,
        conversations=[
            Asked(
                conversation=gap.conversation,
                channel=gap.channel,
                customer=gap.customer,
                at=gap.asked_at,
                agents=gap.agents,
                thread=gap.thread,
            )
            for gap in sorted(gaps, key=lambda gap: gap.asked_at)
        ],
        turns=turns,
    )


@dataclass(frozen=True, slots=True)
class Built:
    written: list[Draft]
    covered: int  # answered gaps already drafted, accepted or rejected
    left: int = 0  # gaps past `MAX_GAPS`, for the next build


async def build_drafts(
    folder: DraftFolder, gaps: list[Gap], embed: Embed, *, similarity: float
) -> Built:
    """One draft per group of `gaps` (oldest first) that asked the same, written into `folder`.

    A gap whose question is on average at least `similarity` like the questions of a draft
    waiting for review, or of one accepted or rejected, is covered by it, as a gap joins a group
    (average linkage): compared with each record apart, so the records that pile up over the
    months cost a matrix product, not a place in the clustering.
    """
    known: list[Draft | Decision] = [*folder.drafts(), *folder.decisions()]
    seen = {turn for record in known for turn in record.turns}
    fresh = [gap for gap in gaps if not seen.intersection(gap.turns)]
    left = max(len(fresh) - MAX_GAPS, 0)
    fresh = fresh[:MAX_GAPS]
    vectors = await embed_all(embed, [" ".join(gap.questions) for gap in fresh])
    if fresh and known:
        asked = await embed_all(embed, [q for record in known for q in record.questions])
        owner = np.repeat(np.arange(len(known)), [len(record.questions) for record in known])
        membership = np.zeros((len(owner), len(known)))
        membership[np.arange(len(owner)), owner] = 1.0
        # Each gap's average similarity to each record's questions.
        likeness = (vectors @ asked.T) @ membership / np.maximum(membership.sum(axis=0), 1)
        kept = np.flatnonzero(likeness.max(axis=1) < similarity).tolist()
        fresh, vectors = [fresh[row] for row in kept], vectors[kept]
    written = []
    # CPU work, off the event loop (a worker may build drafts beside its conversations).
    for rows in await asyncio.to_thread(group, vectors, similarity=similarity):
        draft = new_draft([fresh[row] for row in rows], fresh[central(vectors, rows)].questions[0])
        folder.write(draft)
        written.append(draft)
    drafted = sum(len(draft.conversations) for draft in written)
    return Built(written, len(gaps) - left - drafted, left)


class DraftFolder:
    """The review folder (`knowledge.drafts_dir`): `<id>.md` per draft, and `DECISIONS`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def drafts(self) -> list[Draft]:
        """Every draft waiting for review, the oldest first."""
        if not self.path.is_dir():
            return []
        found = [self.get(path.stem) for path in sorted(self.path.glob("*.md"))]
        return sorted(found, key=lambda draft: (draft.created, draft.id))

    def get(self, draft_id: str) -> Draft:
        path = self._file(draft_id)
        if not path.is_file():
            raise DraftError(f"no draft {draft_id!r} in {self.path} (`gateway kb drafts list`)")
        return _parse(draft_id, path.read_text(encoding="utf-8"))

    def decisions(self) -> list[Decision]:
        path = self.path / DECISIONS
        if not path.is_file():
            return []
        lines = path.read_text(encoding="utf-8").splitlines()
        return [Decision.model_validate_json(line) for line in lines if line.strip()]

    def write(self, draft: Draft) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        path = self._file(draft.id)
        path.write_text(render(draft), encoding="utf-8")
        return path

    def accept(self, draft_id: str, knowledge: Path) -> Path:
        """Write the draft's page (as the reviewer left it) into the `knowledge` folder, then
        drop the draft; the page's path. Ingesting it is the caller's."""
        draft = self.get(draft_id)
        page = knowledge / f"{draft.id}.md"
        if page.exists():
            raise DraftError(f"{page} already exists: rename the draft's file or remove the page")
        knowledge.mkdir(parents=True, exist_ok=True)
        page.write_text(draft.page, encoding="utf-8")
        self._decide(draft, "accepted", page)
        return page

    def reject(self, draft_id: str) -> Draft:
        draft = self.get(draft_id)
        self._decide(draft, "rejected", None)
        return draft

    def _decide(
        self, draft: Draft, decision: Literal["accepted", "rejected"], page: Path | None
    ) -> None:
        record = Decision(
            id=draft.id,
            decision=decision,
            at=datetime.now(UTC),
            questions=draft.questions,
            turns=draft.turns,
            page=str(page) if page else None,
        )
        with (self.path / DECISIONS).open("a", encoding="utf-8") as ledger:
            ledger.write(record.model_dump_json() + "\n")
        self._file(draft.id).unlink()

    def _file(self, draft_id: str) -> Path:
        if not _ID.fullmatch(draft_id):
            raise DraftError(f"{draft_id!r} is not a draft id (lowercase letters, digits, -)")
        return self.path / f"{draft_id}.md"


def render(draft: Draft) -> str:
    """The draft's file: its record as front matter, then its `body`."""
    record = draft.model_dump(mode="json", exclude={"id", "title", "answer"})
    front = yaml.safe_dump(record, sort_keys=False, allow_unicode=True, width=100)
    return f"---\n{front}---\n{body(draft)}"


def body(draft: Draft) -> str:
    """The page, then what the reviewer needs to judge it."""
    review = [REVIEW_MARK, "", "## Customers asked", ""]
    review += [f"- {_quoted(question)}" for question in draft.questions]
    if draft.other_answers:
        review += ["", "## Other answers agents gave"]
        for answer in draft.other_answers:
            review += ["", *(f"> {line}" for line in answer.strip().splitlines())]
    review += ["", "## Conversations", ""]
    review += [f"- {_conversation(asked)}" for asked in draft.conversations]
    return f"{draft.page}\n" + "\n".join(review) + "\n"


def _parse(draft_id: str, text: str) -> Draft:
    match = _FRONT.match(text)
    if match is None:
        raise DraftError(f"draft {draft_id!r}: no front matter (--- ... ---) at the top")
    if REVIEW_MARK not in match.group(2):
        # Without it, the customers' words and conversation keys would go into the page.
        raise DraftError(f"draft {draft_id!r}: the review line is gone; put back {REVIEW_MARK}")
    page = match.group(2).split(REVIEW_MARK, 1)[0].strip()
    title, _, answer = page.partition("\n")
    if not title.startswith("# ") or not answer.strip():
        raise DraftError(f"draft {draft_id!r}: the page must start with '# Title', then the text")
    try:
        record = yaml.safe_load(match.group(1))
        return Draft.model_validate(
            {**record, "id": draft_id, "title": title[2:].strip(), "answer": answer.strip()}
        )
    except (yaml.YAMLError, ValidationError, TypeError) as error:
        raise DraftError(f"draft {draft_id!r}: its front matter is damaged: {error}") from None


def _conversation(asked: Asked) -> str:
    by = f", answered by {', '.join(asked.agents)}" if asked.agents else ""
    thread = ""
    if asked.thread:
        channel, _, ts = asked.thread.partition(":")
        thread = f"; agents' thread: Slack channel {channel}, message {ts}"
    return f"`{asked.conversation}` ({asked.channel}, {asked.at:%Y-%m-%d %H:%M} UTC{by}{thread})"


def _quoted(question: str) -> str:
    return json.dumps(" ".join(question.split()), ensure_ascii=False)


def _slug(text: str) -> str:
    words = re.findall(r"[a-z0-9]+", text.casefold())
    return "-".join(words[:6])[:40].strip("-") or "draft"


def _titled(question: str) -> str:
    text = " ".join(question.split())
    return text[:1].upper() + text[1:]
