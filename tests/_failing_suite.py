"""A suite that fails, for tests/test_sanitizers.py's check of its background runner (not collected: no test_ prefix)."""


def test_fails():
    assert 1 == 2
