/* The recorder's queue of points waiting for the flusher, with its every-step calls compiled.
 *
 * A training step records a few points, each with the cold caches the step's forward and
 * backward passes leave: there every Python line of `Recorder.record` touches memory that is
 * not in the caches, and the call costs several microseconds. This type holds what those
 * calls read and write (the queue, the last timestamp, the counts) in one struct, and queues
 * the common cases in C:
 *
 *   - `put`: a point of a known measurement whose fields (a dict) are all exact float/int
 *     values, stamped now, as (measurement, fields copy, tags copy or None, time_ns);
 *   - `put_series`: a `record_series` call of exact float values, str-keyed plain common
 *     fields and an optional head point, as the head's point and one `_Series` entry.
 *
 * Anything else returns False before changing anything, and the recorder's Python path
 * records it as before: a closed recorder, a value that is not a plain number (it may change
 * before the flush: the line is built now), a mapping that is not a dict, an observed series.
 * collector/pending.py is the same type in Python, for installs without a C compiler; there
 * `put` and `put_series` always return False.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <time.h>

typedef struct {
    PyObject_HEAD
    PyObject *entries;       /* collections.deque the flusher drains */
    PyObject *append;        /* entries.append */
    PyObject *measurements;  /* frozenset of the schema's measurements */
    PyObject *observed;      /* frozenset of the measurements observers see */
    PyObject *when_full;     /* called once flush_lines points wait */
    PyObject *series_type;   /* the recorder's _Series (a tuple subclass) */
    long long last_ns;
    Py_ssize_t recorded;
    Py_ssize_t extra;        /* points queued beyond one per entry */
    Py_ssize_t flush_lines;
    char closed;
} Pending;

/* Strictly increasing nanoseconds since the epoch (time.time_ns()), `count` of them. */
static long long stamp(Pending *self, Py_ssize_t count) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    long long first = (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
    if (first <= self->last_ns) first = self->last_ns + 1;
    self->last_ns = first + count - 1;
    return first;
}

/* 1 when every value of the dict is an exact float or int (not a bool), 0 otherwise. */
static int plain_numbers(PyObject *fields) {
    Py_ssize_t position = 0;
    PyObject *key, *value;
    while (PyDict_Next(fields, &position, &key, &value))
        if (!PyFloat_CheckExact(value) && !PyLong_CheckExact(value)) return 0;
    return 1;
}

/* 1 when `name` is in the frozenset, 0 when not or when it cannot be hashed. */
static int member(PyObject *set, PyObject *name) {
    int found = PySet_Contains(set, name);
    if (found < 0) {
        PyErr_Clear(); /* the Python path reports it */
        return 0;
    }
    return found;
}

/* The entry counts `points`: wake the flusher once flush_lines wait. */
static int counted(Pending *self, Py_ssize_t points, Py_ssize_t entries) {
    self->recorded += points;
    self->extra += points - entries;
    Py_ssize_t waiting = PyObject_Size(self->entries);
    if (waiting < 0) return -1;
    if (waiting + self->extra >= self->flush_lines) {
        PyObject *result = PyObject_CallNoArgs(self->when_full);
        if (result == NULL) return -1;
        Py_DECREF(result);
    }
    return 0;
}

static int queue(Pending *self, PyObject *entry) {
    if (entry == NULL) return -1;
    PyObject *result = PyObject_CallOneArg(self->append, entry);
    Py_DECREF(entry);
    if (result == NULL) return -1;
    Py_DECREF(result);
    return 0;
}

