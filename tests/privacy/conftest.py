"""Privacy tests import helpers from each other (test_corpus) and from tests/support."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
