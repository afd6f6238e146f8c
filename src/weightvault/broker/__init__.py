"""The key broker domain: tenants, principals, devices, models and policies, and key release.

No HTTP types here: :mod:`weightvault.server.broker_app` adapts :class:`KeyBroker` to HTTP.
"""
