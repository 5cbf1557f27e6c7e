"""The recovery daemon's survey against Pacemaker's own cibadmin on a CIB file (CIB_file): only the nodes carrying a
request are read, whatever the fleet's size (no cluster needed: cibadmin reads the file itself); and its watch tick,
which asks nothing more while nothing is to be done."""
import shutil
import subprocess
from xml.sax.saxutils import quoteattr

import pytest

from crashup_lib import config, pacemaker
from crashup_lib.recovery import daemon
from tests.fakes import FakeCluster, FakeNova
from tests.test_pipeline import Recorder

needs_cibadmin = pytest.mark.skipif(shutil.which("cibadmin") is None, reason="Pacemaker's cibadmin is not installed")


def request(node, state="recovering"):
    return pacemaker.RecoveryRequest(node=node, state=state, mode="auto", fenced_at=1000.0, updated_at=1000.0)


def synthetic_cib(count: int, requests: dict[str, tuple[str | None, str | None]]) -> str:
    """A CIB of `count` remote nodes computeN (each with an unrelated attribute, as sites have), some with a
    request and/or its state mirror: {node: (request value or None, mirror or None)}."""
    nodes = []
    for i in range(count):
        name = f"compute{i}"
        pairs = [f'<nvpair id="{name}-rack" name="rack" value="r{i % 8}"/>']
        value, mirror = requests.get(name, (None, None))
        if value is not None:
            pairs.append(f'<nvpair id="{name}-req" name="{pacemaker.REQUEST_ATTRIBUTE}" value={quoteattr(value)}/>')
        if mirror is not None:
            pairs.append(f'<nvpair id="{name}-st" name="{pacemaker.STATE_ATTRIBUTE}" value="{mirror}"/>')
        nodes.append(f'<node id="{name}" uname="{name}" type="remote"><instance_attributes id="{name}-attrs">'
                     f'{"".join(pairs)}</instance_attributes></node>')
    return ('<cib crm_feature_set="3.16.1" validate-with="pacemaker-3.9" epoch="1" num_updates="0" admin_epoch="0">'
            f'<configuration><crm_config/><nodes>{"".join(nodes)}</nodes><resources/><constraints/></configuration>'
            '<status/></cib>')


@pytest.fixture
def cib(tmp_path, monkeypatch):
    def write(count, requests):
        path = tmp_path / "cib.xml"
        path.write_text(synthetic_cib(count, requests))
        monkeypatch.setenv("CIB_file", str(path))
    return write


@needs_cibadmin
def test_no_request_in_a_thousand_nodes_is_an_empty_survey(cib):
    cib(1000, {})
    assert pacemaker.survey() == ({}, [])


@needs_cibadmin
def test_one_request_comes_back_alone(cib):
    open_ = request("compute7")
    cib(24, {"compute7": (open_.to_value(), "recovering")})
    assert pacemaker.survey() == ({"compute7": open_}, [])


@needs_cibadmin
def test_several_requests_and_a_lagging_mirror_among_a_thousand_nodes(cib):
    a, b, c = request("compute3"), request("compute500", "done"), request("compute999", "pending")
    cib(1000, {"compute3": (a.to_value(), "recovering"), "compute500": (b.to_value(), "recovering"),
               "compute999": (c.to_value(), None), "compute42": (None, "done")})
    found, lagging = pacemaker.survey()
    assert found == {"compute3": a, "compute500": b, "compute999": c}
    # a mirror that disagrees with its request, or is missing, lags; a mirror alone is no request
    assert sorted(r.node for r in lagging) == ["compute500", "compute999"]


@needs_cibadmin
@pytest.mark.parametrize("with_request", [False, True])
def test_a_survey_is_one_cibadmin_run_with_or_without_requests(cib, monkeypatch, with_request):
    runs = []
    real = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw: runs.append(argv) or real(argv, **kw))
    open_ = request("compute3")
    cib(1000, {"compute3": (open_.to_value(), "recovering")} if with_request else {})
    assert pacemaker.survey() == (({"compute3": open_} if with_request else {}), [])
    assert [argv[0] for argv in runs] == ["cibadmin"]


@needs_cibadmin
def test_a_cib_that_cannot_be_read_is_an_error_not_an_empty_survey(tmp_path, monkeypatch):
    # cibadmin exits 105 both for "no match" and for a CIB file it cannot open: only the first is "no request"
    monkeypatch.setenv("CIB_file", str(tmp_path / "missing.xml"))
    with pytest.raises(pacemaker.PacemakerError, match=r"^cibadmin --query --xpath failed \(exit 105\): "):
        pacemaker.survey()
    with pytest.raises(pacemaker.PacemakerError):
        pacemaker.request("compute1")


class CountingCluster(FakeCluster):
    """FakeCluster that counts the cluster queries a watch tick makes."""

    def __init__(self):
        super().__init__()
        self.asked = {"survey": 0, "quorate": 0}

    def survey(self):
        self.asked["survey"] += 1
        return super().survey()

    def quorate(self):
        self.asked["quorate"] += 1
        return super().quorate()


def test_an_idle_watch_tick_is_one_query_and_quorum_is_asked_only_with_work(tmp_path):
    cluster = CountingCluster()
    d = daemon.Daemon(config.load(env={}), state_dir=str(tmp_path), cluster=cluster, nova_factory=FakeNova,
                      emitter=Recorder())
    cluster.write_request(request("compute2").moved_to("done", ""))           # closed: nothing to act on
    for _ in range(3):
        d.tick()
    assert cluster.asked == {"survey": 3, "quorate": 0}
    # an open request without quorum: asked, nothing started, and asked again at every tick until quorum is back
    cluster.saved["compute1"] = request("compute1")
    cluster.has_quorum = False
    d.tick()
    d.tick()
    assert cluster.asked["quorate"] == 2 and d.workers == {} and d.inquorate
    cluster.has_quorum = True
    d.tick()
    assert list(d.workers) == ["compute1"] and not d.inquorate
    d.stop()
    d.workers["compute1"].join(10)
