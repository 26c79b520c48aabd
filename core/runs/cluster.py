"""What a Slurm cluster offers the person on its login node: its partitions (their GPUs,
time limit and idle nodes, the default one first) and the accounts they may charge, read
from ``sinfo`` and ``sacctmgr`` with explicit formats (never their default layout, which
a site's ``SINFO_FORMAT`` may change).

The run agent's ``cluster`` operation runs :func:`cluster_facts` on the login node; the
training page fills its partition and account boxes from the answer. Torch-free, no Qt.
"""

from __future__ import annotations

import getpass
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from core.runs.slurm import parse_slurm_duration, run_client

# One line per partition and node group: name (``*`` marks the default), availability,
# time limit, nodes allocated/idle/other/total, generic resources.
SINFO_ARGV = ("sinfo", "--noheader", "--format=%P|%a|%l|%F|%G")
# The accounts of the user's associations; fails where there is no accounting (slurmdbd).
SACCTMGR_ARGV = ("sacctmgr", "--noheader", "--parsable2", "show", "assoc")
_GPU = re.compile(r"^gpu(?::[^:(]+)?:(\d+)")


@dataclass(frozen=True)
class Partition:
    """One partition as ``sinfo`` shows it. ``time_limit`` in Slurm's words (``infinite``,
    ``1-00:00:00``); ``gres`` the nodes' generic resources (``gpu:a100:4``)."""

    name: str
    default: bool = False
    available: bool = True
    time_limit: str = "infinite"
    gres: tuple[str, ...] = ()
    idle: int = 0
    total: int = 0

    @property
    def gpus_per_node(self) -> int:
        """The most GPUs a node of the partition has (0: none)."""
        counts = [int(m.group(1)) for g in self.gres if (m := _GPU.match(g))]
        return max(counts, default=0)

    @property
    def limit_seconds(self) -> float | None:
        """The time limit in seconds; ``None`` where there is none."""
        return parse_slurm_duration(self.time_limit)

    def describe(self) -> str:
        """One line for a person: ``gpu (default) · gpu:a100:4 · limit 2-00:00:00 · 3 of 8
        nodes idle``."""
        name = f"{self.name} (default)" if self.default else self.name
        gres = ", ".join(self.gres) if self.gres else "no GPUs"
        limit = f"limit {self.time_limit}" if self.limit_seconds is not None else "no time limit"
        parts = [name, gres, limit, f"{self.idle} of {self.total} nodes idle"]
        if not self.available:
            parts.append("down")
        return " · ".join(parts)


@dataclass(frozen=True)
class ClusterFacts:
    """The partitions (the default first) and the user's accounts (empty without
    accounting)."""

    partitions: tuple[Partition, ...] = ()
    accounts: tuple[str, ...] = ()
    user: str = ""

    def partition(self, name: str) -> Partition | None:
        return next((p for p in self.partitions if p.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClusterFacts:
        partitions = []
        for p in data.get("partitions") or []:
            known = {k: v for k, v in p.items() if k in Partition.__dataclass_fields__}
            known["gres"] = tuple(known.get("gres") or ())
            partitions.append(Partition(**known))
        accounts = tuple(str(a) for a in data.get("accounts") or ())
        return cls(tuple(partitions), accounts, str(data.get("user", "")))


def parse_sinfo(text: str) -> list[Partition]:
    """The partitions of :data:`SINFO_ARGV`'s output, one each (node groups of a partition
    merged), the default first, then in sinfo's order.

    >>> for p in parse_sinfo("gpu|up|2-00:00:00|5/3/0/8|gpu:a100:4\\n"
    ...                      "debug*|up|infinite|0/1/0/1|(null)\\n"):
    ...     print(p.describe())
    debug (default) · no GPUs · no time limit · 1 of 1 nodes idle
    gpu · gpu:a100:4 · limit 2-00:00:00 · 3 of 8 nodes idle
    """
    merged: dict[str, Partition] = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 5 or not fields[0]:
            continue
        name, available, limit, counts, gres = fields
        default = name.endswith("*")
        name = name.rstrip("*")
        try:
            _allocated, idle, _other, total = (int(n) for n in counts.split("/"))
        except ValueError:
            idle = total = 0
        resources = tuple(g for g in gres.split(",") if g and g not in ("(null)", "N/A"))
        seen = merged.get(name)
        if seen is None:
            merged[name] = Partition(name, default, available == "up", limit, resources,
                                     idle, total)  # fmt: skip
        else:
            gres_all = seen.gres + tuple(g for g in resources if g not in seen.gres)
            merged[name] = Partition(name, seen.default or default, seen.available,
                                     seen.time_limit, gres_all, seen.idle + idle,
                                     seen.total + total)  # fmt: skip
    partitions = list(merged.values())
    return sorted(partitions, key=lambda p: not p.default)


def parse_accounts(text: str) -> list[str]:
    """The distinct accounts of ``sacctmgr -nP show assoc ... format=account``, in order."""
    found: list[str] = []
    for line in text.splitlines():
        account = line.strip().split("|")[0]
        if account and account not in found:
            found.append(account)
    return found


class ClusterError(Exception):
    """``sinfo`` is missing or did not answer: one sentence."""


def cluster_facts(where: str) -> ClusterFacts:
    """Ask this machine's Slurm what it offers (see the module docstring). Raises
    :class:`ClusterError` where ``sinfo`` is missing or fails; no accounting gives no
    accounts, not an error."""
    done = run_client(
        list(SINFO_ARGV), where, ClusterError, "it is not a Slurm cluster's login node"
    )
    if done.returncode != 0:
        said = [x.strip() for x in (done.stderr or done.stdout).splitlines() if x.strip()]
        reason = said[-1].removeprefix("sinfo: error: ") if said else "no reason given"
        raise ClusterError(f"sinfo on {where} failed: {reason}")
    user = os.environ.get("USER") or getpass.getuser()
    accounts: list[str] = []
    try:
        asked = subprocess.run(
            [*SACCTMGR_ARGV, f"user={user}", "format=account"],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if asked.returncode == 0:
            accounts = parse_accounts(asked.stdout)
    except (OSError, subprocess.SubprocessError):
        pass  # no sacctmgr, or no accounting: the account is the cluster's default
    return ClusterFacts(tuple(parse_sinfo(done.stdout)), tuple(accounts), user)
