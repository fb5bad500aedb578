"""Generated protobuf modules for proto/typha/v1/sync.proto (regenerate: python -m typha.proto.generate)."""
