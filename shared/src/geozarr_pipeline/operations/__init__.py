"""Operator commands over the stores the pipeline already has: object storage, failure
records and the STAC catalog (status, replay, backfill, delete, cleanup)."""
