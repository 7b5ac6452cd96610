"""sdpsfnet.files: atomic writes honour the umask, leave nothing behind on error, and the
temporary files of a killed writer are recognised and removed."""
import os
import stat

import pytest
import torch

from sdpsfnet.training.checkpoint import save_checkpoint
from sdpsfnet.data import save_image
from sdpsfnet.files import TEMP_PATTERN, atomic_write, remove_stale_temps


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_outputs_get_the_umask_permissions(tmp_path, umask_022):
    save_checkpoint({"step": 1}, tmp_path / "ck.pt")
    save_image(torch.rand(3, 4, 5), tmp_path / "img.png")
    with atomic_write(tmp_path / "sub" / "a.bin") as f:
        f.write(b"x")
    for p in (tmp_path / "ck.pt", tmp_path / "img.png", tmp_path / "sub" / "a.bin"):
        assert _mode(p) == 0o644, p
    os.umask(0o077)
    save_image(torch.rand(3, 4, 5), tmp_path / "private.png")
    assert _mode(tmp_path / "private.png") == 0o600


def test_error_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write(b"new, partial")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_remove_stale_temps_only_removes_ours(tmp_path):
    import tempfile
    fd, ours = tempfile.mkstemp(prefix=".last.pt.", suffix=".tmp", dir=tmp_path)
    os.close(fd)
    keep = [tmp_path / "last.pt", tmp_path / "notes.tmp", tmp_path / ".hidden"]
    for p in keep:
        p.write_text("x")
    assert TEMP_PATTERN.match(os.path.basename(ours))
    assert remove_stale_temps(tmp_path) == [tmp_path / os.path.basename(ours)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in keep)
    assert remove_stale_temps(tmp_path / "missing") == []
