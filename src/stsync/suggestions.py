"""The one "did you mean" of stsync: a mistyped name → the closest name it may have meant.

``did_you_mean(given, choices)`` returns `` (did you mean 'x'?)``, ready to append to a
message, or ``""`` when no choice is close. It never raises and never suggests a name that is
not among ``choices``. The closest is, in this order: a choice equal to ``given`` but for
case; else difflib's best match (ratio ≥ 0.6) as typed; else its best match ignoring case.
The suggestion is quoted by ``repr``, so a name containing a quote is shown unambiguously.

A leaf module (standard library only): the config model, the mapping engine, the services
and the CLI all word their suggestions through it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

_CUTOFF = 0.6  # difflib's default: close enough that the suggestion is usually right


def _closest(given: object, choices: Iterable[object]) -> str | None:
    """The choice ``given`` most likely meant, or None when none is close."""
    word = str(given)
    pool = [str(choice) for choice in choices]
    folded_word = word.casefold()
    for choice in pool:
        if choice.casefold() == folded_word:
            return choice
    matches = difflib.get_close_matches(word, pool, n=1, cutoff=_CUTOFF)
    if matches:
        return matches[0]
    folded = {choice.casefold(): choice for choice in pool}
    matches = difflib.get_close_matches(folded_word, list(folded), n=1, cutoff=_CUTOFF)
    return folded[matches[0]] if matches else None


def did_you_mean(given: object, choices: Iterable[object]) -> str:
    """`` (did you mean 'x'?)`` when a choice is close to ``given``; ``""`` otherwise."""
    choice = _closest(given, choices)
    return f" (did you mean {choice!r}?)" if choice is not None else ""
