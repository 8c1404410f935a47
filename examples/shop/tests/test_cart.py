import pytest


def test_new_cart_is_empty(cart):
    assert cart.total() == 0


def test_add_one(cart):
    cart.add("apple")
    assert cart.total() == 0.50


def test_add_many(cart, latency):
    latency()
    cart.add("bread", 3)
    assert cart.total() == 6.60


def test_add_same_item_twice_accumulates(cart):
    cart.add("milk")
    cart.add("milk")
    assert cart.items["milk"] == 2


def test_remove(cart):
    cart.add("cheese")
    cart.remove("cheese")
    assert cart.total() == 0


def test_remove_missing_is_a_no_op(cart):
    cart.remove("caviar")
    assert cart.total() == 0


def test_unknown_sku_is_refused(cart):
    with pytest.raises(KeyError):
        cart.add("caviar")


def test_zero_quantity_is_refused(cart):
    with pytest.raises(ValueError):
        cart.add("apple", 0)


def test_mixed_basket(cart, latency):
    latency()
    cart.add("apple", 4)
    cart.add("coffee")
    assert cart.total() == 9.90


def test_rounding_of_totals(cart):
    # Fails on purpose: float sums need rounding per line, which the cart does not do.
    for _ in range(3):
        cart.add("milk")
    assert repr(cart.items["milk"] * 1.10) == "3.3"


@pytest.mark.skip(reason="discount codes are not implemented yet")
def test_discount_code(cart):
    cart.add("coffee")
    assert cart.total() == 7.11
