"""Where the tests find real Rain100H pairs (see tests/data/README.md).

``VENDORED``: three 96x96 centre crops of Rain100H test pairs, always present.
:func:`full_rain100h`: the full-size test set at ``$SDPSFNET_RAIN100H``; skips the calling test
with a hint on how to get it when the variable is unset.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

VENDORED = Path(__file__).resolve().parent / "data" / "rain100h"
ENV = "SDPSFNET_RAIN100H"


def full_rain100h() -> Path:
    """The folder named by ``$SDPSFNET_RAIN100H`` (a paired folder of Rain100H test pairs)."""
    folder = os.environ.get(ENV)
    if not folder:
        pytest.skip(f"set {ENV} to a paired folder (input/ + target/ or rain/ + norain/) of the "
                    "Rain100H test set; it ships in github.com/kuihua/MSPFN under "
                    "model/test/test_data/R100H")
    if not Path(folder).is_dir():
        pytest.fail(f"{ENV}={folder} is not a directory")
    return Path(folder)
