"""A small shop model the example suite tests: a catalogue, a cart and a checkout."""

import os
import random
import time

import pytest


CATALOGUE = {
    "apple": 0.50,
    "bread": 2.20,
    "cheese": 4.75,
    "coffee": 7.90,
    "milk": 1.10,
}


class Cart:
    def __init__(self):
        self.items = {}

    def add(self, sku, qty=1):
        if sku not in CATALOGUE:
            raise KeyError(sku)
        if qty <= 0:
            raise ValueError("quantity must be positive")
        self.items[sku] = self.items.get(sku, 0) + qty

    def remove(self, sku):
        self.items.pop(sku, None)

    def total(self):
        return round(sum(CATALOGUE[s] * q for s, q in self.items.items()), 2)


@pytest.fixture
def cart():
    return Cart()


@pytest.fixture
def latency():
    """Simulates talking to a service: a short, seeded, heavy-tailed pause."""
    rng = random.Random(int(os.environ.get("SHOP_SEED", "7")))

    def pause(scale=0.05):
        time.sleep(min(rng.lognormvariate(0, 1) * scale, 1.0))

    return pause
