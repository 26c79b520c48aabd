"""Files the project writes get the permissions a plain write would give: a new file
``0o666`` less the umask, a replaced file keeps its mode; a failed write leaves the old
file and no temporary behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from core.files.atomic import atomic_write, current_umask
from core.files.checkpoint import save_checkpoint
from core.files.images import save_png
from explorer.state.export import GIF, animation_job
from explorer.state.npz_files import write_npz

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_everything(folder: Path, make_perturbed_model) -> list[Path]:
    """One file of each kind: checkpoint, PNG, the explorer's .npz and a GIF export."""
    folder.mkdir(exist_ok=True)
    frames = [np.zeros((3, 1, 8, 8), np.float32)]
    job = animation_job(folder / "a.gif", frames, lambda zs: np.full((3, 1, 8, 8), 0.5), GIF)
    *_, gif = list(job)
    return [
        save_checkpoint(folder / "m.pt", make_perturbed_model()),
        save_png(np.zeros((8, 8), np.uint8), folder / "grid.png"),
        write_npz(folder / "view.npz", {"a": np.arange(3)}),
        gif,
    ]


def test_new_files_follow_the_umask(tmp_path, umask, make_perturbed_model):
    assert current_umask() == umask
    for path in write_everything(tmp_path / "out", make_perturbed_model):
        assert mode(path) == 0o666 & ~umask, path.name
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_replaced_files_keep_their_mode(tmp_path, umask, make_perturbed_model):
    paths = write_everything(tmp_path / "out", make_perturbed_model)
    for path in paths:
        path.chmod(0o640)
    for path in write_everything(tmp_path / "out", make_perturbed_model):
        assert mode(path) == 0o640, path.name


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write(b"new, half")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
