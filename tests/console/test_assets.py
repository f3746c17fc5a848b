"""The console's vendored front-end files are exactly the pinned npm releases listed in
ASSETS.json (package, version, licence, tarball integrity, sha256 of each file), and nothing the
pages load comes from another site."""
from __future__ import annotations

import hashlib
import json
import re

from middleware.console import STATIC

VENDOR = STATIC / "vendor"
TEMPLATES = STATIC.parent / "templates"


def test_every_vendored_file_is_listed_with_its_sha256() -> None:
    doc = json.loads((VENDOR / "ASSETS.json").read_text(encoding="utf-8"))
    listed: dict[str, str] = {}
    for asset in doc["assets"]:
        assert asset["package"] and re.fullmatch(r"\d+\.\d+\.\d+", asset["version"]) and asset["license"]
        assert re.fullmatch(r"sha512-[A-Za-z0-9+/]{86}==", asset["integrity"])
        assert any(f["to"].lower().startswith(asset["package"].split(".")[0]) and "LICENSE" in f["to"] for f in asset["files"])
        listed.update({f["to"]: f["sha256"] for f in asset["files"]})
    on_disk = {p.name for p in VENDOR.iterdir() if p.name != "ASSETS.json"}
    assert on_disk == set(listed)
    for name, digest in listed.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name


def test_htmx_is_the_pinned_release() -> None:
    doc = json.loads((VENDOR / "ASSETS.json").read_text(encoding="utf-8"))
    [htmx] = [a for a in doc["assets"] if a["package"] == "htmx.org"]
    assert f'version:"{htmx["version"]}"' in (VENDOR / "htmx.min.js").read_text(encoding="utf-8")


def test_pages_load_nothing_from_other_sites() -> None:
    for path in [*TEMPLATES.rglob("*.html"), *STATIC.glob("*.css"), *STATIC.glob("*.js")]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), path
        assert not re.search(r"url\(\s*['\"]?(https?:)?//", text), path
