"""The audit trail: decisions recorded (``records``), kept in SQLite or PostgreSQL
(``store``), written off the request path (``writer``)."""
