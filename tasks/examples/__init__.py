"""Tasks of the worked examples."""
