"""Escalation judgment on single messages from a writer the shipped intent examples never saw.

    python benchmarks/intents.py                                   # the shipped examples
    python benchmarks/intents.py --brain my-brain.yaml             # settings under `brain:`
    python benchmarks/intents.py --messages other-writer.yaml      # another writer's messages

The intents (brain/intents.py) recognise a message by its closest example, so they generalise
only as far as their examples' wording does: examples written by one person recognised a
quarter to a third of another writer's messages that need a person (brain/intents.yaml). This
measures that on `benchmarks/data/intents/validation.yaml`: messages per label, and self-serve
questions on the same topics, written on 2026-12-03 by a writer who saw neither the shipped
examples nor any test data. None of them is an example the brain ships; keep it so (add a
writer's messages to brain/intents.yaml and they stop measuring anything). It is a quick,
single-message measure, not the final word: a fourth writer's examples took it from 53 to 58 of
87, yet added a false escalation (frustration) on each of the held-out conversation sets
(benchmarks/data/plausible/), and were not shipped.

Per label, each message is read as the offline path reads it (`brain.query.clean`, then the
intents), and judged by the operator's rules and the intents together
(`EscalationJudge.before_answer`, as before any answer): recognised with the label's reason,
escalated with another reason, or not escalated. Self-serve questions should not escalate.
Decisions the answer itself makes (min_confidence, repeated failures) are not measured here:
`benchmarks/brain_quality.py` runs whole conversations.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections import Counter
from pathlib import Path

import yaml

# Run as a script from anywhere: the project root is not on sys.path then.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from brain.config import BrainConfig  # noqa: E402
from brain.embedder import DEFAULT_EMBEDDER, EMBEDDERS, load_embedder  # noqa: E402
from brain.escalation import EscalationJudge  # noqa: E402
from brain.intents import ANSWERABLE, IntentReader  # noqa: E402
from brain.knowledge import KnowledgeBase  # noqa: E402
from brain.query import clean  # noqa: E402
from gateway.config import read_config  # noqa: E402
from gateway.logs import configure_logging  # noqa: E402

MESSAGES = ROOT / "benchmarks" / "data" / "intents" / "validation.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=Path, default=MESSAGES, help="label -> messages")
    parser.add_argument("--brain", type=Path, help="a YAML file of brain settings")
    parser.add_argument("--embedder", choices=list(EMBEDDERS), default=DEFAULT_EMBEDDER)
    args = parser.parse_args()
    configure_logging("warning", "console", [])
    brain = (
        read_config(args.brain.read_text(encoding="utf-8"), BrainConfig, name=str(args.brain))
        if args.brain
        else BrainConfig()
    )
    messages: dict[str, list[str]] = yaml.safe_load(args.messages.read_text(encoding="utf-8"))
    if unknown := set(messages) - {*brain.escalation.intents.labels, ANSWERABLE}:
        parser.error(f"labels the brain does not know: {', '.join(sorted(unknown))}")
    asyncio.run(measure(brain, messages, args.embedder))


async def measure(brain: BrainConfig, messages: dict[str, list[str]], embedder: str) -> None:
    intents = brain.escalation.intents
    judge = EscalationJudge(brain.escalation, brain.messages)
    outcomes: dict[str, Counter[str]] = {label: Counter() for label in messages}
    with tempfile.TemporaryDirectory(prefix="intents-bench-") as scratch:
        # An empty knowledge base: the intents only need its embedder (KnowledgeBase.embed).
        knowledge = KnowledgeBase(Path(scratch), embedder=load_embedder(embedder))
        try:
            reader = IntentReader(intents, knowledge)
            await reader.warm_up()
            for label, texts in messages.items():
                want = None if label == ANSWERABLE else intents.labels[label].reason
                for text in texts:
                    decision = judge.before_answer(text, [], await reader.read(clean(text)))
                    if decision is None:
                        outcomes[label]["not escalated"] += 1
                    elif decision.reason == want:
                        outcomes[label]["recognised"] += 1
                    else:
                        outcomes[label]["other reason"] += 1
        finally:
            knowledge.close()
    examples = sum(len(label.exemplars) for label in intents.labels.values())
    print(
        f"{sum(map(len, messages.values()))} messages, embedder {embedder}; the brain's "
        f"{examples} examples and {len(intents.answerable)} self-serve ones, margin "
        f"{intents.margin:g}\n"
    )
    print(f"{'label':20} {'n':>4} {'recognised':>15} {'other reason':>13} {'not escalated':>14}")
    for label, counts in outcomes.items():
        n = sum(counts.values())
        recognised = (
            "-" if label == ANSWERABLE else f"{counts['recognised']} {counts['recognised'] / n:.2f}"
        )
        print(
            f"{label:20} {n:4} {recognised:>15} {counts['other reason']:13} "
            f"{counts['not escalated']:14}"
        )
    person = sum((counts for label, counts in outcomes.items() if label != ANSWERABLE), Counter())
    if total := sum(person.values()):
        print(
            f"\nneeds a person: {person['recognised']}/{total} recognised "
            f"({person['recognised'] / total:.2f}), {person['other reason']} escalated with "
            f"another reason, {person['not escalated']} not escalated"
        )
    if served := outcomes.get(ANSWERABLE):
        escalated = served["other reason"]
        print(f"self-serve: {escalated}/{sum(served.values())} escalated (want none)")


if __name__ == "__main__":
    main()
