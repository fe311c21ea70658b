"""``radixgen env``: the versions radixgen runs with, for bug reports and for comparing a venv with the lock.

Reads installed distributions through ``importlib.metadata`` only (nothing is imported), so it works even when a
dependency is broken.
"""

from __future__ import annotations

import platform
import re
import sys
from importlib import metadata
from pathlib import Path

_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_LOCK_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def canonical_name(name: str) -> str:
    """PEP 503 normalised distribution name (``Foo_Bar`` → ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_versions() -> dict[str, str]:
    """Every installed distribution → its version, keyed by canonical name."""
    return {canonical_name(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def radixgen_requirements() -> list[str]:
    """Canonical names of radixgen's direct dependencies (extras' too), in declaration order, without repeats."""
    names: list[str] = []
    for req in metadata.requires("radixgen") or []:
        m = _REQ_NAME.match(req)
        if m and canonical_name(m.group(1)) not in names:
            names.append(canonical_name(m.group(1)))
    return names


def read_lock(path: str | Path) -> dict[str, str]:
    """``name==version`` pins of a requirements lock file (pip-tools / ``uv pip compile`` format) by canonical name.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    pins: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        m = _LOCK_PIN.match(line)
        if m:
            pins[canonical_name(m.group(1))] = m.group(2)
    return pins


def env_report(diff_lock: str | None = None) -> str:
    """The report as text: Python and platform, radixgen, then each direct dependency with its installed version.

    With ``diff_lock``, a second section lists every package of the lock whose installed version differs
    (``name: lock X, installed Y``), or says that the venv matches the lock.
    """
    installed = installed_versions()
    lines = [
        f"python: {sys.version.split()[0]} ({platform.python_implementation()})",
        f"platform: {platform.platform()}",
        f"radixgen: {installed.get('radixgen', 'not installed')}",
    ]
    lines += [f"{name}: {installed.get(name, 'not installed')}" for name in radixgen_requirements()]
    if diff_lock is not None:
        pins = read_lock(diff_lock)
        diffs = [
            f"  {name}: lock {version}, installed {installed.get(name, 'none')}"
            for name, version in sorted(pins.items())
            if installed.get(name) != version
        ]
        lines.append(f"differences from {diff_lock} ({len(diffs)} of {len(pins)} packages):" if diffs else
                     f"every package of {diff_lock} is installed at its locked version ({len(pins)} packages)")
        lines += diffs
    return "\n".join(lines)
