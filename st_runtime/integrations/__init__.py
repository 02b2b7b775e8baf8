"""Integrations with other frameworks (Ray Data); each needs its own extra and is imported only when used."""
