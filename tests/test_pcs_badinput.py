"""`crashup pcs render|apply` against bad inventories (issue 11): whatever the file holds, the inventory is rendered
safely or refused with one clear line (InventoryError, exit 2), in bounded time, with no secret in it.

Property-based (hypothesis): random YAML text and bytes, the example inventory's text spliced with nasty fragments,
and its data with values replaced by random scalars. Then one test per defect the audit found.
"""
import configparser
import copy
import dataclasses
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from crashup_lib import cli, config, inventory, log, pcs

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "pcs-templates" / "inventory.example.yaml"
BMC_PASSWORD, DB_PASSWORD = "Sx9-s3cret-pw", "Sx9-db/pw"
# the example, with a clear BMC password and a database URL holding one (both must stay out of every message)
BASE_TEXT = EXAMPLE.read_text().replace(
    "  # - name: compute3\n  #   bmc: {address: 198.51.100.13, password: s3cret}",
    f"  - name: compute3\n    bmc: {{address: 198.51.100.13, password: {BMC_PASSWORD}}}",
) + f"\nsweep:\n  nova_connection: mysql+pymysql://nova:{DB_PASSWORD}@db/nova\n"
BASE = inventory.compose(BASE_TEXT)
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
FIXED_LINES = {"#!/bin/sh", "set -eu", 'CIB=$(mktemp "${TMPDIR:-/tmp}/crashup-cib.XXXXXX")',
               "trap 'rm -f \"$CIB\"' EXIT", 'pcs cluster cib "$CIB"', 'pcs cluster cib-push "$CIB" --config'}
PROPERTY = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def _secrets_stay_in_this_module():
    """Passwords registered here must not redact other tests' text."""
    saved = set(log._secrets)
    yield
    log._secrets.clear()
    log._secrets.update(saved)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("inventories")


def write(folder: pathlib.Path, content, name="inventory.yaml") -> str:
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(path)


def passwords(data) -> set[str]:
    """Every password an inventory's data holds: `password` values, database URLs' passwords."""
    found, todo = set(), [data]
    while todo:
        node = todo.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            todo.append(v)
            for word in (v if isinstance(v, list) else [v]):
                if isinstance(word, str) and k == "password":
                    found.add(word)
                elif isinstance(word, str) and isinstance(k, str) and k.endswith("_connection"):
                    found.update(filter(None, (config.url_password(u) for u in word.split())))
    return {p for p in found if len(p) >= 3}


def assert_one_clear_line(error: pcs.InventoryError, secrets=()):
    message = str(error)
    assert message.startswith("inventory: ") and len(message) < 500, message
    assert not CONTROL.search(message), message
    for secret in secrets:
        assert secret not in message, (secret, message)


def rendered(inv: pcs.Inventory) -> tuple[str, str]:
    return pcs.script(inv), pcs.crashup_conf(inv)


def conf_values(text: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, default_section="\x00none")
    parser.read_string(text)
    return {k: v for s in parser.sections() for k, v in parser.items(s)}


def assert_rendered_as_intended(inv: pcs.Inventory, script: str, conf: str, folder: pathlib.Path):
    """The script is the intended commands and comments, nothing else; the conf loads back with the same values."""
    cmds = pcs.commands(inv)
    lines = script.split("\n")
    assert lines[-1] == "" and lines[:-1] == script.splitlines() and not CONTROL.search(script.replace("\n", ""))
    applied = [shlex.split(line) for line in lines if line.startswith('pcs -f "$CIB" ')]
    assert applied == [["pcs", "-f", "$CIB", *args] for args in cmds]
    others = [line for line in lines[:-1] if not line.startswith('pcs -f "$CIB" ')]
    assert all(line in FIXED_LINES or line.startswith("# ") for line in others), others
    path = folder / "crashup.conf"
    path.write_text(conf)
    cfg = config.load(str(path), env={})
    written = {k: v for options in inv.conf.values() for k, v in options.items()}
    assert {k for k, source in cfg.sources.items() if source != "default"} == set(written) | (
        {"host_map"} if inv.host_map else set())
    assert all(cfg[k] == config.BY_NAME[k].kind.parse(v) for k, v in written.items())
    assert cfg.host_map == inv.host_map


def outcome(folder: pathlib.Path, run, secrets=()):
    """Run load/parse + render: either it renders as intended, or one clear line. Returns the output or None."""
    try:
        inv = run()
        script, conf = rendered(inv)
    except pcs.InventoryError as e:
        assert_one_clear_line(e, secrets)
        return None
    assert_rendered_as_intended(inv, script, conf, folder)
    return inv, script, conf


