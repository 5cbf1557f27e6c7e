"""cinder.py's read calls against a local HTTP server answering as cinder 29.0.0 does (paths, query, microversion
header, paging, 404), and the parsing of cinder's JSON (a hypothesis test: nothing cinder could send raises). No lab."""
import http.server
import json
import threading
import time
import urllib.parse

import pytest
from hypothesis import given, settings, strategies as st

from crashup_lib import cinder
from crashup_lib.cinder import Attachment, CinderApi, CinderError, Volume, VolumeService
from tests.helpers import free_port

VOL, VOL2, SRV = "0b5e6a3c-8d1f-4c2e-9a7b-1f2e3d4c5b6a", "1c6f7b4d-9e20-4d3f-8b8c-2a3f4e5d6c7b", "srv-1"

VOLUME_DOC = {"volume": {
    "id": VOL, "status": "in-use", "size": 2, "bootable": "true", "multiattach": False, "name": "root",
    "os-vol-host-attr:host": "ctl1@lvm#pool", "migration_status": None, "updated_at": "2026-01-01T00:00:00.000000",
    "attachments": [{"id": VOL, "attachment_id": "att-1", "volume_id": VOL, "server_id": SRV,
                     "host_name": "compute2", "device": "/dev/vda", "attached_at": "2026-01-01T00:00:00.000000"}]}}


