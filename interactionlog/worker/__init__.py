"""Stream to PostgreSQL: the streams adapter, the consumer loop, the store, housekeeping, the daemon, and the
worker's own observation. Imports the bottom modules only; `ops` and the CLI build on it.
"""
