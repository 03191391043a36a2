"""A look at a flow run in the Prefect UI: headless Chromium renders its Artifacts tab to a PNG.

    python deployments/ui_screenshot.py FLOW_RUN_ID --out run.png [--ui-url http://127.0.0.1:4200]

The UI is a single-page app that fills itself from the API, so Chromium is given virtual time to run its
scripts before the screenshot. The same run dumps the rendered DOM, to check what the page shows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "chromium", "google-chrome")
WIDTH, HEIGHT = 1400, 1000


class ScreenshotError(Exception):
    """Chromium is missing or could not render the page."""


def find_chromium() -> str | None:
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def flow_run_url(ui_url: str, flow_run_id: str) -> str:
    """The flow run page with its Artifacts tab open (the v2 UI keeps the tab in the query string)."""
    return f"{ui_url.rstrip('/')}/v2/runs/flow-run/{flow_run_id}?tab=Artifacts"


def _chromium(args: list[str], budget_ms: int, timeout: float) -> subprocess.CompletedProcess[bytes]:
    chromium = find_chromium()
    if chromium is None:
        raise ScreenshotError("Chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="backtest-chromium-") as profile:
        cmd = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--window-size={WIDTH},{HEIGHT}",
            f"--virtual-time-budget={budget_ms}",
            *args,
        ]
        try:
            return subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise ScreenshotError(f"Chromium did not finish within {timeout:.0f} s") from None


@dataclass(frozen=True)
class Capture:
    """One rendering of a page: the picture, and the DOM it was drawn from (what the page shows, as text)."""

    png: Path
    html: str


def capture(url: str, png: Path, budget_ms: int = 15_000, timeout: float = 120.0) -> Capture:
    """Screenshot and DOM of ``url`` after its scripts ran, from one Chromium run."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    done = _chromium(["--dump-dom", f"--screenshot={png}", url], budget_ms, timeout)
    if not png.exists():
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise ScreenshotError(f"Chromium wrote no screenshot of {url}: {' / '.join(tail)}")
    return Capture(png=png, html=done.stdout.decode(errors="replace"))


@dataclass(frozen=True)
class PngCheck:
    """Is the picture a real page? A blank or failed render is one or two flat colours."""

    width: int
    height: int
    colours: int
    busy_rows: float

    @property
    def looks_like_a_page(self) -> bool:
        return self.colours >= 50 and self.busy_rows >= 0.2


def check_png(png: Path) -> PngCheck:
    """Decode the PNG (a truncated file fails here) and measure how much of it is drawn."""
    import numpy as np
    from PIL import Image

    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        pixels = np.asarray(image.convert("RGB"))
    height, width, _ = pixels.shape
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    # a row is "busy" when its pixels are not all one colour: text, borders, charts
    busy = float(np.mean(pixels.std(axis=1).sum(axis=1) > 1.0))
    return PngCheck(width=width, height=height, colours=colours, busy_rows=busy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("flow_run_id")
    parser.add_argument("--out", type=Path, default=Path("flow-run.png"))
    default_ui = os.environ.get("PREFECT_API_URL", "http://127.0.0.1:4200/api").removesuffix("/api")
    parser.add_argument(
        "--ui-url", default=default_ui, help="The UI's address (default: from PREFECT_API_URL)."
    )
    args = parser.parse_args(argv)
    try:
        shot = capture(flow_run_url(args.ui_url, args.flow_run_id), args.out)
    except ScreenshotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    check = check_png(shot.png)
    print(f"{shot.png}: {check.width}x{check.height}, {check.colours} colours")
    if not check.looks_like_a_page:
        print("error: the screenshot is blank", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
