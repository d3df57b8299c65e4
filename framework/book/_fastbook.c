/*
 * quoteforge.book._fastbook: the hot loop of a Binance diff-depth update in C.
 *
 * One call converts every [price, qty] level of a decoded depthUpdate from decimal text
 * to integer ticks and lots, exactly, and applies them to an L2Book's two sides (a list
 * of keys in ascending order plus a dict key -> lots; asks keyed by negated ticks). The
 * data structures are the Python ones, so the interpreted path and this one can take
 * turns on the same book.
 *
 * All or nothing: every level is converted before the first one is applied. Anything
 * the fast path does not read (not a [str, str] list, non-ASCII, exponent forms, more
 * than 18 significant digits, text off the tick or lot grid, ...) makes the call return
 * None with the book untouched; the caller then runs the interpreted path, which
 * accepts the rare valid forms and raises the clear error for the invalid ones.
 *
 * apply_depth_text goes one step further for a live Binance book: it reads the whole
 * depthUpdate from its JSON text (the plain spelling Binance sends, with any whitespace,
 * key order or combined-stream envelope), makes the update-id decision of the
 * interpreted source for the common cases (dropped as already covered, or applied
 * because it chains on) and applies the levels, so the message is never decoded into
 * Python objects. Everything else (escapes, other value types, repeated keys, gaps, ...)
 * is None, and the interpreted source decodes the text and decides as always.
 *
 * The scale tables are bytes of 19 (multiplier, divisor) int64 pairs indexed by the
 * count of decimals in the text: count of steps = digits * multiplier / divisor with
 * remainder 0. A divisor of 0 means "not on the fast path".
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#define MAX_DECIMALS 18
#define MAX_SIGNIFICANT 18
#define MAX_INTEGER_DIGITS 18 /* the wire rule of quoteforge.book.wire, both paths */
#define TOP_LEVELS 5
#define STACK_LEVELS 64

typedef struct {
    long long key;
    long long lots;
} level_t;

/* Count of steps in ASCII decimal text p[0..n); 0 on success, -1 when not on the fast
 * path. */
static int
parse_digits(const unsigned char *p, Py_ssize_t n, const long long *table, long long *out)
{
    long long value = 0;
    int integer = 0, significant = 0, decimals = 0, point = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (c >= '0' && c <= '9') {
            if (significant || c != '0') {
                if (++significant > MAX_SIGNIFICANT) {
                    return -1;
                }
            }
            value = value * 10 + (c - '0');
            if (point) {
                decimals++;
            }
            else if (++integer > MAX_INTEGER_DIGITS) {
                return -1;
            }
        }
        else if (c == '.' && !point) {
            point = 1;
        }
        else {
            return -1;
        }
    }
    /* The wire rule: digits on both sides of a point, "5" but never "5." or ".5". */
    if (!integer || (point && !decimals) || decimals > MAX_DECIMALS) {
        return -1;
    }
    long long mul = table[2 * decimals], div = table[2 * decimals + 1];
    long long scaled;
    if (div <= 0 || __builtin_mul_overflow(value, mul, &scaled) || scaled % div) {
        return -1;
    }
    *out = scaled / div;
    return 0;
}

/* The same for a str object; -1 for anything but ASCII str. */
static int
parse_count(PyObject *text, const long long *table, long long *out)
{
    if (!PyUnicode_CheckExact(text) || !PyUnicode_IS_COMPACT_ASCII(text)) {
        return -1;
    }
    return parse_digits(PyUnicode_1BYTE_DATA(text), PyUnicode_GET_LENGTH(text), table, out);
}

/* Convert one side's levels into out[]; 0 on success, -1 when not on the fast path. */
static int
convert_side(PyObject *levels, const long long *ptable, const long long *qtable, int negate,
             level_t *out)
{
    Py_ssize_t n = PyList_GET_SIZE(levels);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *level = PyList_GET_ITEM(levels, i);
        if (!PyList_CheckExact(level) || PyList_GET_SIZE(level) != 2) {
            return -1;
        }
        long long ticks, lots;
        if (parse_count(PyList_GET_ITEM(level, 0), ptable, &ticks) ||
            parse_count(PyList_GET_ITEM(level, 1), qtable, &lots)) {
            return -1;
        }
        out[i].key = negate ? -ticks : ticks;
        out[i].lots = lots;
    }
    return 0;
}

/* -1, 0, 1 as item <, ==, > key; exact for ints of any size. */
static int
compare_key(PyObject *item, long long key, int *error)
{
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(item, &overflow);
    if (overflow) {
        return overflow;
    }
    if (v == -1 && PyErr_Occurred()) {
        *error = 1;
        return 0;
    }
    return (v > key) - (v < key);
}

static Py_ssize_t
bisect_left(PyObject *keys, long long key, int *error)
{
    Py_ssize_t lo = 0, hi = PyList_GET_SIZE(keys);
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (compare_key(PyList_GET_ITEM(keys, mid), key, error) < 0) {
            lo = mid + 1;
        }
        else {
            hi = mid;
        }
        if (*error) {
            return -1;
        }
    }
    return lo;
}

/* Apply converted levels to one side. Returns 0 nothing changed, 1 changed below the top
 * levels only, 2 the top levels changed, -1 on a Python error. */
static int
apply_side(PyObject *keys, PyObject *qty, const level_t *levels, Py_ssize_t n)
{
    int changed = 0, error = 0;
    /* Until the first top-level change the top levels are those of the start, so a
     * threshold taken here holds for the whole message. */
    int have_threshold = 0, threshold_overflow = 0;
    long long threshold = 0;
    Py_ssize_t size = PyList_GET_SIZE(keys);
    if (size >= TOP_LEVELS) {
        PyObject *item = PyList_GET_ITEM(keys, size - TOP_LEVELS);
        threshold = PyLong_AsLongLongAndOverflow(item, &threshold_overflow);
        if (threshold == -1 && PyErr_Occurred()) {
            return -1;
        }
        have_threshold = 1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long long k = levels[i].key, q = levels[i].lots;
        PyObject *key = PyLong_FromLongLong(k);
        if (key == NULL) {
            return -1;
        }
        PyObject *old = PyDict_GetItemWithError(qty, key);
        if (old == NULL && PyErr_Occurred()) {
            Py_DECREF(key);
            return -1;
        }
        if (q > 0) {
            if (old == NULL) {
                Py_ssize_t at = bisect_left(keys, k, &error);
                if (error || PyList_Insert(keys, at, key) < 0) {
                    Py_DECREF(key);
                    return -1;
                }
            }
            else {
                int overflow;
                long long current = PyLong_AsLongLongAndOverflow(old, &overflow);
                if (!overflow && current == q) {
                    Py_DECREF(key);
                    continue;
                }
            }
            PyObject *lots = PyLong_FromLongLong(q);
            if (lots == NULL || PyDict_SetItem(qty, key, lots) < 0) {
                Py_XDECREF(lots);
                Py_DECREF(key);
                return -1;
            }
            Py_DECREF(lots);
        }
        else {
            if (old == NULL) {
                Py_DECREF(key);
                continue;
            }
            if (PyDict_DelItem(qty, key) < 0) {
                Py_DECREF(key);
                return -1;
            }
            Py_ssize_t at = bisect_left(keys, k, &error);
            if (error || PyList_SetSlice(keys, at, at + 1, NULL) < 0) {
                Py_DECREF(key);
                return -1;
            }
        }
        Py_DECREF(key);
        if (changed == 2) {
            continue;
        }
        int at_top = !have_threshold ||
                     (threshold_overflow ? threshold_overflow < 0 : k >= threshold);
        changed = at_top ? 2 : 1;
    }
    return changed;
}

