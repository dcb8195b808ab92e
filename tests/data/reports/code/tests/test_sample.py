"""One test of each outcome, as a real suite would have them."""

import pytest


@pytest.fixture
def database():
    raise RuntimeError("no database in this environment")


def test_passes():
    assert 1 + 1 == 2


def test_also_passes():
    assert "compose".upper() == "COMPOSE"


def test_fails():
    answer = 41
    assert answer == 42, "the answer drifted"


@pytest.mark.skip(reason="not on this platform")
def test_skipped():
    pass


def test_errors(database):
    pass