# --- property-based: random YAML --------------------------------------------------------------------------------------

NASTY = ["0700", "0001", "0123", "12:30:45", "yes", "no", "on", "off", "~", "null", "1e3", ".inf", "-.inf", ".nan",
         "0x1F", "0o17", "1_000", "+5", "٣٠", "", " ", " a", "a ", "a\nb", "a\rb", "a\tb", "a\x00b", "\x1b[31m",
         "a\u2028b", "a\x85b", "\ud800", "R\r[events]\rhook_command = /usr/local/bin/evil", "a b", "a;b", "$(reboot)",
         "`id`", "'", '"', "\\", "-rf", "--force", "op", "crashup", "crashup-nova", "ipmi-compute2", "nova-compute",
         "é", "%(x)s", "{host}", "{hots}", "a:b", "a,b", "[x]", "#x", ";x", "/abs/path", "/a b/$c;'d'", "rel/path",
         "x" * 5000, "9" * 400, "20", "20s", "2m", "1.5", "true", "false", "systemd", "command", "reboot"]
SCALARS = st.one_of(st.sampled_from(NASTY), st.text(max_size=20), st.integers(), st.just(10 ** 5000),
                    st.floats(), st.booleans(), st.none())
#: values a field may well accept: names, absolute paths and printable text with quotes, $, ;, spaces inside
PLAUSIBLE = st.one_of(st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,12}", fullmatch=True),
                      st.from_regex(r"/[A-Za-z0-9_./$'\"`;()*-][A-Za-z0-9 _./$'\"`;()*-]{0,16}[^\s]", fullmatch=True),
                      st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs", "Zl", "Zp"]), min_size=1,
                              max_size=16).filter(lambda s: s == s.strip()))
VALUES = st.one_of(PLAUSIBLE, SCALARS, st.lists(st.one_of(PLAUSIBLE, SCALARS), max_size=3),
                   st.dictionaries(st.text(max_size=5), SCALARS, max_size=2))
YAML_BITS = ["-", ": ", ":", " ", "\n", "\n  ", "\n- ", "[", "]", "{", "}", ", ", "? ", "&a ", "*a", "!!int ",
             "!!str ", "!x ", "|\n", ">\n", "'", '"', "#", "%YAML 1.1\n", "---\n", "...\n", "<<: ", "\t", "\r",
             "\x85", "\u2028", "\\", "\\r", "\x00", "é", "\ufeff", "controllers", "computes", "name", "bmc",
             "password", "bmc_defaults", "tuning", "sweep", *NASTY[:20]]
FRAGMENTS = st.lists(st.one_of(st.sampled_from(YAML_BITS), st.text(max_size=4)), max_size=8).map("".join)


@PROPERTY
@given(st.lists(st.one_of(st.sampled_from(YAML_BITS), st.text(max_size=6)), max_size=60).map("".join),
       st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]))
def test_random_yaml_text_renders_safely_or_fails_with_one_line(workdir, text, encoding):
    path = write(workdir, text.encode(encoding, "replace"))
    outcome(workdir, lambda: pcs.load(path))


@PROPERTY
@given(st.binary(max_size=400))
def test_random_bytes_render_safely_or_fail_with_one_line(workdir, data):
    path = write(workdir, data)
    outcome(workdir, lambda: pcs.load(path))


@PROPERTY
@given(st.lists(st.tuples(st.integers(0, len(BASE_TEXT)), st.integers(0, 12), FRAGMENTS), min_size=1, max_size=4))
def test_the_example_spliced_with_nasty_text_renders_safely_or_fails_with_one_line(workdir, splices):
    text = BASE_TEXT
    for at, cut, fragment in splices:
        text = text[:at] + fragment + text[at + cut:]
    path = write(workdir, text)
    try:
        secrets = passwords(inventory.compose(text, path))
    except pcs.InventoryError:           # not YAML any more: a password still written as one must not be echoed
        secrets = {p for p in (BMC_PASSWORD, DB_PASSWORD) if f":{p}" in text or f": {p}" in text}
    outcome(workdir, lambda: pcs.load(path), secrets)


# --- property-based: the example's data with values replaced ---------------------------------------------------------

