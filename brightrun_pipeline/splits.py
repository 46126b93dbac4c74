"""The train/validation split of a training file: by conversation, deterministic, stratified by
persona × arc × topic as far as counts allow, and stable (a side, once given, never changes).

Every pair of a conversation repeats its history, so a conversation goes to one side whole. When
conversations join a file, the validation side gets exactly as many new ones as keep its share
at `round(fraction × conversations)` — so the share is within half a conversation of the
fraction in every version — and they are taken from the strata furthest below their own share
(ties broken by a hash of the conversation ID, so the choice does not depend on order or
timing). Conversations that must follow another one (a near-duplicate of a member goes to that
member's side) are placed first; near-duplicates within one request are placed as a group,
taken for validation only while the whole group fits the quota.
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
                 forced: Mapping[str, str] | None = None,
                 follows: Mapping[str, str] | None = None) -> dict[str, str]:
    """A side for every conversation without one (existing sides are kept as they are).

    `conversations` is the whole file after this version (placed and unplaced); `forced` gives
    some unplaced conversations the side they must take; `follows` makes an unplaced
    conversation take the side of another one of the file (a near-duplicate of an earlier
    conversation of the same request): the two are placed as one group, which the validation
    side takes only while the whole group fits its quota, so the share stays exact.
    """
    forced = forced or {}
    follows = follows or {}
    known = {c.conversation_id for c in conversations}
    placed = {c.conversation_id: c.side for c in conversations if c.side is not None}
    free = [c for c in conversations if c.side is None]
    chosen: dict[str, str] = {}
    for conversation in free:
        side = forced.get(conversation.conversation_id)
        if side is not None:
            chosen[conversation.conversation_id] = side
    # Followers go where their group's first conversation goes.
    groups: dict[str, list[str]] = defaultdict(list)
    for conversation in free:
        cid = conversation.conversation_id
        root = _root(cid, follows, known)
        if cid in chosen or root == cid:
            continue
        side = chosen.get(root) or placed.get(root)
        if side is not None:
            chosen[cid] = side
        else:
            groups[root].append(cid)
    following = {cid for members in groups.values() for cid in members}
    open_ = [c for c in free if c.conversation_id not in chosen
             and c.conversation_id not in following]
    strata = {c.conversation_id: c.stratum for c in conversations}
    totals = Counter(c.stratum for c in conversations)
    in_validation = Counter(
        c.stratum for c in conversations
        if (placed.get(c.conversation_id) or chosen.get(c.conversation_id)) == VALIDATION)
    wanted = validation_target(fraction, len(conversations)) - sum(in_validation.values())
    wanted = max(0, min(wanted, len(open_) + len(following)))
    by_stratum: dict[Stratum, list[tuple[bytes, str]]] = defaultdict(list)
    for conversation in open_:
        by_stratum[conversation.stratum].append(
            (_rank(conversation.conversation_id), conversation.conversation_id))
    for queue in by_stratum.values():
        queue.sort()
    # The stratum furthest below its own share gives the next validation conversation (with
    # its group), the first in hash order that fits what is still wanted.
    heap = [(-(fraction * totals[s] - in_validation[s]), _stratum_key(s), s) for s in by_stratum]
    heapq.heapify(heap)
    while wanted > 0 and heap:
        _, key, stratum = heapq.heappop(heap)
        queue = by_stratum[stratum]
        index = next((i for i, (_, cid) in enumerate(queue)
                      if 1 + len(groups.get(cid, ())) <= wanted), None)
        if index is None:
            continue  # nothing in this stratum fits any more
        _, conversation_id = queue.pop(index)
        for cid in (conversation_id, *groups.get(conversation_id, ())):
            chosen[cid] = VALIDATION
            in_validation[strata[cid]] += 1
            wanted -= 1
        if queue:
            heapq.heappush(heap, (-(fraction * totals[stratum] - in_validation[stratum]), key,
                                  stratum))
    for conversation in open_:
        side = chosen.setdefault(conversation.conversation_id, TRAIN)
        for cid in groups.get(conversation.conversation_id, ()):
            chosen[cid] = side
    return chosen


def _root(conversation_id: str, follows: Mapping[str, str], known: set[str]) -> str:
    """The conversation a chain of `follows` leads to (among `known`; cycles stop)."""
    seen = {conversation_id}
    while (ahead := follows.get(conversation_id)) is not None and ahead in known \
            and ahead not in seen:
        seen.add(ahead)
        conversation_id = ahead
    return conversation_id


def _stratum_key(stratum: Stratum) -> tuple[str, ...]:
    return tuple(part or "" for part in stratum)


def share(sides: Iterable[str]) -> tuple[int, int]:
    """(validation conversations, all conversations)."""
    counts = Counter(sides)
    return counts[VALIDATION], sum(counts.values())
