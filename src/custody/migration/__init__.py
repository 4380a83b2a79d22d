"""Database migration: schema copy, verified COPY of key ranges, sequences, final checks."""
