"""CPU threads: every compute command takes ``--threads``, and its default neither spins
against nor shares a core that another process holds (issue 35, item 12)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core import cli
from core.training import threads

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "cores, others, expected",
    [(2, 0, 2), (2, 1, 1), (2, 8, 1), (16, 3, 13), (1, 0, 1), (4, None, 4)],
)
def test_one_thread_fewer_for_each_core_another_process_keeps_busy(cores, others, expected):
    assert threads.default_threads(cores, others) == expected


def test_others_running_is_the_median_reading_less_the_reader(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    readings = iter([3, 9, 3, 2, 3])  # one passing spike does not count

    def read_text(self, *args, **kwargs):
        return f"cpu  1 2 3\nprocs_running {next(readings)}\nprocs_blocked 0\n"

    monkeypatch.setattr(Path, "read_text", read_text)
    assert threads.others_running(stat_path=str(stat), interval_s=0, own=lambda: 1) == 2


def test_own_running_counts_this_process_running_threads(tmp_path):
    for tid, state in ((1, "R"), (2, "S"), (3, "R")):
        (tmp_path / str(tid)).mkdir()
        (tmp_path / str(tid) / "stat").write_text(f"{tid} (py (x) thread) {state} 1 2 3\n")
    assert threads.own_running(str(tmp_path)) == 2
    assert threads.own_running(str(tmp_path / "none")) == 1  # the reader, at least
    assert threads.own_running() >= 1  # this very process, read for real


def test_others_running_is_unknown_without_the_figure(tmp_path):
    (tmp_path / "stat").write_text("cpu  1 2 3\n")
    assert threads.others_running(stat_path=str(tmp_path / "stat"), interval_s=0) is None
    assert threads.others_running(stat_path=str(tmp_path / "missing"), interval_s=0) is None


def test_the_wait_is_passive_beside_a_busy_process_unless_chosen_or_too_late(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch")
    env: dict[str, str] = {}
    assert threads.prepare_openmp(env, busy=1) and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {}
    assert not threads.prepare_openmp(env, busy=0) and env == {}  # quiet: spinning is faster
    for chosen in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "10000"}):
        env = dict(chosen)
        assert not threads.prepare_openmp(env, busy=1) and env == chosen  # the user's choice
    monkeypatch.setitem(sys.modules, "torch", torch)
    env = {}
    assert not threads.prepare_openmp(env, busy=1) and env == {}  # libgomp has read it


SPY = """
import os, sys
seen = []

class Spy:  # records the wait policy at the moment torch is first imported
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))

sys.meta_path.insert(0, Spy())
import core.cli
print(seen[0] if seen else "torch not imported")
"""


@pytest.mark.parametrize("preset, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_beside_a_busy_process_the_command_line_sets_the_wait_before_torch_loads(preset, expected):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["PYTHONPATH"] = str(ROOT)
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    # Two busy processes: one core held whatever else this machine runs.
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        out = subprocess.run(
            [sys.executable, "-c", SPY], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


# The smallest command line of each compute command; every command is either here or below.
COMPUTE = {
    "train": ["train"],
    "sample": ["sample", "bundled"],
    "encode": ["encode", "bundled", "a.png"],
    "complete": ["complete", "bundled", "a.png", "--mask", "m.png", "--out", "o"],
    "eval": ["eval", "bundled"],
    "export": ["export", "bundled", "o.pt"],
    "directions": ["directions", "bundled", "--out", "o.npz"],
    "bench": ["bench"],
}
NOT_COMPUTE = {"info": ["info", "bundled"], "remote": ["remote", "host", "train"]}


def test_every_command_is_classed_compute_or_not():
    assert set(COMPUTE) | set(NOT_COMPUTE) == set(cli.COMMANDS)


@pytest.mark.parametrize("command", sorted(COMPUTE))
def test_every_compute_command_takes_threads(command):
    args = cli.build_parser().parse_args([*COMPUTE[command], "--threads", "3"])
    assert args.threads == 3 and args.threads_here
    default = cli.build_parser().parse_args(COMPUTE[command])
    assert default.threads is None and default.threads_here


def test_remote_train_forwards_threads_to_the_host_without_using_them_here():
    args = cli.build_parser().parse_args([*NOT_COMPUTE["remote"], "--threads", "3"])
    assert args.threads == 3 and not args.threads_here
    assert not getattr(cli.build_parser().parse_args(NOT_COMPUTE["info"]), "threads_here", False)


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_main_applies_threads_and_the_busy_default(tmp_path, monkeypatch, torch_threads):
    out = str(tmp_path / "s.png")
    torch.set_num_threads(1)
    assert cli.main(["sample", "bundled", "--n", "1", "--out", out, "--threads", "2"]) == 0
    assert torch.get_num_threads() == 2
    # Two cores, another process running: one thread, without --threads.
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "others_running", lambda: 1)
    assert cli.main(["sample", "bundled", "--n", "1", "--out", out]) == 0
    assert torch.get_num_threads() == 1
    monkeypatch.setattr(threads, "others_running", lambda: 0)  # quiet: every core
    assert cli.main(["sample", "bundled", "--n", "1", "--out", out]) == 0
    assert torch.get_num_threads() == 2


def test_the_explorer_folder_import_team_follows_the_same_default(monkeypatch):
    """The one team of the explorer not chosen by measuring (a folder import): every core
    beside a busy process would collapse like the command line's did."""
    from explorer.engine.devices import batch_threads

    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "others_running", lambda: 1)
    assert batch_threads() == 1
    monkeypatch.setattr(threads, "others_running", lambda: 0)
    assert batch_threads() == 2
