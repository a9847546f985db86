"""Which language a client wants its displays in, and text folding for the ``filter`` search.

Displays follow the ``displayLanguage`` parameter, else the request's ``Accept-Language`` header
(RFC 9110 §12.5.4: q-values, ``*``, ``q=0`` meaning "not this one"), else the code system's own
language (English for Consilium's). A requested tag matches a designation with the same tag or
the same primary language (``zh-CN`` finds ``zh``, ``fa`` finds ``fa-IR``): a Chinese display is
better for a ``zh-TW`` reader than an English one.

Folding for text search makes the scripts of the two source documents searchable as people type
them: Persian text is written with Arabic yeh and kaf (U+064A, U+0643) as often as with the
Persian letters (U+06CC, U+06A9) — the Iranian roadmap itself mixes them — with or without the
zero-width non-joiner between word parts, with Persian, Arabic-Indic or ASCII digits; Chinese
may come in full-width forms. Case is folded, and combining marks (Arabic diacritics, Latin
accents) are dropped.
"""

from __future__ import annotations

import functools
import re
import unicodedata

_TAG = re.compile(r"^(?:[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*|\*)$")
_Q = re.compile(r"^q=([01](?:\.\d{0,3})?)$", re.IGNORECASE)

_FOLD = str.maketrans({
    "\u064a": "\u06cc",  # Arabic yeh -> Persian yeh
    "\u0649": "\u06cc",  # alef maksura -> Persian yeh
    "\u0643": "\u06a9",  # Arabic kaf -> Persian kaf (keheh)
    "\u0629": "\u0647",  # teh marbuta -> heh
    "\u06c0": "\u0647",  # heh with yeh above -> heh
    "\u200c": None,  # zero-width non-joiner
    "\u200d": None,  # zero-width joiner
    "\u0640": None,  # tatweel
    **{chr(0x06F0 + i): str(i) for i in range(10)},  # Persian digits
    **{chr(0x0660 + i): str(i) for i in range(10)},  # Arabic-Indic digits
})
_SPACE = re.compile(r"\s+")


def parse_accept_language(header: str | None) -> tuple[str, ...]:
    """Language ranges of an ``Accept-Language`` header, most wanted first (stable for equal
    q-values); ranges with q=0 and malformed parts are left out."""
    if not header:
        return ()
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate(header.split(",")):
        pieces = [p.strip() for p in part.split(";")]
        tag = pieces[0]
        if not tag or _TAG.match(tag) is None:
            continue
        q = 1.0
        for param in pieces[1:]:
            m = _Q.match(param)
            if m is not None:
                q = min(float(m.group(1)), 1.0)
        if q > 0:
            ranked.append((-q, i, tag))
    return tuple(tag for _, _, tag in sorted(ranked))


def requested_languages(display_language: str | None, accept_language: str | None,
                        ) -> tuple[str, ...]:
    """The languages to try, in order: the explicit parameter wins over the header."""
    if display_language:
        return (display_language.strip(),)
    return parse_accept_language(accept_language)


def primary(tag: str) -> str:
    return tag.split("-", 1)[0].lower()


def same_language(a: str | None, b: str | None) -> bool:
    """Whether two tags name the same language, ignoring region and script subtags."""
    return a is not None and b is not None and primary(a) == primary(b)


@functools.lru_cache(maxsize=16384)
def fold(text: str) -> str:
    """Text as compared by the ``filter`` search (spaces kept, single)."""
    text = unicodedata.normalize("NFKC", text).translate(_FOLD)
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text).casefold()).strip()


def filter_terms(text: str) -> tuple[str, ...]:
    """The words of a ``filter``: each must occur in one of the texts of a concept."""
    return tuple(t for t in fold(text).split(" ") if t)


def matches(terms: tuple[str, ...], folded_texts: tuple[str, ...]) -> bool:
    """Every term is a substring of the same text, or of it with its spaces removed (Persian is
    written with a space, a zero-width non-joiner or nothing between the parts of a word)."""
    if not terms:
        return True
    for text in folded_texts:
        squeezed = text.replace(" ", "")
        if all(t in text or t in squeezed for t in terms):
            return True
    return False
