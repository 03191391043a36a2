"""Watching a run: resource monitor, alerts, where-the-time-went profiling, recommendations, the report."""
