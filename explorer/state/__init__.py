"""The view state, Qt-free and torch-free: what the explorer shows, the gallery, directions,
blends, the explorer's own files and long jobs. Widgets bind to these; nothing here imports
Qt (a test checks)."""
