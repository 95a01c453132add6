"""Outgoing webhooks: the delivery queue, the signing sender and the worker (resolvers/webhooks.py emits)."""
