#!/usr/bin/env python3
"""Install what the slide build and its render check need, at set-up time (`make slide-tools`, which `make test` runs, calls this).

    .venv/bin/python slides/setup_tools.py           # install what is missing; silent, well under a second, when nothing is
    .venv/bin/python slides/setup_tools.py --check   # only say what is missing (exit 1); installs nothing

What the slides need: Node.js and npm (Debian's packages) to run Marp CLI; Marp CLI itself, installed by `npm ci`
into slides/node_modules at the versions pinned by package-lock.json; Debian's `chromium` for the PDF export and
the render check (not installed when $CHROME_PATH or a Chrome/Chromium on PATH is found); and the fonts the decks
are drawn with (Liberation stands in for Marp's Helvetica/Arial, DejaVu covers → ≤ ✓ ✗ and friends).

The build and the tests only check (`problems`, `require`): a test must never start installing half-way through,
where a slow or failed download looks like a broken slide.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SLIDES = Path(__file__).resolve().parent
ROOT = SLIDES.parent
NODE_MODULES = SLIDES / "node_modules"
MARP = NODE_MODULES / ".bin" / "marp"
PACKAGE_LOCK = SLIDES / "package-lock.json"
# npm ci deletes node_modules before it starts and this file is written only after it succeeded, so an
# interrupted install, or one from an older package-lock.json, never counts as done.
STAMP = NODE_MODULES / ".lab-package-lock.sha256"
FONT_PACKAGES = ("fonts-liberation", "fonts-dejavu-core")
SETUP_COMMAND = "make slide-tools"

for _folder in (SLIDES, ROOT):  # browser.py beside this file; labutils when run as a script
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))


class ToolsMissing(RuntimeError):
    """A tool the slide build needs is not installed (and, when installing, could not be)."""


@dataclass(frozen=True)
class Missing:
    """One missing tool: what it is for, and the Debian packages that provide it (none: it comes from npm)."""

    what: str
    apt: tuple[str, ...] = ()


def lock_digest() -> str:
    """SHA-256 of package-lock.json: the Marp install is current when its stamp holds this."""
    return hashlib.sha256(PACKAGE_LOCK.read_bytes()).hexdigest()


def marp_installed() -> bool:
    """Marp CLI is in node_modules, installed by a finished `npm ci` of the current package-lock.json."""
    try:
        return MARP.is_file() and STAMP.read_text().strip() == lock_digest()
    except OSError:
        return False


def debian_package_installed(package: str) -> bool | None:
    """Whether dpkg has `package` installed; None where there is no dpkg (not Debian: nothing to check)."""
    if not shutil.which("dpkg-query"):
        return None
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return proc.returncode == 0 and proc.stdout.strip() == "install ok installed"


def find_chromium() -> str | None:
    """The Chromium the build will use ($CHROME_PATH, else one on PATH), or None."""
    from browser import find_chromium as find

    return find()


def problems(chromium: bool = True) -> list[Missing]:
    """What is missing for the build (HTML only when `chromium` is False); empty when everything is there."""
    found = []
    for tool, package in (("node", "nodejs"), ("npm", "npm")):
        if not shutil.which(tool):
            found.append(Missing(f"{tool} (to run Marp CLI)", (package,)))
    if not marp_installed():
        found.append(Missing("Marp CLI (slides/node_modules, from package-lock.json)"))
    if chromium and not find_chromium():
        found.append(Missing("Chromium (for the PDF export and the render check)", ("chromium",)))
    fonts = tuple(p for p in FONT_PACKAGES if debian_package_installed(p) is False)
    if fonts:
        found.append(Missing("the slide fonts (" + ", ".join(fonts) + ")", fonts))
    return found


def _listing(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def missing_sentence(missing: list[Missing]) -> str:
    """One sentence naming what is missing and the command that installs it."""
    names = _listing([m.what for m in missing])
    return (f"The slide build needs {names}, which {'is' if len(missing) == 1 else 'are'} not installed: run "
            f"`{SETUP_COMMAND}` (it installs them), then try again.")


def require(chromium: bool = True) -> str | None:
    """Check (never install) that the build can run; returns the Chromium to use, or None when not asked for."""
    missing = problems(chromium)
    if missing:
        raise ToolsMissing(missing_sentence(missing))
    return find_chromium() if chromium else None


# ------------------------------------------------------------------------------------------------ installing
def _say(message: str) -> None:
    print(f"[slides setup] {message}", file=sys.stderr, flush=True)


def _quiet(cmd: list[str], failure: str, **kwargs) -> None:
    """Run `cmd` showing nothing unless it fails; then raise ToolsMissing with `failure` and its last output."""
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip()[-1500:]
        raise ToolsMissing(f"{failure} (`{' '.join(cmd)}` exited with {proc.returncode}):\n{tail}")


def apt_install(packages: list[str]) -> None:
    """Install Debian packages with apt-get (needs root); otherwise stop with the command to run."""
    if not (shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0):
        raise ToolsMissing(f"The slide build needs the packages {' '.join(packages)}, and installing them needs root "
                           f"and apt-get: run `sudo apt-get install -y {' '.join(packages)}` (or set CHROME_PATH to "
                           "a Chrome/Chromium), then try again.")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Another apt run (unattended upgrades, a second `make slide-tools`) holds dpkg's lock for a while: wait for it.
    wait = ["-o", "DPkg::Lock::Timeout=600"]
    _say(f"installing {' '.join(packages)} with apt-get (once; a minute or two)")
    _quiet(["apt-get", *wait, "update", "-qq"], "apt-get could not update its package lists", env=env)
    _quiet(["apt-get", *wait, "install", "-y", "-qq", "--no-install-recommends", *packages],
           f"apt-get could not install {' '.join(packages)}", env=env)


def npm_ci() -> None:
    """Install Marp CLI at the versions package-lock.json pins, then stamp the install as complete."""
    _say("installing Marp CLI with npm ci (pinned by slides/package-lock.json; once, under a minute)")
    STAMP.unlink(missing_ok=True)
    # Marp drives Chromium through puppeteer-core, which never downloads a browser; these make sure nothing in
    # the tree tries to (such downloads cannot work offline).
    env = dict(os.environ, PUPPETEER_SKIP_DOWNLOAD="1", PUPPETEER_SKIP_CHROMIUM_DOWNLOAD="1")
    _quiet(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], "npm could not install Marp CLI",
           cwd=SLIDES, env=env)
    if not MARP.is_file():
        raise ToolsMissing(f"npm ci finished but {MARP} is missing: delete slides/node_modules and run "
                           f"`{SETUP_COMMAND}` again.")
    # A torn write leaves a digest that matches nothing, which only means npm ci runs again: no temp file needed.
    STAMP.write_text(lock_digest() + "\n")


def install() -> None:
    """Install whatever `problems` reports (one installer at a time per checkout); quiet when nothing is missing."""
    if not problems():
        return
    from labutils.infra.files import folder_lock

    with folder_lock(ROOT / "build" / "slide-tools", "the slide tools (apt-get, npm ci)"):
        missing = problems()  # another process may have installed them while we waited
        packages = [p for m in missing for p in m.apt]
        if packages:
            apt_install(packages)
        if not marp_installed():
            npm_ci()
        left = problems()
        if left:
            raise ToolsMissing(f"Installing finished but {_listing([m.what for m in left])} still cannot be "
                               "found: check that it is on PATH (or set CHROME_PATH for Chromium).")


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: install (default) or only check."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="say what is missing (exit 1); install nothing")
    args = parser.parse_args(argv)
    try:
        if args.check:
            require()
        else:
            install()
    except ToolsMissing as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
