"""The train/validation split of a training file: by conversation, deterministic, stratified by
persona × arc × topic as far as counts allow, and stable (a side, once given, never changes).

Every pair of a conversation repeats its history, so a conversation goes to one side whole. When
conversations join a file, the validation side gets exactly as many new ones as keep its share
at `round(fraction × conversations)` — so the share is within half a conversation of the
fraction in every version — and they are taken from the strata furthest below their own share
(ties broken by a hash of the conversation ID, so the choice does not depend on order or
timing). Conversations that must follow another one (a near-duplicate of a member goes to that
member's side) are placed first.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

TRAIN = "train"
VALIDATION = "validation"
SIDES = (TRAIN, VALIDATION)

Stratum = tuple[str | None, str | None, str | None]


@dataclass(frozen=True)
class Placed:
    """A conversation of the file, its stratum and its side (None: not placed yet)."""

    conversation_id: str
    stratum: Stratum
    side: str | None


def validation_target(fraction: float, conversations: int) -> int:
    """How many conversations the validation side holds for a file of this size."""
    return math.floor(fraction * conversations + 0.5)


def _rank(conversation_id: str) -> bytes:
    return hashlib.sha256(conversation_id.encode()).digest()


def assign_sides(fraction: float, conversations: Sequence[Placed],
                 forced: Mapping[str, str] | None = None) -> dict[str, str]:
    """A side for every conversation without one (existing sides are kept as they are).

    `conversations` is the whole file after this version (placed and unplaced); `forced` gives
    some unplaced conversations the side they must take.
    """
    forced = forced or {}
    placed = {c.conversation_id: c.side for c in conversations if c.side is not None}
    free = [c for c in conversations if c.side is None]
    chosen: dict[str, str] = {}
    for conversation in free:
        side = forced.get(conversation.conversation_id)
        if side is not None:
            chosen[conversation.conversation_id] = side
    open_ = [c for c in free if c.conversation_id not in chosen]
    totals = Counter(c.stratum for c in conversations)
    in_validation = Counter(
        c.stratum for c in conversations
        if (placed.get(c.conversation_id) or chosen.get(c.conversation_id)) == VALIDATION)
    wanted = validation_target(fraction, len(conversations)) - sum(in_validation.values())
    wanted = max(0, min(wanted, len(open_)))
    by_stratum: dict[Stratum, list[tuple[bytes, str]]] = defaultdict(list)
    for conversation in open_:
        by_stratum[conversation.stratum].append(
            (_rank(conversation.conversation_id), conversation.conversation_id))
    for queue in by_stratum.values():
        queue.sort()
    # The stratum furthest below its own share gives the next validation conversation.
    heap = [(-(fraction * totals[s] - in_validation[s]), _stratum_key(s), s) for s in by_stratum]
    heapq.heapify(heap)
    taken: dict[Stratum, int] = Counter()
    while wanted > 0 and heap:
        _, key, stratum = heapq.heappop(heap)
        queue = by_stratum[stratum]
        _, conversation_id = queue[taken[stratum]]
        taken[stratum] += 1
        chosen[conversation_id] = VALIDATION
        in_validation[stratum] += 1
        wanted -= 1
        if taken[stratum] < len(queue):
            heapq.heappush(heap, (-(fraction * totals[stratum] - in_validation[stratum]), key,
                                  stratum))
    for conversation in open_:
        chosen.setdefault(conversation.conversation_id, TRAIN)
    return chosen


def _stratum_key(stratum: Stratum) -> tuple[str, ...]:
    return tuple(part or "" for part in stratum)


def share(sides: Iterable[str]) -> tuple[int, int]:
    """(validation conversations, all conversations)."""
    counts = Counter(sides)
    return counts[VALIDATION], sum(counts.values())
