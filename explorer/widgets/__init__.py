"""Qt building blocks shared by the pages: image views, controls and the runner of long
jobs."""
