"""Where attachments' bytes live: the backends of the `FileStorage` port (resolvers/ports.py)."""
