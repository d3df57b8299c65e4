/*
 * The level apply shared by quoteforge.book._fastbook (the venue-neutral book code) and
 * quoteforge.exchanges.binance._fastparse (the Binance depthUpdate reader): both apply
 * converted (key, lots) levels to the same L2Book sides, so the rule lives once, here.
 *
 * An L2Book side is a list of int keys in ascending order plus a dict key -> lots (asks
 * keyed by negated ticks); apply_side keeps both in step exactly as the interpreted
 * L2Book does. The scale tables of table_of are bytes of MAX_DECIMALS + 1 (multiplier,
 * divisor) int64 pairs indexed by the count of decimals in a text (the scale_table()
 * of quoteforge.book.wire): count of steps = digits * multiplier / divisor with remainder 0;
 * a divisor of 0 means "not on the fast path".
 *
 * Everything is static inline, so each extension compiles its own copy: the two shared
 * objects stay independent (either may be missing) and there is no call across them.
 * Include after <Python.h> (with PY_SSIZE_T_CLEAN defined).
 */
#ifndef QUOTEFORGE_FASTBOOK_APPLY_H
#define QUOTEFORGE_FASTBOOK_APPLY_H

#define MAX_DECIMALS 18
#define MAX_SIGNIFICANT 18
#define MAX_INTEGER_DIGITS 18 /* the wire rule of quoteforge.book.wire, both paths */
#define TOP_LEVELS 5
#define STACK_LEVELS 64

/* One converted level: the side's key (ticks, negated for asks) and its lots (0 deletes). */
typedef struct {
    long long key;
    long long lots;
} level_t;

/* -1, 0, 1 as item <, ==, > key; exact for ints of any size. */
static inline int
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

static inline Py_ssize_t
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

/* Insert key (a new reference is taken) at index at: the tail moves with one memmove.
 * PyList_Insert moves it one pointer at a time, which on a deep futures book (thousands
 * of levels, inserts all through it) was an eighth of the whole apply. */
static inline int
list_insert_at(PyObject *keys, Py_ssize_t at, PyObject *key)
{
    Py_ssize_t n = PyList_GET_SIZE(keys);
    if (PyList_Append(keys, key) < 0) { /* grows the list, key at the end for now */
        return -1;
    }
    if (at < n) {
        PyObject **items = ((PyListObject *)keys)->ob_item;
        memmove(items + at + 1, items + at, (size_t)(n - at) * sizeof(PyObject *));
        items[at] = key;
    }
    return 0;
}

/* Remove the key at index at (which exists): one memmove, without the slice machinery. */
static inline void
list_delete_at(PyObject *keys, Py_ssize_t at)
{
    Py_ssize_t n = PyList_GET_SIZE(keys);
    PyObject **items = ((PyListObject *)keys)->ob_item;
    PyObject *gone = items[at];
    memmove(items + at, items + at + 1, (size_t)(n - at - 1) * sizeof(PyObject *));
    Py_SET_SIZE(keys, n - 1);
    Py_DECREF(gone); /* an int: no code runs, and the list is whole again */
}

/* Apply converted levels to one side. Returns 0 nothing changed, 1 changed below the top
 * levels only, 2 the top levels changed, -1 on a Python error. */
static inline int
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
                if (error || list_insert_at(keys, at, key) < 0) {
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
            if (error) {
                Py_DECREF(key);
                return -1;
            }
            if (at >= PyList_GET_SIZE(keys)) { /* the dict had it, so the list must */
                Py_DECREF(key);
                PyErr_SetString(PyExc_RuntimeError, "book side keys and sizes disagree");
                return -1;
            }
            list_delete_at(keys, at);
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

static inline const long long *
table_of(PyObject *obj, const char *name)
{
    if (!PyBytes_CheckExact(obj) ||
        PyBytes_GET_SIZE(obj) != (Py_ssize_t)(2 * (MAX_DECIMALS + 1) * sizeof(long long))) {
        PyErr_Format(PyExc_TypeError, "%s must be a scale table from scale_table()", name);
        return NULL;
    }
    return (const long long *)PyBytes_AS_STRING(obj);
}

#endif /* QUOTEFORGE_FASTBOOK_APPLY_H */
