"""Storage beside the pipeline: tables, engine and named queries (SQLite or PostgreSQL)."""
