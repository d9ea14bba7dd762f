"""The offline answerer's extractive answers (its escalation rules: tests/test_escalation.py)."""

from __future__ import annotations

from brain.offline import compose_answer
from gateway.answering import Passage

PRICES = Passage(
    text=(
        "All prices are per delivery.\n\n"
        "Plan | US | UK\nSolo | $18 | £15\nDuo | $32 | £27\n\n"
        "UK prices include VAT."
    ),
    source="pricing.md",
    title="Pricing",
    heading="Plans",
    score=0.7,
)


def test_a_table_row_is_spelled_out_with_its_headers() -> None:
    answer = compose_answer("How much is the Duo plan?", [PRICES], 1)
    assert answer == "Duo — US: $32; UK: £27"


def test_units_keep_reading_order_and_rows_get_their_own_line() -> None:
    answer = compose_answer("Duo price UK VAT", [PRICES], 2)
    assert answer == "Duo — US: $32; UK: £27\nUK prices include VAT."


def test_list_items_lose_their_markers() -> None:
    steps = Passage(
        text="To reset:\n1. Open settings.\n2. Choose reset password.",
        source="a.md",
        title="Account",
        heading="",
        score=0.6,
    )
    assert compose_answer("reset password", [steps], 1) == "Choose reset password."
