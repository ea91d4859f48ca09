"""The two names of Cython's pure-Python mode that fastml.server.http uses, for running it without Cython
installed (Cython is a build dependency: it compiles http.py into the _http twin, where they mean C types)."""

compiled = False


def cclass(cls):
    """Marks a class that the compiled twin turns into a C extension type; a no-op here."""
    return cls


def ccall(func):
    """Marks a method the compiled twin calls as a C function (still a Python method); a no-op here."""
    return func
