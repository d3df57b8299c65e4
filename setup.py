"""Build script for the optional C extensions; every piece of metadata is in setup.cfg.

``quoteforge.book._fastbook`` speeds up book updates and reads (any venue),
``quoteforge.exchanges.binance._fastparse`` reads Binance depth and trade messages
straight from their JSON text (it applies levels with the book's own code, the header
``framework/book/_fastbook_apply.h`` both include) and ``quoteforge.exchanges._fastrec`` speeds up
the reading of recordings. All are optional: when they cannot be compiled (no C
compiler) the install goes on and the same work runs interpreted.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "quoteforge.book._fastbook",
            sources=["framework/book/_fastbook.c"],
            depends=["framework/book/_fastbook_apply.h"],
            optional=True,
        ),
        Extension(
            "quoteforge.exchanges.binance._fastparse",
            sources=["exchanges/binance/_fastparse.c"],
            include_dirs=["framework/book"],
            depends=["framework/book/_fastbook_apply.h"],
            optional=True,
        ),
        Extension(
            "quoteforge.exchanges._fastrec",
            sources=["exchanges/_fastrec.c"],
            optional=True,
        ),
    ]
)
