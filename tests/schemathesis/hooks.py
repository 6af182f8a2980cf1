"""Loaded by schemathesis (SCHEMATHESIS_HOOKS) for tests/api_fuzzing.rs."""

import schemathesis

# A tus PATCH body is raw bytes, sent as application/offset+octet-stream.
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
