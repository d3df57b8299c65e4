/*
 * quoteforge.book._fastbook: the venue-neutral hot loops of the order book in C.
 *
 * apply_diff converts every [price, qty] level of a decoded diff from decimal text to
 * integer ticks and lots, exactly, and applies them to an L2Book's two sides (a list of
 * keys in ascending order plus a dict key -> lots; asks keyed by negated ticks).
 * top_levels reads the best levels of a side and consumer_top merges the top levels of
 * several venues' books. The data structures are the Python ones, so the interpreted
 * path and this one can take turns on the same book.
 *
 * All or nothing: every level is converted before the first one is applied. Anything
 * the fast path does not read (not a [str, str] list, non-ASCII, exponent forms, more
 * than 18 significant digits, text off the tick or lot grid, ...) makes the call return
 * None with the book untouched; the caller then runs the interpreted path, which
 * accepts the rare valid forms and raises the clear error for the invalid ones.
 *
 * A venue's own wire parsing lives with its venue: the Binance depthUpdate text reader
 * is quoteforge.exchanges.binance._fastparse, which applies levels with the same code,
 * _fastbook_apply.h (the level apply and the scale tables described there).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "_fastbook_apply.h"

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

static PyMethodDef methods[] = {
    {"consumer_top", (PyCFunction)(void (*)(void))consumer_top, METH_FASTCALL,
     consumer_top_doc},
    {"apply_diff", (PyCFunction)(void (*)(void))apply_diff, METH_FASTCALL, apply_diff_doc},
    {"top_levels", (PyCFunction)(void (*)(void))top_levels, METH_FASTCALL, top_levels_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fastbook_module = {
    PyModuleDef_HEAD_INIT,
    "quoteforge.book._fastbook",
    "Compiled hot loops of the order book (optional; see quoteforge.book.fast).",
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
