"""Closed choices on the command line: the vocabularies' words, typed any way a person would.

``choice(words)`` is a Typer ``parser=``: the option or argument keeps its StrEnum (or
``Literal``) annotation — so ``--help`` lists the words and the shell completes them — and
this parser takes any case, a dash for an underscore and the reverse (``create-booking`` and
``create_booking``, ``completed`` and ``Completed``), returning the vocabulary's own word. A
typo is a usage error (exit 2) naming every word and the one it was probably meant to be.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from stsync.suggestions import did_you_mean


def _key(word: object) -> str:
    return str(word).strip().casefold().replace("_", "-")


def choice(words: Iterable[Any], *, dashed: bool = False) -> Callable[[Any], Any]:
    """A parser returning the word of ``words`` that the typed value names (see the module
    docstring); ``dashed``: the words are shown with dashes (the config spells them with
    underscores)."""
    members = list(words)
    by_key = {_key(word): word for word in members}
    shown = [str(word).replace("_", "-") if dashed else str(word) for word in members]

    def parse(value: Any) -> Any:
        found = by_key.get(_key(value))
        if found is None:
            raise ValueError(f"{str(value)!r} is not one of {', '.join(shown)}{did_you_mean(value, shown)}")
        return found

    return parse
