# cython: language_level=3, boundscheck=False, wraparound=False
"""A Redis command in RESP, as `hiredis.pack_command` writes it, in one allocation.

Every authorization's commit is an FCALL of about 25 arguments that change with each
request (among them the serialized answer and decision event); the worker's Redis pipe
packs it once per authorization (`payauth.server.redis_pipe.pack`). hiredis copies each
argument into a string of its own, then formats the command from those with sprintf; here the
command's length is counted first and its bytes written once, straight from the arguments' own
buffers (an ASCII `str` is read where Python keeps it). Arguments of other types than `str`,
`bytes` and `int`, and integers beyond 64 bits, go to hiredis, so the bytes are always
hiredis's.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from libc.string cimport memcpy

import hiredis


cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object text, Py_ssize_t *size) except NULL


cdef enum:
    # The most arguments a command is packed here with; longer ones go to hiredis.
    MAX_ARGS = 64
    # What an argument is written from: its bytes, or an integer's magnitude and sign.
    FROM_BUFFER = 0
    FROM_NUMBER = 1
    FROM_NEGATIVE_NUMBER = 2


cdef inline Py_ssize_t _decimal_length(unsigned long long n) noexcept:
    cdef Py_ssize_t length = 1
    while n >= 10:
        n //= 10
        length += 1
    return length


cdef inline char *_write_decimal(char *out, unsigned long long n, Py_ssize_t length) noexcept:
    cdef Py_ssize_t i = length
    while i > 0:
        i -= 1
        out[i] = <char>(48 + n % 10)
        n //= 10
    return out + length


cdef inline char *_write_length_line(char *out, char kind, Py_ssize_t n) noexcept:
    """`*<n>\\r\\n` or `$<n>\\r\\n`."""
    out[0] = kind
    out = _write_decimal(out + 1, <unsigned long long>n, _decimal_length(<unsigned long long>n))
    out[0] = 13
    out[1] = 10
    return out + 2


def pack_command(tuple args not None) -> bytes:
    """`args` (the command's words) as a RESP array of bulk strings, byte for byte what
    `hiredis.pack_command(args)` returns."""
    cdef Py_ssize_t count = len(args)
    if count == 0 or count > MAX_ARGS:
        return hiredis.pack_command(args)
    cdef const char *data[MAX_ARGS]
    cdef Py_ssize_t sizes[MAX_ARGS]
    cdef unsigned long long magnitudes[MAX_ARGS]
    cdef char sources[MAX_ARGS]
    cdef Py_ssize_t i, size, total
    cdef long long number
    cdef int overflow
    cdef object arg
    total = 1 + _decimal_length(<unsigned long long>count) + 2
    for i in range(count):
        arg = args[i]
        if type(arg) is str:
            sources[i] = FROM_BUFFER
            data[i] = PyUnicode_AsUTF8AndSize(arg, &sizes[i])
        elif type(arg) is bytes:
            sources[i] = FROM_BUFFER
            data[i] = PyBytes_AS_STRING(arg)
            sizes[i] = PyBytes_GET_SIZE(arg)
        elif type(arg) is int:
            number = PyLong_AsLongLongAndOverflow(arg, &overflow)
            if overflow:
                return hiredis.pack_command(args)
            if number < 0:
                sources[i] = FROM_NEGATIVE_NUMBER
                magnitudes[i] = <unsigned long long>(-(number + 1)) + 1
                sizes[i] = _decimal_length(magnitudes[i]) + 1
            else:
                sources[i] = FROM_NUMBER
                magnitudes[i] = <unsigned long long>number
                sizes[i] = _decimal_length(magnitudes[i])
        else:
            return hiredis.pack_command(args)
        size = sizes[i]
        total += 1 + _decimal_length(<unsigned long long>size) + 2 + size + 2
    packed = PyBytes_FromStringAndSize(NULL, total)
    cdef char *out = PyBytes_AS_STRING(packed)
    out = _write_length_line(out, 42, count)  # '*'
    for i in range(count):
        size = sizes[i]
        out = _write_length_line(out, 36, size)  # '$'
        if sources[i] == FROM_BUFFER:
            memcpy(out, data[i], size)
            out += size
        elif sources[i] == FROM_NUMBER:
            out = _write_decimal(out, magnitudes[i], size)
        else:
            out[0] = 45  # '-'
            out = _write_decimal(out + 1, magnitudes[i], size - 1)
        out[0] = 13
        out[1] = 10
        out += 2
    return packed
