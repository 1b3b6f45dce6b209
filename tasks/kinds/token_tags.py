"""Tag schemes of token classification: the model's tag set, IOB1 -> IOB2, and the I- tags that open an
entity (which IOB2 forbids: an ``I-X`` must follow ``B-X`` or ``I-X``).

Everything downstream (validation, training, seqeval's metrics, serving's spans) reads IOB2: the prepare
stage converts IOB1 sources, so one scheme is stored. In IOB1, ``B-`` only separates two adjacent entities
of one type and an entity otherwise opens with ``I-``; converting means turning each opening ``I-X`` into
``B-X`` — exactly what repairing an IOB2 source does, which is why one function does both.
"""

from __future__ import annotations

from collections.abc import Sequence

OUTSIDE = "O"
BEGIN, INSIDE = "B", "I"


def tag_names(types: Sequence[str]) -> list[str]:
    """The model's classes for the declared entity types: O, then B-/I- per type in declared order."""
    return [OUTSIDE, *(f"{prefix}-{t}" for t in types for prefix in (BEGIN, INSIDE))]


def split_tag(tag: str) -> tuple[str, str | None]:
    """(prefix, type): ``"B-geo-loc"`` -> ("B", "geo-loc"); ``"O"`` -> ("O", None); malformed tags give
    their whole text as the prefix (so they are never in the tag set)."""
    if tag == OUTSIDE:
        return OUTSIDE, None
    prefix, sep, entity = tag.partition("-")
    if sep and prefix in (BEGIN, INSIDE) and entity:
        return prefix, entity
    return tag, None


def rename_types(tags: Sequence[str], mapping: dict[str, str]) -> list[str]:
    """``data.label_map`` applied to the type part of each tag (B-loc -> B-geo-loc)."""
    if not mapping:
        return list(tags)
    out = []
    for tag in tags:
        prefix, entity = split_tag(tag)
        out.append(f"{prefix}-{mapping.get(entity, entity)}" if entity is not None else tag)
    return out


def opening_inside(tags: Sequence[str]) -> list[int]:
    """Positions of ``I-X`` tags that open an entity: first in the sentence, or after O / another type."""
    bad, previous = [], None
    for i, tag in enumerate(tags):
        prefix, entity = split_tag(tag)
        if prefix == INSIDE and previous != entity:
            bad.append(i)
        previous = entity if prefix in (BEGIN, INSIDE) else None
    return bad


def to_iob2(tags: Sequence[str]) -> tuple[list[str], int]:
    """Each opening ``I-X`` turned into ``B-X`` (IOB1 -> IOB2, or an IOB2 repair): (tags, how many)."""
    out = list(tags)
    positions = opening_inside(out)
    for i in positions:
        out[i] = f"{BEGIN}-{split_tag(out[i])[1]}"
    return out, len(positions)


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The entities of an IOB2 tag sequence: (type, first token, last token + 1)."""
    found: list[tuple[str, int, int]] = []
    start, current = None, None
    for i, tag in enumerate([*tags, OUTSIDE]):
        prefix, entity = split_tag(tag)
        if current is not None and (prefix != INSIDE or entity != current):
            found.append((current, start, i))
            current = None
        if prefix == BEGIN or (prefix == INSIDE and current is None and entity is not None):
            start, current = i, entity
    return found