#: text fields the example renders, each reaching an argument of the script or a value of the crashup.conf
TEXT_FIELDS = [("controllers", 0), ("controllers", 2), ("computes", 0, "name"), ("computes", 1, "nova_host"),
               ("computes", 0, "remote_address"), ("computes", 1, "bmc", "address"), ("bmc_defaults", "user"),
               ("computes", 0, "bmc", "password_file"), ("computes", 1, "bmc", "password_script"),
               ("crashup", "config_file"), ("crashup", "state_dir"), ("cluster", "stonith_action"),
               ("openstack", "cloud"), ("openstack", "clouds_file"), ("openstack", "interface"),
               ("openstack", "region_name"), ("recovery", "mode"), ("events", "journal"), ("nova_compute", "unit"),
               ("nova_compute", "backend"), ("sweep", "nova_connection"), ("evacuation", "keep_power_state")]
OTHER_FIELDS = [("bmc_defaults", "port"), ("computes", 1, "bmc", "port"), ("computes", 0, "remote_port"),
                ("recovery", "storm_max_hosts"), ("evacuation", "concurrency"), ("evacuation", "reserved_hosts"),
                ("nova_compute", "heartbeat_cache"), ("nova_compute", "start_command"), ("tuning",),
                ("tuning", "remote_monitor_interval"), ("tuning", "nova_compute_failure_timeout"), ("computes", 2),
                ("computes", 0, "bmc"), ("controllers",), ("sweep", "nova_connection_file"), ("cluster",),
                ("computes", 0, "nme"), ("pacemaker",)]
RENDERED_PASSWORDS = [("computes", 2, "bmc", "password"), ("computes", 0, "bmc", "password")]
PASSWORD_FIELDS = RENDERED_PASSWORDS + [("bmc_defaults", "password")]     # every compute has its own source
MUTATIONS = st.one_of(st.tuples(st.sampled_from(TEXT_FIELDS + OTHER_FIELDS), VALUES),
                      st.tuples(st.sampled_from(PASSWORD_FIELDS),
                                st.one_of(PLAUSIBLE, st.sampled_from(NASTY), st.text(max_size=12))
                                .map(lambda s: "Sx9-" + s)))


def put(data, path, value) -> bool:
    """Set the value at `path`, making missing mappings; False when the path runs into a value set earlier."""
    for depth, key in enumerate(path, 1):
        fits = isinstance(data, dict) if isinstance(key, str) else isinstance(data, list) and key < len(data)
        if not fits:
            return False
        if depth == len(path):
            data[key] = value
            return True
        data = data.setdefault(key, {}) if isinstance(key, str) else data[key]


@settings(PROPERTY, max_examples=400)
@given(st.lists(MUTATIONS, min_size=1, max_size=3))
def test_the_example_with_random_values_renders_them_unchanged_or_fails_with_one_line(workdir, mutations):
    data, final = copy.deepcopy(BASE), {}
    for path, value in mutations:
        if put(data, path, value):
            final = {p: v for p, v in final.items() if p[:len(path)] != path} | {path: value}
    result = outcome(workdir, lambda: pcs.parse(data, source="mutated.yaml"), passwords(data))
    if result is None:
        return
    inv, script, conf = result
    words = [arg for args in pcs.commands(inv) for arg in args] + list(conf_values(conf).values())
    for path, value in final.items():
        if path in TEXT_FIELDS + RENDERED_PASSWORDS and isinstance(value, str):
            assert any(value in word for word in words), (path, value)       # exactly as given, never retyped


# --- one test per defect ----------------------------------------------------------------------------------------------

MINIMAL = ("controllers: [ctl1]\ncomputes:\n"
           "  - {name: compute1, bmc: {address: 10.0.0.1, user: admin, password_file: /f}}\n")


def test_yaml_1_1_scalars_stay_the_text_written(workdir):
    inv = pcs.load(write(workdir, (
        "cluster: {stonith_action: off}\ncontrollers: [no]\ncomputes:\n"
        "  - {name: compute1, nova_host: 0700, bmc: {address: 10.0.0.1, user: 0001, password: 0123}}\n"
        "  - {name: compute2, nova_host: 1e3, bmc: {address: 10.0.0.2, user: on, password_file: /f}}\n"
        "openstack: {region_name: 12:30:45, cloud: ~}\nevacuation: {keep_power_state: yes, concurrency: 010}\n"
        "tuning:\n")))
    ipmi = [c for c in pcs.commands(inv) if c[:2] == ["stonith", "create"]]
    assert "username=0001" in ipmi[0] and "password=0123" in ipmi[0] and "username=on" in ipmi[1]
    assert inv.host_map == {"compute1": "0700", "compute2": "1e3"} and inv.controllers == ("no",)
    assert inv.conf["openstack"] == {"region_name": "12:30:45", "cloud": "~"} and inv.tuning == pcs.Tuning()
    assert inv.conf["evacuation"] == {"keep_power_state": "yes", "concurrency": "010"}
    assert "host_map = compute1:0700;compute2:1e3" in pcs.crashup_conf(inv)


