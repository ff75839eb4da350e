"""laterbased: hot standby, scheduled backups and health for DaVinci Resolve's PostgreSQL."""

__version__ = "0.1.0"
