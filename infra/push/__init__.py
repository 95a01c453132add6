"""Push notifications: the job queue, the worker and one sender per push service."""
