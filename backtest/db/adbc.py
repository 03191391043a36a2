"""Whether chunk reads from SQLite go through Arrow's own SQLite driver (ADBC), which decodes rows in C.

A module of its own because both the engine (which must serialise the two SQLite libraries' access to a
file, ``engine.one_sqlite_library``) and the bulk reader (``sqlio.sqlite_arrow``) ask it.
"""

from __future__ import annotations

from types import ModuleType

driver: ModuleType | None
try:
    import adbc_driver_sqlite.dbapi as driver
except ImportError:  # pragma: no cover - an optional speed-up; sqlio.fetch_numeric is the fallback
    driver = None

#: read SQLite chunks through ADBC when it is installed (tests turn it off to cover the fallback)
USE_ADBC = True


def use_arrow_sqlite() -> bool:
    return USE_ADBC and driver is not None
