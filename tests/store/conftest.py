from __future__ import annotations

from collections.abc import Iterator

import pytest

from tether.store import db, migrations


@pytest.fixture
def database(database_url: str) -> Iterator[str]:
    """The store on a migrated empty database of each kind (`database_url`)."""
    db.init(database_url)
    migrations.migrate()
    yield database_url
    db.close()
