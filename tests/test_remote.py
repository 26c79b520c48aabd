"""Runs on another machine over SSH, against a real OpenSSH server on 127.0.0.1
(``tests/sshd.py``): check, start, follow through cut connections, stop, kill, fetch, and
one sentence for every bad input. The "host" is this machine, so the tests can look at
the run folder directly to compare."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import MNIST_DIR, needs_mnist, wait_for
from sshd import TRAIN, running_sshd

from core.cli import main as cli_main
from core.runs.agent import expand_home, read_launch, trainer_alive, trainer_argv
from core.runs.host import (
    RemoteRun,
    default_cache_dir,
    local_host,
    run_file,
    safe_target,
    sha256_file,
)
from core.runs.transport import (
    RemoteError,
    SshTransport,
    split_target,
    stop_started_masters,
)

NASTY = "a b $(touch x); 'q' \"d\" `id`"  # a folder name the host's shell must not run


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli_main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def remote_cli(server, capsys, *argv: str) -> tuple[int, str, str]:
    """``realnvp remote --ssh-config CFG rnvp-test ACTION ...`` with the host's Python."""
    action, *rest = argv
    where = ["--python", server.python, "--runs-dir", str(server.root / "runs")]
    return cli(
        capsys, "remote", "--ssh-config", str(server.config), server.alias, action, *where, *rest
    )


def file_events(out: str | Path) -> list[dict]:
    lines = (Path(out) / "events.jsonl").read_bytes().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


# -- no server needed -----------------------------------------------------------------------


def test_a_fetch_writes_only_inside_its_folder(tmp_path: Path):
    assert safe_target(tmp_path, "samples/s_01.png") == tmp_path / "samples" / "s_01.png"
    for name in ("../x", "/etc/passwd", "a/../../b", "C:evil", "a\\..\\b", "", "."):
        with pytest.raises(RemoteError) as info:
            safe_target(tmp_path, name)
        assert info.value.kind == "bad-input"


def test_the_agent_checks_a_data_folder_typed_from_the_machines_home(tmp_path: Path):
    """The training page's data check is the run agent's ``scan`` (no Qt on the host): a
    folder typed ``~/...`` is the home of the machine it runs on, unreadable files named."""
    from PIL import Image

    folder = tmp_path / "home" / "pics"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        Image.new("L", (8, 8), i * 40).save(folder / f"{i}.png")
    (folder / "sub" / "cut.png").write_bytes(b"not an image")
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    argv = local_host().agent_command("scan", "folder", "~/pics")
    answer = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    lines = [json.loads(line) for line in answer.stdout.splitlines()]
    assert [r["kind"] for r in lines].count("thumbnail") == 3
    assert lines[-1] == {
        "kind": "done",
        "files": 4,
        "checked": 4,
        "readable": 3,
        "skipped": ["sub/cut.png"],
    }
    devices = subprocess.run(local_host().agent_command("devices"), capture_output=True, text=True)
    record = json.loads(devices.stdout)
    assert [d["name"] for d in record["devices"]][:2] == ["auto", "cpu"]


def test_an_events_host_path_names_a_file_of_the_run():
    run = RemoteRun("/home/me/runs/run 1", "gpubox")
    assert run_file(run, "/home/me/runs/run 1/samples/samples_0000500.png") == (
        "samples/samples_0000500.png"
    )
    assert run_file(run.out, "latest.pt") == "latest.pt"
    for bad in ("/home/me/runs/other/latest.pt", "/etc/passwd", "../x"):
        with pytest.raises(RemoteError):
            run_file(run, bad)


def test_host_names_are_checked_before_ssh_sees_them():
    assert split_target("me@gpu.example.org:2222") == ("me@gpu.example.org", 2222)
    assert split_target("gpubox") == ("gpubox", None)
    for bad in ("-oProxyCommand=touch x", "two words", "", "h:70000"):
        with pytest.raises(RemoteError) as info:
            split_target(bad)
        assert info.value.kind == "bad-input"


