import os

import pytest


@pytest.fixture(scope="module")
def lab():
    """The whole lab (Pacemaker + 3 compute nodes, nova, BMCs) for one test module; torn down after it."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces, Pacemaker)")
    from tests.lab import lab as lab_module
    if lab_module.read_state():                  # a lab left by an interrupted run of ours: start clean
        lab_module.down(quiet=True)
    lab_module.up(quiet=True)
    yield lab_module
    lab_module.down(quiet=True)