@pytest.mark.parametrize("text, expected", [
    ("  - {name: c2, remote_port: 03121, bmc: {address: a, user: u, password_file: /f}}\n",
     "computes[1].remote_port: expected an integer from 1 to 65535 (decimal, no leading zero), got '03121'"),
    ("  - {name: c2, bmc: {address: a, user: u, password_file: /f, port: 0x26f}}\n",
     "computes[1].bmc.port: expected an integer"),
    ("tuning: {remote_monitor_interval: 1e3}\n", "tuning.remote_monitor_interval: '1e3' is not allowed"),
    ("tuning: {remote_monitor_interval: .inf}\n", "tuning.remote_monitor_interval: '.inf' is not allowed"),
    ("tuning: {remote_start_timeout: .nan}\n", "tuning.remote_start_timeout: '.nan' is not allowed"),
    ("tuning: {remote_start_timeout: 12:30}\n", "tuning.remote_start_timeout: '12:30' is not allowed"),
    ("nova_compute: {heartbeat_cache: !!int 0700}\n", "line 4: tags (!!int, !name...) are not supported"),
    ("cluster: {stonith_action: true}\n", "cluster.stonith_action: 'true' is not allowed"),
])
def test_numbers_are_read_only_where_asked_and_only_in_decimal(workdir, text, expected):
    with pytest.raises(pcs.InventoryError) as e:
        pcs.load(write(workdir, MINIMAL + text))
    assert expected in str(e.value)


def test_the_file_name_cannot_put_a_command_into_the_script_header(workdir):
    evil = workdir / "x\nreboot\n.yaml"
    evil.write_text(MINIMAL)
    with pytest.raises(pcs.InventoryError, match=r"x\\nreboot\\n.yaml: the file name has a control character"):
        pcs.load(str(evil))
    with pytest.raises(pcs.InventoryError, match="control character"):
        pcs.parse(inventory.compose(MINIMAL), source="inv\u2028reboot")
    built_by_hand = dataclasses.replace(pcs.parse(inventory.compose(MINIMAL)), source="x\nreboot")
    with pytest.raises(pcs.InventoryError, match="the rendered script would hold other lines"):
        pcs.script(built_by_hand)          # the self-check holds even past the reader


@pytest.mark.parametrize("value", ['"R\\r[events]\\rhook_command = /usr/local/bin/evil"', '"a\\nb"', '"a\\x85b"',
                                   '"a\\u2028b"', '"a\\tb"', '"\\e[2J"', '" padded "', '"a\\0b"'])
def test_control_characters_and_line_breaks_are_refused_in_every_text(workdir, value):
    for text in (MINIMAL + f"openstack: {{region_name: {value}}}\n", MINIMAL.replace("admin", value),
                 MINIMAL + f"crashup: {{config_file: {value}}}\n", MINIMAL.replace("/f", value),
                 MINIMAL + f"nova_compute: {{libvirt_uri: {value}}}\n"):
        with pytest.raises(pcs.InventoryError) as e:
            pcs.load(write(workdir, text))
        assert_one_clear_line(e.value)
        assert "expected text without" in str(e.value) or "spaces around the text" in str(e.value)


def test_a_conf_value_that_would_add_lines_is_caught_by_the_self_check_too():
    inv = pcs.parse(inventory.compose(MINIMAL))
    forged = dataclasses.replace(inv, conf={"openstack": {"region_name": "R\r[events]\rhook_command = /bin/evil"}})
    with pytest.raises(pcs.InventoryError, match="the rendered crashup.conf does not load"):
        pcs.crashup_conf(forged)
    odd_host = dataclasses.replace(inv, computes=(dataclasses.replace(inv.computes[0], nova_host="a b"),))
    with pytest.raises(pcs.InventoryError, match="crashup.conf does not"):
        pcs.crashup_conf(odd_host)


@pytest.mark.parametrize("field, value", [("nova_host", "'compute1 x'"), ("nova_host", "'c1;reboot'"),
                                          ("nova_host", "'-c1'"), ("remote_address", "'10.0.0.1 x'"),
                                          ("name", "'c1$(reboot)'"), ("name", "'1c'")])
