"""The audit log in DuckDB: schema, ingest, sandboxed queries, summaries."""