static const long long *
table_of(PyObject *obj, const char *name)
{
    if (!PyBytes_CheckExact(obj) ||
        PyBytes_GET_SIZE(obj) != (Py_ssize_t)(2 * (MAX_DECIMALS + 1) * sizeof(long long))) {
        PyErr_Format(PyExc_TypeError, "%s must be a scale table from scale_table()", name);
        return NULL;
    }
    return (const long long *)PyBytes_AS_STRING(obj);
}

PyDoc_STRVAR(apply_diff_doc,
"apply_diff(bids, asks, bid_keys, bid_qty, ask_keys, ask_qty, price_table, qty_table)\n"
"\n"
"Convert and apply one diff's [price, qty] text levels. Returns the change code\n"
"(bid change | ask change << 2, each 0 none, 1 below the top levels, 2 top levels),\n"
"or None, with the book untouched, when a level is not on the fast path.");

static PyObject *
apply_diff(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_Format(PyExc_TypeError, "apply_diff() takes 8 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *bids = args[0], *asks = args[1];
    PyObject *bid_keys = args[2], *bid_qty = args[3], *ask_keys = args[4], *ask_qty = args[5];
    if (!PyList_CheckExact(bid_keys) || !PyList_CheckExact(ask_keys) ||
        !PyDict_CheckExact(bid_qty) || !PyDict_CheckExact(ask_qty)) {
        PyErr_SetString(PyExc_TypeError, "apply_diff() needs the book's key lists and dicts");
        return NULL;
    }
    const long long *ptable = table_of(args[6], "price_table");
    if (ptable == NULL) {
        return NULL;
    }
    const long long *qtable = table_of(args[7], "qty_table");
    if (qtable == NULL) {
        return NULL;
    }
    if (!PyList_CheckExact(bids) || !PyList_CheckExact(asks)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t nb = PyList_GET_SIZE(bids), na = PyList_GET_SIZE(asks);
    level_t stack[STACK_LEVELS];
    level_t *levels = stack;
    if (nb + na > STACK_LEVELS) {
        levels = PyMem_New(level_t, nb + na);
        if (levels == NULL) {
            return PyErr_NoMemory();
        }
    }
    PyObject *result = NULL;
    if (convert_side(bids, ptable, qtable, 0, levels) ||
        convert_side(asks, ptable, qtable, 1, levels + nb)) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    int bid_changed = apply_side(bid_keys, bid_qty, levels, nb);
    if (bid_changed < 0) {
        goto done;
    }
    int ask_changed = apply_side(ask_keys, ask_qty, levels + nb, na);
    if (ask_changed < 0) {
        goto done;
    }
    result = PyLong_FromLong(bid_changed | (ask_changed << 2));
done:
    if (levels != stack) {
        PyMem_Free(levels);
    }
    return result;
}

/* -- a depthUpdate read straight from its JSON text -------------------------------------- */

/* Converted levels of one side: on the stack for the usual handful, on the heap beyond. */
typedef struct {
    level_t *items;
    Py_ssize_t n, cap;
    level_t stack[STACK_LEVELS];
} level_vec;

static void
vec_init(level_vec *v)
{
    v->items = v->stack;
    v->n = 0;
    v->cap = STACK_LEVELS;
}

static void
vec_free(level_vec *v)
{
    if (v->items != v->stack) {
        PyMem_Free(v->items);
    }
}

static int
vec_push(level_vec *v, long long key, long long lots)
{
    if (v->n == v->cap) {
        Py_ssize_t cap = v->cap * 2;
        level_t *items;
        if (v->items == v->stack) {
            items = PyMem_New(level_t, cap);
            if (items != NULL) {
                memcpy(items, v->stack, sizeof(level_t) * (size_t)v->n);
            }
        }
        else {
            items = PyMem_Realloc(v->items, sizeof(level_t) * (size_t)cap);
        }
        if (items == NULL) {
            return -1;
        }
        v->items = items;
        v->cap = cap;
    }
    v->items[v->n].key = key;
    v->items[v->n].lots = lots;
    v->n++;
    return 0;
}

/* Keys of a depthUpdate (and of its combined-stream envelope) seen so far. */
enum {
    K_e = 1 << 0,
    K_E = 1 << 1,
    K_s = 1 << 2,
    K_U = 1 << 3,
    K_u = 1 << 4,
    K_pu = 1 << 5,
    K_b = 1 << 6,
    K_a = 1 << 7,
    K_stream = 1 << 8,
    K_data = 1 << 9,
};
#define K_DEPTH (K_e | K_E | K_s | K_U | K_u | K_pu | K_b | K_a)
#define K_NEEDED (K_e | K_s | K_U | K_u | K_b | K_a)

/* A strict reader of the one JSON shape Binance sends: every "not this shape" is -1,
 * and the caller hands the text to the interpreted path, which decodes it in full. */
typedef struct {
    const unsigned char *p, *end;
    const long long *ptable, *qtable;
    unsigned seen;
    int bad_level; /* a level text the fast path does not convert */
    const unsigned char *symbol;
    Py_ssize_t symbol_len;
    long long E, U, u, pu;
    level_vec bids, asks;
} scan_t;

static inline void
skip_ws(scan_t *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t')) {
        s->p++;
    }
}

/* Expect the byte c (after optional whitespace); 0 when found. */
static inline int
expect(scan_t *s, unsigned char c)
{
    skip_ws(s);
    if (s->p < s->end && *s->p == c) {
        s->p++;
        return 0;
    }
    return -1;
}

/* A string of printable ASCII without escapes; its contents in *start, *len. */
static int
scan_string(scan_t *s, const unsigned char **start, Py_ssize_t *len)
{
    if (s->p >= s->end || *s->p != '"') {
        return -1;
    }
    const unsigned char *q = ++s->p;
    while (q < s->end) {
        unsigned char c = *q;
        if (c == '"') {
            *start = s->p;
            *len = q - s->p;
            s->p = q + 1;
            return 0;
        }
        if (c == '\\' || c < 0x20 || c >= 0x80) {
            return -1;
        }
        q++;
    }
    return -1;
}

/* A JSON integer >= 0 of at most 18 digits: no sign, fraction, exponent or leading 0. */
static int
scan_uint(scan_t *s, long long *out)
{
    const unsigned char *q = s->p;
    long long v = 0;
    int n = 0;
    while (q < s->end && *q >= '0' && *q <= '9') {
        if (++n > 18) {
            return -1;
        }
        v = v * 10 + (*q - '0');
        q++;
    }
    if (n == 0 || (n > 1 && *s->p == '0') ||
        (q < s->end && (*q == '.' || *q == 'e' || *q == 'E'))) {
        return -1;
    }
    s->p = q;
    *out = v;
    return 0;
}

/* The value of a key the depth message does not use: a plain string, an integer,
 * true, false or null. */
static int
skip_scalar(scan_t *s)
{
    if (s->p >= s->end) {
        return -1;
    }
    unsigned char c = *s->p;
    if (c == '"') {
        const unsigned char *start;
        Py_ssize_t len;
        return scan_string(s, &start, &len);
    }
    long long ignored;
    if (c == '-') {
        s->p++;
        return scan_uint(s, &ignored);
    }
    if (c >= '0' && c <= '9') {
        return scan_uint(s, &ignored);
    }
    static const char *const words[3] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(words[i]);
        if ((size_t)(s->end - s->p) >= n && memcmp(s->p, words[i], n) == 0) {
            s->p += n;
            return 0;
        }
    }
    return -1;
}