def test_names_and_addresses_keep_to_a_safe_charset(workdir, field, value):
    with pytest.raises(pcs.InventoryError, match=f"computes\\[1\\].{field}: .* is not usable as"):
        entry = {"name": "c2", field: value, "bmc": "{address: a, user: u, password_file: /f}"}
        pcs.load(write(workdir, MINIMAL + "  - {" + ", ".join(f"{k}: {v}" for k, v in entry.items()) + "}\n"))


def test_a_node_named_like_one_of_crashups_ids_is_refused():
    data = inventory.compose(MINIMAL)
    data["computes"][0]["name"] = "crashup"
    with pytest.raises(pcs.InventoryError, match="the Pacemaker id 'crashup' would be created twice"):
        pcs.commands(pcs.parse(data))


def test_the_rendered_script_runs_exactly_the_intended_commands(workdir):
    """Run it with a fake pcs that records its argv: odd but legal values reach pcs as single arguments."""
    data = inventory.compose(MINIMAL)
    data["crashup"] = {"config_file": "/etc/a b/$(reboot);`id`'\"\\.conf", "state_dir": "/run/$HOME"}
    data["bmc_defaults"] = {"user": "ad min;x"}
    data["computes"][0]["bmc"]["password_file"] = "/etc/*/p w"
    inv = pcs.parse(data)
    bin_dir, log_file = workdir / "bin", workdir / "pcs-calls.jsonl"
    bin_dir.mkdir(exist_ok=True)
    log_file.unlink(missing_ok=True)
    fake = bin_dir / "pcs"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(log_file)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin", TMPDIR=str(workdir))
    subprocess.run(["/bin/sh", "-c", pcs.script(inv)], env=env, check=True, timeout=60)
    calls = [json.loads(line) for line in log_file.read_text().splitlines()]
    copy_path = calls[0][2]
    assert calls[0] == ["cluster", "cib", copy_path] and calls[-1] == ["cluster", "cib-push", copy_path, "--config"]
    assert calls[1:-1] == [["-f", copy_path, *args] for args in pcs.commands(inv)]
    assert not pathlib.Path(copy_path).exists()


def _bad_files(folder: pathlib.Path) -> dict[str, str]:
    (folder / "a-directory.yaml").mkdir(exist_ok=True)
    huge = folder / "huge.yaml"
    with open(huge, "wb") as f:
        f.write(b"# padding\n" * 300_000)
    return {
        "unhashable key": write(folder, MINIMAL + "? [a, b] : 1\n", "unhashable.yaml"),
        "mapping key": write(folder, MINIMAL + "? {a: b}\n: 1\n", "mapkey.yaml"),
        "deep nesting": write(folder, "controllers: " + "[" * 100_000, "deep.yaml"),
        "deep block nesting": write(folder, "- " * 50_000 + "x\n", "deep-block.yaml"),
        "latin-1": write(folder, (MINIMAL + "openstack: {region_name: Zürich}\n").encode("latin-1"), "latin1.yaml"),
        "utf-16": write(folder, MINIMAL.encode("utf-16"), "utf16.yaml"),
        "binary": write(folder, bytes(range(256)) * 4, "binary.yaml"),
        "directory": str(folder / "a-directory.yaml"),
        "/dev/zero": "/dev/zero",
        "huge file": str(huge),
        "missing": str(folder / "missing.yaml"),
        "infinite tuning": write(folder, MINIMAL + "tuning: {remote_monitor_interval: .inf}\n", "inf.yaml"),
        "NaN tuning": write(folder, MINIMAL + "tuning: {remote_monitor_interval: .nan}\n", "nan.yaml"),
        "huge tuning": write(folder, MINIMAL + f"tuning: {{remote_monitor_interval: {'9' * 400}}}\n", "big.yaml"),
        "huge port": write(folder, MINIMAL.replace("user: admin", f"user: admin, port: {'9' * 4000}"), "port.yaml"),
        "huge count": write(folder, MINIMAL + f"recovery: {{storm_max_hosts: {'9' * 4000}}}\n", "count.yaml"),
        "billion laughs": write(folder, 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
                                        + "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n"
                                                  for p, c in zip("abcdefgh", "bcdefghi")), "laughs.yaml"),
        "merge key": write(folder, "d: &d {user: u}\n" + MINIMAL + "bmc_defaults: {<<: *d}\n", "merge.yaml"),
        "two documents": write(folder, MINIMAL + "---\n" + MINIMAL, "two.yaml"),
        "python tag": write(folder, MINIMAL + "x: !!python/object/apply:os.system [reboot]\n", "pytag.yaml"),
        "binary tag": write(folder, MINIMAL + "openstack: {region_name: !!binary aGk=}\n", "bintag.yaml"),
    }


