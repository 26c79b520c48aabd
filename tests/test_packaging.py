"""Installed like a package: the sdist and the wheel carry the bundled model, its card and
the licence, and an installed ``realnvp`` and ``realnvp-explorer`` find the model from any
folder. Also the word ``bundled`` and the package list in ``pyproject.toml``.

The install test builds the sdist, the wheel from it (what ``pip install`` of an sdist
does), installs the wheel into a fresh virtual environment that reuses this environment's
torch, Qt and numpy (nothing is downloaded), and runs both commands from a temporary folder
with the source tree out of reach.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sshd import sshd_missing, start_sshd

from core.files.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from core.files.resources import BUNDLED, bundled_model_path, model_card_path, resolve_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "core", "explorer", "explorer_bench")
SHIPPED = ("default_model.pt", "MODEL_CARD.md", "__init__.py")
NOTICE_COLOR = np.array([0x5A, 0x45, 0x10])  # the explorer's untrained-model banner

needs_bundled = pytest.mark.skipif(
    not (ROOT / "resources" / "default_model.pt").is_file(), reason="no bundled model"
)


def test_every_package_on_disk_is_listed_in_pyproject():
    """The packages are listed (resources/ is installed under another name), so a new
    sub-package must be added there or the wheel would leave it out."""
    from setuptools import find_packages

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    on_disk = set(find_packages(str(ROOT), include=["core*", "explorer*", "explorer_bench*"]))
    missing = on_disk - listed
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"
    assert "realnvp_resources" in listed


def test_the_word_bundled_is_the_bundled_model(tmp_path, monkeypatch):
    assert resolve_checkpoint(BUNDLED) == bundled_model_path()
    assert bundled_model_path().is_absolute() and model_card_path().name == "MODEL_CARD.md"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bundled").write_bytes(b"")  # a file of that name is reached as ./bundled
    assert resolve_checkpoint("./bundled") == Path("bundled")
    with pytest.raises(CheckpointError, match="empty"):
        read_checkpoint("./bundled")


def test_a_missing_bundled_model_is_one_clear_error(tmp_path, monkeypatch):
    import core.files.resources

    monkeypatch.setattr(core.files.resources, "resources_dir", lambda: tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="bundled model is not installed"):
        load_checkpoint(BUNDLED)
    from core.cli import main

    assert main(["info", BUNDLED]) == 2


@needs_bundled
def test_cli_reads_the_word_bundled(tmp_path, capsys):
    from core.cli import main

    assert main(["info", BUNDLED, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["checkpoint"] == str(bundled_model_path()) and info["dataset"] == "mnist"
    assert main(["sample", BUNDLED, "--n", "4", "--out", str(tmp_path / "grid.png")]) == 0
    assert Image.open(tmp_path / "grid.png").mode == "L"  # MNIST digits, grey


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _fresh_venv(path: Path) -> Path:
    """A virtual environment without pip whose packages come from its own site-packages
    first, then from this environment's (torch, Qt, numpy, ...: reused, not downloaded).
    Only the folders are added, not their ``.pth`` files, so this environment's editable
    install of the project stays out."""
    import numpy
    import PIL
    import PySide6
    import torch

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    reused = {str(Path(m.__file__).resolve().parents[1]) for m in (torch, numpy, PIL, PySide6)}
    Path(site, "reused_packages.pth").write_text("\n".join(sorted(reused)) + "\n")
    return python


@needs_bundled
@pytest.mark.slow
def test_wheel_from_the_sdist_installs_and_finds_its_model(tmp_path):
    # A copy of the sources, so building leaves nothing in the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    (src / "resources").mkdir()
    for name in SHIPPED:
        shutil.copy2(ROOT / "resources" / name, src / "resources" / name)

    build = "from setuptools import build_meta as b; import sys; print(b.build_sdist(sys.argv[1]))"
    sdist_name = _run([sys.executable, "-c", build, str(tmp_path / "dist")], src, dict(os.environ))
    sdist = tmp_path / "dist" / sdist_name.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        members = tar.getnames()
        tar.extractall(tmp_path / "unpacked", filter="data")
    top = members[0].split("/")[0]
    for name in ("LICENSE", *(f"resources/{f}" for f in SHIPPED)):
        assert f"{top}/{name}" in members, f"the sdist lacks {name}"

    pip = [sys.executable, "-m", "pip"]
    offline = ["-q", "--no-deps", "--no-index"]
    wheels = tmp_path / "wheels"
    unpacked = tmp_path / "unpacked" / top
    _run(
        [*pip, "wheel", *offline, "--no-build-isolation", "-w", str(wheels), str(unpacked)],
        tmp_path,
        dict(os.environ),
    )
    (wheel,) = wheels.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name in SHIPPED:
        assert f"realnvp_resources/{name}" in names, f"the wheel lacks {name}"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not any(n.startswith(("resources/", "tests/")) for n in names)

    python = _fresh_venv(tmp_path / "venv")
    _run(
        [*pip, "--python", str(python), "install", *offline, str(wheel)], tmp_path, dict(os.environ)
    )
    bin_dir = python.parent
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(
        QT_QPA_PLATFORM="offscreen",
        XDG_CONFIG_HOME=str(tmp_path / "config"),  # the explorer's settings stay here
        HOME=str(tmp_path / "home"),
        OMP_NUM_THREADS="1",
    )

    info = json.loads(_run([str(bin_dir / "realnvp"), "info", "bundled", "--json"], work, env))
    installed = Path(info["checkpoint"])
    assert installed.is_relative_to(tmp_path / "venv"), installed
    assert installed.parent.name == "realnvp_resources" and info["dataset"] == "mnist"
    assert info["parameters"] == 928_123

    shot = work / "shot.png"
    cmd = [str(bin_dir / "realnvp-explorer"), "--screenshot", str(shot), "--threads", "1"]
    _run(cmd, work, env)  # exit status 0: the bundled model, not the untrained fallback
    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert (np.abs(image - NOTICE_COLOR).sum(axis=2) == 0).sum() == 0  # no banner
    assert sorted(p.name for p in work.iterdir()) == ["shot.png"]

    # The install docs/remote.md gives for a host, the wheel copied over: realnvp remote
    # finds the package in that Python there (this machine behind a real sshd).
    if sshd_missing() is None:
        server = start_sshd(tmp_path / "sshd")
        try:
            check = [str(bin_dir / "realnvp"), "remote", server.alias, "check", "--json"]
            check += ["--ssh-config", str(server.config), "--python", str(python)]
            facts = json.loads(_run(check, work, env).splitlines()[-1])
            assert Path(facts["core_path"]).is_relative_to(tmp_path / "venv"), facts
            assert facts["package_version"] and facts["problem"] is None
        finally:
            server.stop()
