"""Database layer: tables, sessions, migrations and queries (SQLAlchemy 2, no ML)."""

# Every table module registers on `tables.Base.metadata` here, so that Alembic and the
# schema comparison see all tables whichever module is imported first.
from service.db import curves as curves
from service.db import jobs as jobs
from service.db import versions as versions
