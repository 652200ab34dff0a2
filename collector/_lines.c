/* A flush's queued points as line protocol, in one call: the recorder's common case compiled.
 *
 * The recorder's flush turns its queue into the lines `PointBuilder.build` writes, in
 * recording order (collector/recorder.py, `Recorder._lines`). In Python that costs ~1 µs a
 * point on the flusher; in a training step it also evicts the training's data from the
 * caches. This writes the same bytes for the queues a training loop makes, reading the
 * builder's caches and never filling them:
 *
 *   - a point queued by `record()` (measurement, fields, tags, time_ns) whose fields are all
 *     plain finite float/int values of known numeric fields, untagged or with tags whose
 *     prefix the builder has cached (observed only when untagged);
 *   - a `record_series()` entry (`_Series`) of finite values and str tag values (all a
 *     training loop's layer names are);
 *   - a line built at `record()` (str) or one observers see (`_Built`).
 *
 * Anything else (a `record_later()` entry, a NaN, an int past the float range, a field, tag
 * or prefix the builder has not resolved yet, an unhashable tag value) ends the call's run of
 * entries: it writes the entries before it and says where it stopped. The Python path then
 * builds that entry, filling the caches for the entries after it, and calls this again from
 * the next one. The numbers are formatted by orjson in one call, as the Python path does, so
 * both write the same digits.
 *
 * Holds the GIL throughout, and a reference to every prefix and key it will write: looking up
 * a tag set hashes the user's tag values, which may run Python code, and meanwhile another
 * thread's `build()` may clear the builder's prefix cache.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

static PyObject *series_type, *built_type, *dumps;

/* A growable byte buffer. */
typedef struct {
    char *data;
    Py_ssize_t size, capacity;
} Buffer;

static int reserve(Buffer *buffer, Py_ssize_t extra) {
    if (buffer->size + extra <= buffer->capacity) return 0;
    Py_ssize_t capacity = buffer->capacity ? buffer->capacity : 4096;
    while (capacity < buffer->size + extra) capacity *= 2;
    char *grown = PyMem_Realloc(buffer->data, capacity);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    buffer->data = grown;
    buffer->capacity = capacity;
    return 0;
}

static int put(Buffer *buffer, const char *text, Py_ssize_t size) {
    if (reserve(buffer, size) < 0) return -1;
    memcpy(buffer->data + buffer->size, text, size);
    buffer->size += size;
    return 0;
}

static int put_char(Buffer *buffer, char c) { return put(buffer, &c, 1); }

/* 1: written; 0: not UTF-8 encodable (a lone surrogate: the Python path replaces it). */
static int put_str(Buffer *buffer, PyObject *text) {
    Py_ssize_t size;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &size);
    if (utf8 == NULL) {
        PyErr_Clear();
        return 0;
    }
    return put(buffer, utf8, size) < 0 ? -1 : 1;
}

static int put_int(Buffer *buffer, long long value) {
    char digits[24];
    int at = (int)sizeof(digits);
    unsigned long long magnitude =
        value < 0 ? 0ULL - (unsigned long long)value : (unsigned long long)value;
    do {
        digits[--at] = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude);
    if (value < 0) digits[--at] = '-';
    return put(buffer, digits + at, (Py_ssize_t)sizeof(digits) - at);
}

/* One line to write: a built text, or a prefix, `width` field keys and numbers, a time. */
typedef struct {
    PyObject *text;   /* a built line (prefix is NULL) */
    PyObject *prefix; /* measurement and tags as written */
    Py_ssize_t keys;  /* offset of the first key in `Plan.keys` */
    Py_ssize_t width;
    long long time_ns;
} Line;

/* What the first pass resolves; the second writes it. */
typedef struct {
    Line *lines;
    Py_ssize_t count, capacity;
    PyObject **keys; /* field keys (str), from the builder's specs */
    Py_ssize_t key_count, key_capacity;
    PyObject *numbers;      /* every number, line after line (list of float) */
    PyObject *observations; /* list of (measurement, fields, tags) */
} Plan;

