"""gateway: a just-in-time privileged-session proxy for SSH and PostgreSQL."""

__version__ = "0.1.0"