class Cinder:
    """GETs answered from `routes` (path -> (status, body) or a list of them, one per call); every request kept
    as (path, query dict, OpenStack-API-Version header)."""

    def __init__(self, routes, delay=0.0):
        self.routes, self.requests, self.delay = dict(routes), [], delay
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                outer.requests.append((url.path, dict(urllib.parse.parse_qsl(url.query)),
                                       self.headers.get("OpenStack-API-Version")))
                time.sleep(outer.delay)
                answer = outer.routes.get(url.path, (404, {"itemNotFound": {"code": 404, "message": "not found"}}))
                if isinstance(answer, list):
                    answer = answer.pop(0) if len(answer) > 1 else answer[0]
                status, body = answer
                payload = (body if isinstance(body, str) else json.dumps(body)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v3/project"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(routes, delay=0.0):
        servers.append(Cinder(routes, delay))
        return servers[-1]
    yield start
    for s in servers:
        s.close()


def api(url, timeout=5.0):
    from keystoneauth1 import session
    return CinderApi(session.Session(), endpoint_override=url, timeout=timeout)


P = "/v3/project"


def test_volume_is_read_with_its_host_and_attachments(serve):
    server = serve({f"{P}/volumes/{VOL}": (200, VOLUME_DOC)})
    v = api(server.url).volume(VOL)
    assert v == Volume(VOL, "in-use", "attached", None, "ctl1@lvm#pool", True, 2,
                       (Attachment("att-1", SRV, "compute2", "2026-01-01T00:00:00.000000", VOL, "attached"),),
                       name="root", updated_at="2026-01-01T00:00:00.000000")
    assert v.attached_to(SRV) == v.attachments and v.attached_to("other") == ()
    assert server.requests == [(f"{P}/volumes/{VOL}", {}, f"volume {cinder.VOLUMES_MV}")]


def test_a_missing_volume_is_none_and_other_refusals_one_line(serve):
    server = serve({f"{P}/volumes/{VOL2}": (403, {"forbidden": {"code": 403, "message": "Policy doesn't\nallow"}})})
    assert api(server.url).volume(VOL) is None
    with pytest.raises(CinderError) as caught:
        api(server.url).volume(VOL2)
    assert str(caught.value) == f"cinder volume {VOL2}: HTTP 403: Policy doesn't allow"
    assert caught.value.status == 403 and not caught.value.unavailable


def test_an_answer_without_a_volume_is_an_error_not_a_crash(serve):
    server = serve({f"{P}/volumes/{VOL}": (200, {"volume": {"status": "in-use"}}),
                    f"{P}/volumes/{VOL2}": (200, "not json")})
    with pytest.raises(CinderError, match="without a volume"):
        api(server.url).volume(VOL)
    with pytest.raises(CinderError, match="not JSON"):
        api(server.url).volume(VOL2)


def test_attachments_of_a_server_all_projects_all_pages(serve):
    page1 = {"attachments": [{"id": "att-1", "status": "attached", "instance": SRV, "volume_id": VOL,
                              "attached_at": "2026-01-01T00:00:00", "detached_at": "", "attach_mode": "rw",
                              "connection_info": {}}],
             "attachments_links": [{"rel": "next", "href": "x"}]}
    page2 = {"attachments": [{"id": "att-2", "status": "attaching", "instance": SRV, "volume_id": VOL2},
                             {"id": "att-9", "status": "attached", "instance": "someone-else", "volume_id": VOL2}]}
    server = serve({f"{P}/attachments/detail": [(200, page1), (200, page2)]})
    found = api(server.url).attachments(SRV)
    assert found == [Attachment("att-1", SRV, None, "2026-01-01T00:00:00", VOL, "attached"),
                     Attachment("att-2", SRV, None, None, VOL2, "attaching")]     # a stray record is not the server's
    assert [(q, h) for _, q, h in server.requests] == [
        ({"all_tenants": "1", "instance_id": SRV, "limit": "1000"}, f"volume {cinder.ATTACHMENTS_MV}"),
        ({"all_tenants": "1", "instance_id": SRV, "limit": "1000", "marker": "att-1"},
         f"volume {cinder.ATTACHMENTS_MV}")]


def test_a_next_link_that_repeats_a_page_does_not_loop(serve):
    page = {"attachments": [{"id": "att-1", "instance": SRV, "volume_id": VOL}],
            "attachments_links": [{"rel": "next", "href": "x"}]}
    server = serve({f"{P}/attachments/detail": (200, page)})
    assert [a.id for a in api(server.url).attachments(SRV)] == ["att-1"]
    assert len(server.requests) == 2


def test_volumes_of_a_server_reads_each_volume_once_and_leaves_deleted_ones_out(serve):
    records = {"attachments": [{"id": "att-1", "instance": SRV, "volume_id": VOL, "status": "attached"},
                               {"id": "att-2", "instance": SRV, "volume_id": VOL, "status": "reserved"},
                               {"id": "att-3", "instance": SRV, "volume_id": VOL2, "status": "attached"}]}
    server = serve({f"{P}/attachments/detail": (200, records), f"{P}/volumes/{VOL}": (200, VOLUME_DOC)})
    assert [v.id for v in api(server.url).volumes_of(SRV)] == [VOL]
    assert [p for p, _, _ in server.requests] == [f"{P}/attachments/detail", f"{P}/volumes/{VOL}",
                                                   f"{P}/volumes/{VOL2}"]


def test_volumes_lists_all_projects_with_cinders_filters(serve):
    server = serve({f"{P}/volumes/detail": (200, {"volumes": [VOLUME_DOC["volume"], {"no": "id"}]})})
    assert [v.id for v in api(server.url).volumes(host="ctl1@lvm#pool")] == [VOL]
    assert server.requests[0][1] == {"all_tenants": "1", "host": "ctl1@lvm#pool", "limit": "1000"}


def test_services_filtered_by_binary(serve):
    doc = {"services": [
        {"binary": "cinder-volume", "host": "ctl1@lvm", "zone": "nova", "status": "enabled", "state": "up",
         "updated_at": "2026-01-01T00:00:00.000000", "disabled_reason": None, "cluster": None},
        {"binary": "cinder-scheduler", "host": "ctl1", "zone": "nova", "status": "disabled", "state": "down",
         "updated_at": None, "disabled_reason": "maintenance"},
        {"binary": 7}]}
    server = serve({f"{P}/os-services": (200, doc)})
    assert api(server.url).services("cinder-volume") == [
        VolumeService("cinder-volume", "ctl1@lvm", "nova", "enabled", "up", "2026-01-01T00:00:00.000000")]
    assert [s.binary for s in api(server.url).services()] == ["cinder-volume", "cinder-scheduler"]
    assert server.requests[0][1] == {"binary": "cinder-volume"} and server.requests[1][1] == {}
    assert VolumeService("cinder-volume", "ctl1@lvm#p", None, "", "", None).backend == "ctl1@lvm"


def test_every_call_is_bounded_and_one_line(serve):
    server = serve({f"{P}/attachments/detail": (200, {"attachments": []})}, delay=2.0)
    started = time.monotonic()
    with pytest.raises(CinderError) as caught:
        api(server.url, timeout=0.5).attachments(SRV)
    assert time.monotonic() - started < 1.5
    assert str(caught.value) == f"cinder attachments {SRV}: no answer within 0.5s from {server.url}"
    assert caught.value.unavailable
    url = f"http://127.0.0.1:{free_port()}/v3/p"
    with pytest.raises(CinderError) as caught:
        api(url).services()
    assert str(caught.value) == f"cinder services all: cannot connect to {url}: [Errno 111] Connection refused"
    assert caught.value.unavailable


def test_a_5xx_is_unavailable(serve):
    server = serve({f"{P}/volumes/{VOL}": (503, {"message": "busy"})})
    with pytest.raises(CinderError) as caught:
        api(server.url).volume(VOL)
    assert caught.value.unavailable and caught.value.status == 503 and str(caught.value).endswith("HTTP 503: busy")


# --- parsing: whatever cinder sends, a record or None, never an exception -------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                max_size=3), max_leaves=10)
FIELD = st.one_of(JSON, st.text(max_size=12))
VOLUME_KEYS = ("id", "status", "os-vol-host-attr:host", "migration_status", "bootable", "size", "name",
               "multiattach", "updated_at")
ATTACHMENT_KEYS = ("id", "attachment_id", "server_id", "instance", "host_name", "attached_at", "volume_id", "status")


ATTACHMENT = st.dictionaries(st.sampled_from(ATTACHMENT_KEYS), FIELD)
VOLUME = st.tuples(st.dictionaries(st.sampled_from(VOLUME_KEYS), FIELD),
                   st.one_of(JSON, st.lists(st.one_of(ATTACHMENT, JSON), max_size=3))).map(
    lambda t: {**t[0], "attachments": t[1]})


def _text_or_none(value):
    return value is None or (isinstance(value, str) and value != "")


@settings(max_examples=300, deadline=None)
@given(st.one_of(VOLUME, JSON))
def test_any_volume_document_parses_to_a_typed_volume_or_none(doc):
    v = cinder.parse_volume(doc)
    if v is None:
        assert not isinstance(doc, dict) or not isinstance(doc.get("id"), str) or not doc.get("id")
        return
    assert isinstance(v.id, str) and v.id == doc["id"] and isinstance(v.status, str)
    assert isinstance(v.bootable, bool) and isinstance(v.multiattach, bool)
    assert v.size is None or (isinstance(v.size, int) and not isinstance(v.size, bool))
    assert all(_text_or_none(x) for x in (v.host, v.migration_status, v.updated_at))
    assert v.attach_status in ("attached", "detached", None)
    assert (v.attach_status == "attached") == bool(v.attachments)
    for a in v.attachments:
        assert isinstance(a, Attachment) and isinstance(a.id, str) and a.id
        assert all(_text_or_none(x) for x in (a.server_id, a.host_name, a.attached_at))
        assert isinstance(a.volume_id, str) and isinstance(a.status, str)
    hash(v)                                         # frozen records: usable as keys


@settings(max_examples=300, deadline=None)
@given(st.one_of(ATTACHMENT, JSON), st.text(max_size=4))
def test_any_attachment_document_parses_or_is_none(doc, volume_id):
    a = cinder.parse_attachment(doc, volume_id)
    if a is not None:
        assert isinstance(a.id, str) and a.id and all(_text_or_none(x) for x in (a.server_id, a.host_name))
        assert a.volume_id == (doc.get("volume_id") if isinstance(doc.get("volume_id"), str) and doc["volume_id"]
                               else volume_id)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.dictionaries(st.sampled_from(("binary", "host", "zone", "status", "state", "updated_at",
                                                   "disabled_reason")), FIELD), JSON))
def test_any_service_document_parses_or_is_none(doc):
    s = cinder.parse_service(doc)
    if s is not None:
        assert isinstance(s.binary, str) and s.binary and isinstance(s.host, str) and s.host
        assert isinstance(s.status, str) and isinstance(s.state, str) and _text_or_none(s.zone)


@pytest.mark.parametrize("raw, expected", [("true", True), ("False", False), (True, True), ("1", True),
                                           ("yes", True), (None, False), ("", False)])
def test_bootable_as_cinder_writes_it(raw, expected):
    assert cinder.parse_volume({"id": "v", "bootable": raw}).bootable is expected


@pytest.mark.parametrize("status, attachments, expected", [
    ("available", [], "detached"), ("in-use", [{"attachment_id": "a"}], "attached"), ("attaching", [], None),
    ("detaching", [{"attachment_id": "a"}], "attached"), ("error", None, "detached")])
def test_attach_status_is_derived_from_the_view(status, attachments, expected):
    assert cinder.parse_volume({"id": "v", "status": status, "attachments": attachments}).attach_status == expected
