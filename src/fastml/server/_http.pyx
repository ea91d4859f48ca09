# cython: language_level=3, annotation_typing=False, binding=False
# The compiled HTTP transport: fastml/server/http.py (the pure-Python reference) compiled by Cython, so both
# carry the same behaviour byte for byte (tests/server/test_http_conformance.py runs one suite over both).
# annotation_typing is off so annotations keep Python semantics (a bytes subclass or None stays accepted).
include "http.py"
