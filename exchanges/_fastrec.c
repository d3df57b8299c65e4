/* Compiled reader of recording lines: quoteforge.exchanges._fastrec.
 *
 * A recording line as RecordingWriter writes it is
 *
 *     {"t":<int>,"venue":"<text>","stream":"<text>","raw":"<payload text, JSON-escaped>"}
 *
 * parse_lines(lines, last) reads a list of such lines (str, as a text-mode file gives
 * them) into (t, venue, stream, raw) tuples in one call, checking that times never go
 * back (from ``last`` on). It reads only that exact shape, in ASCII: any other line
 * (blank, other key order or spacing, non-ASCII text, \u escapes above 0x7f, a number
 * that is not a plain integer, time going back) makes it return None, and the caller
 * reads the whole list with its interpreted code, which accepts every valid line and
 * names the first bad one. It never raises for a line's content.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

/* Read `"<key>":` at *p; advance past it. */
static int
expect_key(const char **p, const char *end, const char *key)
{
    size_t n = strlen(key);
    if ((size_t)(end - *p) < n + 3 || (*p)[0] != '"' || memcmp(*p + 1, key, n) != 0 ||
        (*p)[n + 1] != '"' || (*p)[n + 2] != ':')
        return 0;
    *p += n + 3;
    return 1;
}

/* A JSON integer that fits in 64 bits (optional minus, no leading zeros) at *p. */
static int
read_int(const char **p, const char *end, long long *out)
{
    const char *s = *p;
    int negative = 0;
    if (s < end && *s == '-') {
        negative = 1;
        s++;
    }
    const char *digits = s;
    unsigned long long value = 0;
    while (s < end && *s >= '0' && *s <= '9') {
        if (s - digits >= 19)
            return 0; /* 20 digits or more: beyond 64 bits */
        value = value * 10 + (unsigned long long)(*s - '0');
        s++;
    }
    if (s == digits || (s - digits > 1 && *digits == '0'))
        return 0;
    if (value > (unsigned long long)LLONG_MAX)
        return 0;
    *out = negative ? -(long long)value : (long long)value;
    *p = s;
    return 1;
}

/* An ASCII str of n bytes copied from s. */
static PyObject *
ascii_str(const char *s, Py_ssize_t n)
{
    PyObject *text = PyUnicode_New(n, 127);
    if (text != NULL)
        memcpy(PyUnicode_1BYTE_DATA(text), s, (size_t)n);
    return text;
}

/* Venue and stream names repeat on every line: the last few are kept and handed out
 * again (equal text, the same object, its hash already computed). */
#define NAME_CACHE 16
static PyObject *name_cache[NAME_CACHE];
static int name_next;

static PyObject *
cached_name(const char *s, Py_ssize_t n)
{
    for (int i = 0; i < NAME_CACHE; i++) {
        PyObject *name = name_cache[i];
        if (name != NULL && PyUnicode_GET_LENGTH(name) == n &&
            memcmp(PyUnicode_1BYTE_DATA(name), s, (size_t)n) == 0) {
            Py_INCREF(name);
            return name;
        }
    }
    PyObject *name = ascii_str(s, n);
    if (name == NULL)
        return NULL;
    Py_XSETREF(name_cache[name_next], Py_NewRef(name));
    name_next = (name_next + 1) % NAME_CACHE;
    return name;
}

/* A JSON string without escapes at *p, as a (cached) str; NULL (no error set) when it
 * is not one. */
static PyObject *
read_name(const char **p, const char *end)
{
    const char *s = *p;
    if (s >= end || *s != '"')
        return NULL;
    const char *start = ++s;
    while (s < end && *s != '"') {
        if (*s == '\\' || (unsigned char)*s < 0x20)
            return NULL;
        s++;
    }
    if (s >= end)
        return NULL;
    *p = s + 1;
    return cached_name(start, s - start);
}

static int
hex4(const char *s, unsigned int *out)
{
    unsigned int value = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        value <<= 4;
        if (c >= '0' && c <= '9')
            value |= (unsigned int)(c - '0');
        else if (c >= 'a' && c <= 'f')
            value |= (unsigned int)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            value |= (unsigned int)(c - 'A' + 10);
        else
            return 0;
    }
    *out = value;
    return 1;
}

/* Bytes a JSON string cannot hold as they are: the quote, the backslash, controls. */
static unsigned char special[256];

/* The unescaped text is built here, then copied once into its str. */
static char *scratch;
static Py_ssize_t scratch_size;

/* A JSON string at *p, escapes resolved, as a new ASCII str; NULL with no error set
 * when it is not a string this reader handles, NULL with an error on memory failure. */
