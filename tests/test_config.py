import pytest

from crashup_lib import cli, config


def write(tmp_path, text):
    path = tmp_path / "crashup.conf"
    path.write_text(text)
    return str(path)


def test_defaults_are_valid_and_typed():
    cfg = config.load(path=None, env={})
    assert cfg.mode == "auto"
    assert cfg.recovery_stale_period == 600.0
    assert cfg.recovery_resync_count == 3
    assert cfg.keep_power_state is True
    assert cfg.host_map == {}
    assert cfg.sources["mode"] == "default"


def test_precedence_file_then_environment_then_parameters(tmp_path):
    path = write(tmp_path, "[recovery]\nmode = notify\nrecovery_stale_period = 10m\nrecovery_resync_count = 5\n")
    cfg = config.load(path, env={"CRASHUP_RECOVERY_RESYNC_COUNT": "7", "CRASHUP_MODE": "auto"},
                      overrides={"mode": "notify", "not_an_option": "x"})
    assert cfg.recovery_stale_period == 600.0
    assert cfg.sources["recovery_stale_period"] == f"{path} [recovery]"
    assert cfg.recovery_resync_count == 7
    assert cfg.sources["recovery_resync_count"] == "environment CRASHUP_RECOVERY_RESYNC_COUNT"
    assert cfg.mode == "notify" and cfg.sources["mode"] == "parameter mode"


def test_config_path_from_environment(tmp_path):
    path = write(tmp_path, "[evacuation]\nconcurrency = 3\n")
    assert config.load(env={"CRASHUP_CONFIG": path}).concurrency == 3


@pytest.mark.parametrize("text, expected", [
    ("[recovery]\nrecovery_stale_period = soon\n",
     "config: recovery_stale_period = 'soon' (from {path} [recovery]) is not allowed: expected a duration"),
    ("[recovery]\nmode = sometimes\n",
     "config: mode = 'sometimes' (from {path} [recovery]) is not allowed: expected one of auto, notify"),
    ("[recovery]\nrecovery_resync_count = -1\n",
     "config: recovery_resync_count = '-1' (from {path} [recovery]) is not allowed: expected an integer >= 0"),
    ("[recovery]\nrecovery_stale_perod = 60\n",
     "config: {path} [recovery]: unknown option 'recovery_stale_perod' (did you mean recovery_stale_period?)"),
    ("[evacuation]\nmode = auto\n", "config: {path}: option 'mode' belongs in [recovery], not [evacuation]"),
    ("[recovry]\n", "config: {path}: unknown section [recovry] (did you mean recovery?)"),
    ("mode = auto\n", "config: {path}: not a valid INI file"),
    ("[pacemaker]\nhost_map = compute1\n", "config: host_map = 'compute1' (from {path} [pacemaker]) is not allowed"),
    ("[events]\nwebhook_url = ftp://x\n", "expected an http:// or https:// URL"),
])
def test_bad_values_fail_with_one_line_naming_key_value_and_allowed(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(config.ConfigError) as err:
        config.load(path, env={})
    message = str(err.value)
    assert "\n" not in message
    assert expected.format(path=path) in message


def test_bad_environment_value_names_the_variable():
    with pytest.raises(config.ConfigError, match="from environment CRASHUP_CONCURRENCY"):
        config.load(env={"CRASHUP_CONCURRENCY": "0"})


def test_missing_explicit_file_is_an_error_but_missing_default_is_not(tmp_path):
    with pytest.raises(config.ConfigError, match="no such file"):
        config.load(str(tmp_path / "nope.conf"), env={})
    assert config.load(env={}).mode == "auto"   # /etc/crashup/crashup.conf may simply not exist


def test_host_map_syntax():
    assert config.parse_host_map("compute1:c1.example.org; compute2:c2.example.org,compute3:c3") == {
        "compute1": "c1.example.org", "compute2": "c2.example.org", "compute3": "c3"}
    with pytest.raises(ValueError):
        config.parse_host_map("a:b;a:c")


def test_durations_accept_units():
    kind = config.duration(1)
    assert [kind.parse(v) for v in ("90", "90s", "10m", "1h", "1500ms")] == [90, 90, 600, 3600, 1.5]
    with pytest.raises(ValueError):
        kind.parse("0.5")


def test_sample_lists_every_option_and_loads_when_uncommented(tmp_path):
    sample = config.sample()
    for option in config.OPTIONS:
        assert f"#{option.name} = {option.default}" in sample
    uncommented = "\n".join(line[1:] if line.startswith("#") and " = " in line else line
                            for line in sample.splitlines())
    cfg = config.load(write(tmp_path, uncommented), env={})
    assert all(source.endswith("]") for source in cfg.sources.values())


def test_cli_config_check_reports_one_line_and_exit_2(tmp_path, capsys):
    path = write(tmp_path, "[recovery]\nmode = maybe\n")
    assert cli.main(["config", "check", "--file", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mode = 'maybe'" in err
    assert cli.main(["config", "check", "--file", write(tmp_path, "[recovery]\nmode = notify\n")]) == 0
