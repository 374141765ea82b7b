"""HMAC-SHA256 over short byte strings, with the GIL released.

The PAN handling module (`payauth.server.pan`) turns every PAN into a keyed
hash on arrival; this is the primitive it calls. It is OpenSSL's one-shot
`HMAC()`, so the hash is the standard HMAC-SHA256 (the tests hold it against
`hmac.digest`), computed without creating a Python hmac object per request.
"""

from libc.string cimport memcpy


cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_MD:
        pass
    const EVP_MD *EVP_sha256()

cdef extern from "openssl/hmac.h" nogil:
    unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                        const unsigned char *data, size_t data_len,
                        unsigned char *md, unsigned int *md_len)

cdef enum:
    DIGEST_SIZE = 32


cdef class KeyedHash:
    """An HMAC-SHA256 keyed once with a server secret, then applied per message."""

    def __cinit__(self, bytes key not None):
        if len(key) < 32:
            raise ValueError("the HMAC key must be at least 32 bytes")
        if len(key) > KEYED_HASH_MAX_KEY:
            raise ValueError(f"the HMAC key must be at most {KEYED_HASH_MAX_KEY} bytes")
        memcpy(self._key, <const char *>key, len(key))
        self._key_len = len(key)

    def digest(self, bytes message not None) -> bytes:
        """Return the 32-byte HMAC-SHA256 of `message` under this key."""
        cdef unsigned char out[DIGEST_SIZE]
        cdef unsigned int out_len = 0
        cdef const unsigned char *data = <const unsigned char *>message
        cdef size_t data_len = len(message)
        cdef unsigned char *ok
        with nogil:
            ok = HMAC(EVP_sha256(), self._key, self._key_len, data, data_len, out, &out_len)
        if ok == NULL or out_len != DIGEST_SIZE:
            raise RuntimeError("OpenSSL HMAC-SHA256 failed")
        return (<char *>out)[:DIGEST_SIZE]

    def hexdigest(self, bytes message not None) -> str:
        """Return the HMAC-SHA256 of `message` as 64 lowercase hex characters."""
        return self.digest(message).hex()
