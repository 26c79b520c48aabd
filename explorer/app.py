"""``realnvp-explorer [CHECKPOINT]`` and ``python -m explorer``: start the desktop explorer.

``--screenshot PATH`` renders the window offscreen once the model is loaded and the first
frame is on screen, writes a PNG and exits (for the README and for checks without a display);
``--size WxH``, ``--page`` and ``--tab`` choose what it photographs, e.g.
``--screenshot train.png --size 1366x768 --page training``.
It exits with status 1, saying why on stderr, when the model could not be opened: a
checkpoint given that fails writes no picture; a missing or unreadable bundled model (the
default) writes the picture of the untrained model the window then shows.
``--images PATH ...`` imports images or folders after the model opens, as a drop would
(``--tab`` still chooses the tab shown after the import).

A screenshot changes nothing the next start sees: the window keeps its settings (recent
files, layout, page) in a throwaway file. A ``--size`` below the window's smallest size is
said in one line on stderr, and the picture has the smallest size.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from pathlib import Path

from explorer.system_libs import display_problem, xcb_problem
from explorer.theme import apply_dark_theme, quiet_offscreen_messages

SCREENSHOT_SIZE = (1366, 768)
FIRST_FRAME_TIMEOUT_MS = 120_000
PAGES = ("explorer", "training")  # as explorer.main_window.PAGES (not imported: no Qt yet)
TABS = ("levels", "images", "directions", "likelihood", "classes", "draw")


def window_size(text: str) -> tuple[int, int]:
    """``1366x768`` to ``(1366, 768)``; argparse shows the message of a bad value."""
    try:
        width, height = (int(part) for part in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 1366x768") from None
    if not (320 <= width <= 16384 and 240 <= height <= 16384):
        raise argparse.ArgumentTypeError(
            f"{text}: the width must be 320 to 16384 and the height 240 to 16384"
        )
    return width, height


def size_note(asked: tuple[int, int], got: tuple[int, int]) -> str:
    """Why the picture is not the size asked for: the window has a smallest size (its
    three columns' minimums on the explorer page), and Qt will not shrink it below."""
    return (
        f"--size {asked[0]}x{asked[1]} is below the window's smallest size, "
        f"so the picture is {got[0]}x{got[1]}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realnvp-explorer",
        description="Explore a Real NVP model's samples and latents.",
    )
    parser.add_argument(
        "checkpoint",
        nargs="?",
        help="model to open (default, or the word 'bundled': the bundled model)",
    )
    parser.add_argument(
        "--screenshot", metavar="PATH", help="write a PNG of the window after the first frame"
    )
    parser.add_argument(
        "--size",
        type=window_size,
        default=SCREENSHOT_SIZE,
        metavar="WxH",
        help="the window's size for --screenshot, in pixels "
        f"(default: {SCREENSHOT_SIZE[0]}x{SCREENSHOT_SIZE[1]})",
    )
    parser.add_argument(
        "--page", choices=PAGES, default=None, help="the page to show (default: explorer)"
    )
    parser.add_argument("--tab", choices=TABS, default=None, help="the explorer page's tab to show")
    parser.add_argument(
        "--run",
        metavar="FOLDER",
        help="show a training run's curves and samples (its events.jsonl), following it while "
        "it goes on; opens the training page",
    )
    parser.add_argument(
        "--images",
        nargs="+",
        metavar="PATH",
        default=[],
        help="images or folders to import after the model opens (as if dropped)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for rendering (default: one or every core, whichever renders "
        "this model faster, measured after it loads)",
    )
    parser.add_argument(
        "--compile",
        choices=("on", "off"),
        default="off",
        help="build torch.compile-d decode steps in the background for each model: frames "
        "about a quarter faster once built, slow frames while it builds (default: off)",
    )
    parser.add_argument(
        "--graphs",
        choices=("on", "off"),
        default="on",
        help="on a CUDA device, replay the decode steps from CUDA graphs built in the "
        "background for each model (default: on; any failure renders eagerly)",
    )
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def take_screenshot(
    window,
    path: str | os.PathLike,
    timeout_ms: int = FIRST_FRAME_TIMEOUT_MS,
    size: tuple[int, int] = SCREENSHOT_SIZE,
):
    """Show ``window`` at ``size``, wait until its imports are done, its newest frames
    (samples and interpolation strip) have been painted and a shown Likelihood tab has
    measured the selected sample, grab it to ``path``."""
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    view = window.samples_panel.view
    images = window.images
    likelihood = window.sample_likelihood
    page = window.current_page
    window.show_page("explorer")  # the samples are painted first, whatever page is shown
    window.resize(*size)
    window.show()

    form = window.training_panel.form

    def ready() -> bool:
        return (
            not window.tasks.busy
            and not form.checking  # a run's data folder (--run) is checked before the photo
            and view.painted_complete_id >= window.last_request_id > 0  # the whole grid
            and images.strip_shown_id == images.strip_request_id
            and not likelihood.pending
        )

    if not ready():
        loop = QEventLoop()

        def check(*_args: object) -> None:
            if ready():
                loop.quit()

        signals = (
            view.frame_painted,
            images.strip_shown,
            window.tasks.finished,
            form.changed,
            likelihood.described,
        )
        for signal in signals:
            signal.connect(check)
        poll = QTimer()  # what settles without a signal (the likelihood's short delay)
        poll.timeout.connect(check)
        poll.start(100)
        QTimer.singleShot(timeout_ms, loop.quit)
        loop.exec()
        poll.stop()
    if not view.painted_frame_id:
        raise RuntimeError("no frame was rendered in time")
    images.gallery_panel.refresh()  # it refreshes on a short timer after imports
    window.show_page(page)
    QApplication.processEvents()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not window.grab().save(str(path), "PNG"):
        raise OSError(f"could not write {path}")
    return path


def _quit_on_interrupt(app) -> None:
    """Ctrl+C in the terminal closes the app: Python only sees the signal when it runs,
    so a timer gives it a moment now and then while Qt's loop waits."""
    from PySide6.QtCore import QTimer

    signal.signal(signal.SIGINT, lambda *_: app.closeAllWindows())
    timer = QTimer(app)
    timer.timeout.connect(lambda: None)
    timer.start(250)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.screenshot:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        quiet_offscreen_messages()

    from PySide6.QtWidgets import QApplication

    # Before Qt loads its platform plugin: no display, or a missing X11 library, would
    # abort the process with a message that names neither.
    problem = (display_problem() or xcb_problem()) if QApplication.instance() is None else None
    if problem:
        print(f"realnvp-explorer: {problem}", file=sys.stderr)
        return 1

    from core.files.resources import BUNDLED
    from explorer.engine.render import RenderEngine
    from explorer.main_window import MainWindow
    from explorer.settings import APPLICATION, ORGANIZATION, ExplorerSettings

    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    app.setApplicationDisplayName("Real NVP Explorer")
    apply_dark_theme(app)

    try:
        engine = RenderEngine(
            device=args.device,
            num_threads=args.threads,
            compile=args.compile == "on",
            graphs=args.graphs == "on",
        )
    except ValueError as exc:  # an unknown or unavailable device
        print(f"realnvp-explorer: {exc}", file=sys.stderr)
        return 2
    # A screenshot reads and writes a throwaway settings file: it shows a first start and
    # leaves the user's recent files, layout and page as they were.
    scratch = tempfile.TemporaryDirectory(prefix="realnvp-screenshot-") if args.screenshot else None
    settings = ExplorerSettings.in_file(Path(scratch.name) / "settings.ini") if scratch else None
    window = MainWindow(engine, settings)
    window.resize(*args.size)
    bundled_problem = None  # why the bundled model, when asked for, could not be opened
    if args.checkpoint and args.checkpoint != BUNDLED:
        if not window.open_checkpoint(args.checkpoint):
            if args.screenshot:
                print(f"realnvp-explorer: {window.last_error}", file=sys.stderr)
                window.close()
                return 1
            window.open_default()  # the error box stays open over it
    else:
        if not window.open_default():
            bundled_problem = window.last_error
    if args.images:
        window.open_paths(args.images, reveal=args.tab is None)
    if not args.screenshot:
        window.restore_layout()  # a screenshot shows the layout of a first start
    if args.tab:
        window.show_explorer_tab(window.tabs.widget(TABS.index(args.tab)))
    if args.run:
        if window.training_panel.open_run(args.run):
            window.training_panel.catch_up()
        window.show_page("training")
    if args.page:
        window.show_page(args.page)

    if args.screenshot:
        try:
            saved = take_screenshot(window, args.screenshot, size=args.size)
            shot = (window.width(), window.height())
        except (RuntimeError, OSError) as exc:
            print(f"realnvp-explorer: screenshot failed: {exc}", file=sys.stderr)
            return 1
        finally:
            window.close()
            scratch.cleanup()
        print(saved)
        if shot != args.size:
            print(f"realnvp-explorer: {size_note(args.size, shot)}", file=sys.stderr)
        if bundled_problem:  # the picture shows an untrained model: a script must know
            print(f"realnvp-explorer: {bundled_problem}", file=sys.stderr)
            return 1
        return 0

    app.aboutToQuit.connect(engine.shutdown)
    _quit_on_interrupt(app)
    window.show()
    return app.exec()


if __name__ == "__main__":
    raise SystemExit(main())
