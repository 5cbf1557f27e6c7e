"""The lab cinder's pure parts (tests/lab/cinder.py, cinderbox/): broker definitions and password hash, cinder.conf
and api-paste.ini rendering, the service-token filter. The services themselves: tests/e2e/test_cinder_lab.py."""
import base64
import configparser
import hashlib
import importlib.util
import io
import string

import pytest
from hypothesis import given, strategies as st

from tests.lab import cinder as lab_cinder


def test_password_hash_is_rabbitmqs_documented_example():
    # https://www.rabbitmq.com/docs/passwords#computing-password-hash: "test12", salt 908D C60A
    assert lab_cinder.password_hash("test12", bytes.fromhex("908DC60A")) == \
        "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"


@given(st.text(min_size=1, max_size=64))
def test_password_hash_is_salted_sha256_of_any_password(password):
    raw = base64.b64decode(lab_cinder.password_hash(password))
    salt, digest = raw[:4], raw[4:]
    assert digest == hashlib.sha256(salt + password.encode()).digest()


def test_bus_definitions_give_the_user_rights_on_its_vhost_only():
    defs = lab_cinder.bus_definitions("cinder", "cinder", "secret")
    assert [v["name"] for v in defs["vhosts"]] == ["cinder"]
    [user] = defs["users"]
    assert user["name"] == "cinder" and "secret" not in repr(defs) and user["tags"] == []
    assert defs["permissions"] == [{"user": "cinder", "vhost": "cinder", "configure": ".*", "write": ".*",
                                    "read": ".*"}]


def _values(tmp_path):
    return dict(host="ctl1", state_dir=tmp_path, transport_url="rabbit://cinder:pw@127.0.0.1:5673/cinder",
                paste_file=tmp_path / "api-paste.ini", bind="10.200.0.1", port=8776, db_file=tmp_path / "c.sqlite",
                volume_dir=tmp_path / "volumes", report_interval=2, service_down_time=6, venv=tmp_path / "venv")


def test_cinder_conf_renders_every_placeholder(tmp_path):
    text = lab_cinder.render_conf(lab_cinder.CONF_TEMPLATE.read_text(), **_values(tmp_path))
    conf = configparser.ConfigParser(interpolation=None)
    conf.read_string(text)
    assert conf["DEFAULT"]["auth_strategy"] == "noauth_include_project_id"
    assert conf["DEFAULT"]["enabled_backends"] == "lab"
    assert conf["lab"]["volume_driver"] == "labdriver.LabFileDriver"
    assert conf["lab"]["lab_volume_dir"] == str(tmp_path / "volumes")
    assert conf["database"]["connection"] == f"sqlite:///{tmp_path / 'c.sqlite'}?timeout=30"
    assert conf["oslo_messaging_notifications"]["driver"] == "noop"
    assert not [f for _, f, _, _ in string.Formatter().parse(text) if f]     # nothing left unrendered


def test_cinder_conf_refuses_a_missing_value(tmp_path):
    values = _values(tmp_path)
    del values["db_file"]
    with pytest.raises(KeyError):
        lab_cinder.render_conf(lab_cinder.CONF_TEMPLATE.read_text(), **values)


PASTE = """[composite:openstack_volume_api_v3]
use = call:cinder.api.middleware.auth:pipeline_factory
noauth = request_id cors faultwrap noauth apiv3
noauth_include_project_id = request_id cors faultwrap noauth_include_project_id apiv3
keystone = request_id cors faultwrap authtoken keystonecontext apiv3
"""


def test_paste_ini_puts_the_service_token_filter_before_noauth():
    conf = configparser.ConfigParser(interpolation=None)
    conf.read_string(lab_cinder.paste_ini(PASTE))
    pipeline = conf["composite:openstack_volume_api_v3"]["noauth_include_project_id"].split()
    assert pipeline[-3:] == ["labauth", "noauth_include_project_id", "apiv3"]
    assert conf["composite:openstack_volume_api_v3"]["keystone"].split()[-1] == "apiv3"      # others unchanged
    assert conf["filter:labauth"]["paste.filter_factory"] == "labauth:filter_factory"


@pytest.mark.parametrize("text", ["", PASTE.replace("noauth_include_project_id apiv3", "x apiv3"),
                                  PASTE + PASTE.splitlines()[3] + "\n"])
def test_paste_ini_refuses_a_file_it_does_not_know(text):
    with pytest.raises(lab_cinder.CinderError, match="noauth_include_project_id"):
        lab_cinder.paste_ini(text)


def _labauth():
    spec = importlib.util.spec_from_file_location("labauth", lab_cinder.BOX_DIR / "labauth.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("headers, roles", [
    ({"HTTP_X_SERVICE_TOKEN": "nova:service"}, "service"),
    ({}, None),
    ({"HTTP_X_SERVICE_ROLES": "service"}, None),                    # a client cannot claim the role itself
    ({"HTTP_X_SERVICE_ROLES": "admin", "HTTP_X_SERVICE_TOKEN": "t"}, "service"),
])
def test_service_token_filter_sets_the_service_role_only_for_a_service_token(headers, roles):
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        return [b""]
    _labauth().filter_factory({})(app)({"wsgi.input": io.BytesIO(), **headers}, lambda *a: None)
    assert seen.get("HTTP_X_SERVICE_ROLES") == roles
