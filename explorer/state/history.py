"""Undo and redo for the explorer's view: the views an edit replaced, kept whole.

Every edit builds a new immutable view (:class:`explorer.state.state.ViewState`), so the
history is two stacks of earlier views, and going back is putting one of them back. A
continuous edit (a slider drag, wheel notches in a row) passes one merge key with each of its
moves, so the whole of it is one undo step until :meth:`EditHistory.close`.
"""

from __future__ import annotations

from typing import Generic, TypeVar

View = TypeVar("View")  # an immutable view; the history never looks inside one


class EditHistory(Generic[View]):
    """The undo and redo stacks (at most ``limit`` undo steps) and the open merge key."""

    def __init__(self, limit: int = 200) -> None:
        self.undo_views: list[View] = []
        self.redo_views: list[View] = []
        self.open_key: object = None  # edits with this key merge into the last undo step
        self.limit = limit

    @property
    def can_undo(self) -> bool:
        return bool(self.undo_views)

    @property
    def can_redo(self) -> bool:
        return bool(self.redo_views)

    def record(self, before: View, merge_key: object = None) -> bool:
        """An edit replaces ``before``: keep it for undo unless the edit goes on the open
        continuous one (same ``merge_key``); returns whether it did. Redo is cleared."""
        continued = merge_key is not None and merge_key == self.open_key and self.can_undo
        if not continued:
            self.undo_views.append(before)
            del self.undo_views[: -self.limit]
        self.open_key = merge_key
        self.redo_views.clear()
        return continued

    def close(self) -> None:
        """Close a continuous edit: the next change starts a new undo step."""
        self.open_key = None

    def undo(self, current: View) -> View | None:
        """The view before ``current`` (which redo then returns to); ``None``: nothing to undo."""
        return self._travel(self.undo_views, self.redo_views, current)

    def redo(self, current: View) -> View | None:
        """The view an undo left (``current`` goes back on the undo stack); ``None``: none."""
        return self._travel(self.redo_views, self.undo_views, current)

    def _travel(self, source: list[View], target: list[View], current: View) -> View | None:
        self.open_key = None
        if not source:
            return None
        target.append(current)
        return source.pop()
