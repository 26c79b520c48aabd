"""The main window's menu bar, its actions and the page bar (napari keeps its menus apart
from the window the same way): File (checkpoints, recent files and runs, saving), Edit
(undo), Sample, Images (import, A and B, export, directions), View (pages, tabs, full
screen, layout) and Help. Every action is added to the window as well, so its shortcut
works while the menu bar is hidden. The window wires the panels; this module only says
which of the window's slots each entry calls."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import QMenu, QToolBar

from core.runs.host import RemoteRun, RunStatus, host_for
from core.runs.slurm import ACTIVE_STATES
from explorer.settings import DEFAULT_CHECKPOINT
from explorer.theme import CHECKED_TOOL_STYLE
from explorer.training.remote_run import BlockingCall, run_entry_text
from explorer.widgets.dialogs import show_about

if TYPE_CHECKING:
    from explorer.main_window import MainWindow

EXPLORER_PAGE, TRAINING_PAGE = "explorer", "training"
PAGES = (EXPLORER_PAGE, TRAINING_PAGE)
TABS = ("levels", "images", "directions", "likelihood", "classes", "draw")


class WindowMenus:
    """The menus and actions of ``window``, built once; the window reaches an action as
    ``menus.undo_action``."""

    def __init__(self, window: MainWindow) -> None:
        self.window = window
        self.run_actions: dict[tuple[str | None, str], QAction] = {}
        # The last question about each remembered run's state (its host's answer pending
        # or given).
        self.asking: dict[tuple[str | None, str], BlockingCall] = {}
        bar = window.menuBar()
        self._file_menu(bar.addMenu("&File"))
        self._edit_menu(bar.addMenu("&Edit"))
        self._sample_menu(bar.addMenu("&Sample"))
        self._images_menu(bar.addMenu("&Images"))
        self.view_menu = bar.addMenu("&View")
        self._view_menu(self.view_menu)
        self._help_menu(bar.addMenu("&Help"))
        self.mode_bar = self._page_bar()

    def action(
        self, text: str, slot: Callable[[], Any], shortcuts: Sequence[Any] = (), tip: str = ""
    ) -> QAction:
        """A window action; ``shortcuts`` are strings or standard keys (all the platform's
        bindings of a standard key, e.g. Ctrl+Shift+Z and Ctrl+Y for Redo)."""
        action = QAction(text, self.window)
        keys: list[QKeySequence] = []
        for shortcut in shortcuts:
            if isinstance(shortcut, QKeySequence.StandardKey):
                # Not the media keys some platforms add (a keyboard's own "Open" key).
                bound = [
                    k
                    for k in QKeySequence.keyBindings(shortcut)
                    if k.count() and k[0].key().value < Qt.Key.Key_Help.value
                ]
            else:
                bound = [QKeySequence(shortcut)]
            keys += [k for k in bound if not k.isEmpty() and k not in keys]
        action.setShortcuts(keys)
        action.setStatusTip(tip)
        action.triggered.connect(lambda _checked=False: slot())
        self.window.addAction(action)  # shortcuts work even while the menu bar is hidden
        return action

    # -- the menus -------------------------------------------------------------------------

    def _file_menu(self, menu: QMenu) -> None:
        window, action = self.window, self.action
        self.open_action = action(
            "&Open Checkpoint…",
            window.files.open_checkpoint_dialog,
            [QKeySequence.StandardKey.Open],
        )
        menu.addAction(self.open_action)
        self.recent_menu = QMenu("Open &Recent", window)
        self.recent_menu.aboutToShow.connect(self.fill_recent)
        menu.addMenu(self.recent_menu)
        self.recent_runs_menu = QMenu("Recent R&uns", window)
        self.recent_runs_menu.setToolTipsVisible(True)
        self.recent_runs_menu.aboutToShow.connect(self.fill_recent_runs)
        menu.addMenu(self.recent_runs_menu)
        self.open_bundled_action = action(
            "Open &Bundled Model",
            window.open_bundled,
            tip="The MNIST model that comes with the app",
        )
        menu.addAction(self.open_bundled_action)
        menu.addSeparator()
        self.save_grid_action = action(
            "&Save Grid as PNG…", window.files.save_grid_dialog, [QKeySequence.StandardKey.Save]
        )
        self.save_image_action = action(
            "Save Selected &Image as PNG…", window.files.save_image_dialog, ["Ctrl+Shift+S"]
        )
        menu.addActions([self.save_grid_action, self.save_image_action])
        menu.addSeparator()
        self.save_state_action = action(
            "Save Latent S&tate…", window.files.save_state_dialog, ["Ctrl+Alt+S"]
        )
        self.load_state_action = action(
            "&Load Latent State…", window.files.load_state_dialog, ["Ctrl+Alt+O"]
        )
        menu.addActions([self.save_state_action, self.load_state_action])
        menu.addSeparator()
        self.quit_action = action("&Quit", window.close, [QKeySequence.StandardKey.Quit, "Ctrl+Q"])
        menu.addAction(self.quit_action)

    def _edit_menu(self, menu: QMenu) -> None:
        window = self.window
        self.undo_action = self.action("&Undo", window.undo, [QKeySequence.StandardKey.Undo])
        self.redo_action = self.action(
            "&Redo", window.redo, [QKeySequence.StandardKey.Redo, "Ctrl+Shift+Z", "Ctrl+Y"]
        )
        menu.addActions([self.undo_action, self.redo_action])

    def _sample_menu(self, menu: QMenu) -> None:
        self.resample_action = self.action(
            "&Resample", self.window.resample, ["R"], "New noise for every unlocked level"
        )
        menu.addAction(self.resample_action)

    def _images_menu(self, menu: QMenu) -> None:
        images, action = self.window.images, self.action
        self.import_action = action(
            "&Import Images…", images.import_dialog, ["Ctrl+I"], "Encode image files"
        )
        self.import_folder_action = action(
            "Import &Folder…", images.import_folder_dialog, ["Ctrl+Shift+I"]
        )
        menu.addActions([self.import_action, self.import_folder_action])
        menu.addSeparator()
        self.set_a_action = action(
            "Use Selected Image as &A", lambda: images.gallery_panel.a_button.click(), ["Ctrl+1"]
        )
        self.set_b_action = action(
            "Use Selected Image as &B", lambda: images.gallery_panel.b_button.click(), ["Ctrl+2"]
        )
        self.swap_action = action("S&wap A and B", images.gallery.swap_ab)
        self.vary_action = action(
            "&Keep Coarse, Resample Fine",
            images.keep_coarse_resample_fine,
            ["K"],
            "Variations of the selected image: its coarse levels, new fine levels",
        )
        menu.addActions([self.set_a_action, self.set_b_action, self.swap_action])
        menu.addAction(self.vary_action)
        menu.addSeparator()
        self.export_strip_action = action(
            "Export Interpolation &Strip as PNG…", lambda: images.export_dialog("png"), ["Ctrl+E"]
        )
        self.export_gif_action = action(
            "Export Interpolation as &GIF…", lambda: images.export_dialog("gif"), ["Ctrl+Shift+E"]
        )
        self.export_mp4_action = action(
            "Export Interpolation as &MP4…", lambda: images.export_dialog("mp4"), ["Ctrl+Alt+E"]
        )
        menu.addActions([self.export_strip_action, self.export_gif_action, self.export_mp4_action])
        menu.addSeparator()
        self.load_direction_action = action(
            "Load &Direction…", images.load_direction_dialog, ["Ctrl+Alt+D"]
        )
        self.cancel_action = action(
            "&Cancel Import or Export", self.window.tasks.cancel_all, ["Esc"]
        )
        menu.addActions([self.load_direction_action, self.cancel_action])

    def _view_menu(self, menu: QMenu) -> None:
        window = self.window
        self.page_actions: dict[str, QAction] = {}
        group = QActionGroup(window)
        for i, (page, text, tip) in enumerate(
            (
                (EXPLORER_PAGE, "&Explore", "Samples, latent levels and your images"),
                (TRAINING_PAGE, "&Train", "Train a model: settings, curves and samples"),
            )
        ):
            action = self.action(text, lambda p=page: window.show_page(p), [f"Alt+{i + 1}"], tip)
            action.setCheckable(True)
            group.addAction(action)
            self.page_actions[page] = action
        self.page_actions[EXPLORER_PAGE].setChecked(True)
        menu.addActions(list(self.page_actions.values()))
        menu.addSeparator()
        self.tab_actions: dict[str, QAction] = {}
        for name, widget in zip(TABS, window.tab_widgets()):
            action = self.action(
                f"{name.capitalize()} Tab", lambda w=widget: window.show_explorer_tab(w)
            )
            self.tab_actions[name] = action
            menu.addAction(action)
        menu.addSeparator()
        self.full_screen_action = self.action(
            "&Full Screen",
            window.toggle_full_screen,
            [QKeySequence.StandardKey.FullScreen, "F11"],
        )
        self.full_screen_action.setCheckable(True)
        self.reset_layout_action = self.action(
            "&Reset Layout", window.reset_layout, tip="Panel sizes as they were at first start"
        )
        menu.addActions([self.full_screen_action, self.reset_layout_action])

    def _help_menu(self, menu: QMenu) -> None:
        window = self.window
        self.shortcuts_action = self.action(
            "&Keyboard Shortcuts", window.show_shortcuts, [QKeySequence.StandardKey.HelpContents]
        )
        self.about_action = self.action("&About Real NVP Explorer", lambda: show_about(window))
        self.about_action.setMenuRole(QAction.MenuRole.AboutRole)
        menu.addActions([self.shortcuts_action, self.about_action])

    def _page_bar(self) -> QToolBar:
        """The pages, one click away, at the top left (as Qt Creator's modes)."""
        bar = QToolBar("Pages", self.window)
        bar.setObjectName("pages")
        bar.setMovable(False)
        bar.setFloatable(False)
        bar.setIconSize(QSize(16, 16))
        bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        bar.setStyleSheet(
            "QToolBar { spacing: 2px; padding: 2px 6px; border: none; }"
            "QToolButton { padding: 3px 14px; border-radius: 3px; }" + CHECKED_TOOL_STYLE
        )
        for action in self.page_actions.values():
            action.setToolTip(f"{action.text().replace('&', '')} ({action.shortcut().toString()})")
            bar.addAction(action)
        self.window.addToolBar(Qt.ToolBarArea.TopToolBarArea, bar)
        toggle = bar.toggleViewAction()
        toggle.setText("Show &Page Bar")
        self.view_menu.insertAction(self.full_screen_action, toggle)
        return bar

    # -- the recent lists, filled as they open ------------------------------------------------

    def fill_recent(self) -> None:
        window, menu = self.window, self.recent_menu
        menu.clear()
        files = window.settings.recent_files()
        for path in files:
            action = menu.addAction(Path(path).name)
            action.setToolTip(path)
            action.setStatusTip(path)
            action.triggered.connect(lambda _checked=False, p=path: window.open_checkpoint(p))
        if not files:
            menu.addAction("No recent files").setEnabled(False)
        else:
            menu.addSeparator()
            menu.addAction("Clear List", window.settings.clear_recent_files)
        # The way back to the model the app starts with, whatever was opened since.
        menu.addSeparator()
        bundled = menu.addAction(f"Bundled Model ({DEFAULT_CHECKPOINT.name})")
        bundled.setEnabled(DEFAULT_CHECKPOINT.is_file())
        bundled.setStatusTip(str(DEFAULT_CHECKPOINT))
        bundled.triggered.connect(lambda _checked=False: window.open_bundled())

    def fill_recent_runs(self) -> None:
        """Runs started or followed from the training page, here and on ssh hosts, with
        their state; a run on a host still running when last seen is asked again (on a
        worker thread) and its entry updated when the host answers."""
        window, menu = self.window, self.recent_runs_menu
        menu.clear()
        self.run_actions = {}
        runs = window.settings.recent_runs()
        for record in runs:
            action = menu.addAction(run_entry_text(record))
            where = f"{record['host']}:{record['out']}" if record.get("host") else record["out"]
            action.setToolTip(where)
            action.setStatusTip(where)
            action.triggered.connect(lambda _checked=False, r=record: window.open_run(r))
            self.run_actions[(record.get("host"), record["out"])] = action
            job = record.get("scheduler") or {}
            active = isinstance(job, dict) and job.get("state") in ACTIVE_STATES
            if record.get("host") and (record.get("state", "running") == "running" or active):
                self._refresh_run_state(record)
        if not runs:
            menu.addAction("No runs yet").setEnabled(False)
        else:
            menu.addSeparator()
            menu.addAction("Clear List", window.settings.forget_runs)

    def _refresh_run_state(self, record: dict) -> None:
        # One question per run at a time: the menu opened again (or hovered in and out)
        # while the host has not answered asks nothing more. Each question is an ssh
        # session; dozens at once went past the server's session limit and crowded the
        # machine.
        key = (record.get("host"), record["out"])
        earlier = self.asking.get(key)
        if earlier is not None:
            if not earlier.done:
                return
            earlier.deleteLater()  # answered: one object per run, not one per opening
        run = RemoteRun.from_dict(record)
        call = BlockingCall(lambda: host_for(run).status(run), self.window)
        call.succeeded.connect(lambda status, r=record: self._run_state_known(r, status))
        self.asking[key] = call
        call.start()

    def asking_now(self) -> bool:
        """Whether a question about a remembered run is waiting for its host's answer."""
        return any(not call.done for call in self.asking.values())

    def _run_state_known(self, record: dict, status: RunStatus) -> None:
        fields = {"state": status.state, "step": status.step, "max_steps": status.max_steps}
        if status.scheduler:
            fields["scheduler"] = status.scheduler  # a Slurm run's job, in Slurm's words
        self.window.settings.update_run(record.get("host"), record["out"], **fields)
        action = self.run_actions.get((record.get("host"), record["out"]))
        with contextlib.suppress(RuntimeError):  # the menu was rebuilt meanwhile
            if action is not None:
                action.setText(run_entry_text({**record, **fields}))
