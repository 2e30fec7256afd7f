"""The functional layer is plain torch."""

from __future__ import annotations

import subprocess
import sys

import lit_meta


def test_lit_meta_functional_imports_without_lightning():
    """The functional layer is plain torch: importable without the learners (and so without Lightning)."""
    script = (
        "import sys, types\n"
        f"package = types.ModuleType('lit_meta'); package.__path__ = {list(lit_meta.__path__)!r}\n"
        "sys.modules['lit_meta'] = package\n"
        "import lit_meta.functional\n"
        "assert not any(m.split('.')[0] == 'lightning' for m in sys.modules), sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
