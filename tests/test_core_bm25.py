"""core.bm25: one term splitter and one BM25 scorer for session search and the code index."""

from __future__ import annotations

import math

from core import bm25
from indexer import lexical
from sessions import search


def test_sessions_and_the_code_index_split_identifiers_the_same_way() -> None:
    text = "parseHTTPResponse2 load_model_config Über"
    assert search.terms(text) == bm25.terms(text)
    # The code index only adds its stop list and stemmer on top of the same split.
    expected = [bm25.stem(t) for t in bm25.terms(text) if t not in lexical.STOPWORDS]
    assert lexical.terms(text) == expected
    assert lexical.terms("the renders of isValid") == ["render", "isvalid", "valid"]


def test_rank_scores_by_frequency_rarity_and_length() -> None:
    common = {"a": 1, "b": 1, "c": 1, "d": 1}
    rare = {"a": 3, "b": 1}
    lengths = {"a": 10, "b": 10, "c": 10, "d": 40}
    ranked = bm25.rank([common, rare], lengths, docs=4, avg_len=17.5, limit=3)
    assert [r.doc for r in ranked] == ["a", "b", "c"]  # "d" ties "c" on terms but is longer
    assert ranked[0].matched == [0, 1] and ranked[2].matched == [0]
    f, dl, avg = 3.0, 10.0, 17.5
    expected = bm25.idf(4, 4) * 1 * 2.2 / (1 + 1.2 * (0.25 + 0.75 * dl / avg)) + bm25.idf(4, 2) * f * 2.2 / (
        f + 1.2 * (0.25 + 0.75 * dl / avg)
    )
    assert math.isclose(ranked[0].score, expected)


def test_a_filter_narrows_the_results_but_not_the_term_rarity() -> None:
    posting = {"a": 1, "b": 1, "c": 1}
    lengths = dict.fromkeys(posting, 5)
    only_b = bm25.rank([posting], lengths, docs=10, avg_len=5, limit=5, allowed=["b"])
    assert [r.doc for r in only_b] == ["b"]
    assert math.isclose(only_b[0].score, bm25.rank([posting], lengths, 10, 5, 5)[0].score)
    assert bm25.rank([posting], lengths, docs=0, avg_len=5, limit=5) == []
