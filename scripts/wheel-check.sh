#!/usr/bin/env bash
# Build weightvault's sdist and wheel, check them, then install the wheel alone (core
# dependencies only, no extras, not the source tree) into a clean virtual environment and
# use it: seal, verify and unseal a file; initialise and serve a broker and ask its health;
# and check that features of missing extras answer with an install hint, not a traceback.
# Then tests/wheel installs the wheel with each extra alone, each into a clean virtual
# environment of its own, and uses that extra's feature (S3, PostgreSQL, OpenSSF signing, a
# TPM, torch, transformers, the GPU kernels under Triton's interpreter, a TDX quote).
# Run by `make wheel-check` (part of `make test`).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
python=${PYTHON:-python3}
work=$(mktemp -d /tmp/wv-wheel.XXXXXX)
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

"$repo/.venv/bin/python" -m build --outdir "$work/dist" "$repo" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
"$repo/.venv/bin/twine" check --strict "$work"/dist/*
wheel=$(ls "$work"/dist/weightvault-*.whl)
"$python" -c 'import sys, zipfile; names = zipfile.ZipFile(sys.argv[1]).namelist(); sys.exit("weightvault/py.typed" not in names)' "$wheel" \
  || { echo "the wheel lacks py.typed"; exit 1; }
"$python" -c 'import sys, zipfile; names = set(zipfile.ZipFile(sys.argv[1]).namelist()); sys.exit(not {"weightvault/server/console/templates/base.html", "weightvault/server/console/static/console.js"} <= names)' "$wheel" \
  || { echo "the wheel lacks the console's templates or script"; exit 1; }

"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet "$wheel"
wv="$work/venv/bin/weightvault"
cd "$work"
"$wv" --help >/dev/null
"$wv" --version

# A small safetensors file, written by hand: the core does not depend on the safetensors package.
"$work/venv/bin/python" - <<'EOF'
import json, struct
import numpy as np
tensor = np.arange(4096, dtype=np.float32)
header = json.dumps({"w": {"dtype": "F32", "shape": [4096], "data_offsets": [0, tensor.nbytes]}}).encode()
header += b" " * (-len(header) % 8)
with open("model.safetensors", "wb") as out:
    out.write(struct.pack("<Q", len(header)) + header + tensor.tobytes())
EOF
"$wv" keygen hpke id.key >/dev/null
"$wv" seal model.safetensors model.wvlt --recipient id.key.pub >/dev/null
"$wv" verify model.wvlt --identity id.key >/dev/null
"$wv" unseal model.wvlt roundtrip.safetensors --identity id.key >/dev/null
cmp model.safetensors roundtrip.safetensors

# A broker from the wheel: init, serve on a free port, ready.
"$wv" broker init broker >/dev/null
port=$("$work/venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$wv" broker serve --config broker/broker.toml --port "$port" >serve.log 2>&1 &
server=$!
"$work/venv/bin/python" - "$port" <<'EOF'
import json, sys, time, urllib.request
deadline = time.monotonic() + 60
while True:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v1/health/ready", timeout=2) as reply:
            assert json.load(reply)["status"] == "ok"
            break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
# The web console, from the wheel's templates and script.
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/console/login", timeout=5) as reply:
    assert b'id="token"' in reply.read() and "script-src 'self'" in reply.headers["content-security-policy"]
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/console/static/console.js", timeout=5) as reply:
    assert b"crypto.subtle" in reply.read()
EOF
# The compliance report from that broker's log: the catalogue travels in the wheel.
"$wv" report build --db broker/data/audit.db --format html --out report.html >/dev/null
"$wv" report verify report.html --log-key broker/keys/audit-log.key.vkey --allow-unwitnessed >/dev/null

# Extras that are not installed: a one-line configuration error (exit 60) naming the extra.
expect_hint() {
  local extra=$1; shift
  set +e
  "$wv" "$@" >hint.out 2>&1
  local code=$?
  set -e
  if [ "$code" -ne 60 ] || ! grep -q "weightvault\[$extra\]" hint.out || grep -q "Traceback" hint.out; then
    echo "weightvault $* without the $extra extra: exit $code"; cat hint.out; exit 1
  fi
}
expect_hint s3 verify s3://bucket/model.wvlt --identity id.key
expect_hint postgresql broker init broker-pg --database-url postgresql://wv@127.0.0.1:1/weightvault
mkdir plain-model && cp model.safetensors plain-model/ && echo "not a key" >sign.pem
expect_hint signing seal plain-model sealed-model --recipient id.key.pub --sign-key sign.pem
[ ! -e sealed-model ] || { echo "a failed signature left sealed-model behind"; exit 1; }
expect_hint tpm device pcrs --tcti swtpm:host=127.0.0.1,port=1
mkdir served-model
expect_hint transformers serve served-model
"$work/venv/bin/python" - <<'EOF'
from weightvault.errors import ConfigError
for module, extra in (("weightvault.loaders.torch", "torch"), ("weightvault.loaders.transformers", "transformers")):
    try:
        __import__(module)
    except ConfigError as exc:
        assert f"weightvault[{extra}]" in str(exc), exc
    else:
        raise SystemExit(f"{module} imported without the {extra} extra")
from weightvault.attestation.tdx.verifier import TDXVerifier
try:
    TDXVerifier(["{}"], [bytes(48)])
except ConfigError as exc:
    assert "weightvault[tdx]" in str(exc), exc
else:
    raise SystemExit("the tdx verifier was built without the tdx extra")
from weightvault.crypto.nvidia import verify_rim
try:
    verify_rim(b"<x/>", [], "rim.swidtag")
except ConfigError as exc:
    assert "weightvault[nvidia]" in str(exc), exc
else:
    raise SystemExit("a RIM was read without the nvidia extra")
from weightvault.attestation.nvidia.attester import NvmlGpuAttester
try:
    NvmlGpuAttester.open()
except ConfigError as exc:
    assert "weightvault[nvidia]" in str(exc), exc
else:
    raise SystemExit("NVML was opened without the nvidia extra")
EOF

# Each extra alone, in a clean venv of its own (the tests start PostgreSQL, S3 and swtpm).
(cd "$repo" && WEIGHTVAULT_WHEEL="$wheel" TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}" \
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/wheel)
echo "wheel check: $(basename "$wheel") builds, passes twine, installs alone and with each extra, and works"
