"""Real services for the tests: PostgreSQL and an S3-compatible server (SeaweedFS)."""
