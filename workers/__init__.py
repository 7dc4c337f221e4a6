"""Framework workers: each runs one benchmark cell in a fresh process and streams NDJSON events."""
