"""Library code of the worked examples (see the README's "Write a new flow")."""
