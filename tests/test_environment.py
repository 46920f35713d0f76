"""Notebook 00's setup checks."""

from labutils import get_config
from labutils.infra import environment


def test_setup_checks_report_what_is_missing(tmp_path, monkeypatch):
    cfg = get_config("quick", data_root=tmp_path)
    monkeypatch.setattr(environment.shutil, "which", lambda name: None)
    checks = {c.name: c for c in environment.setup_checks(cfg)}
    assert not checks["java"].ok and "apt-get install" in checks["java"].fix
    assert checks["gpu"].ok  # the quick profile needs no GPU
    assert checks["torch"].ok
    text = environment.report(list(checks.values()))
    assert "!! java" in text and "ok torch" in text
