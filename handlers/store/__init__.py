"""The store: SQLAlchemy models, the engine, and the unit of work (inbox, effects, outbox)."""
