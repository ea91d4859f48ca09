# The C layout of server/http.py's hot classes when _http.pyx compiles it: each class marked @cython.cclass
# there becomes an extension type with these fields, so `self.x` is a struct read instead of a slot lookup
# through the type (the untyped twin was slower than the interpreter for exactly that). Every field is
# public: shm_http, the tests and the server read them as Python attributes. Sizes and counts the client can
# make arbitrarily large (Content-Length, Inference-Header-Content-Length) stay Python ints, so an overflow is
# the same 400 as in the reference; flags are bint; the listed helpers are cpdef (a C call from the module,
# still a method to Python).

cdef class _Slot:
    cdef public object data
    cdef public bint close


cdef class _InferCall(_Slot):
    cdef public object conn
    cdef public object entry
    cdef public object plan
    cdef public object encoding
    cdef public object conn_hdr
    cdef public object route
    cdef public object start_ns


cdef class HttpProtocol:
    cdef public object server
    cdef public object limits
    cdef public object parser
    cdef public object transport
    cdef public object url
    cdef public object body
    cdef public Py_ssize_t body_len
    cdef public object ihcl
    cdef public object content_encoding
    cdef public object accept_encoding
    cdef public Py_ssize_t header_bytes
    cdef public Py_ssize_t header_count
    cdef public object pending
    cdef public bint closed
    cdef public object last_tick
    cdef public object msg_tick
    cdef public bint reading_paused
    cdef public bint writing_paused
    cdef public bint metrics_only
    cdef public bint expect_continue
    cdef public object content_length
    cdef public bint lingering
    cdef public Py_ssize_t discarded
    cdef public Py_ssize_t max_headers
    cdef public Py_ssize_t max_header_bytes
    cdef public object routing_key
    cdef public object authorization
    cdef public Py_ssize_t reserved
    cdef public bint upgrade_answered

    cpdef _reset(self)
    cpdef _reserve(self, nbytes)
    cpdef _release(self)
    cpdef _respond(self, data, conn_hdr)
    cpdef flush(self)
    cpdef _pause_reading(self)
    cpdef _maybe_resume_reading(self)
    cpdef _dispatch(self, method, body, conn_hdr)
    cpdef _infer(self, name, version, body, conn_hdr)
    cpdef _decode_infer(self, entry, body)
