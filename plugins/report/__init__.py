"""Reports and the live dashboard of a run (extras ``report`` and ``dashboard``)."""
