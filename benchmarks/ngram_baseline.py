"""The baseline: the GPT-3 / lm-eval 13-gram overlap method written plainly in Python.

Normalise (lowercase, delete punctuation, split on whitespace), put every 13-gram of every benchmark
item in a dict of word tuples, and look up every 13-gram of each document. Items shorter than 13 words
are looked up whole. This is how most decontamination scripts are written.
"""

from __future__ import annotations

import string

_FOLD = str.maketrans(string.ascii_uppercase, string.ascii_lowercase, string.punctuation)


def words(text: str) -> list[str]:
    return text.translate(_FOLD).split()


class NgramBaseline:
    def __init__(self, items: list[tuple[str, str]], n: int = 13) -> None:
        """`items`: (item id, text) pairs."""
        self.n = n
        self.grams: dict[tuple[str, ...], str] = {}
        self.lengths = {n}
        for item_id, text in items:
            tokens = words(text)
            span = min(n, len(tokens))
            self.lengths.add(span)
            for i in range(len(tokens) - span + 1):
                self.grams.setdefault(tuple(tokens[i : i + span]), item_id)

    def find(self, text: str) -> str | None:
        """The id of the first benchmark item one of whose n-grams occurs in `text`."""
        tokens = words(text)
        for span in self.lengths:
            for i in range(len(tokens) - span + 1):
                item = self.grams.get(tuple(tokens[i : i + span]))
                if item is not None:
                    return item
        return None
