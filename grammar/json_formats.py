"""The JSON-Schema ``format`` checker used wherever radixgen validates a document against a schema.

jsonschema's stock ``FormatChecker`` checks ``date-time`` only when the optional rfc3339-validator package is
installed, its draft-3 ``time`` checker rejects UTC offsets, and its ``email`` check is ``"@" in value``; this
one adds RFC 3339 ``date-time`` and ``time`` (RFC 3339 §5.6, ASCII digits, leap second 60) and RFC 5321
``email`` (``EMAIL_PATTERN``), and keeps every other format jsonschema knows.
"""

from __future__ import annotations

import re
from datetime import date
from functools import cache
from typing import Any

_RFC3339_TIME = r"([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"

_ATEXT = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = "[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
#: ``email`` (RFC 5321 §4.1.2 Mailbox, dot-atom local part, domain of hostname labels): the one definition both
#: the format checker and the grammar (``schema_rewrites.FORMAT_PATTERNS``) use. Quoted local parts and
#: address literals are not accepted (jsonschema's own check is only ``"@" in value``).
EMAIL_PATTERN = f"^{_ATEXT}+(\\.{_ATEXT}+)*@{_LABEL}(\\.{_LABEL})*$"


def _time_ok(value: str) -> bool:
    m = re.fullmatch(_RFC3339_TIME, value)
    if not m:
        return False
    h, mi, sec = (int(g) for g in m.groups()[:3])
    off = m.group(5)
    off_ok = off in "Zz" or (int(off[1:3]) <= 23 and int(off[4:6]) <= 59)
    return h <= 23 and mi <= 59 and sec <= 60 and off_ok


@cache
def format_checker() -> Any:
    """A ``jsonschema.FormatChecker`` with RFC 3339 ``date-time`` and ``time`` (one shared instance).

    Non-string instances pass every format check, as JSON Schema specifies; an invalid calendar date raises
    ``ValueError`` inside the checker, which jsonschema reports as a format error.
    """
    from jsonschema import FormatChecker

    checker = FormatChecker()

    @checker.checks("time", raises=ValueError)
    def _time(value: object) -> bool:
        return not isinstance(value, str) or _time_ok(value)

    @checker.checks("date-time", raises=ValueError)
    def _date_time(value: object) -> bool:
        if not isinstance(value, str):
            return True
        date_part, sep, time_part = value.partition("T") if "T" in value else value.partition("t")
        if not sep or not _time_ok(time_part) or not re.fullmatch("[0-9]{4}-[0-9]{2}-[0-9]{2}", date_part):
            return False
        date.fromisoformat(date_part)
        return True

    @checker.checks("email")
    def _email(value: object) -> bool:
        return not isinstance(value, str) or re.fullmatch(EMAIL_PATTERN, value) is not None

    return checker
