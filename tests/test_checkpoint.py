"""Checkpoints: round trip, atomic writes, and every kind of bad file."""

from __future__ import annotations

import os
import pickle
import zipfile

import pytest
import torch

from core import FlowConfig, RealNVP
from core.files.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from tests.test_bijections import perturb

CONFIG = FlowConfig(in_channels=1, image_size=8, num_scales=2, mid_channels=4, num_blocks=1)


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = RealNVP(CONFIG)
    perturb(m, scale=0.05)
    return m.eval()


def test_round_trip_keeps_weights_and_statistics(tmp_path, model):
    path = save_checkpoint(tmp_path / "m.pt", model, {"dataset": "mnist", "test_bpd": 1.23})
    loaded, meta = load_checkpoint(path)
    assert not loaded.training
    assert loaded.config == CONFIG
    assert meta["dataset"] == "mnist" and meta["test_bpd"] == 1.23
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(model.log_prob(x), loaded.log_prob(x))


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, model, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", model, {"step": 1})
    real_save = torch.save

    def save_then_die(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial bytes of a zip")
        raise KeyboardInterrupt  # a stop in the middle of the write

    monkeypatch.setattr(torch, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, {"step": 2})
    monkeypatch.setattr(torch, "save", real_save)
    _, meta = load_checkpoint(path)
    assert meta["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no temporary left


def test_hostile_pickle_is_refused(tmp_path):
    marker = tmp_path / "owned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "realnvp-checkpoint", "payload": Exploit()}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)
    assert not marker.exists()
    raw = tmp_path / "raw.pkl"  # a bare pickle, not even a torch zip
    raw.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not marker.exists()


def test_truncated_checkpoint(tmp_path, model):
    path = save_checkpoint(tmp_path / "m.pt", model)
    data = path.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 20):
        broken = tmp_path / f"cut{cut}.pt"
        broken.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            load_checkpoint(broken)


@pytest.mark.parametrize("kind", ["missing", "empty", "folder", "text", "binary", "zip", "huge"])
def test_bad_files(tmp_path, kind, monkeypatch):
    path = tmp_path / "bad.pt"
    message = {
        "missing": "no such file",
        "empty": "empty",
        "folder": "is a folder",
        "text": "not a checkpoint: it is a text file$",  # not "truncated or corrupt"
        "binary": "not a checkpoint: it is not a file saved by torch$",
        "zip": "truncated or corrupt",
        "huge": "too large",
    }[kind]
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "folder":
        path.mkdir()
    elif kind == "text":
        path.write_text("hello, I am not a checkpoint\n" * 10)
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "a zip, but not torch's")
    elif kind == "huge":
        path.write_bytes(b"x" * 100)
        monkeypatch.setattr("core.files.checkpoint.MAX_CHECKPOINT_BYTES", 50)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_foreign_and_future_files(tmp_path, model):
    other = tmp_path / "other.pt"
    torch.save({"state_dict": model.state_dict()}, other)
    with pytest.raises(CheckpointError, match="not a Real NVP checkpoint"):
        load_checkpoint(other)
    path = save_checkpoint(tmp_path / "m.pt", model)
    data = torch.load(path, weights_only=True)
    data["version"] = 99
    torch.save(data, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version 99 is not supported"):
        load_checkpoint(tmp_path / "future.pt")


def test_wrong_architecture(tmp_path, model):
    path = save_checkpoint(tmp_path / "m.pt", model)
    data = read_checkpoint(path)
    data["config"]["mid_channels"] = 8  # the weights are for 4
    torch.save(data, tmp_path / "arch.pt")
    with pytest.raises(CheckpointError, match="do not match a Real NVP of this architecture"):
        load_checkpoint(tmp_path / "arch.pt")
    data["config"] = {"image_size": 30, "num_scales": 3}
    torch.save(data, tmp_path / "cfg.pt")
    with pytest.raises(CheckpointError, match="invalid model configuration"):
        load_checkpoint(tmp_path / "cfg.pt")
