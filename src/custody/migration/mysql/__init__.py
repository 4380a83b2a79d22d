"""MySQL/MariaDB as a migration source: catalog, cast rules, DDL and the verified chunk copy."""
