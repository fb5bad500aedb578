"""The Sync protocol's contract, shared by every side and importing none of them.

`names` (method path, feature flags, syncer types), `status` (sync states on the wire), `values` (KV
value encoding), `frames` (varints, runs of frames), `checksum` (the per-key hash and set digest) and
`digests` (per-bucket digests for digest-resync). Only this package spells these facts; a unit test
(tests/unit/test_syncproto_home.py) holds every other module to importing them.
"""
