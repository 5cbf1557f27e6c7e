"""`make install` into a scratch root: installed agents find the library in its venv, whatever PATH says."""
import os
import subprocess

from tests.helpers import REPO


def test_make_install_gives_working_agents(tmp_path):
    root, venv = tmp_path / "root", tmp_path / "opt-crashup"
    done = subprocess.run(["make", "-C", str(REPO), "install", f"DESTDIR={root}", f"INSTALL_VENV={venv}"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    bare = {"PATH": "/usr/bin:/bin"}                       # Pacemaker's PATH: no venv on it
    ocf = root / "usr/lib/ocf/resource.d/crashup/crashup"
    assert ocf.read_text().splitlines()[0] == f"#!{venv}/bin/python3"
    assert subprocess.run([str(ocf), "meta-data"], env=bare, capture_output=True).returncode == 0
    for name in ("fence_crashup_ipmi", "fence_crashup_isolation", "fence_crashup_nova"):
        agent = root / "usr/sbin" / name
        assert os.access(agent, os.X_OK)
        result = subprocess.run([str(agent)], input="action=metadata\n", env=bare, capture_output=True, text=True)
        assert result.returncode == 0 and f'name="{name}"' in result.stdout
    sample = (root / "etc/crashup/crashup.conf.sample").read_text()
    assert "#recovery_stale_period = 600" in sample
    assert os.path.realpath(root / "usr/local/bin/crashup") == str(venv / "bin" / "crashup")
