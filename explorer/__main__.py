"""``python -m explorer [CHECKPOINT] [--screenshot PATH]``."""

from explorer.app import main

raise SystemExit(main())
