"""RecentUrls (crawler/recent.py): the bounded memory that lets popular links skip re-insertion."""

from crawler.recent import RecentUrls


def test_first_sight_is_true_once_then_false() -> None:
    recent = RecentUrls(capacity=10)
    assert recent.first_sight("http://a.test/x") is True
    assert recent.first_sight("http://a.test/x") is False
    assert recent.first_sight("http://a.test/y") is True


def test_memory_is_bounded_and_recently_used_urls_survive_a_generation() -> None:
    recent = RecentUrls(capacity=3)
    for i in range(3):
        assert recent.first_sight(f"http://a.test/{i}")
    # A fourth URL starts a new generation; the first three are still remembered once.
    assert recent.first_sight("http://a.test/3")
    assert recent.first_sight("http://a.test/0") is False  # promoted into the young generation
    for i in range(4, 7):
        assert recent.first_sight(f"http://a.test/{i}")
    # Two generations later, an unused URL is forgotten and offered to the store again.
    assert recent.first_sight("http://a.test/1") is True
    assert recent.first_sight("http://a.test/0") is False
