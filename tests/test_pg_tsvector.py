"""Search vectors made by the crawler (crawler/store/pg/tsvector.py) against PostgreSQL's own to_tsvector."""

from __future__ import annotations

import random

import pytest

from crawler.query.pg import tsquery
from crawler.store.pg.tsvector import MAX_POSITION, WORD, page_vector, query_terms, words

psycopg = pytest.importorskip("psycopg")

# What the server would have made of the same page, for text PostgreSQL's parser splits as ours does.
SERVER_VECTOR = (
    "SELECT (setweight(to_tsvector('simple', %(title)s), 'A') || to_tsvector('simple', left(%(text)s, 250000)))::text"
)


def ours(conn: psycopg.Connection, title: str, text: str) -> str:
    """Our vector, read back by the server through COPY (binary), as text."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS v (id int, search tsvector)")
    conn.execute("TRUNCATE v")
    with conn.cursor().copy("COPY v (id, search) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(["int4", "bytea"])  # bytea sends the bytes as they are: tsvector's binary form
        copy.write_row((1, page_vector(title, text)))
    return str(conn.execute("SELECT search::text FROM v").fetchone()[0])  # type: ignore[index]


@pytest.mark.parametrize(
    ("title", "text"),
    [
        ("The Lighthouse Keeper", "the keeper of the light, and the lighthouse; keeper's log 42 of 1900."),
        ("", "only text here"),
        ("Only a title", ""),
        ("", ""),
        ("Repeat", " ".join(["echo"] * 300 + ["end"])),  # more positions than a lexeme keeps
        ("Long", " ".join(f"w{i % 50} x" for i in range(12_000))),  # positions past the largest
        ("café au lait", "crème brûlée, déjà vu"),
        # Mostly ASCII, with other letters at the start, inside and at the end of words, and alone.
        ("über naïve", "élan plain words, then a naïve café and more plain words é"),
    ],
)
def test_a_page_vector_is_the_one_postgresql_makes_for_plain_words(pg_url: str, title: str, text: str) -> None:
    with psycopg.connect(pg_url) as conn:
        expected = conn.execute(SERVER_VECTOR, {"title": title, "text": text}).fetchone()[0]  # type: ignore[index]
        assert ours(conn, title, text) == expected


def test_words_are_runs_of_letters_and_digits_lowercased() -> None:
    assert words("Héllo_World, don't 3.14 ÉCLAIR · x") == ["héllo", "world", "don", "t", "3", "14", "éclair", "x"]
    assert words("plain ascii TEXT-only") == ["plain", "ascii", "text", "only"]


def test_mostly_ascii_text_splits_as_the_word_pattern_splits_it_whole() -> None:
    # The split goes by a byte table between the pieces that hold other characters; whatever the
    # mix, the words must be those the pattern finds in the lowercased text.
    rng = random.Random(17)
    others = "éÉüß·—İ\u212aǄ日本ﬁ\u00a0\u0307½²"
    for _ in range(5000):
        length = rng.randint(0, 40)
        text = "".join(rng.choice(others if rng.random() < 0.15 else "abcXYZ019 ,.-_'\n") for _ in range(length))
        assert words(text) == WORD.findall(text.lower()), text


def test_far_positions_count_as_the_largest_once() -> None:
    vector = page_vector("", " ".join(["a"] * MAX_POSITION + ["b", "b", "c"]))
    # 3 lexemes; 'b' and 'c' both sit at the largest position, once each.
    assert vector[:4] == (3).to_bytes(4, "big")
    assert vector.endswith(b"c\x00" + (1).to_bytes(2, "big") + MAX_POSITION.to_bytes(2, "big"))


def test_a_search_is_split_as_the_pages_are() -> None:
    assert query_terms([("Lighthouse keeper", False), ("lig", True), ("e-mail", False), ("…", False)]) == (
        "('lighthouse' <-> 'keeper') & 'lig':* & ('e' <-> 'mail')"
    )
    assert tsquery('"Crème brûlée" DÉJÀ light*') == ("?::tsquery", ["('crème' <-> 'brûlée') & 'déjà' & 'light':*"])
    assert tsquery("… --") == ("", [])
