/* The bundle's hook dispatch: one hook's parts called in order, each guarded, from C.
 *
 * Lightning calls a callback's hook once per step for each of a few hooks. In Python the
 * bundle's dispatcher is one frame more per hook, and a guarded part's wrapper one more per
 * part; with the cold caches a training step leaves, each frame costs about a microsecond
 * (benchmarks/bench_lightning_parts.py). This type is that dispatcher with no Python frame of
 * its own: what collector/lightning/_guard.py's `dispatcher` does, the same calls in the same
 * order with the same outcome.
 *
 * `Dispatch(calls, report, passthrough)`: `calls` is a tuple of (owner, function, where).
 *   - owner None: `function(*args, **kwargs)`; whatever it raises goes to the caller.
 *   - otherwise: `function(owner, *args, **kwargs)` (a guarded method's inner function); an
 *     Exception it raises is handed to `report(owner, where, exception)` and the next part
 *     runs, except a `passthrough` instance, which goes to the caller as does anything that
 *     is not an Exception (KeyboardInterrupt) and anything `report` raises.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>

#define SMALL_STACK 8

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *calls;       /* tuple of (owner or None, function, where or None) */
    PyObject *report;      /* report(owner, where, exception) */
    PyObject *passthrough; /* exception type(s) never reported */
} Dispatch;

/* The exception raised, normalised, its traceback attached; the error indicator cleared. */
static PyObject *take_exception(void) {
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL && value != NULL) PyException_SetTraceback(value, traceback);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    return value;
}

/* 0 when the part's exception was reported (the next part runs), -1 when it goes on up. */
static int handle_failure(Dispatch *self, PyObject *owner, PyObject *where) {
    if (!PyErr_ExceptionMatches(PyExc_Exception) || PyErr_ExceptionMatches(self->passthrough))
        return -1;
    PyObject *exception = take_exception();
    if (exception == NULL) return -1;
    PyObject *result = PyObject_CallFunctionObjArgs(self->report, owner, where, exception, NULL);
    Py_DECREF(exception);
    if (result == NULL) return -1;
    Py_DECREF(result);
    return 0;
}

static PyObject *Dispatch_vectorcall(
    PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames
) {
    Dispatch *self = (Dispatch *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkwargs = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    Py_ssize_t total = nargs + nkwargs;
    PyObject *small[SMALL_STACK];
    PyObject **stack = small;
    if (total + 1 > SMALL_STACK) {
        stack = PyMem_Malloc((size_t)(total + 1) * sizeof(PyObject *));
        if (stack == NULL) return PyErr_NoMemory();
    }
    if (total > 0) memcpy(stack + 1, args, (size_t)total * sizeof(PyObject *));
    PyObject *calls = self->calls;
    Py_ssize_t count = PyTuple_GET_SIZE(calls);
    PyObject *outcome = Py_None;
    /* a part may drop the bundle's last reference to its own calls (a pickled copy, a test) */
    Py_INCREF(calls);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *call = PyTuple_GET_ITEM(calls, i);
        PyObject *owner = PyTuple_GET_ITEM(call, 0);
        PyObject *function = PyTuple_GET_ITEM(call, 1);
        PyObject *result;
        if (owner == Py_None) {
            result = PyObject_Vectorcall(
                function, stack + 1, (size_t)nargs | PY_VECTORCALL_ARGUMENTS_OFFSET, kwnames
            );
        } else {
            stack[0] = owner;
            result = PyObject_Vectorcall(function, stack, (size_t)(nargs + 1), kwnames);
        }
        if (result != NULL) {
            Py_DECREF(result);
            continue;
        }
        if (owner == Py_None || handle_failure(self, owner, PyTuple_GET_ITEM(call, 2)) < 0) {
            outcome = NULL;
            break;
        }
    }
    Py_DECREF(calls);
    if (stack != small) PyMem_Free(stack);
    if (outcome == NULL) return NULL;
    Py_RETURN_NONE;
}

static int valid_calls(PyObject *calls) {
    if (!PyTuple_Check(calls)) {
        PyErr_SetString(PyExc_TypeError, "calls must be a tuple of (owner, function, where)");
        return 0;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(calls); i++) {
        PyObject *call = PyTuple_GET_ITEM(calls, i);
        if (!PyTuple_CheckExact(call) || PyTuple_GET_SIZE(call) != 3 ||
            !PyCallable_Check(PyTuple_GET_ITEM(call, 1))) {
            PyErr_SetString(PyExc_TypeError, "each call must be (owner, function, where)");
            return 0;
        }
    }
    return 1;
}

static int Dispatch_init(Dispatch *self, PyObject *args, PyObject *kwargs) {
    PyObject *calls, *report, *passthrough;
    static char *keywords[] = {"calls", "report", "passthrough", NULL};
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "OOO:Dispatch", keywords, &calls, &report, &passthrough))
        return -1;
    if (!valid_calls(calls)) return -1;
    if (!PyCallable_Check(report)) {
        PyErr_SetString(PyExc_TypeError, "report must be callable");
        return -1;
    }
    Py_INCREF(calls);
    Py_XSETREF(self->calls, calls);
    Py_INCREF(report);
    Py_XSETREF(self->report, report);
    Py_INCREF(passthrough);
    Py_XSETREF(self->passthrough, passthrough);
    self->vectorcall = Dispatch_vectorcall;
    return 0;
}

static PyObject *Dispatch_get_calls(Dispatch *self, void *closure) {
    if (self->calls == NULL) return PyTuple_New(0);
    Py_INCREF(self->calls);
    return self->calls;
}

static int Dispatch_traverse(Dispatch *self, visitproc visit, void *arg) {
    Py_VISIT(self->calls);
    Py_VISIT(self->report);
    Py_VISIT(self->passthrough);
    return 0;
}

static int Dispatch_clear(Dispatch *self) {
    Py_CLEAR(self->calls);
    Py_CLEAR(self->report);
    Py_CLEAR(self->passthrough);
    return 0;
}

static void Dispatch_dealloc(Dispatch *self) {
    PyObject_GC_UnTrack(self);
    Dispatch_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Dispatch_call(PyObject *callable, PyObject *args, PyObject *kwargs) {
    if (((Dispatch *)callable)->calls == NULL) {
        PyErr_SetString(PyExc_TypeError, "Dispatch was not initialised");
        return NULL;
    }
    return PyVectorcall_Call(callable, args, kwargs);
}

static PyGetSetDef Dispatch_getset[] = {
    {"calls", (getter)Dispatch_get_calls, NULL, "the (owner, function, where) called in order",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject DispatchType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "collector.lightning._dispatch.Dispatch",
    .tp_doc = "One hook's parts called in order, each guarded (collector.lightning._guard).",
    .tp_basicsize = sizeof(Dispatch),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Dispatch, vectorcall),
    .tp_call = Dispatch_call,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Dispatch_init,
    .tp_dealloc = (destructor)Dispatch_dealloc,
    .tp_traverse = (traverseproc)Dispatch_traverse,
    .tp_clear = (inquiry)Dispatch_clear,
    .tp_getset = Dispatch_getset,
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_dispatch", "The bundle's hook dispatch, with no Python frame.", -1,
    NULL,
};

PyMODINIT_FUNC PyInit__dispatch(void) {
    if (PyType_Ready(&DispatchType) < 0) return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) return NULL;
    if (PyModule_AddObjectRef(module, "Dispatch", (PyObject *)&DispatchType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
