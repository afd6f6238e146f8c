"""A report's HTML page printed to PDF by headless Chromium (the system's; nothing is downloaded).

The page is self-contained and its Content-Security-Policy forbids every load, so the
browser reads nothing but the file it is given. It prints from a private temporary
directory with a throw-away profile; the PDF reaches ``out`` only whole (atomic rename).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Final

from weightvault.errors import ConfigError
from weightvault.files import atomic_file

__all__ = ["find_chromium", "html_to_pdf"]

_NAMES: Final = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: The largest PDF accepted back from the browser (a report of 10^6 events prints to a few MiB).
_MAX_PDF_BYTES: Final = 512 << 20


def find_chromium() -> str:
    """``$WEIGHTVAULT_CHROMIUM``, else the first Chromium on PATH.

    Raises:
        ConfigError: none found.
    """
    chosen = os.environ.get("WEIGHTVAULT_CHROMIUM")
    if chosen:
        if shutil.which(chosen) is None:
            raise ConfigError(f"WEIGHTVAULT_CHROMIUM={chosen} is not an executable")
        return chosen
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise ConfigError("PDF output needs Chromium: apt-get install chromium (or set WEIGHTVAULT_CHROMIUM)")


def html_to_pdf(html: str, out: Path, *, overwrite: bool = False, timeout_s: float = 300.0) -> int:
    """Print ``html`` to ``out``; returns the PDF's size.

    Raises:
        ConfigError: no Chromium, or it failed or produced no PDF.
    """
    browser = find_chromium()
    with tempfile.TemporaryDirectory(prefix="wv-pdf-") as tmp:
        page, pdf = Path(tmp) / "report.html", Path(tmp) / "report.pdf"
        page.write_text(html, encoding="utf-8")
        args = [
            browser,
            "--headless",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--no-pdf-header-footer",
            f"--user-data-dir={Path(tmp) / 'profile'}",
            f"--print-to-pdf={pdf}",
            page.as_uri(),
        ]
        if os.geteuid() == 0:  # Chromium refuses to run as root inside its own sandbox
            args.insert(1, "--no-sandbox")
        try:
            done = subprocess.run(args, capture_output=True, timeout=timeout_s, check=False)  # noqa: S603 - fixed args
        except subprocess.TimeoutExpired as exc:
            raise ConfigError(f"Chromium did not print the report within {timeout_s:.0f} s") from exc
        data = pdf.read_bytes() if pdf.exists() and pdf.stat().st_size <= _MAX_PDF_BYTES else b""
        if done.returncode != 0 or not data.startswith(b"%PDF-"):
            last = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit {done.returncode}"]
            raise ConfigError(f"Chromium did not print the report: {last[0][:200]}")
    with atomic_file(out, overwrite=overwrite) as handle:
        handle.write(data)
    return len(data)
