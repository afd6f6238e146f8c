"""Screenshots of the web console's main views for docs/console.md (docs/console/*.png).

Starts a broker process on loopback with two tenants (the tests' fixture), makes a few
releases, a policy change, a refused release and an approval policy with a pending request,
and photographs the pages in Debian's headless Chromium as acme's tenant admin.

Usage: .venv/bin/python scripts/console_screenshots.py
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHOTS = {
    "login": "login",
    "releases": "t/acme/releases",
    "policies": "t/acme/policies",
    "devices": "t/acme/devices",
    "audit": "t/acme/audit",
}


def main() -> int:
    import numpy as np
    from safetensors.numpy import save_file
    from tests.e2e.broker_fixture import _policy, running_broker
    from tests.e2e.browser import chromium

    from weightvault.client.broker import SampleAttester
    from weightvault.errors import WeightVaultError

    out = ROOT / "docs" / "console"
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        plain = tmp / "small.safetensors"
        save_file({"w": np.arange(64, dtype=np.float32)}, str(plain))
        with running_broker(tmp, plain) as broker:
            op = broker.client("operator")
            for g in range(3):
                op.add_device(f"gpu-box-{g}", "insecure-sample", ["acme"])
            wl = broker.client("acme-wl")
            for g in range(3):
                session, _ = wl.attest(SampleAttester(device_id=f"gpu-box-{g}"))
                wl.release(session, "acme/models/small@1")
            with contextlib.suppress(WeightVaultError):
                wl.release(session, "acme/models/unknown@1")
            broker.client("acme-admin").put_policy("acme", "open", _policy("acme", verifiers=["insecure-sample"]))
            with chromium() as browser:
                page = browser.new_context(viewport={"width": 1280, "height": 760}).new_page()
                page.goto(f"{broker.url}/console/login")
                page.screenshot(path=str(out / "login.png"))
                page.fill("#token", broker.tokens["acme-admin"])
                page.click("#signin")
                page.wait_for_url(f"{broker.url}/console/")
                for name, path in SHOTS.items():
                    if name == "login":
                        continue
                    page.goto(f"{broker.url}/console/{path}")
                    page.screenshot(path=str(out / f"{name}.png"))
                page.goto(f"{broker.url}/console/t/acme/releases?decision=allow")
                page.click("#releases a >> nth=0")
                page.wait_for_selector("#proof[data-result]")
                page.screenshot(path=str(out / "event-proof.png"), full_page=True)
    print(f"wrote {sorted(p.name for p in out.glob('*.png'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
