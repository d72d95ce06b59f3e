"""Session ids: 16 characters of Crockford base32, time-ordered, and git-style prefix resolution.

An id is 50 bits of milliseconds since the epoch (10 characters) followed by 30 random bits
(6 characters), so ids sort by creation time as plain strings and two processes creating
sessions in the same millisecond still get different ids.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterable

from core.errors import NotFound, UsageError

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case: no i, l, o, u
ID_LENGTH = 16
_TIME_CHARS = 10
_RANDOM_BITS = 30
# Characters people confuse when typing an id, mapped as Crockford specifies.
_TYPO = str.maketrans({"i": "1", "l": "1", "o": "0"})

_lock = threading.Lock()
_last = (0, 0)  # (ms, random) of the previous id: ids made in one millisecond count up


class AmbiguousId(UsageError):
    """A prefix that matches more than one session; the message lists the candidates."""


def _encode(value: int, chars: int) -> str:
    out = []
    for _ in range(chars):
        out.append(ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def new_id(now_ms: int | None = None) -> str:
    """A new id that sorts after every id this process made before."""
    global _last
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    with _lock:
        last_ms, last_rand = _last
        if ms <= last_ms:
            # Same (or an earlier, clock went back) millisecond: stay monotonic by counting up.
            ms, rand = last_ms, last_rand + 1
            if rand >= 1 << _RANDOM_BITS:
                ms, rand = ms + 1, secrets.randbits(_RANDOM_BITS - 1)
        else:
            rand = secrets.randbits(_RANDOM_BITS - 1)  # leave headroom for counting up
        _last = (ms, rand)
    return _encode(ms, _TIME_CHARS) + _encode(rand, ID_LENGTH - _TIME_CHARS)


def is_valid(text: str) -> bool:
    return len(text) == ID_LENGTH and all(c in ALPHABET for c in text)


def id_time(session_id: str) -> float:
    """Creation time (epoch seconds) encoded in an id."""
    ms = 0
    for c in session_id[:_TIME_CHARS]:
        ms = ms * 32 + ALPHABET.index(c)
    return ms / 1000.0


def normalize_prefix(prefix: str) -> str:
    """Lower-case a typed id or prefix and fix Crockford look-alikes; reject other characters."""
    text = prefix.strip().lower().translate(_TYPO)
    if not text:
        raise UsageError("empty session id")
    bad = sorted({c for c in text if c not in ALPHABET})
    if bad or len(text) > ID_LENGTH:
        raise UsageError(
            f"{prefix!r} is not a session id or id prefix "
            f"(ids are {ID_LENGTH} characters of 0-9 and a-z without i, l, o, u)"
        )
    return text


def resolve_prefix(
    prefix: str,
    ids: Iterable[str],
    describe: Callable[[str], str] | None = None,
    max_listed: int = 10,
) -> str:
    """The one id in `ids` that starts with `prefix`.

    Raises NotFound when none does and AmbiguousId (listing up to `max_listed` candidates,
    newest first, each with `describe(id)` beside it) when several do.
    """
    text = normalize_prefix(prefix)
    matches = sorted((i for i in ids if i.startswith(text)), reverse=True)
    if not matches:
        raise NotFound(f"no session with id or prefix {prefix!r} (see `workbench sessions list`)")
    if len(matches) == 1:
        return matches[0]
    shown = [f"  {m}  {describe(m)}" if describe else f"  {m}" for m in matches[:max_listed]]
    more = len(matches) - len(shown)
    tail = f"\n  ... and {more} more" if more > 0 else ""
    raise AmbiguousId(
        f"session id prefix {prefix!r} is ambiguous; it matches {len(matches)} sessions:\n"
        + "\n".join(shown)
        + tail
    )
