"""Build script for the optional C extension; every piece of metadata is in setup.cfg.

``quoteforge.book._fastbook`` speeds up Binance book updates. It is optional: when it
cannot be compiled (no C compiler) the install goes on and the book runs interpreted.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "quoteforge.book._fastbook",
            sources=["framework/book/_fastbook.c"],
            optional=True,
        )
    ]
)
