"""The isolation settings' names live in crashup_lib/isolation/timing.py; the OCF agent keeps its own copy (it imports
nothing at module top beyond what its monitor needs): the two must agree, or the fallback level's wait would be
computed from settings the guard does not run with."""
import importlib.machinery
import importlib.util
import pathlib

from crashup_lib.fencing import isolation as fence_isolation
from crashup_lib.isolation import timing

AGENT = pathlib.Path(__file__).resolve().parents[1] / "agents" / "crashup"


def agent_module():
    loader = importlib.machinery.SourceFileLoader("crashup_agent_under_test", str(AGENT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_the_guard_and_the_fence_device_get_every_timing_setting_from_one_list():
    assert agent_module().ISOLATION_SETTINGS == timing.GUARD
    assert fence_isolation.TIMING == timing.FENCE
    # everything that fixes the wait reaches both the guard and the fence device (margin is the fence's own slack)
    assert set(timing.FENCE) - {"margin"} <= set(timing.GUARD)
