"""Build script for the optional C extensions; every piece of metadata is in setup.cfg.

``quoteforge.book._fastbook`` speeds up Binance book updates and
``quoteforge._fastrec`` the reading of recordings. Both are optional: when they cannot
be compiled (no C compiler) the install goes on and the same work runs interpreted.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "quoteforge.book._fastbook",
            sources=["framework/book/_fastbook.c"],
            optional=True,
        ),
        Extension(
            "quoteforge._fastrec",
            sources=["framework/_fastrec.c"],
            optional=True,
        ),
    ]
)
