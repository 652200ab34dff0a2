"""Build configuration beyond pyproject.toml: runwatch's four compiled modules.

``collector.lightning._gradnorms`` computes CPU gradient norms in one call; ``collector._lines``
writes a flush's queued points as line protocol in one call; ``collector._pending`` queues
``record()``'s common cases; ``collector.lightning._dispatch`` calls the bundle's parts for each
Lightning hook. All are optional: where they cannot be compiled (no C compiler),
the install goes on, the norms take torch's path and the flush, ``record()`` and the
dispatch the Python ones.
"""

from setuptools import Extension, setup


def optional_extension(name: str, source: str) -> Extension:
    """A module the package works without: a failed compile leaves it out."""
    return Extension(name, [source], extra_compile_args=["-O3"], optional=True)


setup(
    ext_modules=[
        optional_extension("collector.lightning._gradnorms", "collector/lightning/_gradnorms.c"),
        optional_extension("collector._lines", "collector/_lines.c"),
        optional_extension("collector._pending", "collector/_pending.c"),
        optional_extension("collector.lightning._dispatch", "collector/lightning/_dispatch.c"),
    ]
)
