import logging
import os

from crashup_lib import log


def test_registered_secret_is_redacted_everywhere():
    log.register_secret("Sup3r-S3cret")
    assert log.redact("login with Sup3r-S3cret failed") == "login with *** failed"


def test_secret_pairs_and_url_credentials_are_redacted():
    text = "password=hunter22 passwd: 'abc def' X-Auth-Token: tok123 url=http://admin:pw@10.0.0.1/x"
    out = log.redact(text)
    for secret in ("hunter22", "abc def", "tok123", "admin:pw@"):
        assert secret not in out
    assert "http://admin:***@10.0.0.1/x" in out


def test_log_lines_to_ha_logfile_in_ocf_log_format(tmp_path, monkeypatch):
    logfile, debuglog = tmp_path / "ha.log", tmp_path / "ha-debug.log"
    monkeypatch.setenv("HA_LOGFILE", str(logfile))
    monkeypatch.setenv("HA_DEBUGLOG", str(debuglog))
    monkeypatch.setenv("HA_debug", "0")
    logger = log.setup("myagent", instance="res1", stderr=False)
    log.register_secret("pa55word!")
    logger.info("connecting with pa55word!")
    logger.debug("not kept without HA_debug")
    line = logfile.read_text()
    assert line.startswith(f"myagent(res1)[{os.getpid()}]:\t")
    assert "INFO: connecting with ***" in line and "pa55word" not in line
    assert "not kept" not in line and not debuglog.exists()


def test_debug_goes_to_debuglog_when_ha_debug(tmp_path, monkeypatch):
    monkeypatch.setenv("HA_LOGFILE", str(tmp_path / "ha.log"))
    monkeypatch.setenv("HA_DEBUGLOG", str(tmp_path / "debug.log"))
    monkeypatch.setenv("HA_debug", "1")
    logger = log.setup("myagent", stderr=False)
    logger.debug("details")
    assert "DEBUG: details" in (tmp_path / "debug.log").read_text()
    assert not (tmp_path / "ha.log").exists()          # the INFO log stays free of debug lines


def test_exception_text_is_redacted(tmp_path, monkeypatch):
    monkeypatch.setenv("HA_LOGFILE", str(tmp_path / "ha.log"))
    logger = log.setup("myagent", stderr=False)
    log.register_secret("TopSecret99")
    try:
        raise RuntimeError("auth with TopSecret99 refused")
    except RuntimeError:
        logger.error("failed", exc_info=True)
    text = (tmp_path / "ha.log").read_text()
    assert "RuntimeError" in text and "TopSecret99" not in text


def test_missing_log_destination_never_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("HA_LOGFILE", str(tmp_path / "no" / "such" / "dir" / "ha.log"))
    logger = log.setup("myagent", stderr=False)
    logger.error("still fine")
    assert logging.getLogger("crashup").handlers


def test_child_loggers_are_redacted_too(tmp_path, monkeypatch):
    monkeypatch.setenv("HA_LOGFILE", str(tmp_path / "ha.log"))
    log.setup("daemon", stderr=False)
    log.register_secret("Child-S3cret")
    log.get("events").warning("webhook with Child-S3cret failed")
    text = (tmp_path / "ha.log").read_text()
    assert "webhook with *** failed" in text and "Child-S3cret" not in text
