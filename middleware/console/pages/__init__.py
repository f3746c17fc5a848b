"""Console pages: every module here that defines ``router`` is mounted by :func:`middleware.console.mount`."""