/* How far the plan went before an entry, to take back what a declined entry added. */
typedef struct {
    Py_ssize_t count, key_count, numbers, observations;
} Mark;

static Mark mark_of(const Plan *plan) {
    Mark mark = {plan->count, plan->key_count, PyList_GET_SIZE(plan->numbers),
                 PyList_GET_SIZE(plan->observations)};
    return mark;
}

static int roll_back(Plan *plan, const Mark *mark) {
    for (Py_ssize_t i = mark->count; i < plan->count; ++i) {
        Py_CLEAR(plan->lines[i].text);
        Py_CLEAR(plan->lines[i].prefix);
    }
    plan->count = mark->count;
    for (Py_ssize_t i = mark->key_count; i < plan->key_count; ++i) Py_DECREF(plan->keys[i]);
    plan->key_count = mark->key_count;
    if (PyList_SetSlice(plan->numbers, mark->numbers, PyList_GET_SIZE(plan->numbers), NULL) < 0)
        return -1;
    return PyList_SetSlice(plan->observations, mark->observations,
                           PyList_GET_SIZE(plan->observations), NULL);
}

static Line *add_line(Plan *plan) {
    if (plan->count == plan->capacity) {
        Py_ssize_t capacity = plan->capacity ? plan->capacity * 2 : 1024;
        Line *grown = PyMem_Realloc(plan->lines, capacity * sizeof(Line));
        if (grown == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        plan->lines = grown;
        plan->capacity = capacity;
    }
    Line *line = &plan->lines[plan->count++];
    memset(line, 0, sizeof(Line));
    return line;
}

static int add_key(Plan *plan, PyObject *key) {
    if (plan->key_count == plan->key_capacity) {
        Py_ssize_t capacity = plan->key_capacity ? plan->key_capacity * 2 : 1024;
        PyObject **grown = PyMem_Realloc(plan->keys, capacity * sizeof(PyObject *));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        plan->keys = grown;
        plan->key_capacity = capacity;
    }
    plan->keys[plan->key_count++] = Py_NewRef(key);
    return 0;
}

/* Results of the first pass's steps: an error is set, or the flush is not this path's. */
#define FAILED (-1)
#define NOT_PLAIN 0
#define PLANNED 1

/* The written key of a numeric field the builder has resolved, or NULL (no error set). */
static PyObject *numeric_key(PyObject *specs, PyObject *name) {
    PyObject *spec = PyDict_GetItemWithError(specs, name);
    if (spec == NULL || !PyTuple_CheckExact(spec) || PyTuple_GET_SIZE(spec) != 3) return NULL;
    if (PyTuple_GET_ITEM(spec, 2) != Py_False) return NULL; /* a string field */
    PyObject *key = PyTuple_GET_ITEM(spec, 0);
    return PyUnicode_CheckExact(key) ? key : NULL;
}

/* A finite float for a plain value, as a new reference; NULL (no error set) for any other. */
static PyObject *plain_number(PyObject *value) {
    if (PyFloat_CheckExact(value)) {
        if (!isfinite(PyFloat_AS_DOUBLE(value))) return NULL;
        return Py_NewRef(value);
    }
    if (PyLong_CheckExact(value)) {
        double number = PyLong_AsDouble(value);
        if (number == -1.0 && PyErr_Occurred()) {
            PyErr_Clear(); /* past the float range: build() drops the field */
            return NULL;
        }
        return PyFloat_FromDouble(number);
    }
    return NULL;
}

static int plain_time(PyObject *value, long long *time_ns) {
    if (!PyLong_CheckExact(value)) return NOT_PLAIN;
    int overflow;
    *time_ns = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (*time_ns == -1 && PyErr_Occurred()) return FAILED;
    return overflow ? NOT_PLAIN : PLANNED;
}

/* The prefix of a point tagged {tag: value} the builder has cached (its key for one str
 * value), borrowed; NULL (no error set) when it has not, or value is not a str. */
static PyObject *one_tag_prefix(PyObject *tag_prefixes, PyObject *measurement, PyObject *tag,
                                PyObject *value) {
    if (!PyUnicode_CheckExact(value)) return NULL;
    PyObject *key = PyTuple_Pack(3, measurement, tag, value);
    if (key == NULL) return NULL;
    PyObject *prefix = PyDict_GetItemWithError(tag_prefixes, key);
    Py_DECREF(key);
    return prefix != NULL && PyUnicode_CheckExact(prefix) ? prefix : NULL;
}

/* The prefix of a point with these tags the builder has cached, borrowed; NULL (no error
 * set) when it has not. The key is the builder's: (measurement, key, value) for one tag of a
 * str value, else (measurement, tuple(tags.items()), tuple(map(type, tags.values()))). */
static PyObject *tags_prefix(PyObject *tag_prefixes, PyObject *measurement, PyObject *tags) {
    Py_ssize_t count = PyDict_GET_SIZE(tags), at = 0, index = 0;
    PyObject *tag, *value;
    if (count == 1) {
        PyDict_Next(tags, &at, &tag, &value);
        if (PyUnicode_CheckExact(value))
            return one_tag_prefix(tag_prefixes, measurement, tag, value);
        at = 0;
    }
    PyObject *items = PyTuple_New(count), *types = PyTuple_New(count), *prefix = NULL;
    if (items == NULL || types == NULL) goto done;
    while (PyDict_Next(tags, &at, &tag, &value)) {
        PyObject *item = PyTuple_Pack(2, tag, value);
        if (item == NULL) goto done;
        PyTuple_SET_ITEM(items, index, item);
        PyTuple_SET_ITEM(types, index, Py_NewRef((PyObject *)Py_TYPE(value)));
        ++index;
    }
    PyObject *key = PyTuple_Pack(3, measurement, items, types);
    if (key == NULL) goto done;
    prefix = PyDict_GetItemWithError(tag_prefixes, key); /* raises for an unhashable value */
    Py_DECREF(key);
    if (prefix == NULL && PyErr_ExceptionMatches(PyExc_TypeError)) PyErr_Clear();
done:
    Py_XDECREF(items);
    Py_XDECREF(types);
    return prefix != NULL && PyUnicode_CheckExact(prefix) ? prefix : NULL;
}

typedef struct {
    PyObject *fields;       /* measurement -> {raw field name -> spec} */
    PyObject *prefixes;     /* measurement -> untagged prefix */
    PyObject *tag_prefixes; /* the builder's tag-set keys (tags_prefix) -> prefix */
    PyObject *base_tags;
    PyObject *observed; /* measurements observers see */
} Caches;

/* A point queued by record(): (measurement, fields, tags, time_ns). */
static int plan_point(Plan *plan, const Caches *caches, PyObject *point) {
    if (PyTuple_GET_SIZE(point) != 4) return NOT_PLAIN;
    PyObject *measurement = PyTuple_GET_ITEM(point, 0);
    PyObject *fields = PyTuple_GET_ITEM(point, 1);
    PyObject *tags = PyTuple_GET_ITEM(point, 2);
    if (!PyUnicode_CheckExact(measurement) || !PyDict_CheckExact(fields)) return NOT_PLAIN;
    if (PyDict_GET_SIZE(fields) == 0) return NOT_PLAIN;
    PyObject *specs = PyDict_GetItemWithError(caches->fields, measurement);
    if (specs == NULL || !PyDict_CheckExact(specs)) return PyErr_Occurred() ? FAILED : NOT_PLAIN;
    int observe = PySet_Contains(caches->observed, measurement);
    if (observe < 0) return FAILED;
    Line *line = add_line(plan);
    if (line == NULL) return FAILED;
    if (tags == Py_None || (PyDict_CheckExact(tags) && PyDict_GET_SIZE(tags) == 0)) {
        line->prefix = Py_XNewRef(PyDict_GetItemWithError(caches->prefixes, measurement));
    } else if (PyDict_CheckExact(tags) && !observe) {
        line->prefix = Py_XNewRef(tags_prefix(caches->tag_prefixes, measurement, tags));
    }
    if (line->prefix == NULL || !PyUnicode_CheckExact(line->prefix))
        return PyErr_Occurred() ? FAILED : NOT_PLAIN;
    int timed = plain_time(PyTuple_GET_ITEM(point, 3), &line->time_ns);
    if (timed != PLANNED) return timed;
    line->keys = plan->key_count;
    line->width = PyDict_GET_SIZE(fields);
    PyObject *seen = observe ? PyDict_New() : NULL;
    if (observe && seen == NULL) return FAILED;
    Py_ssize_t at = 0;
    PyObject *name, *value;
    int result = PLANNED;
    while (PyDict_Next(fields, &at, &name, &value)) {
        PyObject *key = numeric_key(specs, name);
        PyObject *number = key != NULL ? plain_number(value) : NULL;
        if (number == NULL) {
            result = PyErr_Occurred() ? FAILED : NOT_PLAIN;
            break;
        }
        int added = PyList_Append(plan->numbers, number);
        if (added == 0 && seen != NULL) added = PyDict_SetItem(seen, key, number);
        Py_DECREF(number);
        if (added < 0 || add_key(plan, key) < 0) {
            result = FAILED;
            break;
        }
    }
    if (result == PLANNED && seen != NULL) {
        PyObject *observation = PyTuple_Pack(3, measurement, seen, caches->base_tags);
        if (observation == NULL || PyList_Append(plan->observations, observation) < 0)
            result = FAILED;
        Py_XDECREF(observation);
    }
    Py_XDECREF(seen);
    return result;
}

/* A record_series() entry: (shape, values, tag_values, common, time_ns), shape being
 * (measurement, field names, tag). */
static int plan_series(Plan *plan, const Caches *caches, PyObject *series) {
    if (PyTuple_GET_SIZE(series) != 5) return NOT_PLAIN;
    PyObject *shape = PyTuple_GET_ITEM(series, 0);
    PyObject *values = PyTuple_GET_ITEM(series, 1);
    PyObject *tag_values = PyTuple_GET_ITEM(series, 2);
    PyObject *common = PyTuple_GET_ITEM(series, 3);
    if (!PyTuple_CheckExact(shape) || PyTuple_GET_SIZE(shape) != 3 ||
        !PyTuple_CheckExact(values) || !PyTuple_CheckExact(tag_values) ||
        !PyTuple_CheckExact(common))
        return NOT_PLAIN;
    PyObject *measurement = PyTuple_GET_ITEM(shape, 0);
    PyObject *names = PyTuple_GET_ITEM(shape, 1);
    PyObject *tag = PyTuple_GET_ITEM(shape, 2);
    Py_ssize_t count = PyTuple_GET_SIZE(values);
    if (!PyUnicode_CheckExact(measurement) || !PyTuple_CheckExact(names) ||
        PyTuple_GET_SIZE(names) != 1 + PyTuple_GET_SIZE(common) ||
        PyTuple_GET_SIZE(tag_values) != count)
        return NOT_PLAIN;
    int observe = PySet_Contains(caches->observed, measurement);
    if (observe != 0) return observe < 0 ? FAILED : NOT_PLAIN;
    PyObject *specs = PyDict_GetItemWithError(caches->fields, measurement);
    if (specs == NULL || !PyDict_CheckExact(specs)) return PyErr_Occurred() ? FAILED : NOT_PLAIN;
    Py_ssize_t width = PyTuple_GET_SIZE(names);
    Py_ssize_t keys = plan->key_count;
    for (Py_ssize_t j = 0; j < width; ++j) {
        PyObject *key = numeric_key(specs, PyTuple_GET_ITEM(names, j));
        if (key == NULL) return PyErr_Occurred() ? FAILED : NOT_PLAIN;
        if (add_key(plan, key) < 0) return FAILED;
    }
    long long first;
    int timed = plain_time(PyTuple_GET_ITEM(series, 4), &first);
    if (timed != PLANNED) return timed;
    for (Py_ssize_t i = 0; i < count; ++i) {
        Line *line = add_line(plan);
        if (line == NULL) return FAILED;
        line->prefix = Py_XNewRef(one_tag_prefix(caches->tag_prefixes, measurement, tag,
                                                 PyTuple_GET_ITEM(tag_values, i)));
        if (line->prefix == NULL) return PyErr_Occurred() ? FAILED : NOT_PLAIN;
        line->keys = keys;
        line->width = width;
        line->time_ns = first + i;
        for (Py_ssize_t j = 0; j < width; ++j) {
            PyObject *value =
                j == 0 ? PyTuple_GET_ITEM(values, i) : PyTuple_GET_ITEM(common, j - 1);
            PyObject *number = plain_number(value);
            if (number == NULL) return PyErr_Occurred() ? FAILED : NOT_PLAIN;
            int added = PyList_Append(plan->numbers, number);
            Py_DECREF(number);
            if (added < 0) return FAILED;
        }
    }
    return PLANNED;
}

/* A line observers see, built at record(): (line, measurement, observed, tags). */
static int plan_built(Plan *plan, PyObject *built) {
    if (PyTuple_GET_SIZE(built) != 4 || !PyUnicode_CheckExact(PyTuple_GET_ITEM(built, 0)))
        return NOT_PLAIN;
    Line *line = add_line(plan);
    if (line == NULL) return FAILED;
    line->text = Py_NewRef(PyTuple_GET_ITEM(built, 0));
    PyObject *observation = PyTuple_Pack(3, PyTuple_GET_ITEM(built, 1),
                                         PyTuple_GET_ITEM(built, 2), PyTuple_GET_ITEM(built, 3));
    if (observation == NULL) return FAILED;
    int added = PyList_Append(plan->observations, observation);
    Py_DECREF(observation);
    return added < 0 ? FAILED : PLANNED;
}

static int plan_entry(Plan *plan, const Caches *caches, PyObject *entry) {
    PyTypeObject *type = Py_TYPE(entry);
    if (type == &PyTuple_Type) return plan_point(plan, caches, entry);
    if (type == &PyUnicode_Type) {
        Line *line = add_line(plan);
        if (line == NULL) return FAILED;
        line->text = Py_NewRef(entry);
        return PLANNED;
    }
    if ((PyObject *)type == series_type) return plan_series(plan, caches, entry);
    if ((PyObject *)type == built_type) return plan_built(plan, entry);
    return NOT_PLAIN;
}

/* The planned lines, with the numbers' texts from `formatted` ("[a,b,...]"). */
static int write_lines(const Plan *plan, const char *formatted, Py_ssize_t formatted_size,
                       Buffer *out) {
    const char *at = formatted + 1, *end = formatted + formatted_size;
    for (Py_ssize_t i = 0; i < plan->count; ++i) {
        const Line *line = &plan->lines[i];
        if (line->prefix == NULL) {
            int written = put_str(out, line->text);
            if (written <= 0) return written;
            continue;
        }
        int written = put_str(out, line->prefix);
        if (written <= 0) return written;
        for (Py_ssize_t j = 0; j < line->width; ++j) {
            const char *stop = at;
            while (stop < end && *stop != ',' && *stop != ']') ++stop;
            if (stop == end) {
                PyErr_SetString(PyExc_RuntimeError, "fewer formatted numbers than fields");
                return -1;
            }
            if (put_char(out, j == 0 ? ' ' : ',') < 0) return -1;
            written = put_str(out, plan->keys[line->keys + j]);
            if (written <= 0) return written;
            if (put_char(out, '=') < 0 || put(out, at, stop - at) < 0) return -1;
            at = stop + 1;
        }
        if (put_char(out, ' ') < 0 || put_int(out, line->time_ns) < 0 || put_char(out, '\n') < 0)
            return -1;
    }
    return 1;
}

static PyObject *queued_lines(PyObject *module, PyObject *args) {
    PyObject *queued;
    Py_ssize_t start;
    Caches caches;
    if (!PyArg_ParseTuple(args, "O!nO!O!O!O!O:queued_lines", &PyList_Type, &queued, &start,
                          &PyDict_Type, &caches.fields, &PyDict_Type, &caches.prefixes,
                          &PyDict_Type, &caches.tag_prefixes, &PyDict_Type, &caches.base_tags,
                          &caches.observed))
        return NULL;
    if (!PyAnySet_Check(caches.observed)) {
        PyErr_SetString(PyExc_TypeError, "queued_lines(): observed must be a set or frozenset");
        return NULL;
    }
    if (start < 0 || start > PyList_GET_SIZE(queued)) {
        PyErr_SetString(PyExc_IndexError, "queued_lines(): start out of range");
        return NULL;
    }
    if (series_type == NULL || built_type == NULL || dumps == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "queued_lines(): configure() was not called");
        return NULL;
    }
    Plan plan = {0};
    Buffer out = {0};
    PyObject *formatted = NULL, *result = NULL;
    plan.numbers = PyList_New(0);
    plan.observations = PyList_New(0);
    if (plan.numbers == NULL || plan.observations == NULL) goto done;
    Py_ssize_t size = PyList_GET_SIZE(queued), stop = start;
    for (; stop < size; ++stop) {
        Mark mark = mark_of(&plan);
        int planned = plan_entry(&plan, &caches, PyList_GET_ITEM(queued, stop));
        if (planned == FAILED) goto done;
        if (planned == NOT_PLAIN) {
            if (roll_back(&plan, &mark) < 0) goto done;
            break;
        }
    }
    formatted = PyObject_CallOneArg(dumps, plan.numbers);
    if (formatted == NULL) goto done;
    if (!PyBytes_Check(formatted)) {
        PyErr_SetString(PyExc_TypeError, "queued_lines(): dumps did not return bytes");
        goto done;
    }
    if (reserve(&out, plan.count * 64 + PyBytes_GET_SIZE(formatted)) < 0) goto done;
    int written = write_lines(&plan, PyBytes_AS_STRING(formatted), PyBytes_GET_SIZE(formatted),
                              &out);
    if (written < 0) goto done;
    if (written == 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *text = PyBytes_FromStringAndSize(out.data, out.size);
    if (text == NULL) goto done;
    result = Py_BuildValue("(NnOn)", text, plan.count, plan.observations, stop);
done:
    Py_XDECREF(formatted);
    Py_XDECREF(plan.numbers);
    Py_XDECREF(plan.observations);
    for (Py_ssize_t i = 0; i < plan.count; ++i) {
        Py_XDECREF(plan.lines[i].text);
        Py_XDECREF(plan.lines[i].prefix);
    }
    for (Py_ssize_t i = 0; i < plan.key_count; ++i) Py_DECREF(plan.keys[i]);
    PyMem_Free(plan.lines);
    PyMem_Free(plan.keys);
    PyMem_Free(out.data);
    return result;
}

static PyObject *configure(PyObject *module, PyObject *args) {
    PyObject *series, *built, *dumps_function;
    if (!PyArg_ParseTuple(args, "O!O!O:configure", &PyType_Type, &series, &PyType_Type, &built,
                          &dumps_function))
        return NULL;
    Py_XSETREF(series_type, Py_NewRef(series));
    Py_XSETREF(built_type, Py_NewRef(built));
    Py_XSETREF(dumps, Py_NewRef(dumps_function));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(series_type, built_type, dumps): the recorder's queue entry types and the "
     "number formatter (orjson.dumps)"},
    {"queued_lines", queued_lines, METH_VARARGS,
     "queued_lines(queued, start, fields, prefixes, tag_prefixes, base_tags, observed) -> "
     "(bytes, points, observations, stop) | None: the lines of queued[start:stop], UTF-8, in "
     "order, how many points they hold and what observers see of them, stop being the first "
     "entry that needs the Python path (or the queue's end); None when a text cannot be "
     "encoded (the Python path replaces it)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_lines", "A flush's queued points as line protocol, compiled.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__lines(void) { return PyModule_Create(&module_def); }
