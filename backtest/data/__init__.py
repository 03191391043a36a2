"""Prices in: CSV formats and their validation, ingest, the Parquet store, price panels, synthetic universes."""
