"""``make assets`` (``python -m middleware.console.vendor``): re-create the console's vendored front-end files from the npm registry.

For each entry of ``middleware/console/static/vendor/ASSETS.json``: ``npm pack NAME@VERSION`` into
a temporary directory, check the tarball's SHA-512 against the pinned ``integrity`` (the npm
lockfile's Subresource Integrity form), take the listed files out of it, check each against its
pinned ``sha256`` and copy it into the vendor directory. Any mismatch stops with one line and
changes nothing. Only this target touches the network; ``make run`` and the package never do.

``--update`` (after editing a version) writes the tarball's integrity and the files' sha256 into
ASSETS.json instead of checking them; review the diff and the licence before committing.
"""
from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VENDOR = Path(__file__).resolve().parent / "static" / "vendor"
MANIFEST = VENDOR / "ASSETS.json"


def integrity_of(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def fetch(update: bool) -> int:
    doc = json.loads(MANIFEST.read_text(encoding="utf-8"))
    staged: dict[Path, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for asset in doc["assets"]:
            spec = f"{asset['package']}@{asset['version']}"
            out = subprocess.run(["npm", "pack", spec, "--json", "--pack-destination", tmp], capture_output=True, text=True,
                                 check=False)
            if out.returncode != 0:
                print(f"assets: npm pack {spec} failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                return 1
            tarball = Path(tmp) / json.loads(out.stdout)[0]["filename"]
            data = tarball.read_bytes()
            got = integrity_of(data)
            if update:
                asset["integrity"] = got
            elif got != asset["integrity"]:
                print(f"assets: {spec}: tarball integrity {got} is not the pinned {asset['integrity']}", file=sys.stderr)
                return 1
            with tarfile.open(tarball) as tf:
                for f in asset["files"]:
                    member = tf.extractfile(f["from"])
                    if member is None:
                        print(f"assets: {spec}: no {f['from']} in the tarball", file=sys.stderr)
                        return 1
                    body = member.read()
                    digest = hashlib.sha256(body).hexdigest()
                    if update:
                        f["sha256"] = digest
                    elif digest != f["sha256"]:
                        print(f"assets: {spec}: {f['from']} sha256 {digest} is not the pinned {f['sha256']}", file=sys.stderr)
                        return 1
                    staged[VENDOR / f["to"]] = body
    for path, body in staged.items():
        path.write_bytes(body)
        print(f"assets: {path.relative_to(VENDOR.parents[3])} ({len(body)} bytes) verified")
    if update:
        MANIFEST.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        print("assets: ASSETS.json updated; review the diff and the licences")
    return 0


if __name__ == "__main__":
    sys.exit(fetch(update="--update" in sys.argv[1:]))
