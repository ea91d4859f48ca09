# cython: language_level=3, annotation_typing=False, binding=False
# The compiled twin of the HTTP transport: fastml/server/http.py (the reference, served by default) compiled
# by Cython, so both carry the same behaviour byte for byte (tests/server/test_http_conformance.py runs one
# suite over both). Opt-in with FASTML_HTTP_IMPL=cython: untyped, it measured no faster than the interpreter
# on CPython 3.11 (see fastml.server.app.protocol_class); typing its hot classes is the next step.
# annotation_typing is off so annotations keep Python semantics (a bytes subclass or None stays accepted).
include "http.py"
