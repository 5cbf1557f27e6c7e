"""Shared by every test: the redactor's secrets are process-wide, so each test starts with the set it found.

A generated "secret" ('com', 'ing') registered by one test would otherwise blank those letters out of every later
test's messages."""
import pytest

from crashup_lib import log


@pytest.fixture(autouse=True)
def _secrets_stay_in_their_test():
    kept = set(log._secrets)
    yield
    log._secrets.clear()
    log._secrets.update(kept)
