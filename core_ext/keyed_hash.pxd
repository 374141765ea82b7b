# The keyed hash as other modules of the core cimport it.

cdef enum:
    KEYED_HASH_MAX_KEY = 1024


cdef class KeyedHash:
    cdef unsigned char _key[KEYED_HASH_MAX_KEY]
    cdef int _key_len
