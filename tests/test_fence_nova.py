"""fence_crashup_nova's failure paths that need no cluster: nova unreachable, bad configuration."""
from tests.helpers import REPO, free_port, run

AGENT = REPO / "fence" / "fence_crashup_nova"


def write_cloud(tmp_path, url):
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(f"clouds:\n  dead:\n    auth_type: admin_token\n    auth:\n      endpoint: {url}\n"
                      f"      token: t\n    compute_endpoint_override: {url}\n")
    conf = tmp_path / "crashup.conf"
    conf.write_text(f"[openstack]\ncloud = dead\nclouds_file = {clouds}\napi_timeout = 1\n")
    return conf


def test_unreachable_nova_is_retried_within_the_deadline_then_a_timeout(tmp_path):
    conf = write_cloud(tmp_path, f"http://127.0.0.1:{free_port()}/v2.1")
    result = run([AGENT], input=f"action=off\nport=compute1\nconfig_file={conf}\ndeadline=5\n", timeout=60)
    assert result.returncode == 1 and result.elapsed < 6
    assert "Failed: Timed out: nova kept failing" in result.stderr and "Traceback" not in result.stderr


def test_a_broken_configuration_is_one_line(tmp_path):
    conf = tmp_path / "crashup.conf"
    conf.write_text("[recovery]\nmode = whenever\n")
    result = run([AGENT], input=f"action=monitor\nconfig_file={conf}\n")
    assert result.returncode == 1 and "Failed: config: mode = 'whenever'" in result.stderr


def test_missing_target_is_named():
    result = run([AGENT], input="action=off\n")
    assert result.returncode == 1 and "You have to enter plug (the node to fence) or nodename" in result.stderr