/* (measurement, fields copy, tags copy or None, time_ns): what `Recorder.record` queues. */
static PyObject *point(PyObject *measurement, PyObject *fields, PyObject *tags, long long ns) {
    PyObject *copy = PyDict_Copy(fields);
    if (copy == NULL) return NULL;
    PyObject *tag_copy = tags != NULL ? PyDict_Copy(tags) : Py_NewRef(Py_None);
    if (tag_copy == NULL) {
        Py_DECREF(copy);
        return NULL;
    }
    PyObject *time_ns = PyLong_FromLongLong(ns);
    if (time_ns == NULL) {
        Py_DECREF(copy);
        Py_DECREF(tag_copy);
        return NULL;
    }
    PyObject *entry = PyTuple_Pack(4, measurement, copy, tag_copy, time_ns);
    Py_DECREF(copy);
    Py_DECREF(tag_copy);
    Py_DECREF(time_ns);
    return entry;
}

static PyObject *Pending_put(Pending *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "put(measurement, fields, tags)");
        return NULL;
    }
    PyObject *measurement = args[0], *fields = args[1], *tags = args[2];
    if (self->closed || !PyDict_CheckExact(fields) ||
        (tags != Py_None && !PyDict_CheckExact(tags)) ||
        !member(self->measurements, measurement) || !plain_numbers(fields))
        Py_RETURN_FALSE;
    int has_tags = tags != Py_None && PyDict_GET_SIZE(tags) > 0;
    if (queue(self, point(measurement, fields, has_tags ? tags : NULL, stamp(self, 1))) < 0 ||
        counted(self, 1, 1) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

/* A new tuple of the first `count` items of a list or tuple. */
static PyObject *first_items(PyObject *sequence, Py_ssize_t count) {
    PyObject *items = PyTuple_New(count);
    if (items == NULL) return NULL;
    for (Py_ssize_t i = 0; i < count; ++i)
        PyTuple_SET_ITEM(items, i, Py_NewRef(PySequence_Fast_GET_ITEM(sequence, i)));
    return items;
}

static int list_or_tuple(PyObject *object) {
    return PyList_CheckExact(object) || PyTuple_CheckExact(object);
}

/* The _Series entry: ((measurement, (field, *common), tag), values, tag values, common values,
 * first time_ns). */
static PyObject *series(Pending *self, PyObject *const *args, Py_ssize_t count, long long ns) {
    PyObject *measurement = args[0], *field = args[1], *values = args[2], *tag = args[3];
    PyObject *tag_values = args[4], *common = args[5];
    Py_ssize_t common_count = common == Py_None ? 0 : PyDict_GET_SIZE(common);
    PyObject *names = PyTuple_New(1 + common_count);
    PyObject *common_values = PyTuple_New(common_count);
    PyObject *shape = NULL, *items = NULL, *result = NULL;
    if (names == NULL || common_values == NULL) goto done;
    PyTuple_SET_ITEM(names, 0, Py_NewRef(field));
    Py_ssize_t position = 0, index = 0;
    PyObject *key, *value;
    while (common != Py_None && PyDict_Next(common, &position, &key, &value)) {
        PyTuple_SET_ITEM(names, 1 + index, Py_NewRef(key));
        PyTuple_SET_ITEM(common_values, index, Py_NewRef(value));
        ++index;
    }
    shape = PyTuple_Pack(3, measurement, names, tag);
    if (shape == NULL) goto done;
    items = PyTuple_New(5);
    if (items == NULL) goto done;
    PyTuple_SET_ITEM(items, 0, Py_NewRef(shape));
    PyObject *parts[4] = {first_items(values, count), first_items(tag_values, count),
                          Py_NewRef(common_values), PyLong_FromLongLong(ns)};
    for (int i = 0; i < 4; ++i) PyTuple_SET_ITEM(items, 1 + i, parts[i]);
    for (int i = 0; i < 4; ++i)
        if (parts[i] == NULL) goto done;
    PyObject *call_args = PyTuple_Pack(1, items);
    if (call_args == NULL) goto done;
    /* tuple.__new__(_Series, items): the namedtuple without its Python constructor */
    result = PyTuple_Type.tp_new((PyTypeObject *)self->series_type, call_args, NULL);
    Py_DECREF(call_args);
done:
    Py_XDECREF(names);
    Py_XDECREF(common_values);
    Py_XDECREF(shape);
    Py_XDECREF(items);
    return result;
}

static PyObject *Pending_put_series(Pending *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "put_series(measurement, field, values, tag, tag_values, common, head)");
        return NULL;
    }
    PyObject *measurement = args[0], *field = args[1], *values = args[2];
    PyObject *tag_values = args[4], *common = args[5], *head = args[6];
    if (self->closed || !list_or_tuple(values) || !list_or_tuple(tag_values))
        Py_RETURN_FALSE;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(values);
    if (PySequence_Fast_GET_SIZE(tag_values) < count) count = PySequence_Fast_GET_SIZE(tag_values);
    if (count == 0 || !member(self->measurements, measurement) ||
        member(self->observed, measurement))
        Py_RETURN_FALSE;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(values); ++i)
        if (!PyFloat_CheckExact(PySequence_Fast_GET_ITEM(values, i))) Py_RETURN_FALSE;
    if (common != Py_None) {
        if (!PyDict_CheckExact(common) || !plain_numbers(common)) Py_RETURN_FALSE;
        int repeated = PyDict_Contains(common, field);
        if (repeated != 0) {
            PyErr_Clear();
            Py_RETURN_FALSE;
        }
    }
    PyObject *head_measurement = NULL, *head_fields = NULL;
    if (head != Py_None) {
        if (!PyTuple_CheckExact(head) || PyTuple_GET_SIZE(head) != 2) Py_RETURN_FALSE;
        head_measurement = PyTuple_GET_ITEM(head, 0);
        head_fields = PyTuple_GET_ITEM(head, 1);
        if (!PyDict_CheckExact(head_fields) || !member(self->measurements, head_measurement) ||
            !plain_numbers(head_fields))
            Py_RETURN_FALSE;
    }
    long long first = stamp(self, head_fields != NULL ? count + 1 : count);
    if (head_fields != NULL) {
        if (queue(self, point(head_measurement, head_fields, NULL, first)) < 0 ||
            counted(self, 1, 1) < 0)
            return NULL;
        ++first;
    }
    if (queue(self, series(self, args, count, first)) < 0 || counted(self, count, 1) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

static PyObject *Pending_stamp(Pending *self, PyObject *args) {
    Py_ssize_t count = 1;
    if (!PyArg_ParseTuple(args, "|n:stamp", &count)) return NULL;
    if (count < 1) {
        PyErr_SetString(PyExc_ValueError, "stamp() of fewer than one point");
        return NULL;
    }
    return PyLong_FromLongLong(stamp(self, count));
}

static PyObject *Pending_add(Pending *self, PyObject *args) {
    PyObject *entry;
    Py_ssize_t points = 1;
    if (!PyArg_ParseTuple(args, "O|n:add", &entry, &points)) return NULL;
    if (queue(self, Py_NewRef(entry)) < 0 || counted(self, points, 1) < 0) return NULL;
    Py_RETURN_NONE;
}

static int Pending_init(Pending *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"entries", "measurements", "observed", "flush_lines", "when_full",
                            "series_type", NULL};
    PyObject *entries, *measurements, *observed, *when_full, *series_type;
    Py_ssize_t flush_lines;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO!O!nOO!:PendingPoints", names, &entries,
                                     &PyFrozenSet_Type, &measurements, &PyFrozenSet_Type,
                                     &observed, &flush_lines, &when_full, &PyType_Type,
                                     &series_type))
        return -1;
    if (!PyType_IsSubtype((PyTypeObject *)series_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "series_type must be a tuple subclass");
        return -1;
    }
    PyObject *append = PyObject_GetAttrString(entries, "append");
    if (append == NULL) return -1;
    Py_XSETREF(self->entries, Py_NewRef(entries));
    Py_XSETREF(self->append, append);
    Py_XSETREF(self->measurements, Py_NewRef(measurements));
    Py_XSETREF(self->observed, Py_NewRef(observed));
    Py_XSETREF(self->when_full, Py_NewRef(when_full));
    Py_XSETREF(self->series_type, Py_NewRef(series_type));
    self->flush_lines = flush_lines;
    return 0;
}

