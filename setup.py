"""Build the native extensions (Reed-Solomon, CRC and XSalsa20 kernels) alongside the pure-Python
packages."""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "native._reed_solomon",
        sources=["native/_reed_solomon.pyx", "native/rs_kernels.c"],
        include_dirs=["native"],
        extra_compile_args=["-O3", "-std=c11", "-fno-strict-aliasing"],
    ),
    Extension(
        "native._checksums",
        sources=["native/_checksums.pyx", "native/crc_kernels.c"],
        include_dirs=["native"],
        extra_compile_args=["-O3", "-std=c11", "-fno-strict-aliasing"],
    ),
    Extension(
        "native._xsalsa20",
        sources=["native/_xsalsa20.pyx", "native/salsa_kernels.c"],
        include_dirs=["native"],
        extra_compile_args=["-O3", "-std=c11", "-fno-strict-aliasing"],
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    ),
)
