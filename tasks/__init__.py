"""The work of each pipeline stage, as small typed functions (Prefect tasks)."""