def test_every_word_of_a_remote_command_is_quoted():
    transport = SshTransport("gpubox", env={"A": "1 2"}, share=False)
    argv = transport.command(["python3", "-m", "x", NASTY, "$HOME;rm -rf /"])
    words = ["env", "A=1 2", "python3", "-m", "x", NASTY, "$HOME;rm -rf /"]
    # The host's shell splits the one command string back into exactly these words.
    shell = subprocess.run(
        ["sh", "-c", f'for w in {argv[-1]}; do printf "%s\\n" "$w"; done'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shell.stdout.splitlines() == words
    assert "BatchMode=yes" in argv and argv[argv.index("--") + 1] == "gpubox"


def test_home_relative_paths_mean_the_hosts_home():
    transport = SshTransport("gpubox", share=False)
    # A quoted ~ is not expanded by the host's shell; a command over ssh starts at home.
    assert transport.program("~/venv/bin/python") == "./venv/bin/python"
    assert transport.program("/opt/py/bin/python") == "/opt/py/bin/python"
    with pytest.raises(RemoteError):
        transport.program("~other/bin/python")
    home = os.path.expanduser("~")
    assert expand_home("~/data") == f"{home}/data"
    assert expand_home("--data-dir=~/data") == f"--data-dir={home}/data"
    assert expand_home("a~/b") == "a~/b" and expand_home("--lr") == "--lr"


def test_several_gpus_run_torchrun_with_the_same_trainer_command(tmp_path: Path):
    one = trainer_argv("py", 1, ["--dataset", "mnist"], tmp_path)
    assert one == ["py", "-m", "core", "train", "--dataset", "mnist", "--progress", "json",
                   "--out", str(tmp_path)]  # fmt: skip
    four = trainer_argv("py", 4, ["--dataset", "mnist"], tmp_path)
    assert four[:6] == [
        "py",
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "4",
        "--standalone",
    ]
    assert four[6:] == one[1:]


def test_a_remembered_run_round_trips_and_has_a_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    run = RemoteRun("/home/me/realnvp-runs/run-1", "me@gpu:22", "~/venv/bin/python")
    assert RemoteRun.from_dict(json.loads(json.dumps(run.to_dict()))) == run
    if sys.platform.startswith("linux"):
        assert default_cache_dir(run) == tmp_path / "realnvp" / "runs" / "me@gpu_22" / "run-1"


def test_a_follower_closed_from_another_thread_ends(tmp_path: Path):
    """The GUI closes a follower from the GUI thread while a worker iterates it."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "events.jsonl").write_text('{"event": "start", "step": 0, "total_steps": 5}\n')
    (out / "launch.json").write_text(json.dumps({"pid": os.getpid()}))  # alive: never ends
    follower = local_host(runs_dir=str(tmp_path)).follow(str(out))
    seen = []

    def worker() -> None:
        seen.extend(follower)

    thread = threading.Thread(target=worker)
    thread.start()
    wait_for(lambda: any(u.kind == "event" for u in seen), 30, "the first event")
    follower.close()
    thread.join(10)
    assert not thread.is_alive()
    assert [u.kind for u in seen] == ["connected", "event"] and follower.offset > 0


def test_local_host_says_when_a_run_folder_is_missing(tmp_path: Path):
    host = local_host(runs_dir=str(tmp_path))
    with pytest.raises(RemoteError) as info:
        host.status("nothing-here")
    assert info.value.kind == "missing-run" and "nothing-here" in str(info.value)


@pytest.mark.skipif(os.name == "nt", reason="a shell script stands in for the trainer")
def test_a_run_here_ends_with_its_trainers_exit_status(tmp_path: Path):
    """The agent's supervisor writes the trainer's exit status, and the follow's end
    carries it: a run here and one on a host fail with the same sentence."""
    fake = tmp_path / "python"  # the agent runs as itself; the "trainer" fails at once
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$2" = core ]; then echo \'{"event": "error", "message": "bad"}\'; exit 2; fi\n'
        f'exec {shlex.quote(sys.executable)} "$@"\n'
    )
    fake.chmod(0o755)
    host = local_host(str(fake), runs_dir=str(tmp_path / "runs"))
    run = host.start(["--dataset", "folder", "--data-dir", str(tmp_path)], out="r")
    out = tmp_path / "runs" / "r"
    assert run.out == str(out) and run.pid == read_launch(out)["pid"]
    assert "pid" not in run.to_dict()  # a later start in the folder has another
    end = list(host.follow(run))[-1]
    assert (end.kind, end.state, end.code) == ("ended", "failed", 2)
    assert json.loads((out / "exit.json").read_text()) == {"code": 2}


def test_options_are_spelled_out_here_and_on_a_host(capsys):
    """One rule for local and remote train (the host's agent reads the train options
    without abbreviations): an abbreviation is refused by both, in one line."""
    for argv in (["train"], ["remote", "gpubox", "train"]):
        with pytest.raises(SystemExit) as info:
            cli_main([*argv, "--max-step", "3"])
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.count("\n") == 1, argv
        assert "unrecognized arguments: --max-step 3" in err, argv


def test_remote_train_help_is_the_launchers(capsys):
    with pytest.raises(SystemExit):
        cli_main(["remote", "gpubox", "train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--progress" not in text  # the launcher always sets it
    assert "runs/run" not in text  # the local default, not the host's
    assert "--out OUT the run folder on the host" in text


def test_a_run_follows_with_the_options_that_find_it():
    run = RemoteRun("/h/runs/it's $x", "me@gpu:2222", "~/venv/bin/python", "~/my cfg", "~/r")
    assert shlex.split(run.follow_command()) == [
        "realnvp", "remote", "--ssh-config", "~/my cfg", "me@gpu:2222", "follow",
        "--python", "~/venv/bin/python", "--runs-dir", "~/r", "/h/runs/it's $x",
    ]  # fmt: skip


def test_a_checkpoint_to_resume_is_the_runs_folders_and_checked_before_a_start(tmp_path):
    from core.runs.agent import AgentError, _checked_inputs, _train_options

    (tmp_path / "run-1").mkdir()
    (tmp_path / "run-1" / "latest.pt").write_bytes(b"x")
    options = _train_options(["--dataset", "mnist", "--resume", "run-1/latest.pt"])
    assert _checked_inputs(options, str(tmp_path)) == tmp_path / "run-1" / "latest.pt"
    home = Path.home()
    for resume, where in (("~/rnvp-none.pt", home / "rnvp-none.pt"), ("run-1", tmp_path / "run-1")):
        with pytest.raises(AgentError) as info:
            _checked_inputs(_train_options([f"--resume={resume}"]), str(tmp_path))
        assert str(info.value).startswith(f"cannot resume {where} on ")
    data = ["--dataset", "mnist", "--data-dir", "~/rnvp-no-such-data"]
    with pytest.raises(AgentError, match=r"no data folder .* \(add --download to fetch mnist\)"):
        _checked_inputs(_train_options(data), str(tmp_path))
    assert _checked_inputs(_train_options([*data, "--download"]), str(tmp_path)) is None


def test_a_resumed_run_is_starting_until_its_trainer_speaks(tmp_path: Path):
    """The resume race: between ``remote train --resume`` and the resumed trainer's first
    event the folder's last event is the previous segment's done."""
    from core.runs.agent import run_status

    out = tmp_path / "run"
    out.mkdir()
    earlier = (
        '{"event": "start", "step": 0, "total_steps": 4}\n'
        '{"event": "step", "step": 4, "total_steps": 4, "loss": 3.0}\n'
        '{"event": "done", "step": 4, "reason": "finished"}\n'
    )
    (out / "events.jsonl").write_text(earlier)
    launch = {"pid": os.getpid(), "events_offset": len(earlier)}  # alive: still starting
    (out / "launch.json").write_text(json.dumps(launch))
    assert run_status(out)["state"] == "running"
    follower = local_host(runs_dir=str(tmp_path)).follow(str(out))
    seen = []
    thread = threading.Thread(target=lambda: seen.extend(follower))
    thread.start()
    wait_for(lambda: sum(u.kind == "event" for u in seen) == 3, 30, "the earlier events")
    time.sleep(1.0)  # four polls of the agent: it must not take the earlier done as the end
    assert not any(u.kind == "ended" for u in seen)
    follower.close()
    thread.join(10)
    # A resumed trainer that dies before it speaks failed, with its log's last line.
    (out / "trainer.log").write_text("Traceback ...\nValueError: bad checkpoint\n")
    (out / "launch.json").write_text(json.dumps({**launch, "pid": 2**22 + 1}))
    status = run_status(out)
    assert status["state"] == "failed" and status["message"].endswith(
        "the trainer ended before its first step: ValueError: bad checkpoint"
    )


# -- against the server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    yield from running_sshd(tmp_path_factory)


@pytest.mark.slow
def test_check_reports_the_host_and_runs_this_checkout(sshd, capsys):
    status, out, err = remote_cli(sshd, capsys, "check", "--json")
    assert status == 0, err
    facts = json.loads(out)
    # sshd passes no environment: the wrapper Python must still import this checkout.
    assert facts["core_path"] == str(Path(__file__).resolve().parents[1] / "core")
    assert facts["cpu_count"] >= 1 and facts["free_bytes"] > 0
    assert facts["checkpoint_format"] == 1 and facts["problem"] is None
    status, out, _ = remote_cli(sshd, capsys, "check")
    assert status == 0 and "CPU cores:" in out and "GPUs:" in out


@pytest.mark.slow
def test_a_checkpoint_format_of_another_version_is_refused_before_starting(
    sshd, capsys, monkeypatch
):
    import core.runs.host as remote

    monkeypatch.setattr(remote, "CHECKPOINT_FORMAT", 99)
    status, _, err = remote_cli(sshd, capsys, "check")
    assert status == 2 and "checkpoint format 1, this program reads format 99" in err
    with pytest.raises(RemoteError) as info:
        sshd.host().start(["--dataset", "mnist"])
    assert info.value.kind == "version"
    assert not (sshd.root / "runs").exists() or not any((sshd.root / "runs").iterdir())


@pytest.mark.parametrize(
    ("alias", "kind", "sentence"),
    [
        ("rnvp-nosuchhost.invalid", "unknown-host", "unknown host rnvp-nosuchhost.invalid"),
        ("rnvp-refused", "refused", "rnvp-refused refused the connection"),
        ("rnvp-wrongkey", "auth", "use a key or an agent for rnvp-wrongkey"),
        ("rnvp-unknownkey", "host-key", "rnvp-unknownkey's host key is not known"),
    ],
)
def test_a_bad_host_is_one_sentence(sshd, capsys, alias, kind, sentence):
    with pytest.raises(RemoteError) as info:
        sshd.host(alias).check()
    assert info.value.kind == kind
    # --ssh-config after the host, as before it.
    status, out, err = cli(
        capsys, "remote", alias, "status", "--ssh-config", str(sshd.config), "run-1"
    )
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and sentence in err and "Traceback" not in err
    if kind == "host-key":  # the command to type works where the alias lives: the file
        assert f"connect once with ssh -F {sshd.config} {alias} in a terminal" in err


def test_a_wrong_remote_python_is_one_sentence(sshd, capsys, tmp_path):
    status, _, err = cli(
        capsys, "remote", "--ssh-config", str(sshd.config), sshd.alias, "check",
        "--python", "/no/such/python",
    )  # fmt: skip
    assert status == 2 and "there is no Python /no/such/python on rnvp-test" in err
    # A Python without the package: a bare virtual environment.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "v")], check=True)
    bare = str(tmp_path / "v" / "bin" / "python")
    with pytest.raises(RemoteError) as info:
        sshd.host(python=bare).status("run-1")
    assert info.value.kind == "no-package"
    assert f"then install it with {bare} -m pip install ./realnvp_explorer-*.whl" in str(info.value)
    assert f"{bare} -m pip install ./realnvp-explorer" in str(info.value)


@pytest.mark.slow
@needs_mnist  # its run trains on MNIST on the host
def test_the_hosts_python_is_typed_once(sshd, capsys, tmp_path):
    """``train --python PY`` remembers PY (and the runs folder, the ssh config) for the host
    in the config folder; ``status`` then needs neither, ``check`` shows them, and a
    ``--python`` typed again wins and is remembered."""
    from core.runs.hosts import hosts_file, remembered

    runs = str(sshd.root / "runs")
    status, out, err = cli(
        capsys, "remote", "--ssh-config", str(sshd.config), sshd.alias, "train",
        "--python", sshd.python, "--runs-dir", runs, *TRAIN, "--max-steps", "2",
    )  # fmt: skip
    assert status == 0, err
    run = out.strip().splitlines()[-1]
    assert hosts_file().parent == Path(os.environ["REALNVP_CONFIG_DIR"])
    assert remembered(sshd.alias) == {
        "python": sshd.python, "runs_dir": runs, "ssh_config": str(sshd.config)
    }  # fmt: skip
    status, out, err = cli(capsys, "remote", sshd.alias, "status", Path(run).name)
    assert status == 0 and out.startswith(("running", "done")), err
    status, out, err = cli(capsys, "remote", sshd.alias, "check")
    assert status == 0, err
    assert f"remembered for {sshd.alias} in {hosts_file()}: python {sshd.python}" in out
    status, _, err = cli(capsys, "remote", sshd.alias, "check", "--python", "/no/such/python")
    assert status == 2 and "there is no Python /no/such/python" in err
    assert remembered(sshd.alias)["python"] == sshd.python  # a Python that failed is not kept
    other = tmp_path / "python"
    other.symlink_to(sshd.python)
    status, _, err = cli(capsys, "remote", sshd.alias, "status", run, "--python", str(other))
    assert status == 0, err
    assert remembered(sshd.alias)["python"] == str(other)


@pytest.mark.slow
def test_a_missing_run_folder_is_one_sentence(sshd, capsys):
    for action in ("status", "follow", "stop", "kill", "fetch"):
        status, _, err = remote_cli(sshd, capsys, action, "no-such-run")
        assert status == 2, (action, err)
        # The host as typed, not its own hostname.
        where = f"there is no run folder {sshd.root / 'runs' / 'no-such-run'} on rnvp-test"
        assert where in err, action
        assert err.count("\n") == 1, err


@pytest.fixture(scope="module")
def finished_run(sshd, tmp_path_factory):
    """A run started with ``realnvp remote HOST train`` into a folder whose name holds
    spaces, quotes, ``$(...)`` and backticks, followed to its end through a connection cut
    twice: ``(run folder, updates seen, events in the file)``."""
    if not MNIST_DIR.is_dir():
        pytest.skip(f"MNIST files not found in {MNIST_DIR}")
    home_x = Path.home() / "x"
    assert not home_x.exists()
    runs = sshd.root / "runs"
    argv = [
        "remote", "--ssh-config", str(sshd.config), sshd.alias, "train",
        "--python", sshd.python, "--runs-dir", str(runs), "--out", NASTY,
        *TRAIN, "--max-steps", "40", "--eval-every", "10",
    ]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "core", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()[-1]
    assert out == str(runs / NASTY) and Path(out, "events.jsonl").is_file()

    host = sshd.host()
    follower = host.follow(out, retry_delays=(0.5,))
    updates = []
    cuts = []

    def cut_when_stepping(update) -> None:
        # Cut twice, at the 3rd and 8th step event: first the follower's own ssh, then the
        # shared master connection under it.
        steps = sum(u.kind == "event" and u.event["event"] == "step" for u in updates)
        if update.kind == "event" and steps in (3, 8) and len(cuts) < (1 if steps == 3 else 2):
            if not cuts:
                cuts.append(follower.process.pid)
                follower.process.kill()
            else:
                pid = host.transport.master_pid()
                assert pid is not None
                cuts.append(pid)
                os.kill(pid, signal.SIGKILL)

    for update in follower:
        updates.append(update)
        cut_when_stepping(update)
    assert len(cuts) == 2
    assert not home_x.exists(), "the host's shell ran part of the folder name"
    yield out, updates, file_events(out), follower


@needs_mnist
@pytest.mark.slow
def test_a_run_survives_two_cut_connections_and_no_event_is_lost_or_repeated(finished_run):
    out, updates, events, follower = finished_run
    kinds = [u.kind for u in updates]
    assert kinds.count("lost") == 2 and kinds.count("connected") == 3
    assert follower.reconnects == 2
    assert kinds[-1] == "ended" and updates[-1].state == "done"
    seen = [u.event for u in updates if u.kind == "event"]
    assert seen == events  # every event once, in order, though the connection broke twice
    assert events[-1]["event"] == "done" and events[-1]["step"] == 40
    assert updates[-1].offset == (Path(out) / "events.jsonl").stat().st_size
    assert any("connection" in u.text and "retrying in" in u.text for u in updates)


@needs_mnist
@pytest.mark.slow
def test_status_of_a_finished_run(finished_run, sshd, capsys):
    out = finished_run[0]
    status, text, err = remote_cli(sshd, capsys, "status", out, "--json")
    assert status == 0, err
    record = json.loads(text)
    assert (record["state"], record["step"], record["max_steps"]) == ("done", 40, 40)
    assert record["test_bpd"] == pytest.approx(finished_run[2][-1]["test_bpd"])
    # The trainer exits just after its done event.
    wait_for(lambda: sshd.host().status(out).alive is False, 30, "the trainer's exit")
    # A run name without a folder is looked up in the runs folder.
    status, text, _ = remote_cli(sshd, capsys, "status", NASTY)
    assert status == 0 and text.startswith("done (step 40/40, test ")


@needs_mnist
@pytest.mark.slow
def test_fetch_brings_the_checkpoint_back_bit_for_bit(finished_run, sshd, capsys, tmp_path):
    from core.files.checkpoint import load_checkpoint

    out = Path(finished_run[0])
    status, text, err = remote_cli(sshd, capsys, "fetch", str(out), "--to", str(tmp_path / "f"))
    assert status == 0, err
    assert text.splitlines()[-1] == str(tmp_path / "f")
    for name in ("latest.pt", "best.pt", "events.jsonl", "trainer.log", "launch.json"):
        assert sha256_file(tmp_path / "f" / name) == sha256_file(out / name), name
    samples = sorted(p.name for p in (out / "samples").iterdir())
    assert sorted(p.name for p in (tmp_path / "f" / "samples").iterdir()) == samples
    assert not list((tmp_path / "f").rglob("*.part"))
    model, meta = load_checkpoint(tmp_path / "f" / "latest.pt")
    assert meta["step"] == 40 and model.config.image_size == 28
    # A preview as the GUI gets it: the samples event names it by its path on the host.
    sample = next(e["path"] for e in finished_run[2] if e["event"] == "samples")
    result = sshd.host().fetch(str(out), tmp_path / "p", names=[run_file(str(out), sample)])
    assert result.files == [tmp_path / "p" / "samples" / Path(sample).name]
    # Fetched again: everything is there and verified, nothing is copied.
    result = sshd.host().fetch(str(out), tmp_path / "f")
    assert result.fetched == 0 and result.bytes == 0


@needs_mnist
@pytest.mark.slow
def test_a_cut_fetch_resumes_from_its_part_file(finished_run, sshd, tmp_path):
    out = Path(finished_run[0])
    host = sshd.host()
    size = (out / "latest.pt").stat().st_size
    cancel = threading.Event()

    def progress(name: str, done: int, total: int) -> None:
        if done >= total // 3:
            cancel.set()

    with pytest.raises(RemoteError) as info:
        host.fetch(str(out), tmp_path, names=["latest.pt"], progress=progress, cancel=cancel)
    assert info.value.kind == "cancelled"
    assert not (tmp_path / "latest.pt").exists()
    (part,) = tmp_path.glob(".latest.pt.*.part")
    kept = part.stat().st_size
    assert 0 < kept < size
    result = host.fetch(str(out), tmp_path, names=["latest.pt"])
    assert result.bytes == size - kept  # only the rest travelled
    assert (
        sha256_file(tmp_path / "latest.pt")
        == hashlib.sha256((out / "latest.pt").read_bytes()).hexdigest()
    )
    assert not part.exists()


@needs_mnist
@pytest.mark.slow
def test_a_taken_run_folder_is_refused(finished_run, sshd, capsys):
    out = finished_run[0]
    before = (Path(out) / "events.jsonl").read_bytes()
    status, text, err = remote_cli(sshd, capsys, "train", "--out", out, *TRAIN, "--max-steps", "2")
    assert status == 2 and text == ""
    assert f"{out} already holds a finished run (step 40 of 40" in err
    assert "--resume" in err and "--overwrite" in err and err.count("\n") == 1
    assert (Path(out) / "events.jsonl").read_bytes() == before


@needs_mnist
@pytest.mark.slow
def test_stop_saves_and_kill_ends(sshd, capsys):
    host = sshd.host()
    long_run = [*TRAIN, "--max-steps", "5000", "--eval-every", "5000"]
    stopped = host.start(long_run)
    killed = host.start(long_run)
    for run in (stopped, killed):
        wait_for(lambda run=run: host.status(run).step >= 2, what="the first steps")
    status, _, err = remote_cli(sshd, capsys, "stop", stopped.out)
    assert status == 0, err
    status, _, err = remote_cli(sshd, capsys, "follow", stopped.out)
    assert status == 0, err
    final = host.status(stopped)
    assert final.state == "stopped" and (Path(stopped.out) / "latest.pt").is_file()
    assert file_events(stopped.out)[-1]["reason"] == "stopped"

    launch = read_launch(Path(killed.out))
    status, _, err = remote_cli(sshd, capsys, "kill", killed.out)
    assert status == 0, err
    wait_for(lambda: trainer_alive(Path(killed.out), launch) is False, 30, "the kill")
    final = host.status(killed)
    assert (final.state, final.message, final.alive) == ("failed", "killed", False)
    # Neither can be stopped or killed again: one sentence, status 1 (the run's state).
    status, _, err = remote_cli(sshd, capsys, "kill", killed.out)
    assert status == 1 and "is not running (failed)" in err


@needs_mnist
@pytest.mark.slow
def test_a_full_remote_disk_is_one_sentence(sshd, capsys, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    disk = tmp_path / "small-disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        host = sshd.host(runs_dir=str(disk))
        # Room for one checkpoint (12 MB), not for the second: the run fails at its first
        # evaluation, and says why.
        run = host.start([*TRAIN, "--max-steps", "40", "--eval-every", "4"])
        status, _, err = cli(
            capsys, "remote", "--ssh-config", str(sshd.config), sshd.alias, "follow",
            "--python", sshd.python, "--runs-dir", str(disk), run.out,
        )  # fmt: skip
        assert status == 1
        sentence = err.splitlines()[-1]
        assert sentence.startswith("realnvp remote: the run failed: on rnvp-test: ")
        assert "the disk is full" in sentence and "the last good checkpoint is" in sentence
        assert host.status(run).state == "failed"
        # The checkpoint left there takes 12 of the 20 MB: a new run is refused at once.
        with pytest.raises(RemoteError) as info:
            host.start([*TRAIN, "--max-steps", "2"])
        assert info.value.kind == "disk-full"
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@needs_mnist
@pytest.mark.slow
def test_a_host_that_vanishes_mid_run_is_one_sentence_and_the_run_goes_on(tmp_path_factory, capsys):
    own = running_sshd(tmp_path_factory)  # a server of its own, to pull the plug on
    server = next(own)
    try:
        host = server.host()
        run = host.start([*TRAIN, "--max-steps", "60", "--eval-every", "30"])
        follower = host.follow(run, retry_delays=(0.5,), give_up_after=3)
        updates = []
        with pytest.raises(RemoteError) as info:
            for update in follower:
                updates.append(update)
                stepping = update.kind == "event" and update.event["event"] == "step"
                if stepping and server.process.poll() is None:
                    server.vanish()
        assert info.value.kind == "connection-lost"
        assert str(info.value) == (
            "lost the connection to rnvp-test for over 3 s; the run goes on there"
        )
        lost = [u.text for u in updates if u.kind == "lost"]
        assert lost and lost[0].startswith("lost the connection to rnvp-test, retrying in 0 s")
        assert any("refused the connection" in text for text in lost)
        # The command line says the same in one line, status 2.
        status, _, err = cli(
            capsys, "remote", "--ssh-config", str(server.config), server.alias, "follow",
            "--python", server.python, "--runs-dir", str(server.root / "runs"),
            "--give-up-after", "1", run.out,
        )  # fmt: skip
        assert status == 2
        assert err.splitlines()[-1] == (
            "realnvp remote: error: lost the connection to rnvp-test for over 1 s; "
            "the run goes on there"
        )
        # The host comes back: the run went on without it, and following it again from
        # where the first follower stopped loses and repeats nothing.
        server.restart()
        rest = list(host.follow(run, offset=follower.offset, log_offset=follower.log_offset))
        assert rest[-1].kind == "ended" and rest[-1].state == "done"
        seen = [u.event for u in [*updates, *rest] if u.kind == "event"]
        assert seen == file_events(run.out) and seen[-1]["step"] == 60
    finally:
        own.close()


def test_a_killed_shared_connection_leaks_no_connection(tmp_path_factory):
    """The master connection SIGKILLed mid-follow leaves its socket behind: the next
    connect removes it and starts one master, not a plain connection per call that
    outlives the program; the masters this process started end when asked."""
    own = running_sshd(tmp_path_factory)  # a server of its own: its connections are ours
    server = next(own)
    try:
        out = server.root / "runs" / "run-1"
        out.mkdir(parents=True)
        (out / "events.jsonl").write_text('{"event": "start", "step": 0, "total_steps": 5}\n')
        (out / "launch.json").write_text(json.dumps({"pid": os.getpid()}))  # never ends
        host = server.host()
        follower = host.follow("run-1", retry_delays=(0.2,))
        seen: list = []
        thread = threading.Thread(target=lambda: seen.extend(follower))
        thread.start()
        wait_for(lambda: any(u.kind == "event" for u in seen), 30, "the first event")
        os.kill(host.transport.master_pid(), signal.SIGKILL)
        wait_for(lambda: [u.kind for u in seen].count("connected") == 2, 30, "a reconnect")
        for _ in range(5):
            assert host.status("run-1").state == "running"
        # One master and the follower's own ssh; one connection on the host.
        assert len(server.clients()) == 2 and len(server.sessions()) == 1
        follower.close()
        thread.join(10)
        assert stop_started_masters() >= 1
        wait_for(lambda: not server.clients() and not server.sessions(), 10, "the master's end")
    finally:
        own.close()


@needs_mnist
@pytest.mark.slow
def test_train_checks_the_host_first_and_a_resume_is_followed_by_the_pasted_hint(sshd, capsys):
    runs = sshd.root / "runs"
    host = sshd.host()
    first = host.start([*TRAIN, "--max-steps", "4", "--eval-every", "4"], out="to-resume")
    assert list(host.follow(first))[-1].state == "done"
    before = sorted(p.name for p in runs.iterdir())
    # What the host can check is checked before "started", and nothing is left behind.
    status, out, err = remote_cli(sshd, capsys, "train", "--resume", "no-such/latest.pt")
    assert status == 2 and out == ""
    assert f"cannot resume {runs / 'no-such' / 'latest.pt'} on rnvp-test: no such file" in err
    status, out, err = remote_cli(
        sshd, capsys, "train", *TRAIN, "--data-dir", "~/rnvp-no-such-data", "--max-steps", "2"
    )
    assert status == 2 and out == ""
    assert f"there is no data folder {Path.home() / 'rnvp-no-such-data'} on rnvp-test" in err
    assert sorted(p.name for p in runs.iterdir()) == before
    # A relative checkpoint is the runs folder's, as a relative run name is.
    status, out, err = remote_cli(
        sshd, capsys, "train", "--resume", "to-resume/latest.pt", "--max-steps", "8"
    )
    assert status == 0, err
    assert out.strip() == first.out
    # At once: the resumed run is running, not the earlier segment done.
    assert host.status(first).state == "running"
    hint = shlex.split(err.split("follow it with: ", 1)[1])
    assert hint[0] == "realnvp"
    followed = subprocess.run(
        [sys.executable, "-m", "core", *hint[1:]],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert followed.returncode == 0, followed.stderr
    events = file_events(first.out)
    assert [e["event"] for e in events].count("start") == 2
    assert events[-1]["event"] == "done" and events[-1]["step"] == 8
