"""Operator tools that read the stream and the table (`status`, `dlq`); they build on `worker`."""
