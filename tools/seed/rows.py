"""Row: the base of every generated row, one subclass per table of schema `app` (each in the
module of the purpose that owns its table, listed in ``tables``).

Foreign keys are object references so that the retention model can follow them; values() gives
the COPY row, in COLUMNS order. A blocking foreign key is listed by parents(); a SET NULL one is
written with kept_id() (the id while the parent is still there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(slots=True, kw_only=True, eq=False)
class Row:
    TABLE: ClassVar[str]
    COLUMNS: ClassVar[tuple[str, ...]]

    id: int
    # False once the modelled daily runs up to E removed the row.
    kept: bool = True
    # A kept row references this one: it stays, as the engine leaves a waiting parent.
    waited_on: bool = False

    def parents(self) -> tuple[Row, ...]:
        """Rows this one references through a foreign key that blocks their deletion."""
        return ()

    def values(self) -> tuple[Any, ...]:
        raise NotImplementedError


def id_of(row: Row | None) -> int | None:
    return row.id if row is not None else None


def kept_id(row: Row | None) -> int | None:
    """A SET NULL link: the id while the parent is still there."""
    return row.id if row is not None and row.kept else None