def test_every_way_to_fail_reading_is_one_line_and_exit_2(workdir, capsys):
    for what, path in _bad_files(workdir).items():
        started = time.monotonic()
        assert cli.main(["pcs", "render", path]) == 2, what
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and err.startswith("crashup: inventory: "), (what, err)
        assert "Traceback" not in err and len(err) < 520 and os.path.basename(path) in err, (what, err)
        assert time.monotonic() - started < 5, what


def test_python_data_of_any_type_is_refused_without_a_crash():
    for odd in (float("inf"), float("nan"), 10 ** 5000, True, b"bytes", object(), ("a",), {1, 2}, [[[]]]):
        for path in (("computes", 0, "name"), ("computes", 0, "bmc", "port"), ("tuning", "remote_start_timeout"),
                     ("openstack", "region_name"), ("evacuation", "reserved_hosts"), ("controllers",)):
            data = inventory.compose(MINIMAL)
            put(data, path, odd)
            with pytest.raises(pcs.InventoryError) as e:
                pcs.parse(data)
            assert_one_clear_line(e.value)
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(pcs.InventoryError, match="controllers\\[0\\]: expected text, got a list"):
        pcs.parse({"controllers": deep, "computes": inventory.compose(MINIMAL)["computes"]})


def test_database_urls_are_never_shown_in_an_error(workdir):
    for sweep in ("{nova_connection: 'postgres://nova:Sx9-db/pw@db/nova'}",
                  "{nova_connection: ['mysql+pymysql://nova:Sx9-db/pw@db/nova', 'sqlite://x y']}",
                  "{cinder_connection: 'mysql+pymysql://c:Sx9-db/pw@db/c', db_timeout: 'mysql://c:Sx9-db/pw@db'}",
                  "{nova_connection: 'mysql+pymysql://nova:Sx9-db/pw@db/nova', nova_connection_fil: /x}"):
        with pytest.raises(pcs.InventoryError) as e:
            pcs.load(write(workdir, MINIMAL + f"sweep: {sweep}\n"))
        assert_one_clear_line(e.value, [DB_PASSWORD, "Sx9"])


def test_bmc_passwords_are_registered_and_never_shown_in_an_error(workdir):
    cases = ["{name: 'Sx9-pw-1!', bmc: {address: a, user: u, password: 'Sx9-pw-1!'}}",            # name echoed
             "{name: c2, bmc: {address: a, user: u, password: ' Sx9-pw-2'}}",                     # spaces around
             "{name: c2, bmc: {address: a, user: u, password: \"Sx9-pw-3\\n\"}}",                 # a line break
             "{name: c2, bmc: {address: 'Sx9-pw-4 x', user: u, password: 'Sx9-pw-4 x'}}",        # address echoed
             "{name: c2, bmc: {address: a, user: u, password: Sx9-pw-5, password_file: /f}}"]    # two sources
    for compute in cases:
        with pytest.raises(pcs.InventoryError) as e:
            pcs.load(write(workdir, MINIMAL + f"  - {compute}\n"))
        secret = re.search(r"password: ['\"]?\s?(Sx9-pw-\d[^'\"\\}]*)", compute).group(1)
        assert_one_clear_line(e.value, [secret.strip()])
    pcs.load(write(workdir, MINIMAL + "  - {name: c2, bmc: {address: a, user: u, password: Sx9-pw-6}}\n"))
    assert log.redact("login with Sx9-pw-6 failed") == "login with *** failed"


def test_apply_shows_a_failing_command_with_the_password_masked(workdir, capsys):
    inv = pcs.load(write(workdir, MINIMAL.replace("password_file: /f", "password: 'Sx9 pw 7'")))

    def run(argv):
        failing = argv[0] == "pcs" and any(a.startswith("password=") for a in argv)
        return subprocess.CompletedProcess(argv, 1 if failing else 0, "<cib/>" if argv[0] == "cibadmin" else "",
                                           "Error: bad option 'password=Sx9 pw 7'\n" if failing else "")
    assert cli.apply_pcs(pcs.commands(inv), run=run) == 1
    err = capsys.readouterr().err
    assert "pcs stonith create ipmi-compute1" in err and "password=***" in err and "Sx9" not in err
