"""Declares the native extension fastml._core; everything else lives in pyproject.toml.

FASTML_DEBUG=1 builds without optimisation and with assertions; FASTML_SANITIZE=address|thread adds a
sanitizer (run the tests with the matching LD_PRELOAD).
"""

import glob
import os

from Cython.Build import cythonize
from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import Extension, setup

ParallelCompile("FASTML_BUILD_JOBS", default=0).install()

debug = os.environ.get("FASTML_DEBUG") == "1"
sanitize = os.environ.get("FASTML_SANITIZE")
compile_args = ["-O0", "-g"] if debug else ["-O3", "-DNDEBUG"]
link_args = []
if sanitize:
    compile_args += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer"]
    link_args += [f"-fsanitize={sanitize}"]


def native(name: str, pattern: str, include_dirs: list[str], libraries: tuple[str, ...] = ()) -> Pybind11Extension:
    """A C++17 pybind11 module from the .cc files matching ``pattern``, with the project's warnings."""
    return Pybind11Extension(
        name,
        sorted(glob.glob(pattern)),
        include_dirs=include_dirs,
        libraries=list(libraries),
        cxx_std=17,
        extra_compile_args=compile_args + ["-Wall", "-Wextra", "-Wno-unused-parameter"],
        extra_link_args=link_args,
    )


core = native("fastml._core", "csrc/*.cc", ["csrc"], ("lmdb",))

# The binary protocol's frame parser: its own small module, so the parser never rebuilds the core.
# csrc: the batcher's submit entry point and the sink type (csrc/*.h).
frames = native("fastml._frames", "csrc/frames/*.cc", ["csrc/frames", "csrc"])

# The HTTP transport's native intake: llhttp (vendored from the httptools sdist, csrc/third_party/llhttp) walks
# each read and plain binary-tensor infer requests go straight into the batcher (csrc/http_intake). llhttp's C
# files compile into the module itself (gcc notes that -std=c++17 does not apply to them).
http_intake = Pybind11Extension(
    "fastml._http_intake",
    sorted(glob.glob("csrc/http_intake/*.cc")) + sorted(glob.glob("csrc/third_party/llhttp/src/*.c")),
    include_dirs=["csrc/http_intake", "csrc", "csrc/third_party/llhttp/include"],
    cxx_std=17,
    extra_compile_args=compile_args + ["-Wall", "-Wno-unused-parameter"],
    extra_link_args=link_args,
)

# The gRPC transport's HTTP/2 layer: libnghttp2 (the libnghttp2-dev package, scripts/setup.sh) frames each
# connection and gRPC messages cross into Python whole (csrc/h2, fastml.server.grpc_native).
h2 = native("fastml._h2", "csrc/h2/*.cc", ["csrc/h2"], ("nghttp2",))

# The HTTP transport's hot path: server/http.py compiled by Cython (see _http.pyx).
http = cythonize(
    [
        Extension(
            "fastml.server._http",
            ["src/fastml/server/_http.pyx"],
            extra_compile_args=["-O3"] if not debug else ["-O0", "-g"],
        )
    ],
    quiet=True,
)

# RapidJSON (the rapidjson-dev package, scripts/setup.sh) is header-only; without it the intake is not built and the
# server serves HTTP with the Python transport alone (fastml.server.app.protocol_class).
has_rapidjson = any(
    os.path.exists(os.path.join(d, "rapidjson", "document.h")) for d in ("/usr/include", "/usr/local/include")
)
if not has_rapidjson:
    print("setup.py: rapidjson headers not found (apt-get install rapidjson-dev): fastml._http_intake is not built")

# Without libnghttp2's headers fastml._h2 is not built and --grpc-port serves with grpcio's asyncio server
# (fastml.server.grpc_service.GrpcListener) instead.
has_nghttp2 = any(
    os.path.exists(os.path.join(d, "nghttp2", "nghttp2.h")) for d in ("/usr/include", "/usr/local/include")
)
if not has_nghttp2:
    print("setup.py: nghttp2 headers not found (apt-get install libnghttp2-dev): fastml._h2 is not built")

setup(
    ext_modules=[core, frames, *([http_intake] if has_rapidjson else []), *([h2] if has_nghttp2 else []), *http],
    cmdclass={"build_ext": build_ext},
)
