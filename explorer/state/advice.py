"""Advice in core's messages, said the app's way.

Core's errors and verdicts are written for the command line ("pass --download", "add it with
`realnvp export …`"). In the app a person clicks rather than types, so the messages shown
in a window name the control instead. Qt-free, torch-free.
"""

from __future__ import annotations

import re

# Command-line advice, as core writes it, and what to do in the app instead. The patterns
# are not imported from core (the training page loads no statistics module); the tests
# check them against core's own sentences.
IN_APP = {
    # core.stats.typicality.ADD_REFERENCE_HINT
    r"add it with `realnvp export [^`]*`(?: \(or `realnvp eval [^`]*`\))?": (
        "a model trained on the Train page has them (its last evaluation on the test set "
        "writes them)"
    ),
    r"pass --download to fetch it": (
        "choose the folder that holds it, or tick Download if missing on the Train page to fetch it"
    ),
}


def in_app_words(message: str) -> str:
    """``message`` with each piece of command-line advice replaced by what to click."""
    for command_line, in_app in IN_APP.items():
        message = re.sub(command_line, in_app, message)
    return message
