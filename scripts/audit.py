"""Audit the locked dependencies for known vulnerabilities (pip-audit), with accepted findings.

    make audit                                   # what CI runs
    python scripts/audit.py --strict             # also fail when nothing could be checked
    python scripts/audit.py --service osv        # OSV instead of PyPI's JSON API

Runs ``pip-audit -r requirements.lock --no-deps --disable-pip`` (the lock pins every
package the venv holds, so nothing is resolved) and judges its JSON report:

- a finding fails the audit unless ``audit-accepted.toml`` accepts it: an entry names the
  advisory (its id or one of its aliases, e.g. ``GHSA-...``, ``PYSEC-...``, ``CVE-...``),
  the package, a reason and an ``until`` date. After that date the finding fails again,
  so an acceptance is looked at again instead of living forever. An acceptance whose
  finding is gone is reported, to be removed;
- a package the service could not check is listed as *not audited*. pip-audit itself
  prints "No known vulnerabilities found" when every package was skipped, which is how
  an unreachable service looks (PyPI's per-version JSON answering 404, OSV not
  resolving); this script says "not audited" instead, and ``--strict`` makes that a
  failure (exit 2), for a CI that can reach the service.

Exit: 0 clean (or not audited, without ``--strict``), 1 an unaccepted finding or an
expired acceptance, 2 not audited with ``--strict``, 3 bad input (the lock or the
accept file, named). Standard library only (and tomli on 3.10, which pip-audit
brings): it runs from the audit venv.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip-audit's own dependency
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]


class AuditInputError(Exception):
    """The lock or the accept file is unusable; the message names the file."""


@dataclass(frozen=True)
class Acceptance:
    id: str
    package: str
    reason: str
    until: dt.date


@dataclass(frozen=True)
class Finding:
    package: str
    version: str
    id: str
    aliases: tuple[str, ...]
    fix_versions: tuple[str, ...]

    def names(self) -> set[str]:
        return {self.id, *self.aliases}


@dataclass
class Verdict:
    audited: int = 0
    findings: list[Finding] = field(default_factory=list)  # unaccepted: fail
    accepted: list[tuple[Finding, Acceptance]] = field(default_factory=list)
    expired: list[tuple[Finding, Acceptance]] = field(default_factory=list)  # fail
    unused: list[Acceptance] = field(default_factory=list)  # finding gone: remove
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (package, why)

    @property
    def failed(self) -> bool:
        return bool(self.findings or self.expired)

    @property
    def not_audited(self) -> bool:
        return self.audited == 0 and bool(self.skipped)


def load_acceptances(path: Path) -> list[Acceptance]:
    if not path.is_file():
        return []
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise AuditInputError(f"{path}: not readable TOML: {e}") from e
    entries = doc.get("accept", [])
    if not isinstance(entries, list):
        raise AuditInputError(f"{path}: 'accept' must be an array of tables ([[accept]])")
    out = []
    for i, entry in enumerate(entries, 1):
        where = f"{path}: [[accept]] entry {i}"
        if not isinstance(entry, dict):
            raise AuditInputError(f"{where}: not a table")
        missing = [k for k in ("id", "package", "reason", "until") if not entry.get(k)]
        if missing:
            raise AuditInputError(f"{where}: missing {', '.join(missing)}")
        until = entry["until"]
        if isinstance(until, str):
            try:
                until = dt.date.fromisoformat(until)
            except ValueError as e:
                raise AuditInputError(f"{where}: until {until!r} is not a date") from e
        if isinstance(until, dt.datetime):
            until = until.date()
        if not isinstance(until, dt.date):
            raise AuditInputError(f"{where}: until must be a date (YYYY-MM-DD)")
        out.append(Acceptance(str(entry["id"]), _norm(str(entry["package"])),
                              str(entry["reason"]), until))
    return out


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def judge(report: dict, acceptances: list[Acceptance], today: dt.date) -> Verdict:
    """pip-audit's JSON report against the accepted findings."""
    verdict = Verdict()
    used: set[int] = set()
    for dep in report.get("dependencies", []):
        name = str(dep.get("name", "?"))
        if dep.get("skip_reason"):
            verdict.skipped.append((name, str(dep["skip_reason"])))
            continue
        verdict.audited += 1
        for vuln in dep.get("vulns", []):
            finding = Finding(_norm(name), str(dep.get("version", "")), str(vuln.get("id")),
                              tuple(vuln.get("aliases") or ()),
                              tuple(vuln.get("fix_versions") or ()))
            match = next((i for i, a in enumerate(acceptances)
                          if a.package == finding.package and a.id in finding.names()), None)
            if match is None:
                verdict.findings.append(finding)
                continue
            used.add(match)
            pair = (finding, acceptances[match])
            (verdict.accepted if acceptances[match].until >= today else verdict.expired).append(
                pair)
    verdict.unused = [a for i, a in enumerate(acceptances) if i not in used]
    return verdict


