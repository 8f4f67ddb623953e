"""The remote tests' shared fixture: a CA, a server certificate and client credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedfm.runtime.remote.security import add_client, make_tls


@pytest.fixture
def tls(tmp_path: Path) -> Path:
    """``tmp_path/tls`` (``fedfm admin init-tls``) with credentials ``tmp_path/<id>.json``
    for the live tests' clients c0, c1, c2 and for ``mallory``, who holds a valid token but
    is in no run's ``remote.clients``."""
    make_tls(tmp_path / "tls")
    for cid in ("c0", "c1", "c2", "mallory"):
        add_client(tmp_path / "tls", cid, tmp_path / f"{cid}.json")
    return tmp_path / "tls"
