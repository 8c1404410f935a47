from conftest import CATALOGUE


def test_catalogue_is_not_empty():
    assert CATALOGUE


def test_prices_are_positive():
    assert all(p > 0 for p in CATALOGUE.values())


def test_skus_are_lowercase():
    assert all(s == s.lower() for s in CATALOGUE)


def test_coffee_is_the_most_expensive():
    assert max(CATALOGUE, key=CATALOGUE.get) == "coffee"


def test_search_by_prefix(latency):
    latency()
    assert [s for s in CATALOGUE if s.startswith("c")] == ["cheese", "coffee"]


def test_price_lookup(latency):
    latency()
    assert CATALOGUE["milk"] == 1.10