/* A level's "digits[.digits]" string, read and converted in one pass by parse_digits'
 * rules. 0: converted into *out; 1: a valid string the fast path does not convert; -1:
 * no plain string here. */
static int
scan_decimal(scan_t *s, const long long *table, long long *out)
{
    const unsigned char *q = s->p, *end = s->end;
    if (q >= end || *q != '"') {
        return -1;
    }
    const unsigned char *first = ++q;
    unsigned long long value = 0; /* wraps only past 18 significant digits: refused */
    while (q < end && *q == '0') {
        q++;
    }
    const unsigned char *lead = q;
    while (q < end && (unsigned)(*q - '0') < 10) {
        value = value * 10 + (unsigned)(*q - '0');
        q++;
    }
    Py_ssize_t significant = q - lead, integer = q - first, decimals = 0;
    int plain = integer > 0 && integer <= MAX_INTEGER_DIGITS;
    if (q < end && *q == '.') {
        const unsigned char *fraction = ++q;
        if (!significant) {
            while (q < end && *q == '0') {
                q++;
            }
        }
        lead = q;
        while (q < end && (unsigned)(*q - '0') < 10) {
            value = value * 10 + (unsigned)(*q - '0');
            q++;
        }
        significant += q - lead;
        decimals = q - fraction;
        plain = plain && decimals > 0;
    }
    if (q < end && *q == '"' && plain && significant <= MAX_SIGNIFICANT &&
        decimals <= MAX_DECIMALS) {
        long long mul = table[2 * decimals], div = table[2 * decimals + 1], scaled;
        if (div > 0 && !__builtin_mul_overflow((long long)value, mul, &scaled) &&
            scaled % div == 0) {
            s->p = q + 1;
            *out = scaled / div;
            return 0;
        }
    }
    const unsigned char *text;
    Py_ssize_t len;
    return scan_string(s, &text, &len) ? -1 : 1;
}

/* [["price","qty"], ...] converted into v (asks keyed by negated ticks). A level the
 * fast path does not convert sets bad_level; the rest of the text is still checked,
 * since a message that is dropped by its update ids is not converted at all. */
static int
scan_levels(scan_t *s, level_vec *v, int negate)
{
    if (expect(s, '[')) {
        return -1;
    }
    skip_ws(s);
    if (s->p < s->end && *s->p == ']') {
        s->p++;
        return 0;
    }
    for (;;) {
        long long ticks = 0, count = 0;
        if (expect(s, '[')) {
            return -1;
        }
        skip_ws(s);
        int price = scan_decimal(s, s->ptable, &ticks);
        if (price < 0 || expect(s, ',')) {
            return -1;
        }
        skip_ws(s);
        int lots = scan_decimal(s, s->qtable, &count);
        if (lots < 0 || expect(s, ']')) {
            return -1;
        }
        if (price || lots) {
            s->bad_level = 1;
        }
        else if (!s->bad_level && vec_push(v, negate ? -ticks : ticks, count)) {
            return -1;
        }
        skip_ws(s);
        if (s->p >= s->end) {
            return -1;
        }
        if (*s->p == ']') {
            s->p++;
            return 0;
        }
        if (*s->p != ',') {
            return -1;
        }
        s->p++;
    }
}

static int
key_is(const unsigned char *key, Py_ssize_t len, const char *name)
{
    return (size_t)len == strlen(name) && memcmp(key, name, (size_t)len) == 0;
}

/* One object: the depthUpdate itself, or (top) a combined-stream envelope whose "data"
 * is the depthUpdate. Each key may appear once; the envelope holds no depth keys. */
