"""The point-in-time archive worker: WAL streamed by pg_receivewal, base backups on a schedule,
and the restore of one database as it was at a moment (used by ``laterbased restore --at``)."""