static PyObject *Pending_get_entries(Pending *self, void *closure) {
    return Py_NewRef(self->entries);
}

static int Pending_set_entries(Pending *self, PyObject *entries, void *closure) {
    if (entries == NULL) {
        PyErr_SetString(PyExc_AttributeError, "entries cannot be deleted");
        return -1;
    }
    PyObject *append = PyObject_GetAttrString(entries, "append");
    if (append == NULL) return -1;
    Py_SETREF(self->entries, Py_NewRef(entries));
    Py_SETREF(self->append, append);
    return 0;
}

static int Pending_traverse(Pending *self, visitproc visit, void *arg) {
    Py_VISIT(self->entries);
    Py_VISIT(self->append);
    Py_VISIT(self->when_full);
    Py_VISIT(self->series_type);
    return 0;
}

static int Pending_clear(Pending *self) {
    Py_CLEAR(self->entries);
    Py_CLEAR(self->append);
    Py_CLEAR(self->measurements);
    Py_CLEAR(self->observed);
    Py_CLEAR(self->when_full);
    Py_CLEAR(self->series_type);
    return 0;
}

static void Pending_dealloc(Pending *self) {
    PyObject_GC_UnTrack(self);
    Pending_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Pending_methods[] = {
    {"put", (PyCFunction)(void (*)(void))Pending_put, METH_FASTCALL,
     "put(measurement, fields, tags) -> bool: the point queued, stamped now, when its fields "
     "are plain numbers of a known measurement; False (nothing done) otherwise"},
    {"put_series", (PyCFunction)(void (*)(void))Pending_put_series, METH_FASTCALL,
     "put_series(measurement, field, values, tag, tag_values, common, head) -> bool: "
     "record_series' points queued (the head's first) when all are plain and the series is "
     "not observed; False (nothing done) otherwise"},
    {"stamp", (PyCFunction)Pending_stamp, METH_VARARGS,
     "stamp(count=1) -> int: the first of count strictly increasing timestamps (ns)"},
    {"add", (PyCFunction)Pending_add, METH_VARARGS,
     "add(entry, points=1): queue an entry holding that many points"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Pending_members[] = {
    {"last_ns", T_LONGLONG, offsetof(Pending, last_ns), 0, "the last timestamp handed out"},
    {"recorded", T_PYSSIZET, offsetof(Pending, recorded), 0, "points accepted"},
    {"extra", T_PYSSIZET, offsetof(Pending, extra), 0,
     "points queued beyond one per entry (a series entry holds several)"},
    {"closed", T_BOOL, offsetof(Pending, closed), 0, "put and put_series refuse once set"},
    {"flush_lines", T_PYSSIZET, offsetof(Pending, flush_lines), READONLY,
     "points waiting that wake the flusher"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Pending_getset[] = {
    {"entries", (getter)Pending_get_entries, (setter)Pending_set_entries,
     "the queue (a collections.deque) the flusher drains", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject PendingType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "collector._pending.PendingPoints",
    .tp_doc = "The points waiting for the flusher, with record()'s common cases compiled.",
    .tp_basicsize = sizeof(Pending),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Pending_init,
    .tp_dealloc = (destructor)Pending_dealloc,
    .tp_traverse = (traverseproc)Pending_traverse,
    .tp_clear = (inquiry)Pending_clear,
    .tp_methods = Pending_methods,
    .tp_members = Pending_members,
    .tp_getset = Pending_getset,
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_pending", "The recorder's queue, with record()'s common cases compiled.",
    -1, NULL,
};

PyMODINIT_FUNC PyInit__pending(void) {
    if (PyType_Ready(&PendingType) < 0) return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) return NULL;
    if (PyModule_AddObjectRef(module, "PendingPoints", (PyObject *)&PendingType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
