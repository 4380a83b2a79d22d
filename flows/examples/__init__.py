"""Worked examples: small flows built only from custody's building blocks."""
