"""Headless Chromium screenshots of the HTML report (Debian's `chromium` package).

Installing Chromium is the test script's job (`apt-get install chromium`); here we only find and run it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .errors import OrchestratorError

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--disable-dev-shm-usage",
)


class BrowserUnavailable(OrchestratorError):
    """No Chromium on this machine."""


def find_chromium() -> str | None:
    for candidate in CANDIDATES:
        path = shutil.which(candidate)
        if path:
            return path
    return None


def screenshot(html_path: str | Path, png_path: str | Path, width: int = 1280, height: int = 2400,
               timeout_s: float = 90.0) -> Path:
    """Render `html_path` at width×height and write a PNG of that viewport to `png_path`."""
    chromium = find_chromium()
    if chromium is None:
        raise BrowserUnavailable("chromium not found (apt-get install chromium)")
    html_path, png_path = Path(html_path).resolve(), Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    if png_path.exists():
        png_path.unlink()
    with tempfile.TemporaryDirectory(prefix="orchestrator-chromium-") as profile:
        command = [chromium, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={png_path}",
                   f"--window-size={width},{height}", html_path.as_uri()]
        env = {**os.environ, "HOME": profile}  # keeps chromium's crashpad/config out of the real home
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
        except subprocess.TimeoutExpired as error:
            raise OrchestratorError(f"chromium timed out after {timeout_s:.0f}s rendering {html_path}") from error
    if not png_path.exists() or png_path.stat().st_size == 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise OrchestratorError(f"chromium wrote no screenshot (exit {done.returncode}): {' | '.join(tail)}")
    return png_path
