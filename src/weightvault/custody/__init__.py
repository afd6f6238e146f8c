"""Key custody: Shamir sharing of the root key, custody ceremonies, and signed multi-party approvals.

This package is the pure core (no I/O): share sets, ceremony messages, approval
policies and requests. The broker's services store and enforce them.
"""
