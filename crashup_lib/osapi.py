"""What crashup's OpenStack API clients share (nova.py, and the sweep's cinder client): the keystoneauth1 session
from clouds.yaml, an adapter without retries, and every failure as one line: what an HTTP status means, a transport
failure (nothing answered, TLS, keystone refusing), the service's own message from an error body.

Light on purpose: a fence agent imports nova.py, hence this, on every fencing. keystoneauth1 is imported when an
adapter is built or a failure described, openstacksdk only by cloud_session().
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

from crashup_lib.clouds import CloudsFileError, clouds_files, read_clouds_file
from crashup_lib.log import error_line

#: what an HTTP status means to the caller (nova.py names an error class for each)
BAD_REQUEST, NOT_FOUND, CONFLICT, UNAVAILABLE = "bad-request", "not-found", "conflict", "unavailable"


# --- the session -----------------------------------------------------------------------------------------------------

def cloud_session(cfg, error: Callable[[str], Exception]):
    """(keystoneauth1 session, openstacksdk CloudRegion) for the clouds.yaml entry `cfg.cloud`; a failure is
    raised as error("<one line>"): the clouds file's own problem (CloudsFileError), or "cannot load it from <file>:
    <first line>" (openstacksdk and keystoneauth raise many kinds; all mean "cannot load the cloud")."""
    clouds = None
    try:
        import openstack.config
        clouds, secure = clouds_files(cfg)
        for path in (clouds, secure):
            if path:
                read_clouds_file(path)
        region = openstack.config.OpenStackConfig(
            config_files=[clouds] if clouds else [], secure_files=[secure] if secure else []).get_one(
            cloud=cfg.cloud, region_name=cfg.region_name or None, interface=cfg.interface,
            api_timeout=cfg.api_timeout)
        return region.get_session(), region
    except CloudsFileError as e:
        raise error(str(e)) from None
    except Exception as e:     # noqa: BLE001
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise error(f"cannot load it from {clouds or 'clouds.yaml (none found)'}: {first}") from None


def adapter(session, service_type: str, *, interface: str | None = "internal", region_name: str | None = None,
            endpoint_override: str | None = None):
    """A keystoneauth1 Adapter for `service_type` (its endpoint from the catalog unless `endpoint_override`), with
    no retries below the caller: a retry of a POST is the caller's decision."""
    from keystoneauth1 import adapter as ks_adapter
    return ks_adapter.Adapter(session, service_type=service_type, interface=interface or None,
                              region_name=region_name or None, endpoint_override=endpoint_override or None,
                              connect_retries=0, status_code_retries=0)


def endpoint(api, default: str) -> str:
    """The adapter's endpoint, for messages; `default` when there is none or the lookup itself fails."""
    try:
        return api.get_endpoint() or default
    except Exception:          # noqa: BLE001 - the endpoint lookup itself may be what fails
        return default


# --- failures --------------------------------------------------------------------------------------------------------

def status_kind(status: int | None) -> str | None:
    """An HTTP status -> BAD_REQUEST, NOT_FOUND, CONFLICT, UNAVAILABLE (5xx: nothing decided that we know of), or
    None (any other status, or none)."""
    if status is None:
        return None
    if status >= 500:
        return UNAVAILABLE
    return {400: BAD_REQUEST, 404: NOT_FOUND, 409: CONFLICT}.get(status)


@dataclasses.dataclass(frozen=True)
class Failure:
    """A request that got no answer from the service, as one line."""
    detail: str                     # e.g. "cannot connect to http://ctl:8774/v2.1: [Errno 111] Connection refused"
    status: int | None = None       # keystone's HTTP status, when it is keystone that refused
    unavailable: bool = False       # a timeout, a refused connection, a 5xx: the service decided nothing we know of


def transport_failure(e: Exception, *, timeout: float, where: str) -> Failure:
    """A keystoneauth1 exception raised by a request -> its Failure. `where`: the endpoint (endpoint())."""
    from keystoneauth1 import exceptions as ks_exc
    if isinstance(e, ks_exc.ConnectTimeout):     # keystoneauth's name for connect and read timeouts alike
        return Failure(f"no answer within {timeout:g}s from {where}", unavailable=True)
    if isinstance(e, ks_exc.SSLError):
        return Failure(f"TLS error: {short_cause(e)}")
    if isinstance(e, ks_exc.ConnectionError):
        return Failure(f"cannot connect to {where}: {short_cause(e)}", unavailable=True)
    if isinstance(e, ks_exc.HttpError):          # from the auth plugin (keystone), before the service saw anything
        return Failure(f"authentication: HTTP {e.http_status}: {short_cause(e)}", e.http_status,
                       status_kind(e.http_status) == UNAVAILABLE)
    return Failure(f"{type(e).__name__}: {short_cause(e)}")    # no endpoint in the catalog, missing auth, ...


# --- messages --------------------------------------------------------------------------------------------------------

def error_message(resp: Any) -> str:
    """The service's own words from an error body (nova and cinder: {"badRequest": {"code": 400, "message": "..."}}),
    else the text."""
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        for value in doc.values():
            if isinstance(value, dict) and value.get("message"):
                return error_line(str(value["message"]))
        if doc.get("message"):
            return error_line(str(doc["message"]))
    text = re.sub(r"<[^>]+>", " ", resp.text or "")            # a proxy's HTML page
    return error_line(text) or (resp.reason or "no message")


def short_cause(e: Exception) -> str:
    """The useful end of a requests/urllib3 chain: '[Errno 111] Connection refused', not the pool's repr."""
    text = str(e)
    m = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    return error_line(m.group(0) if m else text)


