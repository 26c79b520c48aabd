"""The model panel: what the open model is, where it came from and how good it is."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFormLayout, QGroupBox, QLabel, QVBoxLayout, QWidget

from explorer.state.state import ModelInfo
from explorer.widgets.controls import ElidedLabel

DASH = "—"


def format_levels(shapes: tuple[tuple[int, int, int], ...]) -> str:
    """One line per level, coarse to fine, as in the levels panel."""
    lines = []
    for i in range(len(shapes) - 1, -1, -1):
        c, h, w = shapes[i]
        lines.append(f"{i}: {c}×{h}×{w}")
    return "\n".join(lines)


class ModelPanel(QGroupBox):
    """Read-only facts about the model, from :class:`~explorer.state.state.ModelInfo`."""

    FIELDS = (
        ("source", "File"),
        ("dataset", "Data set"),
        ("image", "Image size"),
        ("channels", "Channels"),
        ("parameters", "Parameters"),
        ("levels", "Levels"),
        ("test_bpd", "Test bits/dim"),
        ("step", "Training step"),
        ("device", "Device"),
    )

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Model", parent)
        self.values: dict[str, QLabel] = {}
        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignmentFlag.AlignLeft)
        form.setFormAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        form.setVerticalSpacing(6)
        for key, label in self.FIELDS:
            # A file name cannot wrap: it is shortened in the middle, whole in the tooltip.
            value = ElidedLabel(DASH) if key == "source" else QLabel(DASH)
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            value.setWordWrap(key != "source")
            self.values[key] = value
            name = QLabel(label)
            if key == "levels":
                name.setToolTip("Channels × height × width of each level's latent")
            name.setStyleSheet("color: palette(placeholder-text);")
            form.addRow(name, value)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addStretch(1)

    def show_device(self, device: str) -> None:
        """The device row alone: the render plan's measurement may change the threads
        frames render with after the model is shown."""
        self.values["device"].setText(device)

    def show_info(self, info: ModelInfo, origin: str | None = None) -> None:
        """``origin``: where a fetched checkpoint came from (``HOST:/path/on/the/host``),
        shown instead of the local cache file, which the tooltip names."""
        source = Path(info.source).name if info.source else "random, untrained"
        if origin:
            source = origin
        texts = {
            "source": source,
            "dataset": info.dataset or DASH,
            "image": f"{info.image_size}×{info.image_size}",
            "channels": str(info.channels),
            "parameters": f"{info.num_parameters:,}",
            "levels": format_levels(info.latent_shapes),
            "test_bpd": f"{info.test_bpd:.3f}" if info.test_bpd is not None else DASH,
            "step": f"{info.step:,}" if info.step is not None else DASH,
            "device": info.device,
        }
        for key, text in texts.items():
            self.values[key].setText(text)
        tip = info.source or ""
        if origin:
            tip = f"{origin}\nfetched to {info.source}"
        self.values["source"].setToolTip(tip)


if __name__ == "__main__":
    import sys

    from PySide6.QtWidgets import QApplication

    app = QApplication(sys.argv)
    panel = ModelPanel()
    panel.show_info(
        ModelInfo(
            model_id=1,
            source="/tmp/example.pt",
            untrained=False,
            dataset="mnist",
            image_size=28,
            channels=1,
            num_parameters=928_123,
            latent_shapes=((2, 14, 14), (4, 7, 7), (4, 7, 7)),
            test_bpd=1.234,
            step=28110,
            device="cpu (2 threads)",
        )
    )
    panel.show()
    sys.exit(app.exec())
