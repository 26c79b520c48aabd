"""Qt-free, torch-free models of what the explorer shows: its state, the gallery, directions,
blends, the explorer's own files and long jobs. Widgets bind to these; nothing here imports
Qt (a test checks)."""
