"""Declares the native extension fastml._core; everything else lives in pyproject.toml.

FASTML_DEBUG=1 builds without optimisation and with assertions; FASTML_SANITIZE=address|thread adds a
sanitizer (run the tests with the matching LD_PRELOAD).
"""
import glob
import os

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

ParallelCompile("FASTML_BUILD_JOBS", default=0).install()

debug = os.environ.get("FASTML_DEBUG") == "1"
sanitize = os.environ.get("FASTML_SANITIZE")
compile_args = ["-O0", "-g"] if debug else ["-O3", "-DNDEBUG"]
link_args = []
if sanitize:
    compile_args += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer"]
    link_args += [f"-fsanitize={sanitize}"]

core = Pybind11Extension(
    "fastml._core",
    sorted(glob.glob("csrc/*.cc")),
    include_dirs=["csrc"],
    libraries=["lmdb"],
    cxx_std=17,
    extra_compile_args=compile_args + ["-Wall", "-Wextra", "-Wno-unused-parameter"],
    extra_link_args=link_args,
)

# The binary protocol's frame parser: its own small module, so the parser never rebuilds the core.
frames = Pybind11Extension(
    "fastml._frames",
    sorted(glob.glob("csrc/frames/*.cc")),
    include_dirs=["csrc/frames"],
    cxx_std=17,
    extra_compile_args=compile_args + ["-Wall", "-Wextra", "-Wno-unused-parameter"],
    extra_link_args=link_args,
)

setup(ext_modules=[core, frames], cmdclass={"build_ext": build_ext})
