"""scripts/audit.py: pip-audit's report judged against the accepted findings.

pip-audit itself is replaced by a small script that writes a fixed report (no
vulnerability service is reachable from the suite); the judging, the accept file's
checks and the exit codes are the real ones.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import stat
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("minyin_audit", ROOT / "scripts" / "audit.py")
audit = importlib.util.module_from_spec(spec)
sys.modules["minyin_audit"] = audit
spec.loader.exec_module(audit)

TODAY = dt.date(2026, 12, 4)
VULN = {"id": "PYSEC-2026-1", "aliases": ["GHSA-aaaa-bbbb-cccc", "CVE-2026-0001"],
        "fix_versions": ["2.0.1"], "description": "x"}


def fake_pip_audit(tmp_path: Path, report: dict | None, exit_code: int = 0) -> str:
    """An executable taking pip-audit's arguments that writes `report` to --output."""
    exe = tmp_path / "pip-audit"
    body = json.dumps(report) if report is not None else ""
    exe.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "out = sys.argv[sys.argv.index('--output') + 1]\n"
        f"body = {body!r}\n"
        "if body:\n"
        "    open(out, 'w').write(body)\n"
        "else:\n"
        "    print('ConnectionError: osv.dev unreachable', file=sys.stderr)\n"
        f"sys.exit({exit_code})\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(exe)


def lock(tmp_path: Path) -> Path:
    path = tmp_path / "requirements.lock"
    path.write_text("# a lock\nsomepkg==2.0.0\nother==1.0\n")
    return path


def accept_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "accepted.toml"
    path.write_text(text)
    return path


def run(tmp_path: Path, report: dict | None, accepted: str = "", *extra: str,
        exit_code: int = 0) -> int:
    return audit.main(["--lock", str(lock(tmp_path)),
                       "--accepted", str(accept_file(tmp_path, accepted)),
                       "--pip-audit", fake_pip_audit(tmp_path, report, exit_code),
                       "--today", TODAY.isoformat(), *extra])


def report_with(vulns: list[dict]) -> dict:
    return {"dependencies": [{"name": "SomePkg", "version": "2.0.0", "vulns": vulns},
                             {"name": "other", "version": "1.0", "vulns": []}], "fixes": []}


ACCEPT = """
[[accept]]
id = "{id}"
package = "somepkg"
reason = "the affected parser is never called"
until = {until}
"""


def test_clean_report_passes(tmp_path, capsys):
    assert run(tmp_path, report_with([])) == 0
    assert "audited 2 of 2 locked packages" in capsys.readouterr().out


def test_a_finding_fails_naming_package_advisory_and_fix(tmp_path, capsys):
    assert run(tmp_path, report_with([VULN]), "", exit_code=1) == 1
    out = capsys.readouterr().out
    assert "FINDING somepkg 2.0.0: PYSEC-2026-1" in out and "fixed in 2.0.1" in out


def test_an_accepted_finding_passes_by_id_or_alias(tmp_path, capsys):
    for name in ("PYSEC-2026-1", "CVE-2026-0001"):
        assert run(tmp_path, report_with([VULN]), ACCEPT.format(id=name, until="2027-01-31"),
                   exit_code=1) == 0
        assert "accepted PYSEC-2026-1 in somepkg" in capsys.readouterr().out


def test_an_expired_acceptance_fails_again(tmp_path, capsys):
    text = ACCEPT.format(id="GHSA-aaaa-bbbb-cccc", until="2026-12-03")
    assert run(tmp_path, report_with([VULN]), text, exit_code=1) == 1
    assert "EXPIRED acceptance of PYSEC-2026-1" in capsys.readouterr().out


def test_an_acceptance_for_another_package_does_not_apply(tmp_path):
    text = ACCEPT.format(id="PYSEC-2026-1", until="2027-01-31").replace('"somepkg"', '"other"')
    assert run(tmp_path, report_with([VULN]), text, exit_code=1) == 1


def test_an_acceptance_without_its_finding_is_reported_for_removal(tmp_path, capsys):
    assert run(tmp_path, report_with([]), ACCEPT.format(id="PYSEC-1", until="2027-01-31")) == 0
    assert "matches no finding: remove it" in capsys.readouterr().out


def test_nothing_checked_is_not_audited_and_fails_only_when_strict(tmp_path, capsys):
    skipped = {"dependencies": [
        {"name": "somepkg", "skip_reason": "Dependency not found on PyPI and could not be "
                                           "audited: somepkg (2.0.0)"},
        {"name": "other", "skip_reason": "Dependency not found on PyPI"}], "fixes": []}
    assert run(tmp_path, skipped) == 0
    assert "NOT AUDITED" in capsys.readouterr().out
    assert run(tmp_path, skipped, "", "--strict") == 2


def test_pip_audit_that_cannot_run_counts_as_not_audited(tmp_path, capsys):
    assert run(tmp_path, None, "", "--strict", exit_code=1) == 2
    out = capsys.readouterr().out
    assert "NOT AUDITED" in out and "osv.dev unreachable" in out


@pytest.mark.parametrize(("text", "message"), [
    ("[[accept]]\nid = 'X'\npackage = 'p'\n", "entry 1: missing reason, until"),
    ("[[accept]]\nid = 'X'\npackage = 'p'\nreason = 'r'\nuntil = 'soon'\n", "is not a date"),
    ("accept = 3\n", "must be an array of tables"),
    ("[[accept]\n", "not readable TOML"),
])
def test_a_bad_accept_file_is_named(tmp_path, capsys, text, message):
    assert run(tmp_path, report_with([]), text) == 3
    error = capsys.readouterr().err
    assert str(tmp_path / "accepted.toml") in error and message in error


def test_a_missing_lock_is_named(tmp_path, capsys):
    missing = tmp_path / "nowhere.lock"
    assert audit.main(["--lock", str(missing), "--accepted", str(tmp_path / "none.toml"),
                       "--pip-audit", fake_pip_audit(tmp_path, report_with([]))]) == 3
    assert f"{missing}: no such lock file" in capsys.readouterr().err


def test_the_shipped_accept_file_parses_and_the_lock_pins_the_project_requirements():
    assert audit.load_acceptances(ROOT / "audit-accepted.toml") == []
    pinned = {line.split("==")[0].lower().replace("_", "-")
              for line in (ROOT / "requirements.lock").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    wanted = {Requirement(r).name.lower().replace("_", "-") for r in requires("minyin") or []}
    assert wanted - pinned == set(), "requirements.lock misses these: run make lock"
