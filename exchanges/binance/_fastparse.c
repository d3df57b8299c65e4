/*
 * quoteforge.exchanges.binance._fastparse: Binance messages read straight from their
 * JSON text in C, for the Binance book source and the replay of Binance trades.
 *
 * apply_depth_text reads a whole depthUpdate (the plain spelling Binance sends, with
 * any whitespace, key order or combined-stream envelope), makes the update-id decision
 * of the interpreted source for the common cases (dropped as already covered, or
 * applied because it chains on) and applies the levels to the live L2Book, so the
 * message is never decoded into Python objects. binance_trade_text reads a trade's
 * price, quantity and maker side. Everything else (escapes, other value types, repeated
 * keys, gaps, ...) is None, and the interpreted code decodes the text and decides as
 * always, with the same results.
 *
 * Levels are applied with the book's own code, framework/book/_fastbook_apply.h (shared
 * with quoteforge.book._fastbook; it also describes the scale tables). Optional like
 * that one: without a C compiler the install goes on and the same work runs interpreted.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_fastbook_apply.h"

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
    {"apply_depth_text", (PyCFunction)(void (*)(void))apply_depth_text, METH_FASTCALL,
     apply_depth_text_doc},
    {"binance_trade_text", (PyCFunction)(void (*)(void))binance_trade_text, METH_FASTCALL,
     binance_trade_text_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fastparse_module = {
    PyModuleDef_HEAD_INIT,
    "quoteforge.exchanges.binance._fastparse",
    "Binance depthUpdate and trade messages read from their JSON text (optional; see "
    "quoteforge.exchanges.binance.fast).",
    0,
    methods,
};

PyMODINIT_FUNC
PyInit__fastparse(void)
{
    PyObject *module = PyModule_Create(&fastparse_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "MAX_DECIMALS", MAX_DECIMALS) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
