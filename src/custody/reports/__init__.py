"""Compliance reports: the queries an auditor asks for, rendered as CSV and self-contained HTML."""