static int
scan_object(scan_t *s, int top)
{
    if (expect(s, '{')) {
        return -1;
    }
    skip_ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        return 0;
    }
    for (;;) {
        const unsigned char *key;
        Py_ssize_t len;
        skip_ws(s);
        if (scan_string(s, &key, &len) || expect(s, ':')) {
            return -1;
        }
        skip_ws(s);
        unsigned bit = 0;
        int rc;
        if (len == 1) {
            switch (key[0]) {
            case 'e':
                bit = K_e;
                break;
            case 'E':
                bit = K_E;
                break;
            case 's':
                bit = K_s;
                break;
            case 'U':
                bit = K_U;
                break;
            case 'u':
                bit = K_u;
                break;
            case 'b':
                bit = K_b;
                break;
            case 'a':
                bit = K_a;
                break;
            }
        }
        else if (key_is(key, len, "pu")) {
            bit = K_pu;
        }
        else if (top && key_is(key, len, "data")) {
            bit = K_data;
        }
        else if (top && key_is(key, len, "stream")) {
            bit = K_stream;
        }
        if (bit & s->seen) {
            return -1; /* a repeated key: the decoder would keep the last one */
        }
        if (top && (((bit & K_DEPTH) && (s->seen & K_data)) ||
                    (bit == K_data && (s->seen & K_DEPTH)))) {
            return -1; /* depth keys beside an envelope's data */
        }
        s->seen |= bit;
        switch (bit) {
        case K_e: {
            const unsigned char *text;
            Py_ssize_t n;
            rc = scan_string(s, &text, &n) || !key_is(text, n, "depthUpdate");
            break;
        }
        case K_s:
            rc = scan_string(s, &s->symbol, &s->symbol_len);
            break;
        case K_E:
            rc = scan_uint(s, &s->E);
            break;
        case K_U:
            rc = scan_uint(s, &s->U);
            break;
        case K_u:
            rc = scan_uint(s, &s->u);
            break;
        case K_pu:
            rc = scan_uint(s, &s->pu);
            break;
        case K_b:
            rc = scan_levels(s, &s->bids, 0);
            break;
        case K_a:
            rc = scan_levels(s, &s->asks, 1);
            break;
        case K_data:
            rc = scan_object(s, 0);
            break;
        default: /* "stream" and keys the message does not use */
            rc = skip_scalar(s);
            break;
        }
        if (rc) {
            return -1;
        }
        skip_ws(s);
        if (s->p >= s->end) {
            return -1;
        }
        if (*s->p == '}') {
            s->p++;
            return 0;
        }
        if (*s->p != ',') {
            return -1;
        }
        s->p++;
    }
}

/* 1 when the best bid is at or above the best ask (ask keys are negated ticks), 0 when
 * not or a side is empty, -1 on a Python error. */
static int
is_crossed(PyObject *bid_keys, PyObject *ask_keys)
{
    Py_ssize_t nb = PyList_GET_SIZE(bid_keys), na = PyList_GET_SIZE(ask_keys);
    if (!nb || !na) {
        return 0;
    }
    PyObject *bid = PyList_GET_ITEM(bid_keys, nb - 1), *ask = PyList_GET_ITEM(ask_keys, na - 1);
    int o1, o2;
    long long b = PyLong_AsLongLongAndOverflow(bid, &o1);
    long long a = PyLong_AsLongLongAndOverflow(ask, &o2);
    if (PyErr_Occurred()) {
        return -1;
    }
    if (!o1 && !o2) {
        return (__int128)b + a >= 0;
    }
    PyObject *sum = PyNumber_Add(bid, ask);
    if (sum == NULL) {
        return -1;
    }
    PyObject *zero = PyLong_FromLong(0);
    int crossed = zero == NULL ? -1 : PyObject_RichCompareBool(sum, zero, Py_GE);
    Py_XDECREF(zero);
    Py_DECREF(sum);
    return crossed;
}

PyDoc_STRVAR(apply_depth_text_doc,
"apply_depth_text(raw, symbol, last, futures, chained, bid_keys, bid_qty, ask_keys,\n"
"                 ask_qty, price_table, qty_table, max_jump, per_second, elapsed_ns)\n"
"\n"
"Read one Binance depthUpdate from its JSON text (str or bytes; plain or inside a\n"
"combined-stream envelope) for a live book whose last applied update id is last, and\n"
"decide it as the interpreted source would: an event already covered is dropped, one\n"
"that chains is converted and applied all or nothing. u may be at most\n"
"max_jump + per_second * elapsed_ns // 10**9 ids away from last (either way).\n"
"Returns (code, u, ts_ns): code -1 for dropped, else the change code of apply_diff,\n"
"plus 16 when the book is crossed or locked after the apply; ts_ns is E in ns or None.\n"
"Returns None, with the book untouched, for anything else (another shape or spelling,\n"
"another symbol, a gap, an implausible id, a level off the fast path, ...): the\n"
"interpreted path decides.");

