"""Named queries by area (:mod:`middleware.storage.sql`): each module registers its statements
when imported and offers small functions that run them in a unit of work and return frozen,
typed records. Code outside ``storage/`` calls these functions; it writes no SQL."""
