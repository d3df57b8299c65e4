"""Strategies shipped with quoteforge, each registered through an entry point."""
