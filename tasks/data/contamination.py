"""Near-duplicate contamination: held-out examples whose text nearly repeats a training example's (a changed word, a
re-ordered clause, other punctuation), which the exact leakage check lets through.

Similarity is the Jaccard similarity of character 5-grams of the normalized text (lower case, words only, single
spaces). Characters rather than words because held-out keys are mostly short prompts: in a six-word question one
changed word removes three of its four word 3-grams, but only about a third of its character 5-grams, so a character
measure still sees the near copy. The candidates come from MinHash LSH (datasketch), which finds the pairs above the
threshold without comparing every pair; each candidate's exact similarity is then computed, so LSH's false positives
never reach a report. Only the held-out split is indexed: train, which may hold millions of rows, streams past it.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

from datasketch import MinHash, MinHashLSH

SHINGLE_CHARS = 5
PERMUTATIONS = 128
# LSH finds a pair with a probability that rises steeply around its threshold. Tuned at the reporting threshold it
# missed pairs of 0.82 and 0.87 in the demo portfolio; tuned at 0.8 of it, 8 of the 163 pairs from 0.5 to 0.9 there
# (found by comparing every pair); at 0.6 of it, none. The exact similarity of each candidate drops the extra ones.
RECALL_MARGIN = 0.6
# A shingle's 32-bit hash for MinHash: CRC-32 is stable across runs and, in C, costs a fraction of datasketch's
# default (SHA-1 through Python), its largest cost at a million rows; a rare collision can only add a candidate,
# which the exact similarity then checks.
HASH = zlib.crc32
BATCH = 10_000  # training texts hashed at a time (MinHash.bulk vectorizes over a batch)
WORDS = re.compile(r"\w+")

Placed = tuple[str, str]  # (where the example is, e.g. "row 12" or "line 3", its text)


@dataclass(frozen=True)
class NearDuplicate:
    """A held-out example and the training example it nearly repeats."""

    held_out: str  # the held-out example's place
    train: str  # the training example's place
    similarity: float
    held_out_text: str
    train_text: str


def shingles(text: str) -> set[bytes]:
    """The text's character 5-grams after normalizing (a shorter text is one shingle)."""
    normal = " ".join(WORDS.findall(text.lower()))
    return {normal[i:i + SHINGLE_CHARS].encode() for i in range(max(1, len(normal) - SHINGLE_CHARS + 1))}


def jaccard(a: set[bytes], b: set[bytes]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def near_duplicates(train: Iterable[Placed], held_out: Iterable[Placed], threshold: float,
                    identical: bool = False) -> list[NearDuplicate]:
    """Every (held-out, train) pair whose similarity is at least `threshold`, most similar first; pairs of identical
    texts only with `identical` (validate's exact check refuses those). Memory holds the held-out split's sketches
    and one batch of train."""
    index = MinHashLSH(threshold=threshold * RECALL_MARGIN, num_perm=PERMUTATIONS)
    kept = [(place, text, shingles(text)) for place, text in held_out]
    for number, sketch in enumerate(MinHash.bulk((s for _, _, s in kept), num_perm=PERMUTATIONS, hashfunc=HASH)):
        index.insert(number, sketch)
    found = []
    for place, text, number, similarity in _matches(train, index, kept, threshold, identical):
        held_place, held_text, _ = kept[number]
        found.append(NearDuplicate(held_place, place, round(similarity, 3), held_text, text))
    return sorted(found, key=lambda pair: -pair.similarity)


def nearly_repeated(train: list[str], held_out: list[str], threshold: float) -> set[int]:
    """The positions of the held-out texts that nearly repeat a training text (for data generators that leave them
    out, as the validate stage would refuse them)."""
    return {int(pair.held_out) for pair in near_duplicates(
        ((str(i), text) for i, text in enumerate(train)), ((str(i), text) for i, text in enumerate(held_out)),
        threshold)}


def _matches(train: Iterable[Placed], index: MinHashLSH, kept: list[tuple[str, str, set[bytes]]],
             threshold: float, identical: bool) -> Iterator[tuple[str, str, int, float]]:
    """(train place, train text, held-out number, similarity) of each pair above the threshold."""
    if not kept:
        return
    texts = iter(train)
    while batch := list(islice(texts, BATCH)):  # itertools.batched is Python 3.12's
        sets = [shingles(text) for _, text in batch]
        for (place, text), own, sketch in zip(batch, sets, MinHash.bulk(sets, num_perm=PERMUTATIONS, hashfunc=HASH)):
            for number in index.query(sketch):
                similarity = jaccard(own, kept[number][2])
                if similarity >= threshold and (identical or text != kept[number][1]):
                    yield place, text, number, similarity
