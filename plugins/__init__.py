"""Risk, execution, bus, journal and report plugins shipped with quoteforge."""
