"""Clients of weightvault services: the key broker client, attesters, and the broker identity for sealed files."""
