# distutils: language = c++
# distutils: libraries = re2
"""The CEL evaluator of the decision core: a register machine over tagged C values.

`payauth.core.cel_compiler` lowers a type-checked CEL expression (Google's own front end,
`cel-expr-python`) into a `Program`: flat `Instr` structs, constants laid out once in a
register file, regular expressions compiled once with RE2 (the engine the CEL specification
names), time zones turned into offset tables. `cel_run` executes a range of instructions with
the GIL released; it creates no Python object and calls no allocator: values made while
evaluating (concatenations, list literals over inputs) come from a bump arena in `Scratch`,
reset between evaluations, and running out of it is an error value, never a wrong answer.

Semantics are CEL's: errors are values, absorbed by `&&`, `||` and `?:` as the specification
says; int and uint arithmetic is checked; numbers of different kinds compare by value;
timestamps and durations follow cel-cpp's checked arithmetic.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from cpython.dict cimport PyDict_GetItem, PyDict_GetItemWithError, PyDict_Next
from cpython.long cimport PyLong_AsDouble, PyLong_Check
from cpython.object cimport PyObject_GetAttr
from cpython.ref cimport Py_INCREF, Py_XDECREF, PyObject
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.sequence cimport PySequence_Fast_ITEMS
from libc.math cimport NAN, isnan
from libc.stdint cimport INT64_MAX, INT64_MIN, UINT64_MAX, int32_t, int64_t, uint8_t, uint64_t
from libc.stdio cimport snprintf
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset

import datetime
import sys

from payauth.core.cel_values import CelError, Duration, MapValue, Timestamp, TypeValue, Uint


cdef extern from *:
    """
    #include <math.h>
    #include <stdio.h>
    #include <stdlib.h>
    #include <string.h>
    #include <string>
    #include <re2/re2.h>

    static inline int pa_add_i64(int64_t a, int64_t b, int64_t *r) { return __builtin_add_overflow(a, b, r); }
    static inline int pa_sub_i64(int64_t a, int64_t b, int64_t *r) { return __builtin_sub_overflow(a, b, r); }
    static inline int pa_mul_i64(int64_t a, int64_t b, int64_t *r) { return __builtin_mul_overflow(a, b, r); }
    static inline int pa_add_u64(uint64_t a, uint64_t b, uint64_t *r) { return __builtin_add_overflow(a, b, r); }
    static inline int pa_sub_u64(uint64_t a, uint64_t b, uint64_t *r) { return __builtin_sub_overflow(a, b, r); }
    static inline int pa_mul_u64(uint64_t a, uint64_t b, uint64_t *r) { return __builtin_mul_overflow(a, b, r); }

    /* A duration (floor seconds, nanos in [0, 1e9)) as int64 nanoseconds, saturating like
       absl::ToInt64Nanoseconds. */
    static inline int64_t pa_sat_nanos(int64_t sec, int64_t nanos) {
        __int128 v = (__int128)sec * 1000000000 + nanos;
        if (v > (__int128)INT64_MAX) return INT64_MAX;
        if (v < (__int128)INT64_MIN) return INT64_MIN;
        return (int64_t)v;
    }

    static void *pa_re2_new(const char *p, size_t n) {
        RE2 *re = new RE2(re2::StringPiece(p, n), RE2::Quiet);
        return (void *)re;
    }
    static int pa_re2_ok(void *re) { return ((RE2 *)re)->ok(); }
    static const char *pa_re2_error(void *re) { return ((RE2 *)re)->error().c_str(); }
    static void pa_re2_free(void *re) { delete (RE2 *)re; }
    static int pa_re2_search(void *re, const char *s, size_t n) {
        return RE2::PartialMatch(re2::StringPiece(s, n), *(RE2 *)re);
    }

    /* CEL's string(double), as cel-cpp writes it: the shortest digits that read back as the
       same double, in %g's notation choice for six significant digits (scientific when the
       exponent is below -4 or at least 6), without trailing zeros. */
    static int pa_format_double(double d, char *out) {
        if (isnan(d)) return sprintf(out, signbit(d) ? "-nan" : "nan");
        if (isinf(d)) return sprintf(out, d < 0 ? "-inf" : "inf");
        if (d == 0) return sprintf(out, signbit(d) ? "-0" : "0");
        char buf[48];
        int p;
        for (p = 1; p <= 17; p++) {
            snprintf(buf, sizeof buf, "%.*e", p - 1, d);
            if (strtod(buf, NULL) == d) break;
        }
        if (p > 17) p = 17;
        char *e = strchr(buf, 'e');
        int x = atoi(e + 1);
        if (x < -4 || x >= 6) {
            int m = (int)(e - buf);
            memcpy(out, buf, m);
            return m + sprintf(out + m, "e%c%02d", x < 0 ? '-' : '+', x < 0 ? -x : x);
        }
        int decimals = p - 1 - x;
        if (decimals < 0) decimals = 0;
        return sprintf(out, "%.*f", decimals, d);
    }

    /* double(string): the text without surrounding ASCII whitespace must read completely as a
       strtod number (decimal, hexadecimal, inf, nan), as absl::SimpleAtod takes it. */
    static int pa_parse_double(const char *s, size_t n, double *out) {
        while (n && (*s == ' ' || (*s >= '\\t' && *s <= '\\r'))) { s++; n--; }
        while (n && (s[n-1] == ' ' || (s[n-1] >= '\\t' && s[n-1] <= '\\r'))) n--;
        if (n == 0 || n > 400) return 0;
        char buf[401];
        memcpy(buf, s, n);
        buf[n] = 0;
        if (buf[0] == '+' && (buf[1] == '-' || buf[1] == '+')) return 0;
        char *end = NULL;
        double v = strtod(buf, &end);
        if (end != buf + n) return 0;
        *out = v;
        return 1;
    }

    /* Go / absl duration text, [-+]?([0-9]*(\\.[0-9]*)?(h|m|s|ms|us|ns))+ or "0", within
       CEL's range of 315576000000.999999999s either side of zero. 0 ok, 1 bad text, 2 range. */
    static int pa_parse_duration(const char *s, size_t n, int64_t *sec_out, int64_t *nanos_out) {
        size_t pos = 0;
        int neg = 0;
        const __int128 limit = (__int128)315576000000LL * 1000000000 + 999999999;
        __int128 total = 0;
        if (pos < n && (s[pos] == '-' || s[pos] == '+')) { neg = s[pos] == '-'; pos++; }
        if (pos + 1 == n && s[pos] == '0') { *sec_out = 0; *nanos_out = 0; return 0; }
        if (pos >= n) return 1;
        while (pos < n) {
            __int128 whole = 0, fnum = 0, fden = 1, unit;
            int any = 0;
            while (pos < n && s[pos] >= '0' && s[pos] <= '9') {
                if (whole < ((__int128)1 << 100)) whole = whole * 10 + (s[pos] - '0');
                any = 1; pos++;
            }
            if (pos < n && s[pos] == '.') {
                pos++;
                while (pos < n && s[pos] >= '0' && s[pos] <= '9') {
                    if (fden < ((__int128)1 << 90)) { fnum = fnum * 10 + (s[pos] - '0'); fden *= 10; }
                    any = 1; pos++;
                }
            }
            if (!any) return 1;
            size_t st = pos;
            while (pos < n && s[pos] >= 'a' && s[pos] <= 'z') pos++;
            size_t ul = pos - st;
            if (ul == 1 && s[st] == 'h') unit = (__int128)3600 * 1000000000;
            else if (ul == 1 && s[st] == 'm') unit = (__int128)60 * 1000000000;
            else if (ul == 1 && s[st] == 's') unit = 1000000000;
            else if (ul == 2 && s[st] == 'm' && s[st + 1] == 's') unit = 1000000;
            else if (ul == 2 && s[st] == 'u' && s[st + 1] == 's') unit = 1000;
            else if (ul == 2 && s[st] == 'n' && s[st + 1] == 's') unit = 1;
            else return 1;
            if (whole > limit) return 2;
            total += whole * unit + fnum * unit / fden;
            if (total > limit) return 2;
        }
        if (neg) total = -total;
        __int128 sec = total / 1000000000, rem = total % 1000000000;
        if (rem < 0) { rem += 1000000000; sec -= 1; }
        *sec_out = (int64_t)sec;
        *nanos_out = (int64_t)rem;
        return 0;
    }
    """
    int pa_add_i64(int64_t a, int64_t b, int64_t *r) noexcept nogil
    int pa_sub_i64(int64_t a, int64_t b, int64_t *r) noexcept nogil
    int pa_mul_i64(int64_t a, int64_t b, int64_t *r) noexcept nogil
    int pa_add_u64(uint64_t a, uint64_t b, uint64_t *r) noexcept nogil
    int pa_sub_u64(uint64_t a, uint64_t b, uint64_t *r) noexcept nogil
    int pa_mul_u64(uint64_t a, uint64_t b, uint64_t *r) noexcept nogil
    int64_t pa_sat_nanos(int64_t sec, int64_t nanos) noexcept nogil
    void *pa_re2_new(const char *p, size_t n) noexcept nogil
    int pa_re2_ok(void *re) noexcept nogil
    const char *pa_re2_error(void *re) noexcept nogil
    void pa_re2_free(void *re) noexcept nogil
    int pa_re2_search(void *re, const char *s, size_t n) noexcept nogil
    int pa_format_double(double d, char *out) noexcept nogil
    int pa_parse_double(const char *s, size_t n, double *out) noexcept nogil
    int pa_parse_duration(const char *s, size_t n, int64_t *sec, int64_t *nanos) noexcept nogil


# ---------------------------------------------------------------------------------------------
# Opcodes. The compiler reads them from OPCODES; their numbers mean nothing outside a Program.

cdef enum Op:
    OP_MOV = 1
    OP_JMP
    OP_AND_SC
    OP_AND
    OP_OR_SC
    OP_OR
    OP_NOT
    OP_NOT_STRICTLY_FALSE
    OP_COND
    OP_EQ
    OP_NE
    OP_LT
    OP_LE
    OP_GT
    OP_GE
    OP_ADD
    OP_SUB
    OP_MUL
    OP_DIV
    OP_MOD
    OP_NEG
    OP_IN
    OP_INDEX
    OP_SELECT
    OP_HAS_KEY
    OP_HAS_VALUE
    OP_SIZE
    OP_STARTS_WITH
    OP_ENDS_WITH
    OP_CONTAINS
    OP_MATCHES
    OP_TO_INT
    OP_TO_UINT
    OP_TO_DOUBLE
    OP_TO_STRING
    OP_TO_BYTES
    OP_TO_BOOL
    OP_TO_TIMESTAMP
    OP_TO_DURATION
    OP_TYPE_OF
    OP_TS_GET
    OP_DUR_GET
    OP_LIST
    OP_MAP
    OP_ITER_INIT
    OP_ITER_NEXT
    OP_APPEND
    OP_MAP_INSERT
    OP_ERROR
    OP_IS_ERROR_JUMP
    OP_END

OPCODES = {name: value for name, value in (
    ("MOV", OP_MOV), ("JMP", OP_JMP), ("AND_SC", OP_AND_SC), ("AND", OP_AND),
    ("OR_SC", OP_OR_SC), ("OR", OP_OR), ("NOT", OP_NOT),
    ("NOT_STRICTLY_FALSE", OP_NOT_STRICTLY_FALSE), ("COND", OP_COND), ("EQ", OP_EQ),
    ("NE", OP_NE), ("LT", OP_LT), ("LE", OP_LE), ("GT", OP_GT), ("GE", OP_GE),
    ("ADD", OP_ADD), ("SUB", OP_SUB), ("MUL", OP_MUL), ("DIV", OP_DIV), ("MOD", OP_MOD),
    ("NEG", OP_NEG), ("IN", OP_IN), ("INDEX", OP_INDEX), ("SELECT", OP_SELECT),
    ("HAS_KEY", OP_HAS_KEY), ("HAS_VALUE", OP_HAS_VALUE), ("SIZE", OP_SIZE),
    ("STARTS_WITH", OP_STARTS_WITH), ("ENDS_WITH", OP_ENDS_WITH), ("CONTAINS", OP_CONTAINS),
    ("MATCHES", OP_MATCHES), ("TO_INT", OP_TO_INT), ("TO_UINT", OP_TO_UINT),
    ("TO_DOUBLE", OP_TO_DOUBLE), ("TO_STRING", OP_TO_STRING), ("TO_BYTES", OP_TO_BYTES),
    ("TO_BOOL", OP_TO_BOOL), ("TO_TIMESTAMP", OP_TO_TIMESTAMP),
    ("TO_DURATION", OP_TO_DURATION), ("TYPE_OF", OP_TYPE_OF), ("TS_GET", OP_TS_GET),
    ("DUR_GET", OP_DUR_GET), ("LIST", OP_LIST), ("MAP", OP_MAP), ("ITER_INIT", OP_ITER_INIT),
    ("ITER_NEXT", OP_ITER_NEXT), ("APPEND", OP_APPEND), ("MAP_INSERT", OP_MAP_INSERT),
    ("ERROR", OP_ERROR), ("IS_ERROR_JUMP", OP_IS_ERROR_JUMP), ("END", OP_END),
)}

# Added to the opcode of a comparison, `in` or string test: when its result is false, jump
# to `c` (its dst is then the false of the `&&` whose left operand it is, which jumps past
# its right operand: one instruction where `AND_SC` took a second).
cdef enum:
    OP_MASK = 0xFF
    OP_JUMP_IF_FALSE = 0x100

JUMP_IF_FALSE = OP_JUMP_IF_FALSE
JUMP_IF_FALSE_OPS = frozenset((OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_IN,
                               OP_STARTS_WITH, OP_ENDS_WITH, OP_CONTAINS))

# Error codes and their messages (the conformance files check only that an error occurs).
cdef enum ErrorCode:
    E_NO_OVERLOAD = 1
    E_DIV_ZERO
    E_MOD_ZERO
    E_OVERFLOW
    E_RANGE
    E_NO_KEY
    E_INDEX
    E_CONVERSION
    E_UTF8
    E_TS_RANGE
    E_DUR_RANGE
    E_REPEATED_KEY
    E_KEY_TYPE
    E_RESOURCE
    E_ZONE_RANGE
    E_BAD_TIMESTAMP
    E_BAD_DURATION
    E_NOT_BOOL

ERROR_MESSAGES = {
    E_NO_OVERLOAD: "no such overload",
    E_DIV_ZERO: "divide by zero",
    E_MOD_ZERO: "modulus by zero",
    E_OVERFLOW: "return error for overflow",
    E_RANGE: "range error: value out of the target type's range",
    E_NO_KEY: "no such key",
    E_INDEX: "index out of range",
    E_CONVERSION: "type conversion error",
    E_UTF8: "invalid UTF-8",
    E_TS_RANGE: "timestamp out of range",
    E_DUR_RANGE: "duration out of range",
    E_REPEATED_KEY: "Failed with repeated key",
    E_KEY_TYPE: "unsupported key type",
    E_RESOURCE: "evaluation scratch space exhausted",
    E_ZONE_RANGE: "timestamp outside the time zone table (years 1900 to 2199)",
    E_BAD_TIMESTAMP: "cannot parse timestamp",
    E_BAD_DURATION: "cannot parse duration",
    E_NOT_BOOL: "no matching overload: condition is not a bool",
}

# Type codes of type values, in the names CEL gives them.
cdef enum TypeCode:
    T_NULL = 1
    T_BOOL
    T_INT
    T_UINT
    T_DOUBLE
    T_STRING
    T_BYTES
    T_TIMESTAMP
    T_DURATION
    T_LIST
    T_MAP
    T_TYPE

TYPE_NAMES = {
    T_NULL: "null_type", T_BOOL: "bool", T_INT: "int", T_UINT: "uint", T_DOUBLE: "double",
    T_STRING: "string", T_BYTES: "bytes", T_TIMESTAMP: "google.protobuf.Timestamp",
    T_DURATION: "google.protobuf.Duration", T_LIST: "list", T_MAP: "map", T_TYPE: "type",
}
TYPE_CODES = {name: code for code, name in TYPE_NAMES.items()}

# Fields of the timestamp and duration accessors (getHours() ...).
cdef enum TimeField:
    TF_FULL_YEAR = 1
    TF_MONTH
    TF_DATE
    TF_DAY_OF_MONTH
    TF_DAY_OF_WEEK
    TF_DAY_OF_YEAR
    TF_HOURS
    TF_MINUTES
    TF_SECONDS
    TF_MILLISECONDS

TIME_FIELDS = {
    "getFullYear": TF_FULL_YEAR, "getMonth": TF_MONTH, "getDate": TF_DATE,
    "getDayOfMonth": TF_DAY_OF_MONTH, "getDayOfWeek": TF_DAY_OF_WEEK,
    "getDayOfYear": TF_DAY_OF_YEAR, "getHours": TF_HOURS, "getMinutes": TF_MINUTES,
    "getSeconds": TF_SECONDS, "getMilliseconds": TF_MILLISECONDS,
}

cdef enum:
    NANOS = 1000000000
# 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, CEL's timestamp range.
cdef int64_t MIN_TS = -62135596800
cdef int64_t MAX_TS = 253402300799


# ---------------------------------------------------------------------------------------------
# Value constructors and helpers (all nogil, no allocation except from the arena).

cdef inline CelValue mk_err(int32_t code) noexcept nogil:
    cdef CelValue v
    v.kind = K_ERROR
    v.flags = 0
    v.spare = 0
    v.n = code
    v.v.i = 0
    return v

cdef inline CelValue mk_bool(bint b) noexcept nogil:
    cdef CelValue v
    v.kind = K_BOOL
    v.flags = 0
    v.spare = 0
    v.n = 0
    v.v.i = 1 if b else 0
    return v

cdef inline CelValue mk_int(int64_t i) noexcept nogil:
    cdef CelValue v
    v.kind = K_INT
    v.flags = 0
    v.spare = 0
    v.n = 0
    v.v.i = i
    return v

cdef inline CelValue mk_uint(uint64_t u) noexcept nogil:
    cdef CelValue v
    v.kind = K_UINT
    v.flags = 0
    v.spare = 0
    v.n = 0
    v.v.u = u
    return v

cdef inline CelValue mk_double(double d) noexcept nogil:
    cdef CelValue v
    v.kind = K_DOUBLE
    v.flags = 0
    v.spare = 0
    v.n = 0
    v.v.d = d
    return v

cdef inline CelValue mk_type(int32_t code) noexcept nogil:
    cdef CelValue v
    v.kind = K_TYPE
    v.flags = 0
    v.spare = 0
    v.n = code
    v.v.i = 0
    return v

cdef inline CelValue mk_str(int kind, const char *s, int64_t n) noexcept nogil:
    cdef CelValue v
    v.kind = kind
    v.flags = 0
    v.spare = 0
    v.n = <int32_t>n
    v.v.s = s
    return v

cdef inline CelValue mk_time(int kind, int64_t sec, int64_t nanos) noexcept nogil:
    # Normalizes nanos into [0, 1e9); the caller keeps |nanos| below 2e9.
    cdef CelValue v
    if nanos < 0:
        nanos += NANOS
        sec -= 1
    elif nanos >= NANOS:
        nanos -= NANOS
        sec += 1
    v.kind = kind
    v.flags = 0
    v.spare = 0
    v.n = <int32_t>nanos
    v.v.i = sec
    return v

cdef inline CelValue mk_seq(int kind, const CelValue *items, int64_t n) noexcept nogil:
    cdef CelValue v
    v.kind = kind
    v.flags = 0
    v.spare = 0
    v.n = <int32_t>n
    v.v.p = items
    return v

cdef inline CelValue *arena_vals(Arena *a, int64_t n) noexcept nogil:
    if a.vtop + n > a.vcap:
        return NULL
    cdef CelValue *p = a.vals + a.vtop
    a.vtop += n
    return p

cdef inline char *arena_bytes(Arena *a, int64_t n) noexcept nogil:
    if a.btop + n > a.bcap:
        return NULL
    cdef char *p = a.bytes + a.btop
    a.btop += n
    return p

cdef inline const CelValue *items_of(const CelValue *v) noexcept nogil:
    return <const CelValue *>v.v.p


# ---- numbers ----------------------------------------------------------------------------------

cdef inline bint is_num(int k) noexcept nogil:
    return k == K_INT or k == K_UINT or k == K_DOUBLE

# 2^63 and 2^64 as doubles (exact).
cdef double TWO63 = 9223372036854775808.0
cdef double TWO64 = 18446744073709551616.0

cdef inline int cmp_i64(int64_t a, int64_t b) noexcept nogil:
    return -1 if a < b else (1 if a > b else 0)

cdef inline int cmp_u64(uint64_t a, uint64_t b) noexcept nogil:
    return -1 if a < b else (1 if a > b else 0)

cdef inline int cmp_double(double a, double b) noexcept nogil:
    if isnan(a) or isnan(b):
        return 2
    return -1 if a < b else (1 if a > b else 0)

cdef inline int cmp_num(const CelValue *a, const CelValue *b) noexcept nogil:
    # Compares two numbers of any kinds by value: -1, 0, 1, or 2 when unordered (NaN). An
    # int or uint meets a double as a double, as cel-cpp and the conformance files have it
    # (9223372036854775807 equals 9223372036854775808.0); int against uint is exact.
    cdef int ka = a.kind, kb = b.kind
    if ka == K_INT:
        if kb == K_INT:
            return cmp_i64(a.v.i, b.v.i)
        if kb == K_UINT:
            if a.v.i < 0:
                return -1
            return cmp_u64(<uint64_t>a.v.i, b.v.u)
        return cmp_double(<double>a.v.i, b.v.d)
    if ka == K_UINT:
        if kb == K_UINT:
            return cmp_u64(a.v.u, b.v.u)
        if kb == K_INT:
            if b.v.i < 0:
                return 1
            return cmp_u64(a.v.u, <uint64_t>b.v.i)
        return cmp_double(<double>a.v.u, b.v.d)
    if kb == K_DOUBLE:
        return cmp_double(a.v.d, b.v.d)
    if kb == K_INT:
        return cmp_double(a.v.d, <double>b.v.i)
    return cmp_double(a.v.d, <double>b.v.u)


cdef inline bint key_num_eq(const CelValue *a, const CelValue *b) noexcept nogil:
    # Map keys match across int, uint and double only when the values are exactly equal.
    cdef const CelValue *t
    cdef double d
    if a.kind == K_DOUBLE and b.kind != K_DOUBLE:
        t = a
        a = b
        b = t
    if b.kind != K_DOUBLE:
        return cmp_num(a, b) == 0
    if a.kind == K_DOUBLE:
        return a.v.d == b.v.d
    d = b.v.d
    if a.kind == K_INT:
        if not (d >= -TWO63 and d < TWO63) or <double>(<int64_t>d) != d:
            return False
        return <int64_t>d == a.v.i
    if not (d >= 0 and d < TWO64) or <double>(<uint64_t>d) != d:
        return False
    return <uint64_t>d == a.v.u


# ---- equality and ordering --------------------------------------------------------------------

cdef inline bint str_eq(const CelValue *a, const CelValue *b) noexcept nogil:
    if a.n != b.n:
        return False
    if a.n == 0 or a.v.s == b.v.s:
        return True
    if (a.flags & b.flags & F_INTERNED) != 0:
        return False
    return memcmp(a.v.s, b.v.s, a.n) == 0

cdef int map_find(const CelValue *m, const CelValue *key) noexcept nogil:
    # Index of `key`'s entry in map `m`, or -1; numeric keys match across int, uint, double.
    cdef const CelValue *items = items_of(m)
    cdef int32_t i
    for i in range(m.n):
        if key_eq(&items[2 * i], key):
            return i
    return -1

cdef inline bint key_eq(const CelValue *a, const CelValue *b) noexcept nogil:
    if is_num(a.kind) and is_num(b.kind):
        return key_num_eq(a, b)
    if a.kind != b.kind:
        return False
    if a.kind == K_STRING:
        return str_eq(a, b)
    if a.kind == K_BOOL:
        return a.v.i == b.v.i
    return False

cdef bint val_eq(const CelValue *a, const CelValue *b) noexcept nogil:
    # CEL equality of two non-error values (lists and maps never hold errors).
    cdef int ka = a.kind, kb = b.kind
    cdef int32_t i, j
    cdef const CelValue *ia
    cdef const CelValue *ib
    if is_num(ka) and is_num(kb):
        return cmp_num(a, b) == 0
    if ka != kb:
        return False
    if ka == K_STRING:
        return str_eq(a, b)
    if ka == K_BYTES:
        return a.n == b.n and (a.n == 0 or memcmp(a.v.s, b.v.s, a.n) == 0)
    if ka == K_BOOL:
        return a.v.i == b.v.i
    if ka == K_NULL:
        return True
    if ka == K_TIMESTAMP or ka == K_DURATION:
        return a.v.i == b.v.i and a.n == b.n
    if ka == K_TYPE:
        return a.n == b.n
    if ka == K_LIST:
        if a.n != b.n:
            return False
        ia = items_of(a)
        ib = items_of(b)
        for i in range(a.n):
            if not val_eq(&ia[i], &ib[i]):
                return False
        return True
    if ka == K_MAP:
        if a.n != b.n:
            return False
        ia = items_of(a)
        ib = items_of(b)
        for i in range(a.n):
            j = map_find(b, &ia[2 * i])
            if j < 0 or not val_eq(&ia[2 * i + 1], &ib[2 * j + 1]):
                return False
        return True
    return False

cdef inline int compare(const CelValue *a, const CelValue *b) noexcept nogil:
    # Ordering: -1, 0, 1; 2 unordered (NaN); 3 no ordering between these values.
    cdef int ka = a.kind, kb = b.kind
    cdef int32_t n
    cdef int r
    if is_num(ka) and is_num(kb):
        return cmp_num(a, b)
    if ka != kb:
        return 3
    if ka == K_STRING or ka == K_BYTES:
        n = a.n if a.n < b.n else b.n
        r = memcmp(a.v.s, b.v.s, n) if n > 0 else 0
        if r != 0:
            return -1 if r < 0 else 1
        return cmp_i64(a.n, b.n)
    if ka == K_BOOL:
        return cmp_i64(a.v.i, b.v.i)
    if ka == K_TIMESTAMP or ka == K_DURATION:
        r = cmp_i64(a.v.i, b.v.i)
        return r if r != 0 else cmp_i64(a.n, b.n)
    return 3


# ---- arithmetic -------------------------------------------------------------------------------

cdef inline CelValue dur_from_nanos(int64_t ns) noexcept nogil:
    cdef int64_t sec = ns // NANOS
    cdef int64_t rem = ns % NANOS
    # C division truncates; bring the remainder into [0, 1e9).
    if rem < 0:
        rem += NANOS
        sec -= 1
    return mk_time(K_DURATION, sec, rem)

cdef inline CelValue ts_add(int64_t sec, int64_t nanos, int64_t dsec, int64_t dnanos) noexcept nogil:
    cdef int64_t s
    if pa_add_i64(sec, dsec, &s):
        return mk_err(E_OVERFLOW)
    cdef CelValue r = mk_time(K_TIMESTAMP, s, nanos + dnanos)
    if r.v.i < MIN_TS or r.v.i > MAX_TS:
        return mk_err(E_TS_RANGE)
    return r

cdef CelValue ts_sub_ts(const CelValue *a, const CelValue *b) noexcept nogil:
    # cel-cpp's CheckedSub(Time, Time): seconds, then scaled to nanoseconds, all checked.
    cdef int64_t s, t, v
    if pa_sub_i64(a.v.i, b.v.i, &s) or pa_mul_i64(s, NANOS, &t):
        return mk_err(E_OVERFLOW)
    if pa_add_i64(t, <int64_t>a.n - <int64_t>b.n, &v):
        return mk_err(E_OVERFLOW)
    return dur_from_nanos(v)

cdef CelValue arith(int op, const CelValue *a, const CelValue *b, Arena *arena) noexcept nogil:
    cdef int ka = a.kind, kb = b.kind
    cdef int64_t ri
    cdef uint64_t ru
    cdef char *buf
    cdef CelValue *items
    cdef int64_t na, nb
    if ka == K_INT and kb == K_INT:
        if op == OP_ADD:
            if pa_add_i64(a.v.i, b.v.i, &ri):
                return mk_err(E_OVERFLOW)
            return mk_int(ri)
        if op == OP_SUB:
            if pa_sub_i64(a.v.i, b.v.i, &ri):
                return mk_err(E_OVERFLOW)
            return mk_int(ri)
        if op == OP_MUL:
            if pa_mul_i64(a.v.i, b.v.i, &ri):
                return mk_err(E_OVERFLOW)
            return mk_int(ri)
        if op == OP_DIV:
            if b.v.i == 0:
                return mk_err(E_DIV_ZERO)
            if a.v.i == INT64_MIN and b.v.i == -1:
                return mk_err(E_OVERFLOW)
            return mk_int(a.v.i // b.v.i)
        if b.v.i == 0:
            return mk_err(E_MOD_ZERO)
        if a.v.i == INT64_MIN and b.v.i == -1:
            return mk_err(E_OVERFLOW)
        return mk_int(a.v.i % b.v.i)
    if ka == K_UINT and kb == K_UINT:
        if op == OP_ADD:
            if pa_add_u64(a.v.u, b.v.u, &ru):
                return mk_err(E_OVERFLOW)
            return mk_uint(ru)
        if op == OP_SUB:
            if pa_sub_u64(a.v.u, b.v.u, &ru):
                return mk_err(E_OVERFLOW)
            return mk_uint(ru)
        if op == OP_MUL:
            if pa_mul_u64(a.v.u, b.v.u, &ru):
                return mk_err(E_OVERFLOW)
            return mk_uint(ru)
        if op == OP_DIV:
            if b.v.u == 0:
                return mk_err(E_DIV_ZERO)
            return mk_uint(a.v.u // b.v.u)
        if b.v.u == 0:
            return mk_err(E_MOD_ZERO)
        return mk_uint(a.v.u % b.v.u)
    if ka == K_DOUBLE and kb == K_DOUBLE:
        if op == OP_ADD:
            return mk_double(a.v.d + b.v.d)
        if op == OP_SUB:
            return mk_double(a.v.d - b.v.d)
        if op == OP_MUL:
            return mk_double(a.v.d * b.v.d)
        if op == OP_DIV:
            return mk_double(a.v.d / b.v.d)
        return mk_err(E_NO_OVERLOAD)
    if op == OP_ADD:
        if (ka == K_STRING and kb == K_STRING) or (ka == K_BYTES and kb == K_BYTES):
            if b.n == 0:
                return mk_str(ka, a.v.s, a.n)
            if a.n == 0:
                return mk_str(ka, b.v.s, b.n)
            buf = arena_bytes(arena, <int64_t>a.n + b.n)
            if buf == NULL:
                return mk_err(E_RESOURCE)
            memcpy(buf, a.v.s, a.n)
            memcpy(buf + a.n, b.v.s, b.n)
            return mk_str(ka, buf, <int64_t>a.n + b.n)
        if ka == K_LIST and kb == K_LIST:
            if b.n == 0:
                return a[0]
            if a.n == 0:
                return b[0]
            items = arena_vals(arena, <int64_t>a.n + b.n)
            if items == NULL:
                return mk_err(E_RESOURCE)
            memcpy(items, a.v.p, sizeof(CelValue) * a.n)
            memcpy(items + a.n, b.v.p, sizeof(CelValue) * b.n)
            return mk_seq(K_LIST, items, <int64_t>a.n + b.n)
        if ka == K_TIMESTAMP and kb == K_DURATION:
            return ts_add(a.v.i, a.n, b.v.i, b.n)
        if ka == K_DURATION and kb == K_TIMESTAMP:
            return ts_add(b.v.i, b.n, a.v.i, a.n)
        if ka == K_DURATION and kb == K_DURATION:
            if pa_add_i64(pa_sat_nanos(a.v.i, a.n), pa_sat_nanos(b.v.i, b.n), &ri):
                return mk_err(E_OVERFLOW)
            return dur_from_nanos(ri)
        return mk_err(E_NO_OVERLOAD)
    if op == OP_SUB:
        if ka == K_TIMESTAMP and kb == K_TIMESTAMP:
            return ts_sub_ts(a, b)
        if ka == K_TIMESTAMP and kb == K_DURATION:
            # cel-cpp negates the duration as int64 nanoseconds, then adds.
            nb = pa_sat_nanos(b.v.i, b.n)
            if nb == INT64_MIN:
                return mk_err(E_OVERFLOW)
            nb = -nb
            na = nb // NANOS
            ri = nb % NANOS
            if ri < 0:
                ri += NANOS
                na -= 1
            return ts_add(a.v.i, a.n, na, ri)
        if ka == K_DURATION and kb == K_DURATION:
            if pa_sub_i64(pa_sat_nanos(a.v.i, a.n), pa_sat_nanos(b.v.i, b.n), &ri):
                return mk_err(E_OVERFLOW)
            return dur_from_nanos(ri)
    return mk_err(E_NO_OVERLOAD)


# ---- strings ----------------------------------------------------------------------------------

cdef inline int64_t utf8_length(const char *s, int32_t n) noexcept nogil:
    cdef int64_t count = 0
    cdef int32_t i
    for i in range(n):
        if (<unsigned char>s[i] & 0xC0) != 0x80:
            count += 1
    return count

cdef bint utf8_valid(const unsigned char *s, int32_t n) noexcept nogil:
    cdef int32_t i = 0, k
    cdef unsigned char c
    cdef int need
    cdef uint64_t cp
    while i < n:
        c = s[i]
        if c < 0x80:
            i += 1
            continue
        if c >= 0xC2 and c <= 0xDF:
            need = 1
            cp = c & 0x1F
        elif c >= 0xE0 and c <= 0xEF:
            need = 2
            cp = c & 0x0F
        elif c >= 0xF0 and c <= 0xF4:
            need = 3
            cp = c & 0x07
        else:
            return False
        if i + need >= n:
            return False
        for k in range(1, need + 1):
            if (s[i + k] & 0xC0) != 0x80:
                return False
            cp = (cp << 6) | (s[i + k] & 0x3F)
        if (need == 2 and (cp < 0x800 or (cp >= 0xD800 and cp <= 0xDFFF))) or \
                (need == 3 and (cp < 0x10000 or cp > 0x10FFFF)):
            return False
        i += need + 1
    return True

cdef inline bint find_sub(const char *h, int32_t hn, const char *nd, int32_t nn) noexcept nogil:
    cdef int32_t i
    if nn == 0:
        return True
    if nn > hn:
        return False
    for i in range(hn - nn + 1):
        if h[i] == nd[0] and memcmp(h + i, nd, nn) == 0:
            return True
    return False

cdef inline bint is_space(char c) noexcept nogil:
    return c == c' ' or (c >= 9 and c <= 13)

cdef bint parse_int(const char *s, int32_t n, bint unsigned, int64_t *out_i, uint64_t *out_u) noexcept nogil:
    # absl::SimpleAtoi: surrounding ASCII whitespace, an optional sign, decimal digits.
    cdef int32_t i = 0, j = n
    cdef bint neg = False
    cdef uint64_t acc = 0, limit
    cdef int digit
    while i < j and is_space(s[i]):
        i += 1
    while j > i and is_space(s[j - 1]):
        j -= 1
    if i < j and (s[i] == c'+' or s[i] == c'-'):
        neg = s[i] == c'-'
        i += 1
    if i >= j or (unsigned and neg):
        return False
    limit = UINT64_MAX if unsigned else (<uint64_t>INT64_MAX + 1 if neg else <uint64_t>INT64_MAX)
    while i < j:
        if s[i] < c'0' or s[i] > c'9':
            return False
        digit = s[i] - c'0'
        if acc > (limit - digit) // 10:
            return False
        acc = acc * 10 + digit
        i += 1
    if unsigned:
        out_u[0] = acc
    elif neg:
        out_i[0] = <int64_t>(0 - acc)
    else:
        out_i[0] = <int64_t>acc
    return True


# ---- time -------------------------------------------------------------------------------------

cdef inline int64_t floor_div(int64_t a, int64_t b) noexcept nogil:
    cdef int64_t q = a // b
    if (a % b != 0) and ((a < 0) != (b < 0)):
        q -= 1
    return q

cdef inline int64_t days_from_civil(int64_t y, int64_t m, int64_t d) noexcept nogil:
    # Howard Hinnant's days_from_civil (proleptic Gregorian), days since 1970-01-01.
    y -= 1 if m <= 2 else 0
    cdef int64_t era = floor_div(y, 400)
    cdef int64_t yoe = y - era * 400
    cdef int64_t doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    cdef int64_t doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468

cdef inline void civil_from_days(int64_t z, int64_t *y, int64_t *m, int64_t *d) noexcept nogil:
    z += 719468
    cdef int64_t era = floor_div(z, 146097)
    cdef int64_t doe = z - era * 146097
    cdef int64_t yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    cdef int64_t doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    cdef int64_t mp = (5 * doy + 2) // 153
    d[0] = doy - (153 * mp + 2) // 5 + 1
    m[0] = mp + 3 if mp < 10 else mp - 9
    y[0] = yoe + era * 400 + (1 if m[0] <= 2 else 0)

cdef inline bint is_leap(int64_t y) noexcept nogil:
    return (y % 4 == 0 and y % 100 != 0) or y % 400 == 0

cdef int64_t days_in_month(int64_t y, int64_t m) noexcept nogil:
    if m == 2:
        return 29 if is_leap(y) else 28
    if m == 4 or m == 6 or m == 9 or m == 11:
        return 30
    return 31

cdef inline int read_digits(const char *s, int32_t n, int32_t pos, int32_t count, int64_t *out) noexcept nogil:
    cdef int64_t v = 0
    cdef int32_t i
    if pos + count > n:
        return 0
    for i in range(pos, pos + count):
        if s[i] < c'0' or s[i] > c'9':
            return 0
        v = v * 10 + (s[i] - c'0')
    out[0] = v
    return 1

cdef CelValue parse_timestamp(const char *s, int32_t n) noexcept nogil:
    # RFC 3339 as cel-cpp reads it: YYYY-MM-DD[Tt]HH:MM:SS[.frac](Z|z|+HH:MM|+HHMM).
    cdef int64_t y, mo, d, h, mi, sec, nanos = 0, oh = 0, om = 0, days, total, scale
    cdef int32_t pos, sign
    if not (read_digits(s, n, 0, 4, &y) and n > 4 and s[4] == c'-'
            and read_digits(s, n, 5, 2, &mo) and n > 7 and s[7] == c'-'
            and read_digits(s, n, 8, 2, &d) and n > 10 and (s[10] == c'T' or s[10] == c't')
            and read_digits(s, n, 11, 2, &h) and n > 13 and s[13] == c':'
            and read_digits(s, n, 14, 2, &mi) and n > 16 and s[16] == c':'
            and read_digits(s, n, 17, 2, &sec)):
        return mk_err(E_BAD_TIMESTAMP)
    pos = 19
    if pos < n and s[pos] == c'.':
        pos += 1
        scale = 100000000
        if pos >= n or s[pos] < c'0' or s[pos] > c'9':
            return mk_err(E_BAD_TIMESTAMP)
        while pos < n and s[pos] >= c'0' and s[pos] <= c'9':
            nanos += (s[pos] - c'0') * scale
            scale //= 10
            pos += 1
    if pos >= n:
        return mk_err(E_BAD_TIMESTAMP)
    if s[pos] == c'Z' or s[pos] == c'z':
        pos += 1
        sign = 0
    elif s[pos] == c'+' or s[pos] == c'-':
        sign = 1 if s[pos] == c'+' else -1
        if not read_digits(s, n, pos + 1, 2, &oh):
            return mk_err(E_BAD_TIMESTAMP)
        pos += 3
        if pos < n and s[pos] == c':':
            pos += 1
        if not read_digits(s, n, pos, 2, &om):
            return mk_err(E_BAD_TIMESTAMP)
        pos += 2
        if oh > 23 or om > 59:
            return mk_err(E_BAD_TIMESTAMP)
    else:
        return mk_err(E_BAD_TIMESTAMP)
    if pos != n:
        return mk_err(E_BAD_TIMESTAMP)
    if mo < 1 or mo > 12 or d < 1 or d > days_in_month(y, mo) or h > 23 or mi > 59 or sec > 60:
        return mk_err(E_BAD_TIMESTAMP)
    days = days_from_civil(y, mo, d)
    total = days * 86400 + h * 3600 + mi * 60 + sec
    if sign != 0:
        total -= sign * (oh * 3600 + om * 60)
    if total < MIN_TS or total > MAX_TS:
        return mk_err(E_TS_RANGE)
    return mk_time(K_TIMESTAMP, total, nanos)

cdef CelValue parse_duration(const char *s, int32_t n) noexcept nogil:
    cdef int64_t sec = 0, nanos = 0
    cdef int r = pa_parse_duration(s, n, &sec, &nanos)
    if r == 1:
        return mk_err(E_BAD_DURATION)
    if r == 2:
        return mk_err(E_DUR_RANGE)
    return mk_time(K_DURATION, sec, nanos)

cdef int32_t zone_offset(const ZoneTable *z, int64_t sec, int64_t *off_sec, int64_t *off_nanos) noexcept nogil:
    # Offset of zone `z` at UTC second `sec`; 0 when outside the table.
    cdef int32_t lo, hi, mid
    if z.is_fixed:
        off_sec[0] = z.fixed_seconds
        off_nanos[0] = z.fixed_nanos
        return 1
    if z.count == 0 or sec < z.starts[0] or sec >= z.limit:
        return 0
    lo = 0
    hi = z.count - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if z.starts[mid] <= sec:
            lo = mid
        else:
            hi = mid - 1
    off_sec[0] = z.offsets[lo]
    off_nanos[0] = 0
    return 1

cdef CelValue ts_get(const CelValue *t, int field, const ZoneTable *zone) noexcept nogil:
    cdef int64_t sec = t.v.i, nanos = t.n, off_s = 0, off_n = 0, days, rem, y, m, d
    if zone != NULL:
        if not zone_offset(zone, sec, &off_s, &off_n):
            return mk_err(E_ZONE_RANGE)
        sec += off_s
        nanos += off_n
        sec += floor_div(nanos, NANOS)
        nanos -= floor_div(nanos, NANOS) * NANOS
    days = floor_div(sec, 86400)
    rem = sec - days * 86400
    if field == TF_HOURS:
        return mk_int(rem // 3600)
    if field == TF_MINUTES:
        return mk_int((rem % 3600) // 60)
    if field == TF_SECONDS:
        return mk_int(rem % 60)
    if field == TF_MILLISECONDS:
        return mk_int(nanos // 1000000)
    if field == TF_DAY_OF_WEEK:
        return mk_int((days % 7 + 11) % 7)
    civil_from_days(days, &y, &m, &d)
    if field == TF_FULL_YEAR:
        return mk_int(y)
    if field == TF_MONTH:
        return mk_int(m - 1)
    if field == TF_DATE:
        return mk_int(d)
    if field == TF_DAY_OF_MONTH:
        return mk_int(d - 1)
    if field == TF_DAY_OF_YEAR:
        return mk_int(days - days_from_civil(y, 1, 1))
    return mk_err(E_NO_OVERLOAD)

cdef CelValue dur_get(const CelValue *t, int field) noexcept nogil:
    # Truncating toward zero, as absl's ToInt64Hours and friends do.
    cdef int64_t sec = t.v.i, nanos = t.n
    if sec < 0 and nanos > 0:
        sec += 1
        nanos -= NANOS
    if field == TF_HOURS:
        return mk_int(sec // 3600 if sec >= 0 else -((-sec) // 3600))
    if field == TF_MINUTES:
        return mk_int(sec // 60 if sec >= 0 else -((-sec) // 60))
    if field == TF_SECONDS:
        return mk_int(sec)
    if field == TF_MILLISECONDS:
        return mk_int(nanos // 1000000 if nanos >= 0 else -((-nanos) // 1000000))
    return mk_err(E_NO_OVERLOAD)


# ---- conversions to string --------------------------------------------------------------------

cdef int write_frac(char *out, int64_t nanos) noexcept nogil:
    # Fractional seconds in groups of three digits, as cel-cpp prints them; none when zero.
    cdef int digits, i
    if nanos == 0:
        return 0
    if nanos % 1000000 == 0:
        digits = 3
        nanos //= 1000000
    elif nanos % 1000 == 0:
        digits = 6
        nanos //= 1000
    else:
        digits = 9
    out[0] = c'.'
    for i in range(digits, 0, -1):
        out[i] = <char>(c'0' + nanos % 10)
        nanos //= 10
    return digits + 1

cdef CelValue to_string(const CelValue *a, Arena *arena) noexcept nogil:
    cdef char tmp[64]
    cdef int len = 0
    cdef char *buf
    cdef int64_t y, m, d, days, rem, sec, nanos
    cdef uint64_t u
    cdef int64_t i
    cdef int k = a.kind
    if k == K_STRING:
        return a[0]
    if k == K_BYTES:
        if not utf8_valid(<const unsigned char *>a.v.s, a.n):
            return mk_err(E_UTF8)
        return mk_str(K_STRING, a.v.s, a.n)
    if k == K_BOOL:
        if a.v.i:
            return mk_str(K_STRING, b"true", 4)
        return mk_str(K_STRING, b"false", 5)
    if k == K_INT or k == K_UINT:
        u = a.v.u
        if k == K_INT and a.v.i < 0:
            u = <uint64_t>0 - <uint64_t>a.v.i
        while True:
            tmp[63 - len] = <char>(c'0' + u % 10)
            len += 1
            u //= 10
            if u == 0:
                break
        if k == K_INT and a.v.i < 0:
            tmp[63 - len] = c'-'
            len += 1
        buf = arena_bytes(arena, len)
        if buf == NULL:
            return mk_err(E_RESOURCE)
        memcpy(buf, tmp + 64 - len, len)
        return mk_str(K_STRING, buf, len)
    if k == K_DOUBLE:
        len = pa_format_double(a.v.d, tmp)
    elif k == K_TIMESTAMP:
        days = floor_div(a.v.i, 86400)
        rem = a.v.i - days * 86400
        civil_from_days(days, &y, &m, &d)
        len = snprintf(tmp, 64, "%04d-%02d-%02dT%02d:%02d:%02d", <int>y, <int>m, <int>d,
                       <int>(rem // 3600), <int>((rem % 3600) // 60), <int>(rem % 60))
        len += write_frac(tmp + len, a.n)
        tmp[len] = c'Z'
        len += 1
    elif k == K_DURATION:
        sec = a.v.i
        nanos = a.n
        if sec < 0 and nanos > 0:
            sec += 1
            nanos = NANOS - nanos
        if sec < 0 or (sec == 0 and a.v.i < 0):
            len = snprintf(tmp, 64, "-%lld", <long long>(-sec))
        else:
            len = snprintf(tmp, 64, "%lld", <long long>sec)
        len += write_frac(tmp + len, nanos)
        tmp[len] = c's'
        len += 1
    else:
        return mk_err(E_NO_OVERLOAD)
    buf = arena_bytes(arena, len)
    if buf == NULL:
        return mk_err(E_RESOURCE)
    memcpy(buf, tmp, len)
    return mk_str(K_STRING, buf, len)

cdef CelValue convert(int op, const CelValue *a, Arena *arena) noexcept nogil:
    cdef int k = a.kind
    cdef int64_t i
    cdef uint64_t u
    cdef double d
    if op == OP_TO_INT:
        if k == K_INT:
            return a[0]
        if k == K_UINT:
            if a.v.u > <uint64_t>INT64_MAX:
                return mk_err(E_RANGE)
            return mk_int(<int64_t>a.v.u)
        if k == K_DOUBLE:
            d = a.v.d
            if not (d > -TWO63 and d < TWO63):
                return mk_err(E_RANGE)
            return mk_int(<int64_t>d)
        if k == K_STRING:
            if not parse_int(a.v.s, a.n, False, &i, &u):
                return mk_err(E_CONVERSION)
            return mk_int(i)
        if k == K_TIMESTAMP:
            return mk_int(a.v.i)
        return mk_err(E_NO_OVERLOAD)
    if op == OP_TO_UINT:
        if k == K_UINT:
            return a[0]
        if k == K_INT:
            if a.v.i < 0:
                return mk_err(E_RANGE)
            return mk_uint(<uint64_t>a.v.i)
        if k == K_DOUBLE:
            d = a.v.d
            if not (d >= 0 and d < TWO64):
                return mk_err(E_RANGE)
            return mk_uint(<uint64_t>d)
        if k == K_STRING:
            if not parse_int(a.v.s, a.n, True, &i, &u):
                return mk_err(E_CONVERSION)
            return mk_uint(u)
        return mk_err(E_NO_OVERLOAD)
    if op == OP_TO_DOUBLE:
        if k == K_DOUBLE:
            return a[0]
        if k == K_INT:
            return mk_double(<double>a.v.i)
        if k == K_UINT:
            return mk_double(<double>a.v.u)
        if k == K_STRING:
            if not pa_parse_double(a.v.s, a.n, &d):
                return mk_err(E_CONVERSION)
            return mk_double(d)
        return mk_err(E_NO_OVERLOAD)
    if op == OP_TO_STRING:
        return to_string(a, arena)
    if op == OP_TO_BYTES:
        if k == K_BYTES:
            return a[0]
        if k == K_STRING:
            return mk_str(K_BYTES, a.v.s, a.n)
        return mk_err(E_NO_OVERLOAD)
    if op == OP_TO_BOOL:
        if k == K_BOOL:
            return a[0]
        if k == K_STRING:
            if a.n == 1 and (a.v.s[0] == c'1' or a.v.s[0] == c't'):
                return mk_bool(True)
            if a.n == 1 and (a.v.s[0] == c'0' or a.v.s[0] == c'f'):
                return mk_bool(False)
            if a.n == 4 and (memcmp(a.v.s, b"true", 4) == 0 or memcmp(a.v.s, b"TRUE", 4) == 0
                             or memcmp(a.v.s, b"True", 4) == 0):
                return mk_bool(True)
            if a.n == 5 and (memcmp(a.v.s, b"false", 5) == 0 or memcmp(a.v.s, b"FALSE", 5) == 0
                             or memcmp(a.v.s, b"False", 5) == 0):
                return mk_bool(False)
            return mk_err(E_CONVERSION)
        return mk_err(E_NO_OVERLOAD)
    if op == OP_TO_TIMESTAMP:
        if k == K_TIMESTAMP:
            return a[0]
        if k == K_STRING:
            return parse_timestamp(a.v.s, a.n)
        if k == K_INT:
            if a.v.i < MIN_TS or a.v.i > MAX_TS:
                return mk_err(E_TS_RANGE)
            return mk_time(K_TIMESTAMP, a.v.i, 0)
        return mk_err(E_NO_OVERLOAD)
    if op == OP_TO_DURATION:
        if k == K_DURATION:
            return a[0]
        if k == K_STRING:
            return parse_duration(a.v.s, a.n)
        return mk_err(E_NO_OVERLOAD)
    if op == OP_TYPE_OF:
        if k == K_NULL:
            return mk_type(T_NULL)
        if k == K_BOOL:
            return mk_type(T_BOOL)
        if k == K_INT:
            return mk_type(T_INT)
        if k == K_UINT:
            return mk_type(T_UINT)
        if k == K_DOUBLE:
            return mk_type(T_DOUBLE)
        if k == K_STRING:
            return mk_type(T_STRING)
        if k == K_BYTES:
            return mk_type(T_BYTES)
        if k == K_TIMESTAMP:
            return mk_type(T_TIMESTAMP)
        if k == K_DURATION:
            return mk_type(T_DURATION)
        if k == K_LIST:
            return mk_type(T_LIST)
        if k == K_MAP:
            return mk_type(T_MAP)
        return mk_type(T_TYPE)
    return mk_err(E_NO_OVERLOAD)


# ---- containers -------------------------------------------------------------------------------

cdef inline bint valid_key(int k) noexcept nogil:
    return k == K_INT or k == K_UINT or k == K_BOOL or k == K_STRING

cdef CelValue index(const CelValue *c, const CelValue *k) noexcept nogil:
    cdef int64_t i
    cdef int32_t j
    cdef double d
    if c.kind == K_LIST:
        if k.kind == K_INT:
            i = k.v.i
        elif k.kind == K_UINT:
            if k.v.u > <uint64_t>INT64_MAX:
                return mk_err(E_INDEX)
            i = <int64_t>k.v.u
        elif k.kind == K_DOUBLE:
            d = k.v.d
            if not (d > -TWO63 and d < TWO63) or <double>(<int64_t>d) != d:
                return mk_err(E_INDEX)
            i = <int64_t>d
        else:
            return mk_err(E_NO_OVERLOAD)
        if i < 0 or i >= c.n:
            return mk_err(E_INDEX)
        return items_of(c)[i]
    if c.kind == K_MAP:
        j = map_find(c, k)
        if j < 0:
            return mk_err(E_NO_KEY)
        return items_of(c)[2 * j + 1]
    return mk_err(E_NO_OVERLOAD)

cdef CelValue contains_value(const CelValue *x, const CelValue *c) noexcept nogil:
    cdef int32_t i
    cdef const CelValue *items
    if c.kind == K_LIST:
        items = items_of(c)
        for i in range(c.n):
            if val_eq(x, &items[i]):
                return mk_bool(True)
        return mk_bool(False)
    if c.kind == K_MAP:
        return mk_bool(map_find(c, x) >= 0)
    return mk_err(E_NO_OVERLOAD)

cdef CelValue make_map(const CelValue *kv, int32_t n, Arena *arena) noexcept nogil:
    cdef int32_t i, j
    cdef CelValue *items
    for i in range(n):
        if not valid_key(kv[2 * i].kind):
            return mk_err(E_KEY_TYPE)
        for j in range(i):
            if key_eq(&kv[2 * i], &kv[2 * j]):
                return mk_err(E_REPEATED_KEY)
    items = arena_vals(arena, 2 * <int64_t>n)
    if items == NULL:
        return mk_err(E_RESOURCE)
    memcpy(items, kv, sizeof(CelValue) * 2 * n)
    return mk_seq(K_MAP, items, n)

cdef inline CelValue extend(const CelValue *seq, const CelValue *add, int32_t count, Arena *arena) noexcept nogil:
    # `seq` with `count` values appended: in place when `seq` ends at the arena's top (its
    # holders see only their own length, so writing past it is safe), else as a copy.
    cdef CelValue *items = <CelValue *>seq.v.p
    cdef int64_t per = 2 if seq.kind == K_MAP else 1
    cdef int64_t used = per * seq.n
    cdef CelValue *dst
    if seq.n > 0 and items + used == arena.vals + arena.vtop and arena.vtop + count <= arena.vcap:
        memcpy(items + used, add, sizeof(CelValue) * count)
        arena.vtop += count
        return mk_seq(seq.kind, items, seq.n + count // per)
    dst = arena_vals(arena, used + count)
    if dst == NULL:
        return mk_err(E_RESOURCE)
    if used:
        memcpy(dst, items, sizeof(CelValue) * used)
    memcpy(dst + used, add, sizeof(CelValue) * count)
    return mk_seq(seq.kind, dst, seq.n + count // per)


# ---------------------------------------------------------------------------------------------
# The machine.

cdef inline bint first_error(const CelValue *a, const CelValue *b, CelValue *out) noexcept nogil:
    if a.kind == K_ERROR:
        out[0] = a[0]
        return True
    if b.kind == K_ERROR:
        out[0] = b[0]
        return True
    return False


cdef void cel_run(const ProgramData *prog, CelValue *regs, Arena *arena,
                  int32_t start, int32_t end) noexcept nogil:
    """Execute instructions [start, end) of `prog` over the register file `regs`."""
    cdef const Instr *code = prog.code
    cdef int32_t pc = start
    cdef const Instr *ins
    cdef CelValue *a
    cdef CelValue *b
    cdef CelValue *dst
    cdef CelValue tmp2[2]
    cdef int r
    cdef int op
    cdef int32_t i
    cdef const CelValue *items
    cdef CelValue *out
    # Every test below compares `op` with constants only, so the chain compiles to one C
    # switch (a jump table), not a walk down fifty comparisons.
    while pc < end:
        ins = &code[pc]
        pc += 1
        op = ins.op & OP_MASK
        dst = &regs[ins.dst]
        if op == OP_MOV:
            dst[0] = regs[ins.a]
        elif op == OP_EQ or op == OP_NE:
            a = &regs[ins.a]
            b = &regs[ins.b]
            if a.kind == b.kind and (a.kind == K_INT or a.kind == K_BOOL):
                # The common cases first: ints and bools compare their payloads.
                dst[0] = mk_bool((a.v.i == b.v.i) == (op == OP_EQ))
            elif a.kind == K_STRING and b.kind == K_STRING:
                dst[0] = mk_bool(str_eq(a, b) == (op == OP_EQ))
            elif not first_error(a, b, dst):
                dst[0] = mk_bool(val_eq(a, b) == (op == OP_EQ))
        elif op == OP_LT or op == OP_LE or op == OP_GT or op == OP_GE:
            a = &regs[ins.a]
            b = &regs[ins.b]
            if a.kind == K_INT and b.kind == K_INT:
                r = cmp_i64(a.v.i, b.v.i)
            elif a.kind == K_DOUBLE and b.kind == K_DOUBLE:
                r = cmp_double(a.v.d, b.v.d)
            elif first_error(a, b, dst):
                continue
            else:
                r = compare(a, b)
            if r == 3:
                dst[0] = mk_err(E_NO_OVERLOAD)
            elif r == 2:
                dst[0] = mk_bool(False)
            elif op == OP_LT:
                dst[0] = mk_bool(r < 0)
            elif op == OP_LE:
                dst[0] = mk_bool(r <= 0)
            elif op == OP_GT:
                dst[0] = mk_bool(r > 0)
            else:
                dst[0] = mk_bool(r >= 0)
        elif op == OP_AND_SC:
            a = &regs[ins.a]
            if a.kind == K_BOOL and a.v.i == 0:
                dst[0] = a[0]
                pc = ins.c
        elif op == OP_OR_SC:
            a = &regs[ins.a]
            if a.kind == K_BOOL and a.v.i != 0:
                dst[0] = a[0]
                pc = ins.c
        elif op == OP_AND or op == OP_OR:
            # `a` was not the absorbing value (false for &&, true for ||).
            a = &regs[ins.a]
            b = &regs[ins.b]
            if b.kind == K_BOOL:
                if (b.v.i != 0) == (op == OP_OR):
                    dst[0] = b[0]
                elif a.kind == K_BOOL:
                    dst[0] = b[0]
                elif a.kind == K_ERROR:
                    dst[0] = a[0]
                else:
                    dst[0] = mk_err(E_NO_OVERLOAD)
            elif a.kind == K_ERROR:
                dst[0] = a[0]
            elif b.kind == K_ERROR:
                dst[0] = b[0]
            else:
                dst[0] = mk_err(E_NO_OVERLOAD)
        elif op == OP_NOT:
            a = &regs[ins.a]
            if a.kind == K_BOOL:
                dst[0] = mk_bool(a.v.i == 0)
            elif a.kind == K_ERROR:
                dst[0] = a[0]
            else:
                dst[0] = mk_err(E_NO_OVERLOAD)
        elif op == OP_NOT_STRICTLY_FALSE:
            a = &regs[ins.a]
            dst[0] = a[0] if a.kind == K_BOOL else mk_bool(True)
        elif op == OP_COND:
            a = &regs[ins.a]
            if a.kind == K_BOOL:
                if a.v.i == 0:
                    pc = ins.b
            else:
                dst[0] = a[0] if a.kind == K_ERROR else mk_err(E_NOT_BOOL)
                pc = ins.c
        elif op == OP_JMP:
            pc = ins.c
        elif op == OP_ADD or op == OP_SUB or op == OP_MUL or op == OP_DIV or op == OP_MOD:
            a = &regs[ins.a]
            b = &regs[ins.b]
            if not first_error(a, b, dst):
                dst[0] = arith(op, a, b, arena)
        elif op == OP_NEG:
            a = &regs[ins.a]
            if a.kind == K_INT:
                dst[0] = mk_err(E_OVERFLOW) if a.v.i == INT64_MIN else mk_int(-a.v.i)
            elif a.kind == K_DOUBLE:
                dst[0] = mk_double(-a.v.d)
            elif a.kind == K_ERROR:
                dst[0] = a[0]
            else:
                dst[0] = mk_err(E_NO_OVERLOAD)
        elif op == OP_IN:
            a = &regs[ins.a]
            b = &regs[ins.b]
            if not first_error(a, b, dst):
                dst[0] = contains_value(a, b)
        elif op == OP_INDEX:
            a = &regs[ins.a]
            b = &regs[ins.b]
            if not first_error(a, b, dst):
                dst[0] = index(a, b)
        elif op == OP_SELECT or op == OP_HAS_KEY:
            a = &regs[ins.a]
            if a.kind == K_ERROR:
                dst[0] = a[0]
            elif a.kind != K_MAP:
                dst[0] = mk_err(E_NO_OVERLOAD)
            elif op == OP_HAS_KEY:
                dst[0] = mk_bool(map_find(a, &regs[ins.b]) >= 0)
            else:
                dst[0] = index(a, &regs[ins.b])
        elif op == OP_HAS_VALUE:
            # has() on a proto3 scalar field: set when it differs from the default.
            a = &regs[ins.a]
            if a.kind == K_ERROR:
                dst[0] = a[0]
            elif a.kind == K_BOOL or a.kind == K_INT or a.kind == K_UINT:
                dst[0] = mk_bool(a.v.i != 0)
            elif a.kind == K_DOUBLE:
                dst[0] = mk_bool(a.v.d != 0)
            elif a.kind == K_NULL:
                dst[0] = mk_bool(False)
            else:
                dst[0] = mk_bool(a.n != 0)
        elif op == OP_SIZE:
            a = &regs[ins.a]
            if a.kind == K_STRING:
                dst[0] = mk_int(utf8_length(a.v.s, a.n))
            elif a.kind == K_BYTES or a.kind == K_LIST or a.kind == K_MAP:
                dst[0] = mk_int(a.n)
            elif a.kind == K_ERROR:
                dst[0] = a[0]
            else:
                dst[0] = mk_err(E_NO_OVERLOAD)
        elif op == OP_STARTS_WITH or op == OP_ENDS_WITH or op == OP_CONTAINS:
            a = &regs[ins.a]
            b = &regs[ins.b]
            if not first_error(a, b, dst):
                if a.kind != K_STRING or b.kind != K_STRING:
                    dst[0] = mk_err(E_NO_OVERLOAD)
                elif op == OP_STARTS_WITH:
                    dst[0] = mk_bool(b.n <= a.n and memcmp(a.v.s, b.v.s, b.n) == 0)
                elif op == OP_ENDS_WITH:
                    dst[0] = mk_bool(b.n <= a.n and memcmp(a.v.s + a.n - b.n, b.v.s, b.n) == 0)
                else:
                    dst[0] = mk_bool(find_sub(a.v.s, a.n, b.v.s, b.n))
        elif op == OP_MATCHES:
            a = &regs[ins.a]
            if a.kind == K_STRING:
                dst[0] = mk_bool(pa_re2_search(prog.regexes[ins.c], a.v.s, a.n) != 0)
            elif a.kind == K_ERROR:
                dst[0] = a[0]
            else:
                dst[0] = mk_err(E_NO_OVERLOAD)
        elif (op == OP_TO_INT or op == OP_TO_UINT or op == OP_TO_DOUBLE or op == OP_TO_STRING
              or op == OP_TO_BYTES or op == OP_TO_BOOL or op == OP_TO_TIMESTAMP
              or op == OP_TO_DURATION or op == OP_TYPE_OF):
            a = &regs[ins.a]
            if a.kind == K_ERROR:
                dst[0] = a[0]
            else:
                dst[0] = convert(op, a, arena)
        elif op == OP_TS_GET:
            a = &regs[ins.a]
            if a.kind == K_TIMESTAMP:
                dst[0] = ts_get(a, ins.b, &prog.zones[ins.c] if ins.c >= 0 else NULL)
            elif a.kind == K_DURATION and ins.c < 0:
                dst[0] = dur_get(a, ins.b)
            elif a.kind == K_ERROR:
                dst[0] = a[0]
            else:
                dst[0] = mk_err(E_NO_OVERLOAD)
        elif op == OP_LIST or op == OP_MAP:
            # Elements (or key, value pairs) sit in consecutive registers from `a`.
            r = 0
            for i in range(ins.b * (2 if op == OP_MAP else 1)):
                if regs[ins.a + i].kind == K_ERROR:
                    dst[0] = regs[ins.a + i]
                    r = 1
                    break
            if r == 0:
                if op == OP_MAP:
                    dst[0] = make_map(&regs[ins.a], ins.b, arena)
                elif ins.b == 0:
                    dst[0] = mk_seq(K_LIST, NULL, 0)
                else:
                    out = arena_vals(arena, ins.b)
                    if out == NULL:
                        dst[0] = mk_err(E_RESOURCE)
                    else:
                        memcpy(out, &regs[ins.a], sizeof(CelValue) * ins.b)
                        dst[0] = mk_seq(K_LIST, out, ins.b)
        elif op == OP_ITER_INIT:
            # dst holds the range, dst + 1 the position; a range that cannot be iterated
            # leaves its error in dst and jumps to c.
            a = &regs[ins.a]
            if a.kind == K_LIST or a.kind == K_MAP:
                dst[0] = a[0]
                regs[ins.dst + 1] = mk_int(0)
            else:
                dst[0] = a[0] if a.kind == K_ERROR else mk_err(E_NO_OVERLOAD)
                pc = ins.c
        elif op == OP_ITER_NEXT:
            a = &regs[ins.a]
            b = &regs[ins.a + 1]
            if b.v.i >= a.n:
                pc = ins.c
            else:
                items = items_of(a)
                if a.kind == K_LIST:
                    if ins.b >= 0:
                        dst[0] = mk_int(b.v.i)
                        regs[ins.b] = items[b.v.i]
                    else:
                        dst[0] = items[b.v.i]
                else:
                    dst[0] = items[2 * b.v.i]
                    if ins.b >= 0:
                        regs[ins.b] = items[2 * b.v.i + 1]
                b.v.i += 1
        elif op == OP_APPEND:
            a = &regs[ins.a]
            b = &regs[ins.b]
            if not first_error(a, b, dst):
                if a.kind != K_LIST:
                    dst[0] = mk_err(E_NO_OVERLOAD)
                else:
                    dst[0] = extend(a, b, 1, arena)
        elif op == OP_MAP_INSERT:
            a = &regs[ins.a]
            b = &regs[ins.b]
            if not first_error(a, b, dst) and not first_error(&regs[ins.c], &regs[ins.c], dst):
                if a.kind != K_MAP:
                    dst[0] = mk_err(E_NO_OVERLOAD)
                elif not valid_key(b.kind):
                    dst[0] = mk_err(E_KEY_TYPE)
                elif map_find(a, b) >= 0:
                    dst[0] = mk_err(E_REPEATED_KEY)
                else:
                    tmp2[0] = b[0]
                    tmp2[1] = regs[ins.c]
                    dst[0] = extend(a, tmp2, 2, arena)
        elif op == OP_IS_ERROR_JUMP:
            if regs[ins.a].kind == K_ERROR:
                dst[0] = regs[ins.a]
                pc = ins.c
        elif op == OP_ERROR:
            dst[0] = mk_err(ins.c)
        elif op == OP_END:
            return
        if ins.op & OP_JUMP_IF_FALSE and dst.kind == K_BOOL and dst.v.i == 0:
            pc = ins.c


# ---------------------------------------------------------------------------------------------
# Python side: building programs and inputs, reading results.

cdef class _Block:
    """Memory for CelValue arrays of constants and inputs, freed with its owner."""

    cdef CelValue *ptr

    def __cinit__(self, Py_ssize_t count):
        self.ptr = <CelValue *>calloc(count if count > 0 else 1, sizeof(CelValue))
        if self.ptr == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.ptr)


# Interned copies of every string constant of every compiled program. A string input equal
# to one of them is stored with the interned pointer and F_INTERNED, so comparing it with a
# constant is a pointer comparison. Only constants are added: the table stays as small as
# the policies that use it.
_INTERNED: dict = {}
# The same table keyed by str, for inputs that arrive as str.
_INTERNED_STR: dict = {}
# The same dict, typed, for the setters' C-level lookups.
cdef dict _INTERNED_C = _INTERNED_STR
# How many constants have been interned: a FillPlan's memory of which strings were
# interned holds while this stays the same.
cdef Py_ssize_t _interned_count = 0

cpdef bytes intern_constant(bytes value):
    """The interned copy of a string constant (added on first use)."""
    global _interned_count
    cdef object found = _INTERNED.get(value)
    if found is None:
        _interned_count += 1
        _INTERNED[value] = value
        _INTERNED_STR[value.decode("utf-8", "surrogateescape")] = value
        return value
    return <bytes>found


def _intern_all(value):
    """Intern every string inside a constant, so _store gives it the interned pointer."""
    if isinstance(value, str):
        intern_constant(value.encode("utf-8"))
    elif isinstance(value, (list, tuple)):
        for item in value:
            _intern_all(item)


cdef int _store(CelValue *out, object value, object hint, list keep) except -1:
    """Write the CEL form of a Python value into `out`; `hint` is the declared CEL type
    ('int', 'uint', 'double', 'string', 'bytes', 'bool', 'timestamp', 'duration', 'null',
    'type', ('list', elem), ('map', key, value)) or None for dyn."""
    cdef bytes data
    cdef object canonical
    cdef _Block block
    cdef Py_ssize_t i, n
    cdef object kind = hint[0] if isinstance(hint, tuple) else hint
    memset(out, 0, sizeof(CelValue))
    if value is None:
        out.kind = K_NULL
    elif isinstance(value, CelError):
        out.kind = K_ERROR
        out.n = E_NO_OVERLOAD
    elif isinstance(value, bool):
        out.kind = K_BOOL
        out.v.i = 1 if value else 0
    elif isinstance(value, int):
        if kind == "double":
            out.kind = K_DOUBLE
            out.v.d = <double>value
        elif isinstance(value, Uint) or kind == "uint":
            if value < 0 or value > 18446744073709551615:
                raise OverflowError(f"{value} is out of the uint range")
            out.kind = K_UINT
            out.v.u = <uint64_t>value
        else:
            out.kind = K_INT
            out.v.i = <int64_t>value
    elif isinstance(value, float):
        out.kind = K_DOUBLE
        out.v.d = value
    elif isinstance(value, TypeValue):
        out.kind = K_TYPE
        out.n = TYPE_CODES[str(value)]
    elif isinstance(value, (str, bytes)):
        if isinstance(value, str):
            data = (<str>value).encode("utf-8")
            out.kind = K_STRING
            canonical = _INTERNED.get(data)
            if canonical is not None:
                data = <bytes>canonical
                out.flags = F_INTERNED
        else:
            data = <bytes>value
            out.kind = K_BYTES
        keep.append(data)
        out.n = <int32_t>PyBytes_GET_SIZE(data)
        out.v.s = PyBytes_AS_STRING(data)
    elif isinstance(value, Timestamp) or isinstance(value, datetime.datetime):
        if isinstance(value, datetime.datetime):
            value = Timestamp.from_datetime(value)
        out.kind = K_TIMESTAMP
        out.v.i = value.seconds
        out.n = value.nanos
    elif isinstance(value, Duration) or isinstance(value, datetime.timedelta):
        if isinstance(value, datetime.timedelta):
            value = Duration.from_timedelta(value)
        out.kind = K_DURATION
        out.v.i = value.seconds
        out.n = value.nanos
    elif isinstance(value, (MapValue, dict)):
        pairs = list(value.items()) if isinstance(value, dict) else list(value)
        n = len(pairs)
        block = _Block(2 * n)
        keep.append(block)
        for i in range(n):
            _store(&block.ptr[2 * i], pairs[i][0], hint[1] if kind == "map" else None, keep)
            _store(&block.ptr[2 * i + 1], pairs[i][1], hint[2] if kind == "map" else None, keep)
        out.kind = K_MAP
        out.n = <int32_t>n
        out.v.p = block.ptr
    elif isinstance(value, (list, tuple)):
        n = len(value)
        block = _Block(n)
        keep.append(block)
        for i in range(n):
            _store(&block.ptr[i], value[i], hint[1] if kind == "list" else None, keep)
        out.kind = K_LIST
        out.n = <int32_t>n
        out.v.p = block.ptr
    else:
        raise TypeError(f"no CEL value for {type(value).__name__}")
    return 0


cdef object _to_python(const CelValue *v):
    cdef int k = v.kind
    cdef const CelValue *items
    cdef int32_t i
    if k == K_NULL:
        return None
    if k == K_BOOL:
        return v.v.i != 0
    if k == K_INT:
        return v.v.i
    if k == K_UINT:
        return Uint(v.v.u)
    if k == K_DOUBLE:
        return v.v.d
    if k == K_STRING:
        return (<const char *>v.v.s)[:v.n].decode("utf-8", "surrogateescape") if v.n else ""
    if k == K_BYTES:
        return (<const char *>v.v.s)[:v.n] if v.n else b""
    if k == K_TIMESTAMP:
        return Timestamp(v.v.i, v.n)
    if k == K_DURATION:
        return Duration(v.v.i, v.n)
    if k == K_TYPE:
        return TypeValue(TYPE_NAMES[v.n])
    if k == K_LIST:
        items = items_of(v)
        return [_to_python(&items[i]) for i in range(v.n)]
    if k == K_MAP:
        items = items_of(v)
        return MapValue((_to_python(&items[2 * i]), _to_python(&items[2 * i + 1]))
                        for i in range(v.n))
    return CelError(ERROR_MESSAGES.get(v.n, "error"))


class RegexError(ValueError):
    """A `matches()` pattern that RE2 cannot compile."""


def regex_error(str pattern):
    """RE2's complaint about `pattern`, or None when it compiles."""
    cdef bytes data = pattern.encode("utf-8")
    cdef void *re = pa_re2_new(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    try:
        if pa_re2_ok(re):
            return None
        return (<bytes>pa_re2_error(re)).decode("utf-8", "replace")
    finally:
        pa_re2_free(re)


cdef class Program:
    """A compiled CEL program: instructions, constants, regexes and zone tables in C arrays.

    Built by `payauth.core.cel_compiler` from its ProgramSpec; each entry is one expression
    (a policy holds one per rule) given as (first instruction, end, result register).
    """

    def __cinit__(self, spec):
        cdef Py_ssize_t i, j
        cdef bytes pattern
        cdef int64_t *starts
        cdef int32_t *offsets
        self._keep = []
        self.data.n_inputs = spec.n_inputs
        self.data.n_regs = spec.n_regs
        self.data.n_code = len(spec.code)
        self._code = <Instr *>calloc(self.data.n_code + 1, sizeof(Instr))
        self._init = <CelValue *>calloc(self.data.n_regs + 1, sizeof(CelValue))
        self._entries = <int32_t *>calloc(3 * len(spec.entries) + 1, sizeof(int32_t))
        if self._code == NULL or self._init == NULL or self._entries == NULL:
            raise MemoryError()
        for i, (op, dst, a, b, c) in enumerate(spec.code):
            self._code[i].op = op
            self._code[i].dst = dst
            self._code[i].a = a
            self._code[i].b = b
            self._code[i].c = c
        for reg, value, hint in spec.consts:
            _intern_all(value)
            _store(&self._init[reg], value, hint, self._keep)
        self.n_entries = len(spec.entries)
        for i, (start, end, result) in enumerate(spec.entries):
            self._entries[3 * i] = start
            self._entries[3 * i + 1] = end
            self._entries[3 * i + 2] = result
        self._n_regexes = len(spec.regexes)
        self._regexes = <void **>calloc(self._n_regexes + 1, sizeof(void *))
        for i, text in enumerate(spec.regexes):
            pattern = text.encode("utf-8")
            self._regexes[i] = pa_re2_new(PyBytes_AS_STRING(pattern), PyBytes_GET_SIZE(pattern))
            if not pa_re2_ok(self._regexes[i]):
                raise RegexError(f"invalid regular expression {text!r}")
        self._n_zones = len(spec.zones)
        self._zones = <ZoneTable *>calloc(self._n_zones + 1, sizeof(ZoneTable))
        for i, zone in enumerate(spec.zones):
            if zone.fixed is not None:
                self._zones[i].is_fixed = 1
                self._zones[i].fixed_seconds = zone.fixed[0]
                self._zones[i].fixed_nanos = zone.fixed[1]
                continue
            block = _Block(len(zone.starts))  # 16 bytes per slot: room for both arrays
            self._keep.append(block)
            starts = <int64_t *>block.ptr
            offsets = <int32_t *>(starts + len(zone.starts))
            for j in range(len(zone.starts)):
                starts[j] = zone.starts[j]
                offsets[j] = zone.offsets[j]
            self._zones[i].starts = starts
            self._zones[i].offsets = offsets
            self._zones[i].count = len(zone.starts)
            self._zones[i].limit = zone.limit
        self.data.code = self._code
        self.data.regexes = self._regexes
        self.data.zones = self._zones

    def __dealloc__(self):
        cdef int32_t i
        if self._regexes != NULL:
            for i in range(self._n_regexes):
                if self._regexes[i] != NULL:
                    pa_re2_free(self._regexes[i])
        free(self._regexes)
        free(self._zones)
        free(self._code)
        free(self._init)
        free(self._entries)

    @property
    def n_inputs(self) -> int:
        return self.data.n_inputs

    def evaluate(self, Activation inputs, Scratch scratch=None, int entry=0):
        """Evaluate one entry over `inputs`; the result as a Python value (errors as CelError)."""
        if scratch is None:
            scratch = Scratch(self)
        if entry < 0 or entry >= self.n_entries:
            raise IndexError("no such entry")
        scratch.load(inputs)
        cdef int32_t start = self._entries[3 * entry]
        cdef int32_t end = self._entries[3 * entry + 1]
        with nogil:
            cel_run(&self.data, scratch.regs, &scratch.arena, start, end)
        return _to_python(&scratch.regs[self._entries[3 * entry + 2]])

    def entry(self, int i):
        """(first instruction, end, result register) of entry `i`."""
        return (self._entries[3 * i], self._entries[3 * i + 1], self._entries[3 * i + 2])


cdef class Scratch:
    """Register file and arena for evaluating one Program, allocated once and reused.

    One evaluation at a time per Scratch: a thread (or worker) keeps its own.
    """

    def __cinit__(self, Program program, Py_ssize_t arena_values=4096,
                  Py_ssize_t arena_bytes=65536):
        self.program = program
        self.n_regs = program.data.n_regs
        self.regs = <CelValue *>calloc(self.n_regs + 1, sizeof(CelValue))
        self.arena.vals = <CelValue *>calloc(arena_values, sizeof(CelValue))
        self.arena.bytes = <char *>malloc(arena_bytes)
        if self.regs == NULL or self.arena.vals == NULL or self.arena.bytes == NULL:
            raise MemoryError()
        self.arena.vcap = arena_values
        self.arena.bcap = arena_bytes
        memcpy(self.regs, program._init, sizeof(CelValue) * self.n_regs)

    def __dealloc__(self):
        free(self.regs)
        free(self.arena.vals)
        free(self.arena.bytes)

    def load(self, Activation inputs):
        """Copy the inputs into the register file and empty the arena."""
        if inputs.n_slots != self.program.data.n_inputs:
            raise ValueError(f"the program reads {self.program.data.n_inputs} inputs, "
                             f"the activation has {inputs.n_slots}")
        if inputs.n_slots:
            memcpy(self.regs, inputs.slots, sizeof(CelValue) * inputs.n_slots)
        self.arena.vtop = 0
        self.arena.btop = 0


cdef enum FillKind:
    FILL_INT = 0
    FILL_DOUBLE = 1
    FILL_BOOL = 2
    FILL_STRING = 3
    FILL_TIMESTAMP = 4
    FILL_FEATURE = 5
    FILL_ANY = 6
    FILL_SKIP = 7
    # A string slot given a number: the plan's name table for the value maps it to the
    # string (an enum number to its name).
    FILL_NAME = 8
    # A model-only feature given an int or a string of decimal digits (an MCC).
    FILL_FEATURE_INT = 9

_FILL_KINDS = {"int": FILL_INT, "double": FILL_DOUBLE, "bool": FILL_BOOL,
               "string": FILL_STRING, "timestamp": FILL_TIMESTAMP, "feature": FILL_FEATURE,
               "any": FILL_ANY, "skip": FILL_SKIP, "name": FILL_NAME,
               "feature_int": FILL_FEATURE_INT}


cdef inline double _numeric_of(const CelValue *v) noexcept nogil:
    """What a model reads for a slot: its number (bools as 0/1), NaN for anything else."""
    if v.kind == K_INT:
        return <double>v.v.i
    if v.kind == K_DOUBLE:
        return v.v.d
    if v.kind == K_BOOL:
        return 1.0 if v.v.i else 0.0
    if v.kind == K_UINT:
        return <double>v.v.u
    return NAN


cdef enum:
    # Containers (the sub-dicts or objects the values sit in) one gathering plan may name;
    # they are held on the C stack while the values are read.
    FILL_MAX_GROUPS = 64
    # Key paths one gathering plan reads for more than one value (each read once per fill
    # and held on the C stack for the others); paths past this many are read each time.
    FILL_MAX_SHARED = 64
    # Misses of learned dict entry places after which a plan stops learning them (records
    # whose dicts change order): each miss costs a scan of the dict.
    FILL_MAX_MISSES = 1024


cdef inline double _digits_value(object v) except? -1.0:
    """`float(int(v))` for an int or a str: a short string of ASCII digits (an MCC) is read
    here, anything else by `int()` itself, so the result and the errors are int()'s."""
    cdef Py_ssize_t size, i
    cdef const char *data
    cdef int64_t n = 0
    if type(v) is str:
        data = PyUnicode_AsUTF8AndSize(v, &size)
        if 0 < size <= 18:
            for i in range(size):
                if data[i] < 48 or data[i] > 57:
                    break
                n = n * 10 + (data[i] - 48)
            else:
                return <double>n
        return <double>int(v)
    return PyLong_AsDouble(v) if PyLong_Check(v) else <double>v


cdef inline object _read_source(object container, object key):
    """One step of a source path: item `key` of a dict, attribute `key` (a str) of any
    other object, item `key` (an int) of a tuple or list."""
    cdef PyObject *found
    cdef Py_ssize_t index
    if type(container) is dict:
        found = PyDict_GetItemWithError(container, key)
        if found == NULL:
            raise KeyError(key)
        return <object>found
    if type(container) is tuple and type(key) is int:
        index = key
        if 0 <= index < PyTuple_GET_SIZE(container):
            return <object>PyTuple_GET_ITEM(container, index)
        return container[key]  # out of range: the IndexError a tuple raises
    if type(key) is str and not isinstance(container, dict):
        return PyObject_GetAttr(container, key)
    return container[key]


cdef inline Py_ssize_t _entry_of(object d, PyObject *key) noexcept:
    """The entry index of dict `d` whose key is the very object `key`, or -2."""
    cdef Py_ssize_t pos = 0
    cdef PyObject *k
    cdef PyObject *v
    while PyDict_Next(d, &pos, &k, &v):
        if k == key:
            return pos - 1
    return -2


cdef inline object _read_at(object container, object key, Py_ssize_t *at, FillPlan plan):
    """`_read_source`, reading a dict's item at the entry where the same key was found in
    the record before, when the same key object is still there.

    Records of one kind are built by the same code, so their dicts hold the same key
    objects (interned literals) in the same order: reading the entry by its index skips
    hashing and probing, which is most of what a lookup costs. Anything else (a dict of
    another order, keys that are equal but other objects) falls back to the lookup;
    places that keep missing stop being learned (FILL_MAX_MISSES for the plan)."""
    cdef Py_ssize_t pos = at[0]
    cdef PyObject *k
    cdef PyObject *v
    if type(container) is not dict:
        return _read_source(container, key)
    if pos >= 0 and PyDict_Next(container, &pos, &k, &v) and k == <PyObject *>key:
        return <object>v
    v = PyDict_GetItemWithError(container, key)
    if v == NULL:
        raise KeyError(key)
    if at[0] != -2:
        if at[0] >= 0:
            plan._misses += 1
        at[0] = _entry_of(container, <PyObject *>key) if plan._misses < FILL_MAX_MISSES \
            else -2
    return <object>v


def _intern_key(key):
    """A str key as the interned string, so a lookup in a record's dict (whose literal keys
    are interned) finds it by identity."""
    return sys.intern(key) if type(key) is str else key


@cython.final
cdef class FillPlan:
    """A precomputed bulk fill of an Activation: `targets[i]` (a slot, or for "feature" an
    index of the numeric vector) receives values[i] as `kinds[i]`.

    Kinds: "int", "double", "bool", "string", "timestamp" (Unix seconds, a
    (seconds, nanos) pair, or an object with `seconds` and `nanos` such as a
    google.protobuf.Timestamp), "any" (converted under the slot's declared type, as `set`),
    "name" (a string slot given a number: `names[i][value]` is stored, so a record's enum
    numbers reach policies as their names without a Python lookup per value),
    "feature" (a float64 written only to the numeric vector, at an index at or past
    `n_slots`: a model-only feature), "feature_int" (a model-only feature given an int or
    a string of decimal digits, read as `int()` reads it: an MCC as its number) and "skip"
    (the value is ignored).

    With `sources` (one key path per value, e.g. ("txn", "amount_minor")), the plan can
    also gather its values itself from a record (`Activation.fill_from`): reading 50
    fields in C costs a fraction of building the tuple of values in Python. Each
    container on the way (a record's "txn" sub-dict) is read once per fill, however many
    values it holds, and so is each key path that several values name (a field that is
    both a policy's string and a model's number).
    """

    def __cinit__(self, targets, kinds, Py_ssize_t n_slots, Py_ssize_t width, sources=None,
                  names=None):
        targets = tuple(int(t) for t in targets)
        kinds = tuple(kinds)
        if len(targets) != len(kinds):
            raise ValueError("targets and kinds differ in length")
        self.n = len(targets)
        self.n_slots = n_slots
        self.width = width
        self.targets = targets
        self.kinds = kinds
        self._target = <int32_t *>calloc(self.n + 1, sizeof(int32_t))
        self._kind = <uint8_t *>calloc(self.n + 1, sizeof(uint8_t))
        self._source = <int32_t *>calloc(self.n + 1, sizeof(int32_t))
        self._group_parent = <int32_t *>calloc(FILL_MAX_GROUPS, sizeof(int32_t))
        self._share = <int32_t *>calloc(self.n + 1, sizeof(int32_t))
        self._value_at = <Py_ssize_t *>malloc((self.n + 1) * sizeof(Py_ssize_t))
        self._group_at = <Py_ssize_t *>malloc(FILL_MAX_GROUPS * sizeof(Py_ssize_t))
        if self._target == NULL or self._kind == NULL or self._source == NULL or \
                self._group_parent == NULL or self._share == NULL or \
                self._value_at == NULL or self._group_at == NULL:
            raise MemoryError()
        self._misses = 0
        self._str_seen = <PyObject **>calloc(self.n + 1, sizeof(PyObject *))
        self._str_canonical = <PyObject **>calloc(self.n + 1, sizeof(PyObject *))
        if self._str_seen == NULL or self._str_canonical == NULL:
            raise MemoryError()
        self._interned_count = _interned_count
        cdef Py_ssize_t i
        for i in range(self.n):
            kind = _FILL_KINDS.get(kinds[i])
            if kind is None:
                raise ValueError(f"unknown fill kind {kinds[i]!r}; one of "
                                 f"{', '.join(_FILL_KINDS)}")
            t = targets[i]
            if kind == FILL_FEATURE or kind == FILL_FEATURE_INT:
                if not n_slots <= t < width:
                    raise IndexError(f"feature index {t} is outside [{n_slots}, {width})")
            elif kind != FILL_SKIP and not 0 <= t < n_slots:
                raise IndexError(f"slot {t} is outside [0, {n_slots})")
            self._target[i] = <int32_t>t
            self._kind[i] = <uint8_t>kind
            self._share[i] = -1
            self._value_at[i] = -1
        for i in range(FILL_MAX_GROUPS):
            self._group_at[i] = -1
        self._set_names(names)
        self.sources = None
        self.n_groups = 0
        self.n_shared = 0
        self._group_keys = ()
        self._value_keys = None
        if sources is not None:
            self._set_sources(sources)

    cdef _set_names(self, names):
        """Check and keep the name tables: one per value, a tuple of str (None where a
        number has no name) for each "name" value, None for the others."""
        cdef Py_ssize_t i
        if names is None:
            tables = (None,) * self.n
        else:
            tables = tuple(None if t is None else tuple(t) for t in names)
            if len(tables) != self.n:
                raise ValueError(f"the plan fills {self.n} values, got {len(tables)} "
                                 f"name tables")
        for i in range(self.n):
            table = tables[i]
            if self._kind[i] == FILL_NAME:
                if table is None:
                    raise ValueError(f"value {i} is a name and has no name table")
                for name in table:
                    if name is not None and type(name) is not str:
                        raise TypeError(f"value {i}: names are str or None, got {name!r}")
            elif table is not None:
                raise ValueError(f"value {i} has a name table but is not a name")
        self.names = tables if names is not None else None
        self._names = tables

    cdef _set_sources(self, sources):
        """Compile the key paths: each distinct container path becomes a group, read once
        per fill before the values (parents before children)."""
        # Keys interned: a record's keys are (literals are), and a dict lookup that finds
        # the very same string object skips comparing characters.
        paths = tuple(tuple(_intern_key(k) for k in (s if isinstance(s, (tuple, list)) else (s,)))
                      for s in sources)
        if len(paths) != self.n:
            raise ValueError(f"the plan fills {self.n} values, got {len(paths)} sources")
        groups = {}
        group_keys = []
        value_keys = []
        cdef Py_ssize_t i, k
        for i, path in enumerate(paths):
            if not path:
                raise ValueError(f"source {i} is an empty key path")
            for key in path:
                if type(key) is not str and type(key) is not int:
                    raise TypeError(f"source {i}: keys are str or int, got {key!r}")
            parent = -1
            for k in range(1, len(path)):
                prefix = path[:k]
                g = groups.get(prefix)
                if g is None:
                    if len(group_keys) >= FILL_MAX_GROUPS:
                        raise ValueError(f"sources name more than {FILL_MAX_GROUPS} "
                                         f"containers")
                    g = len(group_keys)
                    groups[prefix] = g
                    group_keys.append(path[k - 1])  # (no wraparound here)
                    self._group_parent[g] = parent
                parent = g
            self._source[i] = parent
            value_keys.append(path[len(path) - 1])
        # A key path several values name is read once: the first reader keeps what it read
        # in shared entry k (_share = k), the later ones take it from there (_share = -2 - k).
        first = {}
        n_shared = 0
        for i, path in enumerate(paths):
            j = first.setdefault(path, i)
            if j == i:
                continue
            if self._share[j] == -1:
                if n_shared >= FILL_MAX_SHARED:
                    continue  # read again, as a path of its own
                self._share[j] = n_shared
                n_shared += 1
            self._share[i] = -2 - self._share[j]
        self.n_shared = n_shared
        self.sources = paths
        self.n_groups = len(group_keys)
        self._group_keys = tuple(group_keys)
        self._value_keys = tuple(value_keys)

    def __dealloc__(self):
        free(self._target)
        free(self._kind)
        free(self._source)
        free(self._group_parent)
        free(self._share)
        free(self._value_at)
        free(self._group_at)
        if self._str_seen != NULL:
            self._forget_strings()
        free(self._str_seen)
        free(self._str_canonical)

    cdef void _forget_strings(self) noexcept:
        """Drop the strings remembered by the string and name values."""
        cdef Py_ssize_t i
        for i in range(self.n):
            Py_XDECREF(self._str_seen[i])
            self._str_seen[i] = NULL
            self._str_canonical[i] = NULL

    cdef object _name(self, Py_ssize_t i, object number):
        """The name value `i` stores for `number`; KeyError for a number without one."""
        cdef tuple table = <tuple>PyTuple_GET_ITEM(self._names, i)
        cdef Py_ssize_t index
        cdef object name
        if type(number) is int or type(number) is bool:
            try:
                index = number
            except OverflowError:
                raise KeyError(number) from None
            if 0 <= index < PyTuple_GET_SIZE(table):
                name = <object>PyTuple_GET_ITEM(table, index)
                if name is not None:
                    return name
        raise KeyError(number)


cdef PyObject *_interned_copy(Py_ssize_t slot, object value) except? NULL:
    """The interned copy (bytes) of str `value`, or NULL when it has none (NULL with an
    exception set, from hashing a str subclass, propagates)."""
    if type(value) is not str and not isinstance(value, str):
        raise TypeError(f"slot {slot}: expected str, got {type(value).__name__}")
    return PyDict_GetItemWithError(_INTERNED_C, value)


@cython.final
cdef class Activation:
    """The typed input values of a program: one CelValue per input slot.

    `hints` gives each slot's declared CEL type (see `_store`); Python values are converted
    when set, and the objects behind strings and lists are kept alive here.

    Beside the slots, an Activation keeps a float64 numeric vector of `width` doubles
    (`n_slots + extra`) that a scoring model reads directly: entry i < n_slots is the
    number in slot i (ints, uints and doubles as doubles, bools as 0/1, NaN for any other
    kind), kept in step by every setter; the `extra` entries after them are model-only
    features (`set_feature`, or "feature" in a FillPlan), NaN until set.
    """

    def __cinit__(self, hints, Py_ssize_t extra=0):
        self._hints = list(hints)
        self.n_slots = len(self._hints)
        if extra < 0:
            raise ValueError("extra must be >= 0")
        self.width = self.n_slots + extra
        self.slots = <CelValue *>calloc(self.n_slots + 1, sizeof(CelValue))
        self._zero = <CelValue *>calloc(self.n_slots + 1, sizeof(CelValue))
        self.vec = <double *>calloc(self.width + 1, sizeof(double))
        self._zero_vec = <double *>calloc(self.width + 1, sizeof(double))
        if self.slots == NULL or self._zero == NULL or self.vec == NULL or \
                self._zero_vec == NULL:
            raise MemoryError()
        # What keeps each slot's string or list memory alive, replaced when the slot is.
        self._keep = [None] * self.n_slots
        cdef Py_ssize_t i
        for i in range(self.n_slots):
            self._zero[i] = _zero_of(self._hints[i])
            self._zero_vec[i] = _numeric_of(&self._zero[i])
        for i in range(self.n_slots, self.width):
            self._zero_vec[i] = NAN
        memcpy(self.slots, self._zero, sizeof(CelValue) * self.n_slots)
        memcpy(self.vec, self._zero_vec, sizeof(double) * self.width)

    def __dealloc__(self):
        free(self.slots)
        free(self._zero)
        free(self.vec)
        free(self._zero_vec)

    cdef int _put_string(self, Py_ssize_t slot, object value) except -1:
        return self._store_string(slot, value, _interned_copy(slot, value))

    cdef int _put_string_seen(self, Py_ssize_t slot, object value, FillPlan plan,
                              Py_ssize_t i) except -1:
        """`_put_string` for value `i` of a gathering plan: when value `i` is the very
        string object of the last fill (a name from a name table always is; so is a
        constant a record was built from), its interned copy is known without a lookup."""
        cdef PyObject *canonical
        if <PyObject *>value == plan._str_seen[i]:
            canonical = plan._str_canonical[i]
        else:
            canonical = _interned_copy(slot, value)
            Py_INCREF(value)
            Py_XDECREF(plan._str_seen[i])
            plan._str_seen[i] = <PyObject *>value
            plan._str_canonical[i] = canonical  # interned copies are never freed
        return self._store_string(slot, value, canonical)

    cdef int _store_string(self, Py_ssize_t slot, object value,
                           PyObject *canonical) except -1:
        """Store str `value` in `slot`: its interned copy `canonical` when it has one."""
        cdef Py_ssize_t size
        cdef const char *data
        if canonical != NULL:
            self.slots[slot] = mk_str(K_STRING, PyBytes_AS_STRING(<object>canonical),
                                      PyBytes_GET_SIZE(<object>canonical))
            self.slots[slot].flags = F_INTERNED
        else:
            data = PyUnicode_AsUTF8AndSize(value, &size)
            self._keep[slot] = value
            self.slots[slot] = mk_str(K_STRING, data, size)
        self.vec[slot] = NAN
        return 0

    def set_string(self, Py_ssize_t slot, str value not None):
        """Set a string slot; equal to a policy constant, it is stored interned."""
        if slot < 0 or slot >= self.n_slots:
            raise IndexError(slot)
        self._put_string(slot, value)

    def set_bool(self, Py_ssize_t slot, bint value):
        """Set a bool slot."""
        if slot < 0 or slot >= self.n_slots:
            raise IndexError(slot)
        self.slots[slot] = mk_bool(value)
        self.vec[slot] = 1.0 if value else 0.0

    def set_timestamp(self, Py_ssize_t slot, int64_t seconds, int64_t nanos=0):
        """Set a timestamp slot from Unix seconds and nanoseconds."""
        if slot < 0 or slot >= self.n_slots:
            raise IndexError(slot)
        if nanos < 0 or nanos >= NANOS:
            raise ValueError("nanos must be in [0, 1e9)")
        self.slots[slot] = mk_time(K_TIMESTAMP, seconds, nanos)
        self.vec[slot] = NAN

    def set(self, Py_ssize_t slot, value):
        """Set input `slot` to the CEL form of `value` under the slot's declared type."""
        if slot < 0 or slot >= self.n_slots:
            raise IndexError(slot)
        cdef list keep = []
        _store(&self.slots[slot], value, self._hints[slot], keep)
        self._keep[slot] = keep if keep else None
        self.vec[slot] = _numeric_of(&self.slots[slot])

    def set_int(self, Py_ssize_t slot, int64_t value):
        """Set an int slot without conversion overhead."""
        if slot < 0 or slot >= self.n_slots:
            raise IndexError(slot)
        self.slots[slot] = mk_int(value)
        self.vec[slot] = <double>value

    def set_double(self, Py_ssize_t slot, double value):
        """Set a double slot without conversion overhead."""
        if slot < 0 or slot >= self.n_slots:
            raise IndexError(slot)
        self.slots[slot] = mk_double(value)
        self.vec[slot] = value

    def set_error(self, Py_ssize_t slot):
        """Mark a slot as an error value (an input that could not be computed)."""
        if slot < 0 or slot >= self.n_slots:
            raise IndexError(slot)
        self.slots[slot] = mk_err(E_NO_OVERLOAD)
        self.vec[slot] = NAN

    def set_feature(self, Py_ssize_t index, double value):
        """Set entry `index` (n_slots <= index < width) of the numeric vector: a model-only
        feature, which no policy reads."""
        if index < self.n_slots or index >= self.width:
            raise IndexError(index)
        self.vec[index] = value

    def plan(self, targets, kinds, sources=None, names=None):
        """A FillPlan for this Activation's shape (see FillPlan); with `sources`, one key
        path per value, `fill_from` gathers the values from a record; `names`, one name
        table (or None) per value, maps the numbers of "name" values to their strings."""
        return FillPlan(targets, kinds, self.n_slots, self.width, sources, names)

    cdef int _put(self, Py_ssize_t slot, int kind, object v) except -1:
        """Store one value of a bulk fill as its kind's own setter would."""
        cdef int64_t secs, nanos
        cdef object seconds
        cdef double d
        cdef list keep
        if kind == FILL_INT:
            secs = v
            self.slots[slot] = mk_int(secs)
            self.vec[slot] = <double>secs
        elif kind == FILL_STRING:
            if v is None:
                raise TypeError(f"slot {slot}: expected str, got NoneType")
            self._put_string(slot, v)
        elif kind == FILL_DOUBLE:
            d = v
            self.slots[slot] = mk_double(d)
            self.vec[slot] = d
        elif kind == FILL_BOOL:
            if v:
                self.slots[slot] = mk_bool(True)
                self.vec[slot] = 1.0
            else:
                self.slots[slot] = mk_bool(False)
                self.vec[slot] = 0.0
        elif kind == FILL_FEATURE:
            # An int (or bool) read as a double directly, without a float made for it.
            self.vec[slot] = PyLong_AsDouble(v) if PyLong_Check(v) else <double>v
        elif kind == FILL_FEATURE_INT:
            self.vec[slot] = _digits_value(v)
        elif kind == FILL_TIMESTAMP:
            if type(v) is tuple:
                secs, nanos = v
            elif type(v) is int:
                secs = v
                nanos = 0
            else:
                # A google.protobuf.Timestamp, or anything shaped like one; else seconds.
                seconds = getattr(v, "seconds", None)
                if seconds is None:
                    secs = v
                    nanos = 0
                else:
                    secs = seconds
                    nanos = v.nanos
            if nanos < 0 or nanos >= NANOS:
                raise ValueError("nanos must be in [0, 1e9)")
            self.slots[slot] = mk_time(K_TIMESTAMP, secs, nanos)
            self.vec[slot] = NAN
        elif kind == FILL_ANY:
            if (type(v) is list or type(v) is tuple) and len(v) == 0 and \
                    self._zero[slot].kind == K_LIST:
                # An empty list (watch lists mostly are): the slot's zero value.
                self.slots[slot] = self._zero[slot]
                self._keep[slot] = None
                self.vec[slot] = NAN
                return 0
            keep = []
            _store(&self.slots[slot], v, self._hints[slot], keep)
            self._keep[slot] = keep if keep else None
            self.vec[slot] = _numeric_of(&self.slots[slot])
        return 0

    def fill(self, FillPlan plan not None, values):
        """Set many slots (and model-only features) in one call: values[i] goes to
        plan.targets[i] as plan.kinds[i]. `values` is a tuple or list of plan.n items.

        Each value is converted as the kind's own setter converts it (set_int, set_double,
        set_bool, set_string, set_timestamp, set, set_feature)."""
        cdef Py_ssize_t i, n
        cdef object seq
        cdef PyObject **items
        if plan.n_slots != self.n_slots or plan.width != self.width:
            raise ValueError("the plan was made for an Activation of another shape")
        seq = values if (type(values) is tuple or type(values) is list) else tuple(values)
        n = len(seq)
        if n != plan.n:
            raise ValueError(f"the plan fills {plan.n} values, got {n}")
        items = PySequence_Fast_ITEMS(seq)
        for i in range(n):
            if plan._kind[i] == FILL_NAME:
                self._put(plan._target[i], FILL_STRING, plan._name(i, <object>items[i]))
            else:
                self._put(plan._target[i], plan._kind[i], <object>items[i])

    def fill_from(self, FillPlan plan not None, record):
        """Like `fill`, the values read from `record` by the plan's `sources`: each step of
        a key path reads an item of a dict, an attribute (str key) of any other object, or
        an item (int key) of a tuple or list. A missing key raises KeyError, a missing
        attribute AttributeError."""
        self._gather(plan, record)

    cdef int _gather(self, FillPlan plan, object record) except -1:
        """`fill_from` for other modules of the core (one call that fills and decides)."""
        cdef PyObject *groups[FILL_MAX_GROUPS]
        cdef PyObject *shared[FILL_MAX_SHARED]
        cdef Py_ssize_t g, i, n_groups, n_shared
        cdef int32_t parent, share
        cdef int kind
        cdef object container, v
        cdef tuple group_keys, value_keys
        if plan._value_keys is None:
            raise ValueError("the plan has no sources to gather from")
        if plan.n_slots != self.n_slots or plan.width != self.width:
            raise ValueError("the plan was made for an Activation of another shape")
        group_keys = plan._group_keys
        value_keys = plan._value_keys
        if plan._interned_count != _interned_count:
            # New constants: a string remembered as not interned may be one now.
            plan._forget_strings()
            plan._interned_count = _interned_count
        n_groups = plan.n_groups
        n_shared = plan.n_shared
        for g in range(n_groups):
            groups[g] = NULL
        for g in range(n_shared):
            shared[g] = NULL
        try:
            for g in range(n_groups):
                parent = plan._group_parent[g]
                container = record if parent < 0 else <object>groups[parent]
                v = _read_at(container, <object>PyTuple_GET_ITEM(group_keys, g),
                             &plan._group_at[g], plan)
                Py_INCREF(v)
                groups[g] = <PyObject *>v
            for i in range(plan.n):
                share = plan._share[i]
                if share <= -2:
                    v = <object>shared[-2 - share]  # read by an earlier value
                else:
                    parent = plan._source[i]
                    container = record if parent < 0 else <object>groups[parent]
                    v = _read_at(container, <object>PyTuple_GET_ITEM(value_keys, i),
                                 &plan._value_at[i], plan)
                    if share >= 0:
                        Py_INCREF(v)
                        shared[share] = <PyObject *>v
                kind = plan._kind[i]
                if kind == FILL_NAME:
                    self._put_string_seen(plan._target[i], plan._name(i, v), plan, i)
                elif kind == FILL_STRING:
                    if v is None:
                        raise TypeError(f"slot {plan._target[i]}: expected str, got NoneType")
                    self._put_string_seen(plan._target[i], v, plan, i)
                else:
                    self._put(plan._target[i], kind, v)
        finally:
            for g in range(n_groups):
                Py_XDECREF(groups[g])
            for g in range(n_shared):
                Py_XDECREF(shared[g])
        return 0

    def numeric(self):
        """A copy of the numeric vector (`width` float64s) as a list."""
        return [self.vec[i] for i in range(self.width)]

    def get(self, Py_ssize_t slot):
        """The slot's value as a Python value."""
        if slot < 0 or slot >= self.n_slots:
            raise IndexError(slot)
        return _to_python(&self.slots[slot])

    def reset(self):
        """Put every slot back to its type's zero value (model-only features back to NaN)
        and drop kept objects."""
        memcpy(self.slots, self._zero, sizeof(CelValue) * self.n_slots)
        memcpy(self.vec, self._zero_vec, sizeof(double) * self.width)
        self._keep = [None] * self.n_slots


cdef CelValue _zero_of(object hint):
    cdef object kind = hint[0] if isinstance(hint, tuple) else hint
    if kind == "int":
        return mk_int(0)
    if kind == "uint":
        return mk_uint(0)
    if kind == "double":
        return mk_double(0.0)
    if kind == "bool":
        return mk_bool(False)
    if kind == "string":
        return mk_str(K_STRING, b"", 0)
    if kind == "bytes":
        return mk_str(K_BYTES, b"", 0)
    if kind == "timestamp":
        return mk_time(K_TIMESTAMP, 0, 0)
    if kind == "duration":
        return mk_time(K_DURATION, 0, 0)
    if kind == "list":
        return mk_seq(K_LIST, NULL, 0)
    if kind == "map":
        return mk_seq(K_MAP, NULL, 0)
    cdef CelValue v
    memset(&v, 0, sizeof(CelValue))
    v.kind = K_NULL
    return v
