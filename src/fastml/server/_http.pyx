# cython: language_level=3, annotation_typing=False, binding=False
# The compiled twin of the HTTP transport: fastml/server/http.py (the reference) compiled by Cython, so both
# carry the same behaviour byte for byte (tests/server/test_http_conformance.py runs one suite over both;
# FASTML_HTTP_IMPL picks one, see fastml.server.app.protocol_class). The hot classes (the connection and its
# pipeline slots) are marked @cython.cclass in http.py and laid out as C types by _http.pxd: typed fields and
# cpdef helpers, where the untyped twin lost the interpreter's specialised attribute access and was slower.
# annotation_typing is off so annotations keep Python semantics (a bytes subclass or None stays accepted).
include "http.py"
