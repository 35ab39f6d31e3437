"""The PostgreSQL backend: `schema.py`, `connection.py` (psycopg, the one error boundary), `flush.py`, `store.py`."""
