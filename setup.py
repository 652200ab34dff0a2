"""Build configuration beyond pyproject.toml: runwatch's two compiled modules.

``collector.lightning._gradnorms`` computes CPU gradient norms in one call; ``collector._lines``
writes a flush's queued points as line protocol in one call. Both are optional: where they
cannot be compiled (no C compiler), the install goes on, the norms take torch's path and the
flush the Python one.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "collector.lightning._gradnorms",
            ["collector/lightning/_gradnorms.c"],
            extra_compile_args=["-O3"],
            optional=True,
        ),
        Extension(
            "collector._lines",
            ["collector/_lines.c"],
            extra_compile_args=["-O3"],
            optional=True,
        ),
    ]
)
