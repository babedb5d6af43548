"""Judge a pip-audit JSON report (scripts/audit): exit 1 on any known vulnerability; list what
could not be audited; when nothing could be, warn and pass unless AISLE_AUDIT_REQUIRED is set.

    python scripts/audit_report.py REPORT.json PIP_AUDIT_EXIT_STATUS
"""

import json, os, sys

path, status = sys.argv[1], int(sys.argv[2])
try:
    report = json.load(open(path))
except (OSError, ValueError):
    report = None
if report is None:
    print(f"audit: pip-audit gave no report (exit {status}); the vulnerability service was not reached", file=sys.stderr)
    sys.exit(1 if os.environ.get("AISLE_AUDIT_REQUIRED") else 0)
deps = report.get("dependencies", [])
vulnerable = [d for d in deps if d.get("vulns")]
audited = [d for d in deps if "skip_reason" not in d]
skipped = [d for d in deps if "skip_reason" in d and d.get("name") != "aisle"]
for d in vulnerable:
    for v in d["vulns"]:
        fixed = ", ".join(v.get("fix_versions", [])) or "no fixed release"
        print(f"audit: VULNERABLE {d['name']} {d['version']}: {v['id']} (fixed in {fixed})", file=sys.stderr)
if vulnerable:
    print(f"audit: {len(vulnerable)} pinned package(s) have known vulnerabilities; upgrade them (scripts/lock) or drop them", file=sys.stderr)
    sys.exit(1)
if skipped:
    names = " ".join(d["name"] for d in skipped)
    print(f"audit: NOT AUDITED ({len(skipped)} of {len(deps)}): the vulnerability service had no answer for: {names}", file=sys.stderr)
if not audited:
    print("audit: WARNING: no package could be audited (is the vulnerability service reachable from here?)", file=sys.stderr)
    sys.exit(1 if os.environ.get("AISLE_AUDIT_REQUIRED") else 0)
print(f"audit: {len(audited)} packages audited, no known vulnerabilities", file=sys.stderr)
