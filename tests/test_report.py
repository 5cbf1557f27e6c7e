"""`crashup report`: the journal -> timeline model, its text and SVG renderings, the command's bad input."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from crashup_lib import cli, events
from crashup_lib.pacemaker import RecoveryRequest
from crashup_lib.report import svg, text, timeline
from crashup_lib.report.timeline import Kind, Outcome

T0 = 1_790_000_000.0          # the fencing


def ev(type_, subject, payload, at):
    event = events.make_event(type_, subject, payload)
    event["time"] = events.rfc3339(at)
    return event


def failed(host="compute1", node="compute1", fenced=T0, at=T0 + 1.0, servers=("a", "b", "c"), mode="auto"):
    return ev(events.HOST_FAILED, host, {"host": host, "node": node, "fenced_at": fenced, "mode": mode,
                                         "instances": [{"id": s, "name": f"vm-{s}", "status": "ACTIVE",
                                                        "task_state": None, "project_id": "p"} for s in servers],
                                         "repairs": []}, at)


def evacuated(sid, at, took, host="compute1", target="compute2"):
    return ev(events.INSTANCE_EVACUATED, sid, {"id": sid, "name": f"vm-{sid}", "source_host": host,
                                               "target_host": target, "duration_s": took, "power_state": 1,
                                               "storage": "local"}, at)


def evac_failed(sid, at, host="compute1"):
    return ev(events.INSTANCE_EVACUATION_FAILED, sid, {"id": sid, "name": f"vm-{sid}", "source_host": host,
                                                       "reason": "No valid host", "attempts": 3}, at)


def repaired(sid, at, host="compute1"):
    return ev(events.INSTANCE_REPAIRED, sid, {"id": sid, "from_task_state": "rebooting", "from_vm_state": "active",
                                              "action": "reset-active", "host": host}, at)


def recovered(at, host="compute1", node="compute1", evac=2, fail=1):
    return ev(events.HOST_RECOVERED, host, {"host": host, "node": node, "mode": "auto", "evacuated": evac,
                                            "failed": fail, "skipped": 0, "duration_s": at - T0 - 1}, at)


def one_recovery(offset=0.0, host="compute1"):
    return [repaired("a", T0 + offset + 0.5, host), failed(host, host, T0 + offset, T0 + offset + 1.0),
            evacuated("a", T0 + offset + 4.0, 2.5, host), evacuated("b", T0 + offset + 5.0, 3.0, host),
            evac_failed("c", T0 + offset + 9.0, host), recovered(T0 + offset + 9.5, host, host)]


def test_a_recovery_becomes_a_timeline_with_its_milestones_and_one_bar_per_server():
    t = timeline.select(one_recovery(), "compute1")
    assert (t.node, t.host, t.mode, t.fenced_at, t.recovered_at) == ("compute1", "compute1", "auto", T0, T0 + 9.5)
    assert [m.kind for m in t.marks] == [Kind.FENCED, Kind.REPAIRED, Kind.BEGAN, Kind.RECOVERED]
    bars = {e.server_id: e for e in t.evacuations}
    assert bars["a"].start == pytest.approx(T0 + 1.5) and bars["a"].end == pytest.approx(T0 + 4.0)
    assert bars["a"].outcome is Outcome.EVACUATED and bars["a"].target_host == "compute2"
    # a failure's first call is not in the journal: drawn from the recovery's start, and said so
    assert bars["c"].outcome is Outcome.FAILED and not bars["c"].start_known and bars["c"].start == T0 + 1.0
    assert dict(t.counts) == {"evacuated": 2, "failed": 1, "skipped": 0}


def test_the_latest_recovery_or_the_first_since_a_time_and_other_hosts_apart():
    journal = one_recovery() + one_recovery(3600) + one_recovery(100, host="compute2")
    assert timeline.select(journal, "compute1").fenced_at == T0 + 3600
    assert timeline.select(journal, "compute1", since=T0 + 10).fenced_at == T0 + 3600
    assert timeline.select(journal, "compute1", since=T0 - 10).fenced_at == T0
    other = timeline.select(journal, "compute2")
    assert other.fenced_at == T0 + 100 and len(other.evacuations) == 3


def test_a_resumed_recovery_is_one_recovery_and_an_unfinished_one_shows_its_request():
    journal = [failed(), evacuated("a", T0 + 3, 1.0), failed(at=T0 + 20), evacuated("b", T0 + 25, 2.0)]
    req = RecoveryRequest("compute1", "recovering", "auto", T0, T0 + 20, host="compute1", note="evacuating 3")
    t = timeline.select(journal, "compute1", request=req)
    assert len(timeline.timelines(journal)) == 1 and len(t.evacuations) == 2 and t.recovered_at is None
    assert (t.state, t.note) == ("recovering", "evacuating 3")
    assert "not yet evacuated: vm-c" in text.render(t) and "recovery request: recovering" in text.render(t)


def test_unknown_node_and_no_recovery_are_told_apart():
    journal = one_recovery()
    with pytest.raises(timeline.NoRecovery) as e:
        timeline.select(journal, "compute9")
    assert e.value.unknown and "no such node" in str(e.value)
    with pytest.raises(timeline.NoRecovery) as e:
        timeline.select(journal, "compute1", since=T0 + 60)
    assert not e.value.unknown and "no recovery of compute1 since" in str(e.value)


def test_text_has_a_line_per_milestone_and_server_in_seconds_since_the_fencing():
    out = text.render(timeline.select(one_recovery(), "compute1"))
    assert "fenced at 2026-09-21T" in out.splitlines()[0]
    assert "+1.50s -> +4.00s" in out and "vm-a (a): evacuated to compute2 in 2.50s" in out
    assert "vm-c (c): evacuation FAILED: No valid host (3 attempts)" in out
    assert "fencing -> recovered: 9.50s" in out and "reset-active" in out


def test_svg_parses_and_has_one_bar_per_server_an_axis_in_seconds_and_a_legend():
    picture = svg.render(timeline.select(one_recovery(), "compute1"))
    root = etree.fromstring(picture.encode())
    ns = {"s": "http://www.w3.org/2000/svg"}
    bars = root.xpath("//s:rect[contains(@class, 'bar')]", namespaces=ns)
    assert sorted(b.get("data-server") for b in bars) == ["a", "b", "c"]
    assert [b.get("class") for b in bars].count("bar failed") == 1
    texts = [t.text for t in root.iterfind(".//s:text", ns)]
    assert "seconds since the fencing" in texts and "0" in texts and "10" in texts
    assert any(t.startswith("evacuated: from the evacuate call") for t in texts)
    assert len(root.xpath("//s:line[@class='milestone']", namespaces=ns)) == 3
    assert len(root.xpath("//s:path[@class='repair']", namespaces=ns)) == 2      # the row's, the legend's


def test_svg_escapes_hostile_names():
    journal = [failed(servers=("x",)), evacuated("x", T0 + 3, 1.0)]
    journal[1]["payload"]["name"] = "<script>&\x1b[31m"
    picture = svg.render(timeline.select(journal, "compute1"))
    root = etree.fromstring(picture.encode())
    assert not root.xpath("//*[local-name()='script']") and "\x1b" not in picture


@pytest.mark.parametrize("span", [0.001, 0.7, 3, 45, 1234])
def test_nice_steps(span):
    step = svg.nice_step(span)
    assert 3 <= span / step <= 8 or span < 0.01
    assert f"{step:.0e}"[0] in "125"


# --- the parser against anything a journal may hold --------------------------------------------------------------

names = st.sampled_from(["compute1", "compute2", "a", "b", ""])
values = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), names,
                   st.lists(st.dictionaries(st.sampled_from(["id", "name"]), names), max_size=3),
                   st.sampled_from(["2026-09-21T12:00:00Z", "yesterday", "2026-13-01T00:00:00Z"]))
payloads = st.dictionaries(st.sampled_from(["host", "node", "fenced_at", "mode", "instances", "id", "name",
                                            "source_host", "target_host", "duration_s", "attempts", "reason",
                                            "failed", "evacuated", "action"]), values)
raw_events = st.builds(lambda type_, subject, payload, at: {"type": type_, "subject": subject, "payload": payload,
                                                           "time": events.rfc3339(T0 + at), "id": "x"},
                       st.sampled_from(events.TYPES), names, payloads, st.floats(-100, 1000))
well_formed = st.lists(st.sampled_from(one_recovery() + one_recovery(50, "compute2")), max_size=12)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(raw_events, well_formed.map(lambda x: x[0] if x else {})), max_size=25))
def test_any_journal_gives_timelines_or_no_recovery_never_an_error(found):
    for t in timeline.timelines(found):
        assert all(e.end >= e.start or not e.start_known for e in t.evacuations)
        assert t.end >= t.fenced_at or t.end >= t.began_at
        text.render(t)
        etree.fromstring(svg.render(t).encode())
    try:
        timeline.select(found, "compute1")
    except timeline.NoRecovery:
        pass


@settings(max_examples=100)
@given(well_formed)
def test_events_in_journal_order_keep_their_servers(found):
    found = sorted(found, key=lambda e: e["time"])
    for t in timeline.timelines(found):
        ids = {i for i, _ in t.instances}
        assert {e.server_id for e in t.evacuations} <= ids


# --- the command ------------------------------------------------------------------------------------------------

@pytest.fixture
def journal(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in one_recovery()) + "not json\n")
    conf = tmp_path / "crashup.conf"
    conf.write_text(f"[events]\njournal = {path}\n")
    monkeypatch.setenv("CRASHUP_CONFIG", str(conf))
    monkeypatch.setenv("PATH", str(tmp_path))          # no Pacemaker: the report goes on without the request
    return path


def test_report_prints_the_timeline_and_draws_it(journal, tmp_path, capsys):
    assert cli.main(["report", "compute1", "--svg", str(tmp_path / "r.svg")]) == 0
    out, err = capsys.readouterr()
    assert "recovery of compute1" in out and "evacuated to compute2" in out
    assert "skipped 1 malformed line" in err and "Traceback" not in err
    etree.parse(str(tmp_path / "r.svg"))


@pytest.mark.parametrize("argv,rc,line", [
    (["report", "compute9"], 2, "crashup: compute9: no such node"),
    (["report", "compute1", "--since", "1h"], 1, "crashup: no recovery of compute1 since"),
    (["report", "compute1", "--since", "last tuesday"], 2, "crashup: --since 'last tuesday': expected a date-time"),
    (["report", "compute1", "--svg", "/nonexistent/dir/r.svg"], 1, "crashup: FileNotFoundError"),
])
def test_report_bad_input_is_one_line(journal, capsys, argv, rc, line):
    assert cli.main(argv) == rc
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(line) and "Traceback" not in "\n".join(err)


def test_report_on_an_unreadable_journal_is_one_line(journal, capsys):
    journal.unlink()
    journal.mkdir()
    assert cli.main(["report", "compute1"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"crashup: OSError: events journal {journal}: is a "
                                                             "directory, not a file"]