static PyObject *
apply_depth_text(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 14) {
        PyErr_Format(PyExc_TypeError, "apply_depth_text() takes 14 arguments (%zd given)",
                     nargs);
        return NULL;
    }
    PyObject *raw = args[0], *symbol = args[1], *last_obj = args[2];
    PyObject *bid_keys = args[5], *bid_qty = args[6], *ask_keys = args[7], *ask_qty = args[8];
    if (!PyList_CheckExact(bid_keys) || !PyList_CheckExact(ask_keys) ||
        !PyDict_CheckExact(bid_qty) || !PyDict_CheckExact(ask_qty) ||
        !PyUnicode_Check(symbol)) {
        PyErr_SetString(PyExc_TypeError,
                        "apply_depth_text() needs the symbol and the book's key lists and dicts");
        return NULL;
    }
    scan_t s;
    s.ptable = table_of(args[9], "price_table");
    if (s.ptable == NULL) {
        return NULL;
    }
    s.qtable = table_of(args[10], "qty_table");
    if (s.qtable == NULL) {
        return NULL;
    }
    int futures = PyObject_IsTrue(args[3]);
    int chained = PyObject_IsTrue(args[4]);
    if (futures < 0 || chained < 0) {
        return NULL;
    }
    Py_ssize_t symbol_len;
    const char *symbol_text = PyUnicode_AsUTF8AndSize(symbol, &symbol_len);
    if (symbol_text == NULL) {
        return NULL;
    }
    if (PyUnicode_CheckExact(raw) && PyUnicode_IS_COMPACT_ASCII(raw)) {
        s.p = PyUnicode_1BYTE_DATA(raw);
        s.end = s.p + PyUnicode_GET_LENGTH(raw);
    }
    else if (PyBytes_CheckExact(raw)) {
        s.p = (const unsigned char *)PyBytes_AS_STRING(raw);
        s.end = s.p + PyBytes_GET_SIZE(raw);
    }
    else {
        Py_RETURN_NONE;
    }
    long long max_jump = PyLong_AsLongLong(args[11]);
    long long per_second = PyLong_AsLongLong(args[12]);
    long long elapsed = PyLong_AsLongLong(args[13]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (max_jump < 0 || per_second < 0) {
        PyErr_SetString(PyExc_ValueError, "apply_depth_text() id bounds must be >= 0");
        return NULL;
    }
    if (elapsed < 0) {
        elapsed = 0; /* a clock read out of order grants no extra ids */
    }
    if (!PyLong_CheckExact(last_obj)) {
        Py_RETURN_NONE;
    }
    int overflow;
    long long last = PyLong_AsLongLongAndOverflow(last_obj, &overflow);
    if (overflow || (last == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    s.seen = 0;
    s.bad_level = 0;
    s.symbol = NULL;
    s.symbol_len = 0;
    s.E = s.U = s.u = s.pu = 0;
    vec_init(&s.bids);
    vec_init(&s.asks);

    PyObject *result = NULL;
    int code = -1; /* -1 dropped, else the change code */
    if (scan_object(&s, 1)) {
        goto not_handled;
    }
    skip_ws(&s);
    if (s.p != s.end || (s.seen & K_NEEDED) != K_NEEDED ||
        ((s.seen & K_data) && !(s.seen & K_stream)) || s.symbol_len != symbol_len ||
        memcmp(s.symbol, symbol_text, (size_t)symbol_len) != 0 || s.U > s.u) {
        goto not_handled;
    }
    int apply;
    if (futures) {
        if (s.u < last || (s.u == last && chained)) {
            apply = 0;
        }
        else if (chained ? ((s.seen & K_pu) && s.pu == last) : (s.U <= last && last <= s.u)) {
            apply = 1;
        }
        else {
            goto not_handled;
        }
    }
    else if (s.u <= last) {
        apply = 0;
    }
    else if (s.U <= last + 1) { /* u > last, so last < 10**18: no overflow */
        apply = 1;
    }
    else {
        goto not_handled;
    }
    /* Ids move only so far per event and per second, both ways: anything further is
     * the interpreted source's desync (u and last are both in [0, 10**18)). */
    __int128 allowance = (__int128)max_jump + (__int128)per_second * elapsed / 1000000000;
    __int128 distance = apply ? (__int128)s.u - last : (__int128)last - s.u;
    if (distance > allowance) {
        goto not_handled;
    }
    long long ts_ns = 0;
    int has_ts = apply && (s.seen & K_E);
    if (apply) {
        if (s.bad_level || (has_ts && __builtin_mul_overflow(s.E, 1000000LL, &ts_ns))) {
            goto not_handled;
        }
        int bid_changed = apply_side(bid_keys, bid_qty, s.bids.items, s.bids.n);
        if (bid_changed < 0) {
            goto done;
        }
        int ask_changed = apply_side(ask_keys, ask_qty, s.asks.items, s.asks.n);
        if (ask_changed < 0) {
            goto done;
        }
        code = bid_changed | (ask_changed << 2);
        if (bid_changed || ask_changed) {
            int crossed = is_crossed(bid_keys, ask_keys);
            if (crossed < 0) {
                goto done;
            }
            code |= crossed << 4;
        }
    }
    PyObject *ts = has_ts ? PyLong_FromLongLong(ts_ns) : Py_NewRef(Py_None);
    PyObject *code_obj = PyLong_FromLong(code);
    PyObject *u_obj = PyLong_FromLongLong(s.u);
    if (ts == NULL || code_obj == NULL || u_obj == NULL) {
        Py_XDECREF(ts);
        Py_XDECREF(code_obj);
        Py_XDECREF(u_obj);
        goto done;
    }
    result = PyTuple_New(3);
    if (result == NULL) {
        Py_DECREF(ts);
        Py_DECREF(code_obj);
        Py_DECREF(u_obj);
        goto done;
    }
    PyTuple_SET_ITEM(result, 0, code_obj);
    PyTuple_SET_ITEM(result, 1, u_obj);
    PyTuple_SET_ITEM(result, 2, ts);
    goto done;
not_handled:
    result = Py_NewRef(Py_None);
done:
    vec_free(&s.bids);
    vec_free(&s.asks);
    return result;
}

PyDoc_STRVAR(top_levels_doc,
"top_levels(keys, qty, n, negate)\n"
"\n"
"The best n levels of one side, best first, as (ticks, lots) tuples: the last n keys\n"
"in reverse order, negated back to ticks when negate is true (the ask side).");

static PyObject *
top_levels(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "top_levels() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *keys = args[0], *qty = args[1];
    if (!PyList_CheckExact(keys) || !PyDict_CheckExact(qty)) {
        PyErr_SetString(PyExc_TypeError, "top_levels() needs a side's key list and dict");
        return NULL;
    }
    Py_ssize_t n = PyLong_AsSsize_t(args[2]);
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    int negate = PyObject_IsTrue(args[3]);
    if (negate < 0) {
        return NULL;
    }
    Py_ssize_t size = PyList_GET_SIZE(keys);
    if (n > size) {
        n = size;
    }
    if (n < 0) {
        n = 0;
    }
    PyObject *out = PyList_New(n);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = PyList_GET_ITEM(keys, size - 1 - i);
        PyObject *lots = PyDict_GetItemWithError(qty, key);
        if (lots == NULL) {
            if (!PyErr_Occurred()) {
                PyErr_SetObject(PyExc_KeyError, key);
            }
            Py_DECREF(out);
            return NULL;
        }
        PyObject *price = negate ? PyNumber_Negative(key) : Py_NewRef(key);
        if (price == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyObject *pair = PyTuple_New(2);
        if (pair == NULL) {
            Py_DECREF(price);
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(pair, 0, price);
        PyTuple_SET_ITEM(pair, 1, Py_NewRef(lots));
        PyList_SET_ITEM(out, i, pair);
    }
    return out;
}

/* -- consumer book merge ------------------------------------------------------------- */

typedef struct {
    long long key;   /* grid price, negated for bids so ascending is best first */
    long long units; /* grid quantity */
    PyObject *name;  /* borrowed */
    PyObject *price; /* borrowed venue ticks, reused as the grid price when the grid is the venue's */
    PyObject *lots;  /* borrowed venue lots, likewise */
} entry_t;

static int
entry_order(const void *a, const void *b)
{
    const entry_t *x = a, *y = b;
    if (x->key != y->key) {
        return x->key < y->key ? -1 : 1;
    }
    if (x->units != y->units) {
        return x->units > y->units ? -1 : 1; /* larger size first */
    }
    /* Venue names are unique and plain str: code point order, as Python's. */
    int c = PyUnicode_Compare(x->name, y->name);
    return c < 0 ? -1 : (c > 0);
}

/* A tuple-subclass instance (a NamedTuple such as ConsumerLevel) from n new references. */
static PyObject *
make_record(PyTypeObject *type, PyObject **items, Py_ssize_t n)
{
    PyObject *obj = type->tp_alloc(type, n);
    if (obj == NULL) {
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_DECREF(items[i]);
        }
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyTuple_SET_ITEM(obj, i, items[i]);
    }
    return obj;
}

/* Sort entries[0..used) and build the best n merged levels; NULL on error, None when a
 * total does not fit in 64 bits. */
/* Whether a previous merged level (price_key, units, parts, grid) holds exactly the
 * entries [i, j): then it is reused instead of built again. */
static int
same_level(PyObject *record, const entry_t *entries, Py_ssize_t i, Py_ssize_t j,
           long long total, PyObject *grid)
{
    if (PyTuple_GET_SIZE(record) != 4 || PyTuple_GET_ITEM(record, 3) != grid) {
        return 0;
    }
    PyObject *parts = PyTuple_GET_ITEM(record, 2);
    if (!PyTuple_CheckExact(parts) || PyTuple_GET_SIZE(parts) != j - i) {
        return 0;
    }
    int overflow;
    long long units = PyLong_AsLongLongAndOverflow(PyTuple_GET_ITEM(record, 1), &overflow);
    if (overflow || units != total) {
        return 0;
    }
    for (Py_ssize_t k = i; k < j; k++) {
        PyObject *part = PyTuple_GET_ITEM(parts, k - i);
        if (PyTuple_GET_ITEM(part, 0) != entries[k].name) {
            return 0;
        }
        long long u = PyLong_AsLongLongAndOverflow(PyTuple_GET_ITEM(part, 1), &overflow);
        if (overflow || u != entries[k].units) {
            return 0;
        }
    }
    return 1;
}

static PyObject *
build_levels(entry_t *entries, Py_ssize_t used, Py_ssize_t n, int bids, PyTypeObject *level_type,
             PyObject *grid, PyObject *previous)
{
    /* A handful of entries: insertion sort beats qsort's indirect comparisons. */
    for (Py_ssize_t i = 1; i < used; i++) {
        entry_t e = entries[i];
        Py_ssize_t j = i;
        while (j > 0 && entry_order(&entries[j - 1], &e) > 0) {
            entries[j] = entries[j - 1];
            j--;
        }
        entries[j] = e;
    }
    if (PyErr_Occurred()) { /* a failed name comparison */
        return NULL;
    }
    PyObject *result = PyList_New(0);
    if (result == NULL) {
        return NULL;
    }
    /* Levels of the previous merge, best first, walked alongside: most of a merged top
     * survives an update of one venue, and reusing those records saves building them. */
    Py_ssize_t prev_n = previous != NULL && PyList_CheckExact(previous)
                            ? PyList_GET_SIZE(previous) : 0;
    Py_ssize_t prev_i = 0;
    for (Py_ssize_t i = 0; i < used && PyList_GET_SIZE(result) < n;) {
        Py_ssize_t j = i;
        long long total = 0;
        while (j < used && entries[j].key == entries[i].key) {
            if (__builtin_add_overflow(total, entries[j].units, &total)) {
                Py_DECREF(result);
                Py_RETURN_NONE;
            }
            j++;
        }
        long long price_key = bids ? -entries[i].key : entries[i].key;
        PyObject *reuse = NULL;
        while (prev_i < prev_n) {
            PyObject *old = PyList_GET_ITEM(previous, prev_i);
            int overflow;
            long long old_key = PyLong_AsLongLongAndOverflow(PyTuple_GET_ITEM(old, 0), &overflow);
            if (overflow) {
                prev_i = prev_n;
                break;
            }
            /* Stored keys are grid prices; "better" is higher for bids, lower for asks. */
            long long sort_key = bids ? -old_key : old_key;
            if (sort_key < entries[i].key) {
                prev_i++;
                continue;
            }
            if (sort_key == entries[i].key &&
                same_level(old, entries, i, j, total, grid)) {
                reuse = old;
                prev_i++;
            }
            break;
        }
        if (reuse != NULL) {
            if (PyList_Append(result, reuse) < 0) {
                Py_DECREF(result);
                return NULL;
            }
            i = j;
            continue;
        }
        PyObject *parts = PyTuple_New(j - i);
        if (parts == NULL) {
            Py_DECREF(result);
            return NULL;
        }
        for (Py_ssize_t k = i; k < j; k++) {
            PyObject *units = entries[k].lots ? Py_NewRef(entries[k].lots)
                                              : PyLong_FromLongLong(entries[k].units);
            PyObject *part = units ? PyTuple_New(2) : NULL;
            if (part == NULL) {
                Py_XDECREF(units);
                Py_DECREF(parts);
                Py_DECREF(result);
                return NULL;
            }
            PyTuple_SET_ITEM(part, 0, Py_NewRef(entries[k].name));
            PyTuple_SET_ITEM(part, 1, units);
            PyTuple_SET_ITEM(parts, k - i, part);
        }
        PyObject *items[4];
        items[0] = entries[i].price ? Py_NewRef(entries[i].price)
                                    : PyLong_FromLongLong(price_key);
        items[1] = (j == i + 1 && entries[i].lots) ? Py_NewRef(entries[i].lots)
                                                   : PyLong_FromLongLong(total);
        items[2] = parts;
        items[3] = Py_NewRef(grid);
        if (items[0] == NULL || items[1] == NULL) {
            for (int k = 0; k < 4; k++) {
                Py_XDECREF(items[k]);
            }
            Py_DECREF(result);
            return NULL;
        }
        PyObject *record = make_record(level_type, items, 4);
        if (record == NULL || PyList_Append(result, record) < 0) {
            Py_XDECREF(record);
            Py_DECREF(result);
            return NULL;
        }
        Py_DECREF(record);
        i = j;
    }
    return result;
}

/* The L2Book attributes a consumer read takes from every venue book. They are
 * __slots__, i.e. member descriptors at fixed offsets in the instance: read in place,
 * which costs a fraction of the generic attribute lookup. The offsets are learnt per
 * type and relearnt whenever the type changes (its version tag); a type that is not
 * plain (its own __getattribute__, a property instead of a slot) takes the lookup. */
enum { A_STATE, A_BID_KEYS, A_BID_QTY, A_BID_TOPV, A_ASK_KEYS, A_ASK_QTY, A_ASK_TOPV, A_COUNT };
static PyObject *attr_names[A_COUNT];
static PyTypeObject *slots_type; /* strong reference: the address cannot be reused */
static unsigned int slots_tag;
static Py_ssize_t slots_offset[A_COUNT]; /* 0: the generic lookup */

static void
learn_slots(PyTypeObject *type)
{
    Py_XSETREF(slots_type, (PyTypeObject *)Py_NewRef((PyObject *)type));
    int generic = type->tp_getattro == PyObject_GenericGetAttr;
    for (int i = 0; i < A_COUNT; i++) {
        PyObject *descr = generic ? _PyType_Lookup(type, attr_names[i]) : NULL;
        Py_ssize_t offset = 0;
        if (descr != NULL && Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
            PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
            if (member->type == T_OBJECT_EX) {
                offset = member->offset;
            }
        }
        slots_offset[i] = offset;
    }
    /* Read after the lookups, which give the type a tag when it has none. */
    slots_tag = (type->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) ? type->tp_version_tag : 0;
}

/* book.<attr_names[which]>, a new reference; NULL with an exception set. */
static PyObject *
book_attr(PyObject *book, int which)
{
    PyTypeObject *type = Py_TYPE(book);
    if (type != slots_type || !slots_tag || type->tp_version_tag != slots_tag ||
        !(type->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)) {
        learn_slots(type);
    }
    Py_ssize_t offset = slots_offset[which];
    if (offset && slots_tag) {
        PyObject *value = *(PyObject **)((char *)book + offset);
        if (value != NULL) {
            return Py_NewRef(value);
        }
    }
    return PyObject_GetAttr(book, attr_names[which]); /* unset: the AttributeError */
}

PyDoc_STRVAR(consumer_top_doc,
"consumer_top(books, meta, n, bids, live_only, live, level_type, grid, cache)\n"
"\n"
"The best n merged levels of one side of a consumer book. books are L2Books; meta\n"
"holds (name, price_mult, qty_mult) per book. cache is a 3-item list [version sum,\n"
"live mask, levels] kept by the caller: while no book's top levels on this side and\n"
"no book's LIVE-ness changed, the cached levels are returned as they are. Returns a\n"
"list of level_type(price_key, units, parts, grid), parts (name, units) largest first\n"
"then by name; None when a value does not fit in 64 bits (merge in Python then).");

static PyObject *
consumer_top(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9) {
        PyErr_Format(PyExc_TypeError, "consumer_top() takes 9 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *books = args[0], *meta = args[1];
    Py_ssize_t n = PyLong_AsSsize_t(args[2]);
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    int bids = PyObject_IsTrue(args[3]);
    int live_only = PyObject_IsTrue(args[4]);
    if (bids < 0 || live_only < 0) {
        return NULL;
    }
    PyObject *live = args[5];
    PyTypeObject *level_type = (PyTypeObject *)args[6];
    PyObject *grid = args[7], *cache = args[8];
    if (!PyList_CheckExact(books) || !PyList_CheckExact(meta) ||
        PyList_GET_SIZE(books) != PyList_GET_SIZE(meta) || !PyList_CheckExact(cache) ||
        PyList_GET_SIZE(cache) != 3 || !PyType_Check(args[6]) ||
        !PyType_IsSubtype(level_type, &PyTuple_Type) ||
        level_type->tp_basicsize != PyTuple_Type.tp_basicsize) {
        PyErr_SetString(PyExc_TypeError, "consumer_top() called with the wrong arguments");
        return NULL;
    }
    Py_ssize_t nb = PyList_GET_SIZE(books);
    int keys_attr = bids ? A_BID_KEYS : A_ASK_KEYS;
    int qty_attr = bids ? A_BID_QTY : A_ASK_QTY;
    int topv_attr = bids ? A_BID_TOPV : A_ASK_TOPV;

    /* Stamp: versions only grow, so their sum changes exactly when one of them does. */
    long long sum = 0, mask = 0;
    int cacheable = nb < 63;
    if (nb > 64) {
        Py_RETURN_NONE; /* the interpreted merge serves very wide consumer books */
    }
    char is_live_book[64];
    for (Py_ssize_t b = 0; b < nb; b++) {
        PyObject *book = PyList_GET_ITEM(books, b);
        PyObject *state = book_attr(book, A_STATE);
        PyObject *topv = state ? book_attr(book, topv_attr) : NULL;
        if (topv == NULL) {
            Py_XDECREF(state);
            return NULL;
        }
        int is_live = state == live;
        is_live_book[b] = (char)is_live;
        Py_DECREF(state);
        long long v = PyLong_AsLongLong(topv);
        Py_DECREF(topv);
        if (v == -1 && PyErr_Occurred()) {
            return NULL;
        }
        sum += v;
        if (is_live && cacheable) {
            mask |= 1LL << b;
        }
    }
    PyObject *cached = PyList_GET_ITEM(cache, 2);
    if (cacheable && cached != Py_None) {
        long long old_sum = PyLong_AsLongLong(PyList_GET_ITEM(cache, 0));
        long long old_mask = PyLong_AsLongLong(PyList_GET_ITEM(cache, 1));
        if (PyErr_Occurred()) {
            return NULL;
        }
        if (old_sum == sum && old_mask == mask) {
            return Py_NewRef(cached);
        }
    }

    entry_t stack[STACK_LEVELS];
    entry_t *entries = stack;
    Py_ssize_t capacity = nb * n;
    if (capacity > STACK_LEVELS) {
        entries = PyMem_New(entry_t, capacity);
        if (entries == NULL) {
            return PyErr_NoMemory();
        }
    }
    PyObject *held[2 * 64]; /* key lists and qty dicts kept alive while entries borrow */
    Py_ssize_t nheld = 0, used = 0;
    PyObject *result = NULL;
    for (Py_ssize_t b = 0; b < nb; b++) {
        PyObject *book = PyList_GET_ITEM(books, b);
        if (live_only && !is_live_book[b]) {
            continue;
        }
        PyObject *info = PyList_GET_ITEM(meta, b);
        if (!PyTuple_CheckExact(info) || PyTuple_GET_SIZE(info) != 3 ||
            !PyUnicode_CheckExact(PyTuple_GET_ITEM(info, 0))) {
            PyErr_SetString(PyExc_TypeError, "consumer_top() meta is (name, price_mult, qty_mult)");
            goto done;
        }
        int o1, o2;
        long long pm = PyLong_AsLongLongAndOverflow(PyTuple_GET_ITEM(info, 1), &o1);
        long long qm = PyLong_AsLongLongAndOverflow(PyTuple_GET_ITEM(info, 2), &o2);
        if (PyErr_Occurred()) {
            goto done;
        }
        if (o1 || o2) {
            goto fallback;
        }
        PyObject *keys = book_attr(book, keys_attr);
        if (keys == NULL) {
            goto done;
        }
        held[nheld++] = keys;
        PyObject *qty = book_attr(book, qty_attr);
        if (qty == NULL) {
            goto done;
        }
        held[nheld++] = qty;
        if (!PyList_CheckExact(keys) || !PyDict_CheckExact(qty)) {
            PyErr_SetString(PyExc_TypeError, "consumer_top() needs L2Book sides");
            goto done;
        }
        Py_ssize_t size = PyList_GET_SIZE(keys);
        for (Py_ssize_t i = 0; i < n && i < size; i++) {
            PyObject *key = PyList_GET_ITEM(keys, size - 1 - i);
            PyObject *lots = PyDict_GetItemWithError(qty, key);
            if (lots == NULL) {
                if (!PyErr_Occurred()) {
                    PyErr_SetObject(PyExc_KeyError, key);
                }
                goto done;
            }
            long long k = PyLong_AsLongLongAndOverflow(key, &o1);
            long long q = PyLong_AsLongLongAndOverflow(lots, &o2);
            if (PyErr_Occurred()) {
                goto done;
            }
            entry_t *e = &entries[used++];
            /* Bid keys are ticks; ask keys are negated ticks, already "ascending = best". */
            long long ticks = bids ? k : -k;
            if (o1 || o2 || k == LLONG_MIN || __builtin_mul_overflow(ticks, pm, &e->key) ||
                __builtin_mul_overflow(q, qm, &e->units) || e->key == LLONG_MIN) {
                goto fallback;
            }
            if (bids) {
                e->key = -e->key;
            }
            e->name = PyTuple_GET_ITEM(info, 0);
            e->price = (pm == 1 && bids) ? key : NULL; /* an ask key is the negated price */
            e->lots = qm == 1 ? lots : NULL;
        }
    }
    result = build_levels(entries, used, n, bids, level_type, grid, cached);
    if (result != NULL && result != Py_None && cacheable) {
        PyObject *s = PyLong_FromLongLong(sum), *m = PyLong_FromLongLong(mask);
        if (s == NULL || m == NULL) {
            Py_XDECREF(s);
            Py_XDECREF(m);
            Py_CLEAR(result);
            goto done;
        }
        PyList_SetItem(cache, 0, s);
        PyList_SetItem(cache, 1, m);
        PyList_SetItem(cache, 2, Py_NewRef(result));
    }
    goto done;
fallback:
    result = Py_NewRef(Py_None);
done:
    for (Py_ssize_t i = 0; i < nheld; i++) {
        Py_DECREF(held[i]);
    }
    if (entries != stack) {
        PyMem_Free(entries);
    }
    return result;
}

PyDoc_STRVAR(binance_trade_text_doc,
"binance_trade_text(raw, price_table, qty_table)\n"
"\n"
"One Binance trade message read from its JSON text: (price ticks, quantity lots,\n"
"buyer is maker) from its \"p\", \"q\" and \"m\". None for anything else (an envelope,\n"
"another spelling, a repeated key, a value the fast path does not convert): the caller\n"
"then decodes the text in full.");

static PyObject *
binance_trade_text(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError,
                        "binance_trade_text(raw, price_table, qty_table) takes 3 arguments");
        return NULL;
    }
    const long long *ptable = table_of(args[1], "price_table");
    const long long *qtable = table_of(args[2], "qty_table");
    if (ptable == NULL || qtable == NULL) {
        return NULL;
    }
    PyObject *raw = args[0];
    if (!PyUnicode_CheckExact(raw) || !PyUnicode_IS_COMPACT_ASCII(raw)) {
        Py_RETURN_NONE;
    }
    scan_t s;
    memset(&s, 0, sizeof(s));
    s.p = PyUnicode_1BYTE_DATA(raw);
    s.end = s.p + PyUnicode_GET_LENGTH(raw);
    long long price = 0, qty = 0;
    int have_p = 0, have_q = 0, maker = -1;
    if (expect(&s, '{')) {
        Py_RETURN_NONE;
    }
    for (;;) {
        const unsigned char *key;
        Py_ssize_t len;
        skip_ws(&s);
        if (scan_string(&s, &key, &len) || expect(&s, ':')) {
            Py_RETURN_NONE;
        }
        skip_ws(&s);
        int rc;
        if (len == 1 && key[0] == 'p') {
            rc = have_p++ ? -1 : scan_decimal(&s, ptable, &price);
        }
        else if (len == 1 && key[0] == 'q') {
            rc = have_q++ ? -1 : scan_decimal(&s, qtable, &qty);
        }
        else if (len == 1 && key[0] == 'm') {
            rc = -1;
            if (maker < 0 && s.end - s.p >= 4 && memcmp(s.p, "true", 4) == 0) {
                maker = 1;
                s.p += 4;
                rc = 0;
            }
            else if (maker < 0 && s.end - s.p >= 5 && memcmp(s.p, "false", 5) == 0) {
                maker = 0;
                s.p += 5;
                rc = 0;
            }
        }
        else {
            rc = skip_scalar(&s);
        }
        if (rc) {
            Py_RETURN_NONE;
        }
        skip_ws(&s);
        if (s.p < s.end && *s.p == ',') {
            s.p++;
            continue;
        }
        if (expect(&s, '}')) {
            Py_RETURN_NONE;
        }
        break;
    }
    skip_ws(&s);
    if (s.p != s.end || !have_p || !have_q || maker < 0) {
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(LLO)", price, qty, maker ? Py_True : Py_False);
}

static PyMethodDef methods[] = {
    {"consumer_top", (PyCFunction)(void (*)(void))consumer_top, METH_FASTCALL,
     consumer_top_doc},
    {"apply_diff", (PyCFunction)(void (*)(void))apply_diff, METH_FASTCALL, apply_diff_doc},
    {"apply_depth_text", (PyCFunction)(void (*)(void))apply_depth_text, METH_FASTCALL,
     apply_depth_text_doc},
    {"top_levels", (PyCFunction)(void (*)(void))top_levels, METH_FASTCALL, top_levels_doc},
    {"binance_trade_text", (PyCFunction)(void (*)(void))binance_trade_text, METH_FASTCALL,
     binance_trade_text_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fastbook_module = {
    PyModuleDef_HEAD_INIT,
    "quoteforge.book._fastbook",
    "Compiled hot loop of Binance diff-depth updates (optional; see quoteforge.book.fast).",
    0,
    methods,
};

PyMODINIT_FUNC
PyInit__fastbook(void)
{
    static const char *const names[A_COUNT] = {
        "state", "_bid_keys", "_bid_qty", "_bid_topv", "_ask_keys", "_ask_qty", "_ask_topv",
    };
    for (int i = 0; i < A_COUNT; i++) {
        attr_names[i] = PyUnicode_InternFromString(names[i]);
        if (attr_names[i] == NULL) {
            return NULL;
        }
    }
    PyObject *module = PyModule_Create(&fastbook_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "MAX_DECIMALS", MAX_DECIMALS) < 0 ||
        PyModule_AddIntConstant(module, "TOP_LEVELS", TOP_LEVELS) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
