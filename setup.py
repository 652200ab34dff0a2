"""Build configuration beyond pyproject.toml: runwatch's one compiled module.

``collector.lightning._gradnorms`` computes CPU gradient norms in one call. It is optional: where
it cannot be compiled (no C compiler), the install goes on and the norms take torch's path.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "collector.lightning._gradnorms",
            ["collector/lightning/_gradnorms.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
