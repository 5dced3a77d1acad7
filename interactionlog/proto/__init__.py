"""The gRPC ingest protocol: `ingest.proto` and the Python stubs generated from it (committed, never edited).

A bottom module: the gateway serves the service and the `grpc://` transport calls it, so both import it from
here. `ingest_pb2` holds the messages, `ingest_pb2_grpc` the stub and servicer; both need the `grpc` extra.
"""