static PyObject *
read_string(const char **p, const char *end)
{
    const char *s = *p;
    if (s >= end || *s != '"')
        return NULL;
    s++;
    if (scratch_size < end - s) {
        char *grown = PyMem_Realloc(scratch, (size_t)(end - s));
        if (grown == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        scratch = grown;
        scratch_size = end - s;
    }
    char *out = scratch;
    while (s < end) {
        unsigned char c = (unsigned char)*s++;
        *out = (char)c; /* written ahead: kept unless c is special */
        if (!special[c]) {
            out++;
            continue;
        }
        if (c == '"') {
            *p = s;
            return ascii_str(scratch, out - scratch);
        }
        if (c != '\\')
            return NULL; /* a control character */
        if (s >= end)
            return NULL;
        if (*s == '"') { /* by far the most common escape in a JSON payload */
            *out++ = '"';
            s++;
            continue;
        }
        switch (*s++) {
        case '"': *out++ = '"'; break;
        case '\\': *out++ = '\\'; break;
        case '/': *out++ = '/'; break;
        case 'b': *out++ = '\b'; break;
        case 'f': *out++ = '\f'; break;
        case 'n': *out++ = '\n'; break;
        case 'r': *out++ = '\r'; break;
        case 't': *out++ = '\t'; break;
        case 'u': {
            unsigned int code;
            if (end - s < 4 || !hex4(s, &code) || code > 0x7f)
                return NULL;
            *out++ = (char)code;
            s += 4;
            break;
        }
        default:
            return NULL;
        }
    }
    return NULL; /* no closing quote */
}

/* One line into a new tuple; NULL with no error set when the line is not of the
 * common shape. */
static PyObject *
parse_line(PyObject *line, long long *t_out)
{
    if (!PyUnicode_Check(line) || !PyUnicode_IS_ASCII(line))
        return NULL;
    Py_ssize_t size = PyUnicode_GET_LENGTH(line);
    const char *s = (const char *)PyUnicode_1BYTE_DATA(line);
    const char *end = s + size;
    while (end > s && (end[-1] == '\n' || end[-1] == '\r'))
        end--;
    long long t;
    if (end - s < 2 || *s++ != '{' || end[-1] != '}')
        return NULL;
    end--; /* the closing brace */
    if (!expect_key(&s, end, "t") || !read_int(&s, end, &t))
        return NULL;
    if (s >= end || *s++ != ',' || !expect_key(&s, end, "venue"))
        return NULL;
    PyObject *venue = read_name(&s, end);
    if (venue == NULL)
        return NULL;
    PyObject *stream = NULL, *raw = NULL, *t_obj = NULL;
    if (s >= end || *s++ != ',' || !expect_key(&s, end, "stream"))
        goto fail;
    stream = read_name(&s, end);
    if (stream == NULL)
        goto fail;
    if (s >= end || *s++ != ',' || !expect_key(&s, end, "raw"))
        goto fail;
    raw = read_string(&s, end);
    if (raw == NULL || s != end)
        goto fail;
    t_obj = PyLong_FromLongLong(t);
    if (t_obj == NULL)
        goto fail;
    PyObject *record = PyTuple_Pack(4, t_obj, venue, stream, raw);
    Py_DECREF(t_obj);
    Py_DECREF(venue);
    Py_DECREF(stream);
    Py_DECREF(raw);
    *t_out = t;
    return record;
fail:
    Py_XDECREF(venue);
    Py_XDECREF(stream);
    Py_XDECREF(raw);
    Py_XDECREF(t_obj);
    return NULL;
}

static PyObject *
parse_lines(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "parse_lines(lines, last) takes 2 arguments");
        return NULL;
    }
    PyObject *lines = args[0];
    if (!PyList_Check(lines)) {
        PyErr_SetString(PyExc_TypeError, "lines must be a list of str");
        return NULL;
    }
    int has_last = args[1] != Py_None;
    long long last = 0;
    if (has_last) {
        int overflow = 0;
        last = PyLong_AsLongLongAndOverflow(args[1], &overflow);
        if (last == -1 && PyErr_Occurred())
            return NULL;
        if (overflow)
            Py_RETURN_NONE;
    }
    Py_ssize_t n = PyList_GET_SIZE(lines);
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        long long t;
        PyObject *record = parse_line(PyList_GET_ITEM(lines, i), &t);
        if (record == NULL || (has_last && t < last)) {
            Py_XDECREF(record);
            Py_DECREF(out);
            if (PyErr_Occurred())
                return NULL;
            Py_RETURN_NONE;
        }
        PyList_SET_ITEM(out, i, record);
        last = t;
        has_last = 1;
    }
    return out;
}

static PyMethodDef methods[] = {
    {"parse_lines", (PyCFunction)(void (*)(void))parse_lines, METH_FASTCALL,
     "parse_lines(lines, last) -> list of (t, venue, stream, raw), or None when a line "
     "is not of the common shape or goes back in time."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_fastrec",
    .m_doc = "Compiled reader of recording lines.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__fastrec(void)
{
    for (int c = 0; c < 0x20; c++)
        special[c] = 1;
    special['"'] = special['\\'] = 1;
    return PyModule_Create(&module_def);
}
