"""The training form's *Slurm job* box, shown for *Run on: Slurm cluster (over SSH)*: the
partition, GPUs per node, nodes, time limit and account of the batch job. Once Check host
has reached the login node, the box asks the cluster what it offers (the run agent's
``cluster`` operation: ``sinfo`` and ``sacctmgr`` there, :mod:`core.runs.cluster`) and
fills the partitions, each with its GPUs, time limit and idle nodes, the default first,
and the accounts. The settings are remembered per host in ``hosts.json``
(:mod:`core.runs.hosts`) when a run starts, and refilled when that host is typed again.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QGroupBox, QLabel, QLineEdit

from core.runs import hosts
from core.runs.cluster import ClusterFacts
from core.runs.host import HostFacts
from core.runs.slurm import SlurmRequest, parse_slurm_duration
from core.runs.transport import RemoteError
from explorer.training.form_widgets import form_rows, html, spin_box
from explorer.training.host_fields import HostFields
from explorer.training.remote_run import BlockingCall, HostChoice

DEFAULT_PARTITION = ""  # the combo's data for "Slurm's default"
TIME_SENTENCE = "the time limit must be HH:MM:SS or D-HH:MM:SS (e.g. 04:00:00 or 1-12:00:00)"


class SlurmFields(QGroupBox):
    """A batch job's request; ``changed`` after any edit and when the cluster answered."""

    changed = Signal()

    def __init__(self, where: HostFields) -> None:
        super().__init__("Slurm job")
        self.where = where
        self.cluster: ClusterFacts | None = None
        self.cluster_error: str | None = None
        self.cluster_call: BlockingCall | None = None
        self._asked: HostChoice | None = None

        self.partition = QComboBox()
        # A partition's line is long (GPUs, limit, idle nodes): cut at its end, not the
        # form widened.
        self.partition.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.partition.setMinimumContentsLength(12)
        self.partition.setToolTip(
            "The partition (queue) to submit to; Check host lists the cluster's, with their "
            "GPUs, time limit and idle nodes, its default first"
        )
        self._set_partitions([])
        self.gpus = spin_box(0, 64, 0, "GPUs per node (--gpus-per-node)", "none")
        self.nodes = spin_box(1, 1024, 1, "Nodes; with more than one, torchrun on each")
        self.time = QLineEdit()
        self.time.setPlaceholderText("the partition's limit (HH:MM:SS)")
        self.time.setToolTip(
            "The job's wall-clock limit (--time), HH:MM:SS or D-HH:MM:SS; 90 s before it the "
            "trainer saves and the job requeues itself"
        )
        self.account = QComboBox()
        self.account.setEditable(True)
        self.account.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.account.lineEdit().setPlaceholderText("your default account")
        self.account.setToolTip("The account to charge (--account); empty: your default")
        self.cluster_status = QLabel()
        self.cluster_status.setWordWrap(True)
        self.cluster_status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        rows = form_rows(self)
        rows.addRow("Partition", self.partition)
        rows.addRow("GPUs per node", self.gpus)
        rows.addRow("Nodes", self.nodes)
        rows.addRow("Time limit", self.time)
        rows.addRow("Account", self.account)
        rows.addRow(self.cluster_status)

        where.host_checked.connect(self._host_checked)
        where.host_edited.connect(self._forget_cluster)
        where.run_on.currentIndexChanged.connect(self._sync_visible)
        where.host.editingFinished.connect(self.fill_remembered)
        self.partition.currentIndexChanged.connect(self.changed)
        self.account.currentTextChanged.connect(self.changed)
        self.partition.currentIndexChanged.connect(self._partition_changed)
        for spin in (self.gpus, self.nodes):
            spin.valueChanged.connect(self.changed)
        self.time.textChanged.connect(self.changed)
        self._sync_visible()

    @property
    def active(self) -> bool:
        return self.where.slurm

    def _sync_visible(self) -> None:
        self.setVisible(self.active)
        if self.active and self.cluster is None and self.where.host_facts is not None:
            self._host_checked(self.where.host_facts)

    # -- the request ----------------------------------------------------------------------

    def partition_name(self) -> str:
        """The partition chosen; ``""``: the cluster's default."""
        return str(self.partition.currentData() or "")

    def _set_partitions(self, entries: list[tuple[str, str]], chosen: str = "") -> None:
        """The partition box's entries, ``(text, name)``; ``chosen`` kept, a name the
        cluster did not list too (remembered: the problems say so once it is checked)."""
        if chosen and all(name != chosen for _, name in entries):
            entries = [*entries, (chosen, chosen)]
        if not entries:
            entries = [("the cluster's default", DEFAULT_PARTITION)]
        self.partition.blockSignals(True)
        self.partition.clear()
        for text, name in entries:
            self.partition.addItem(text, name)
        self.partition.setCurrentIndex(max(self.partition.findData(chosen), 0))
        self.partition.blockSignals(False)
        self._partition_changed()
        self.changed.emit()

    def request(self) -> SlurmRequest:
        return SlurmRequest(
            partition=self.partition_name() or None,
            gpus=self.gpus.value() or None,
            nodes=self.nodes.value(),
            time=self.time.text().strip() or None,
            account=self.account.currentText().strip() or None,
        )

    def problems(self) -> list[str]:
        """Why the job cannot be submitted as set; empty when it can."""
        if not self.active:
            return []
        found: list[str] = []
        host = self.where.host_choice().host
        if self.cluster_error:
            found.append(self.cluster_error)
        elif self.asking:
            found.append(f"asking Slurm on {host} for its partitions…")
        time = self.time.text().strip()
        limit = parse_slurm_duration(time) if time else None
        if time and limit is None:
            found.append(f"{TIME_SENTENCE}, not {time!r}")
        name = self.partition_name()
        partition = self.cluster.partition(name) if self.cluster and name else None
        if self.cluster is not None and name and partition is None:
            found.append(f"Slurm on {host} has no partition {name!r}")
        if partition is not None:
            if self.gpus.value() > partition.gpus_per_node:
                has = partition.gpus_per_node or "no"
                found.append(
                    f"{self.gpus.value()} GPUs per node asked for; partition {name}'s nodes "
                    f"have {has}"
                )
            if self.nodes.value() > partition.total:
                found.append(
                    f"{self.nodes.value()} nodes asked for; partition {name} has {partition.total}"
                )
            cap = partition.limit_seconds
            if limit is not None and cap is not None and limit > cap:
                found.append(f"the time limit is over partition {name}'s {partition.time_limit}")
        return found

    @property
    def asking(self) -> bool:
        return self.cluster_call is not None and not self.cluster_call.done

    # -- the cluster ----------------------------------------------------------------------

    def _host_checked(self, facts: HostFacts | str) -> None:
        """Check host reached the login node: ask its Slurm (on a worker thread)."""
        if not self.active or not isinstance(facts, HostFacts) or facts.problem:
            return
        choice = self.where.host_choice()
        self.cluster, self.cluster_error, self._asked = None, None, choice
        try:
            host = choice.run_host()
        except RemoteError as exc:  # the host check says it too
            self.cluster_error = str(exc)
            return
        self.cluster_status.setText(f"Asking Slurm on {choice.host} for its partitions…")
        call = BlockingCall(host.cluster, self)
        call.succeeded.connect(lambda found, c=choice: self._cluster_answered(c, found))
        call.failed.connect(lambda text, c=choice: self._cluster_failed(c, text))
        self.cluster_call = call.start()
        self.changed.emit()

    def _cluster_answered(self, choice: HostChoice, facts: ClusterFacts) -> None:
        if choice != self._asked:
            return
        self.cluster = facts
        account = self.account.currentText()
        entries = [(p.describe(), p.name) for p in facts.partitions]
        self._set_partitions(entries, self.partition_name())
        self.account.blockSignals(True)
        self.account.clear()
        self.account.addItems(list(facts.accounts))
        self.account.setEditText(account if account else "")
        self.account.blockSignals(False)
        accounts = ", ".join(facts.accounts) if facts.accounts else "none listed (no accounting)"
        self.cluster_status.setText(
            f"{len(facts.partitions)} partition{'s' * (len(facts.partitions) != 1)}; "
            f"accounts: {html(accounts)}"
        )
        self.changed.emit()

    def _cluster_failed(self, choice: HostChoice, text: str) -> None:
        if choice != self._asked:
            return
        self.cluster_error = text
        self.cluster_status.setText(f"<span style='color:#ff8a80'>{html(text)}</span>")
        self.changed.emit()

    def _forget_cluster(self) -> None:
        self.cluster, self.cluster_error, self._asked = None, None, None
        self.cluster_status.setText("")

    def _partition_changed(self) -> None:
        """The chosen partition's GPUs, limit and idle nodes, whole, in the tooltip."""
        partition = self.cluster.partition(self.partition_name()) if self.cluster else None
        if partition is not None:
            self.partition.setToolTip(partition.describe())

    # -- remembered per host --------------------------------------------------------------

    def remembered_fields(self) -> dict[str, str]:
        """The job's settings as :func:`core.runs.hosts.remember` keeps them."""
        return {
            "slurm_partition": self.partition_name(),
            "slurm_gpus": str(self.gpus.value()),
            "slurm_nodes": str(self.nodes.value()),
            "slurm_time": self.time.text().strip(),
            "slurm_account": self.account.currentText().strip(),
        }

    def remember(self, host: str) -> None:
        hosts.remember(host, **self.remembered_fields())

    def fill_remembered(self) -> None:
        """The job settings remembered for the host typed."""
        kept = hosts.remembered(self.where.host.text())
        if "slurm_partition" in kept:
            box = self.partition
            entries = [
                (box.itemText(i), str(box.itemData(i)))
                for i in range(box.count())
                if box.itemData(i)
            ]
            self._set_partitions(entries, kept["slurm_partition"])
        for key, spin in (("slurm_gpus", self.gpus), ("slurm_nodes", self.nodes)):
            if kept.get(key, "").isdigit():
                spin.setValue(int(kept[key]))
        if "slurm_time" in kept:
            self.time.setText(kept["slurm_time"])
        if "slurm_account" in kept:
            self.account.setEditText(kept["slurm_account"])
