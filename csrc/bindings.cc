// The pybind11 module fastml._core: the only file that includes pybind11 (STYLE.md).
// Each component has its own section below; a section converts Python objects to the component's
// plain C++ types with the GIL held and releases the GIL around the component's native work.
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

namespace py = pybind11;

// ===== batcher section (csrc/batcher.h) =====
static void bind_batcher(py::module_& m) {}
// ===== end batcher section =====

// ===== feature cache section (csrc/feature_cache.h) =====
static void bind_feature_cache(py::module_& m) {}
// ===== end feature cache section =====

PYBIND11_MODULE(_core, m) {
    m.doc() = "fastml native core: micro-batcher and LMDB feature cache";
    bind_batcher(m);
    bind_feature_cache(m);
}
