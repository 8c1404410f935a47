import pytest

STOCK = {"apple": 120, "bread": 15, "cheese": 8, "coffee": 30, "milk": 60}


@pytest.mark.parametrize("sku", sorted(STOCK))
def test_in_stock(sku, latency):
    latency()
    assert STOCK[sku] > 0


def test_low_stock_alert(latency):
    latency(0.1)
    assert [s for s, n in STOCK.items() if n < 10] == ["cheese"]


def test_total_units(latency):
    latency(0.1)
    assert sum(STOCK.values()) == 233
