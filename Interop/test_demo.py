"""`make demo` stays working: the tour (Scripts/demo.sh) runs against the built binaries, the bunker signs a
note for the app that connected with the printed bunker:// URI, the wallet-bridge's shop is paid by the
tipper exactly once, the dvm-host answers plain, encrypted and failing jobs, and all stop cleanly on SIGTERM."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_the_bunker_and_wallet_tours():
    binary = os.environ["SWITCHBOARD_BIN"]
    result = subprocess.run(["bash", str(ROOT / "Scripts" / "demo.sh"), binary], capture_output=True, timeout=120, check=False)
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "development mode: embedded relay on ws://127.0.0.1:" in out, out
    assert '"content":"signed by my bunker"' in out, out
    assert out.count("valid: ") == 2, out
    assert "sign_event kind=1  ok" in out, out
    assert "bunker stopped cleanly" in out, out
    assert "tipper: {\"balance\":79000}" in out, out
    assert "shop:   {\"balance\":21000}" in out, out
    paid = [line for line in out.splitlines() if line.startswith('{"fees_paid":0,"preimage":')]
    assert len(paid) == 2 and paid[0] == paid[1], out  # the second pay_invoice gets the first's preimage
    assert out.count("tipper: {\"balance\":79000}") == 2, out
    assert "wallet-bridge stopped cleanly" in out, out
    assert "HELLO FROM A CUSTOMER" in out and "A PRIVATE JOB" in out, out
    assert "feedback error send at least one input with text" in out, out
    assert "dvm-host stopped cleanly" in out, out
