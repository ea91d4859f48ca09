"""Value patterns the PII scan claims to detect, in formats seen in real exports."""

from __future__ import annotations

import pytest

from fastml.governance.pii import classify_values


@pytest.mark.parametrize(
    ("values", "category"),
    [
        # isoformat() of an aware datetime carries a UTC offset; before, only "Z" or no zone matched.
        (["2023-01-05T10:00:00+02:00", "2023-01-05 10:00:00.123456+00:00", "2023-01-05T10:00:00-0500"], "date"),
        # International numbers are usually written grouped.
        (["+44 20 7946 0958", "+49 30 123456", "+33 1 23 45 67 89"], "phone"),
        # American Express numbers are printed 4-6-5 (Luhn-valid test numbers).
        (["3782 822463 10005", "3714-496353-98431"], "account_number"),
        (["::1", "2001:db8::1", "fe80:0:0:0:0:0:0:1"], "ip_address"),
    ],
)
def test_common_formats_are_detected(values, category):
    assert (category, len(values), len(values)) in classify_values(values)


def test_times_are_not_ip_addresses():
    assert classify_values(["12:30:45", "09:15:00", "23:59:59"]) == []


def test_grouped_numbers_that_are_not_phones_or_cards_stay_unflagged():
    assert classify_values(["+1 2 3", "+12 3 4"]) == []  # too few digits for E.164
    assert classify_values(["3782 822463 10006"]) == []  # fails the Luhn check
