"""Custody: audited healthcare data pipelines on Prefect.

The library half of the project: plain Python that the Prefect tasks in ``tasks/`` wrap.
"""

__version__ = "0.1.0"