def run_pip_audit(pip_audit: str, lock: Path, service: str) -> dict:
    if not lock.is_file():
        raise AuditInputError(f"{lock}: no such lock file (make lock writes it)")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [pip_audit, "-r", str(lock), "--no-deps", "--disable-pip", "--format", "json",
               "--output", str(report), "--progress-spinner", "off",
               "--vulnerability-service", service]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                              env={**os.environ, "PIP_AUDIT_PROGRESS_SPINNER": "off"})
        if report.is_file() and report.stat().st_size:
            return json.loads(report.read_text(encoding="utf-8"))
        # no report: pip-audit could not run (the service refused every connection, the
        # lock does not parse): every package is "not audited", with pip-audit's reason
        why = (done.stderr.strip().splitlines() or [f"pip-audit exited {done.returncode}"])[-1]
        names = [line.split("==")[0].strip() for line in lock.read_text().splitlines()
                 if "==" in line and not line.lstrip().startswith("#")]
        return {"dependencies": [{"name": n, "skip_reason": why} for n in names],
                "fixes": [], "error": why}


def report_text(v: Verdict, service: str) -> list[str]:
    lines = []
    for f in v.findings:
        fix = f"fixed in {', '.join(f.fix_versions)}" if f.fix_versions else "no fix yet"
        lines.append(f"FINDING {f.package} {f.version}: {f.id} "
                     f"({', '.join(f.aliases) or 'no aliases'}; {fix})")
    for f, a in v.expired:
        lines.append(f"EXPIRED acceptance of {f.id} in {f.package} {f.version} "
                     f"(until {a.until}): {a.reason}")
    for f, a in v.accepted:
        lines.append(f"accepted {f.id} in {f.package} {f.version} until {a.until}: {a.reason}")
    for a in v.unused:
        lines.append(f"note: the acceptance of {a.id} ({a.package}) matches no finding: "
                     "remove it")
    total = v.audited + len(v.skipped)
    if v.not_audited:
        lines.append(f"NOT AUDITED: the {service} vulnerability service checked none of the "
                     f"{total} locked packages (e.g. {v.skipped[0][0]}: {v.skipped[0][1]})")
    elif v.skipped:
        lines.append(f"not audited: {len(v.skipped)} of {total} packages "
                     f"({', '.join(n for n, _ in v.skipped[:8])}"
                     f"{', ...' if len(v.skipped) > 8 else ''})")
    lines.append(f"audited {v.audited} of {total} locked packages with {service}: "
                 f"{len(v.findings)} findings, {len(v.expired)} expired acceptances, "
                 f"{len(v.accepted)} accepted")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lock", type=Path, default=ROOT / "requirements.lock")
    ap.add_argument("--accepted", type=Path, default=ROOT / "audit-accepted.toml")
    ap.add_argument("--pip-audit", default=str(Path(sys.executable).parent / "pip-audit"))
    ap.add_argument("--service", choices=("pypi", "osv"), default="pypi")
    ap.add_argument("--strict", action="store_true",
                    help="fail (exit 2) when the service checked no package")
    ap.add_argument("--today", type=dt.date.fromisoformat, default=dt.date.today())
    args = ap.parse_args(argv)
    try:
        acceptances = load_acceptances(args.accepted)
        verdict = judge(run_pip_audit(args.pip_audit, args.lock, args.service), acceptances,
                        args.today)
    except AuditInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    for line in report_text(verdict, args.service):
        print(line)
    if verdict.failed:
        return 1
    return 2 if args.strict and verdict.not_audited else 0


if __name__ == "__main__":
    sys.exit(main())
