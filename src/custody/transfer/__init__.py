"""Moving rows between databases in verified key ranges."""
