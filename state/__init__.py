"""Connections to the outside: Kafka source and sink, Redis, JSONL files, recovery."""
