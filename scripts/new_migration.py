"""Write a new Alembic revision for what changed in portal/db.py since the last migration.

Usage: .venv/bin/python scripts/new_migration.py "what changed"   (or `make migration`)
It builds a scratch SQLite database at the current head, then lets Alembic compare it with
the declared schema. Read the result before committing it: autogenerate is a first draft.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from alembic import command

from portal.db import create_engine
from portal.migrations import alembic_config, upgrade


def main(message: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'head.db'}"
        engine = create_engine(url)
        asyncio.run(upgrade(engine))
        asyncio.run(engine.dispose())
        command.revision(alembic_config(url), message=message, autogenerate=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
