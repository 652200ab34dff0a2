/* L2 norms of CPU gradients read straight from their memory, in one call.
 *
 * In a training step the per-parameter `float(torch.linalg.vector_norm(grad))` costs more in
 * Python and torch's dispatcher than in arithmetic (the interpreter runs cold after the
 * backward pass). This reads each gradient's buffer and sums its squares in double precision.
 * It handles only what it can read exactly: a plain torch.Tensor, strided, contiguous, on the
 * CPU, float32 or float64; a parameter without a gradient has None in its place. Anything
 * else (a sparse gradient, another dtype or device, a tensor subclass) makes the whole call
 * return None, before any sum, and the caller takes torch's path.
 *
 * torch is never imported here: gradients.py hands over the objects to compare with
 * (configure), so this builds against CPython alone.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

/* Above this many values the sum runs with the GIL released (~1 ms and more). */
#define RELEASE_GIL_AT ((Py_ssize_t)1 << 20)

/* target_clones picks the AVX2 build at load time through an ifunc: glibc's loader has them */
#if defined(__x86_64__) && defined(__GLIBC__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define VECTORIZED __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef VECTORIZED
#define VECTORIZED
#endif

static PyObject *tensor_type, *float32, *float64, *strided;
static PyObject *s_grad, *s_dtype, *s_layout, *s_is_cpu, *s_is_contiguous, *s_data_ptr, *s_numel;

/* LANES independent sums: the additions do not wait on each other, and the compiler keeps
 * them in vector registers (eight was latency-bound: 2 values a cycle). */
#define LANES 32

/* Read ahead by this many bytes: in a training step the gradients are not in the nearest
 * caches, and a page's first touch waits for its address translation, which the hardware
 * prefetcher does not start across a page boundary. 1 KiB ahead took the in-step sums of a
 * 330 KB model ~11% faster than none (256-512 B and 2-4 KiB ahead were slower). */
#define PREFETCH_BYTES 1024

static double sum_lanes(const double *lanes, double rest) {
    double total = rest;
    for (int k = 0; k < LANES; ++k) total += lanes[k];
    return total;
}

VECTORIZED static double sum_squares_f32(const float *x, Py_ssize_t n) {
    double lanes[LANES] = {0};
    Py_ssize_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        __builtin_prefetch((const char *)(x + i) + PREFETCH_BYTES);
        for (int k = 0; k < LANES; ++k) lanes[k] += (double)x[i + k] * (double)x[i + k];
    }
    double rest = 0;
    for (; i < n; ++i) rest += (double)x[i] * (double)x[i];
    return sum_lanes(lanes, rest);
}

VECTORIZED static double sum_squares_f64(const double *x, Py_ssize_t n) {
    double lanes[LANES] = {0};
    Py_ssize_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        __builtin_prefetch((const char *)(x + i) + PREFETCH_BYTES);
        for (int k = 0; k < LANES; ++k) lanes[k] += x[i + k] * x[i + k];
    }
    double rest = 0;
    for (; i < n; ++i) rest += x[i] * x[i];
    return sum_lanes(lanes, rest);
}

typedef struct {
    const void *data;
    Py_ssize_t count;
    int is_double;
    int missing; /* the parameter has no gradient */
} Buffer;

/* 1: obj.name is expected; 0: it is not; -1: an error is set. */
static int attribute_is(PyObject *obj, PyObject *name, PyObject *expected) {
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL) return -1;
    int same = value == expected;
    Py_DECREF(value);
    return same;
}

/* 1: obj.name() returned True; 0: it did not; -1: an error is set. */
static int method_is_true(PyObject *obj, PyObject *name) {
    PyObject *value = PyObject_CallMethodNoArgs(obj, name);
    if (value == NULL) return -1;
    int same = value == Py_True;
    Py_DECREF(value);
    return same;
}

/* 1: `grad` is readable and `buffer` describes it; 0: it is not; -1: an error is set. */
static int check_readable(PyObject *grad, Buffer *buffer) {
    if ((PyObject *)Py_TYPE(grad) != tensor_type) return 0;
    PyObject *dtype = PyObject_GetAttr(grad, s_dtype);
    if (dtype == NULL) return -1;
    buffer->is_double = dtype == float64;
    int known = dtype == float32 || dtype == float64;
    Py_DECREF(dtype);
    if (!known) return 0;
    int ok = attribute_is(grad, s_layout, strided);
    if (ok == 1) ok = attribute_is(grad, s_is_cpu, Py_True);
    if (ok == 1) ok = method_is_true(grad, s_is_contiguous);
    if (ok != 1) return ok;
    PyObject *count = PyObject_CallMethodNoArgs(grad, s_numel);
    if (count == NULL) return -1;
    buffer->count = PyLong_AsSsize_t(count);
    Py_DECREF(count);
    if (buffer->count < 0) return PyErr_Occurred() ? -1 : 0;
    PyObject *address = PyObject_CallMethodNoArgs(grad, s_data_ptr);
    if (address == NULL) return -1;
    buffer->data = PyLong_AsVoidPtr(address);
    Py_DECREF(address);
    if (PyErr_Occurred()) return -1;
    return buffer->data != NULL || buffer->count == 0;
}

/* check_readable, where a tensor that raises (one without storage: data_ptr() refuses) is
 * one torch's path reads, or reports: 1, 0, or -1 for what is not an Exception. */
static int readable(PyObject *grad, Buffer *buffer) {
    int ok = check_readable(grad, buffer);
    if (ok < 0 && PyErr_ExceptionMatches(PyExc_Exception)) {
        PyErr_Clear();
        return 0;
    }
    return ok;
}

static PyObject *cpu_norms(PyObject *module, PyObject *parameters) {
    if (tensor_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_gradnorms.configure() was not called");
        return NULL;
    }
    /* a snapshot: a `grad` getter written in Python could change the caller's list */
    PyObject *items = PySequence_Tuple(parameters);
    if (items == NULL) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    PyObject **grads = PyMem_Calloc(n ? n : 1, sizeof(PyObject *));
    Buffer *buffers = PyMem_Calloc(n ? n : 1, sizeof(Buffer));
    double *squares = PyMem_Calloc(n ? n : 1, sizeof(double));
    PyObject *result = NULL;
    if (grads == NULL || buffers == NULL || squares == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < n; ++i) {
        /* the gradients are held until the sums are done: their memory stays theirs */
        grads[i] = PyObject_GetAttr(PyTuple_GET_ITEM(items, i), s_grad);
        if (grads[i] == NULL) goto done;
        if (grads[i] == Py_None) {
            buffers[i].missing = 1;
            continue;
        }
        int ok = readable(grads[i], &buffers[i]);
        if (ok < 0) goto done;
        if (ok == 0) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        total += buffers[i].count;
    }
    /* a large model's sums take milliseconds: other threads may run meanwhile */
    PyThreadState *released = total >= RELEASE_GIL_AT ? PyEval_SaveThread() : NULL;
    for (Py_ssize_t i = 0; i < n; ++i) {
        squares[i] = buffers[i].is_double
                         ? sum_squares_f64((const double *)buffers[i].data, buffers[i].count)
                         : sum_squares_f32((const float *)buffers[i].data, buffers[i].count);
    }
    if (released != NULL) PyEval_RestoreThread(released);
    result = PyList_New(n);
    if (result == NULL) goto done;
    for (Py_ssize_t i = 0; i < n; ++i) {
        PyObject *norm =
            buffers[i].missing ? Py_NewRef(Py_None) : PyFloat_FromDouble(sqrt(squares[i]));
        if (norm == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i, norm);
    }
done:
    if (grads != NULL)
        for (Py_ssize_t i = 0; i < n; ++i) Py_XDECREF(grads[i]);
    PyMem_Free(grads);
    PyMem_Free(buffers);
    PyMem_Free(squares);
    Py_DECREF(items);
    return result;
}

/* (total, max, min) of per-parameter norms: the norm over all of them (scaled by the largest,
 * so squares of large norms do not overflow), the largest and the smallest; all NaN when one
 * is NaN. The same as gradients.summary() in Python, in one call instead of five. */
static PyObject *norm_summary(PyObject *module, PyObject *values) {
    if (!PyList_CheckExact(values)) {
        PyErr_SetString(PyExc_TypeError, "norm_summary() takes a list of floats");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(values);
    if (n == 0) {
        PyErr_SetString(PyExc_ValueError, "norm_summary() of no norms");
        return NULL;
    }
    double largest = -INFINITY, smallest = INFINITY;
    int nan_seen = 0;
    for (Py_ssize_t i = 0; i < n; ++i) {
        PyObject *item = PyList_GET_ITEM(values, i);
        if (!PyFloat_CheckExact(item)) {
            PyErr_SetString(PyExc_TypeError, "norm_summary() takes a list of floats");
            return NULL;
        }
        double value = PyFloat_AS_DOUBLE(item);
        if (isnan(value)) nan_seen = 1;
        if (value > largest) largest = value;
        if (value < smallest) smallest = value;
    }
    if (nan_seen) return Py_BuildValue("(ddd)", (double)NAN, (double)NAN, (double)NAN);
    double scale = fmax(fabs(largest), fabs(smallest));
    double total;
    if (isinf(scale) || scale == 0.0) {
        total = scale;
    } else {
        double squares = 0.0;
        for (Py_ssize_t i = 0; i < n; ++i) {
            double ratio = PyFloat_AS_DOUBLE(PyList_GET_ITEM(values, i)) / scale;
            squares += ratio * ratio;
        }
        total = scale * sqrt(squares);
    }
    return Py_BuildValue("(ddd)", total, largest, smallest);
}

/* The names of the points a sample of norms makes (collector/schema.py's gradient and
 * gradient_layer measurements; a test holds this path to the Python one's points). */
static PyObject *s_gradient, *s_gradient_layer, *s_norm, *s_layer, *s_total_norm, *s_max_norm,
    *s_min_norm, *s_step;

/* queue_norms(parameters, names, layers, step, put_series): the norms, their summary and the
 * points they make, handed to the recorder's queue in one call from the training step: the
 * `gradient` point (total, max and min norm, step) and a `gradient_layer` point per parameter
 * of the first `layers`, as put_series(measurement, field, values, tag, tag_values, common,
 * head) takes them; a parameter without a gradient is left out, as ParameterNorms.values()
 * leaves it. Returns what put_series returns (True: queued), or None before calling it when
 * the norms need torch's path, no parameter has a gradient or no layer is wanted: the
 * caller's Python path records those. */
static PyObject *queue_norms(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyList_CheckExact(args[1]) || !PyFloat_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "queue_norms(parameters, names: list, layers: int, step: float, "
                        "put_series)");
        return NULL;
    }
    Py_ssize_t layers = PyLong_AsSsize_t(args[2]);
    if (layers == -1 && PyErr_Occurred()) return NULL;
    PyObject *step = args[3], *put_series = args[4];
    PyObject *all_norms = cpu_norms(module, args[0]);
    if (all_norms == NULL || all_norms == Py_None) return all_norms;
    if (PyList_GET_SIZE(args[1]) != PyList_GET_SIZE(all_norms)) {
        Py_DECREF(all_norms);
        PyErr_SetString(PyExc_ValueError, "queue_norms(): one name per parameter");
        return NULL;
    }
    PyObject *norms = Py_NewRef(all_norms);
    PyObject *summary = NULL, *head_fields = NULL, *common = NULL, *values = NULL;
    PyObject *tag_values = NULL, *head = NULL, *result = NULL;
    /* the parameters with a gradient, in order, as ParameterNorms.values() keeps them */
    Py_ssize_t count = PyList_GET_SIZE(norms), kept = 0;
    for (Py_ssize_t i = 0; i < count; ++i) kept += PyList_GET_ITEM(norms, i) != Py_None;
    PyObject *names = Py_NewRef(args[1]);
    if (kept < count) {
        PyObject *found = PyList_New(kept), *found_names = PyList_New(kept);
        Py_SETREF(names, found_names);
        Py_SETREF(norms, found);
        if (found == NULL || found_names == NULL) goto done;
        for (Py_ssize_t i = 0, j = 0; i < count; ++i) {
            PyObject *norm = PyList_GET_ITEM(all_norms, i);
            if (norm == Py_None) continue;
            PyList_SET_ITEM(found, j, Py_NewRef(norm));
            PyList_SET_ITEM(found_names, j, Py_NewRef(PyList_GET_ITEM(args[1], i)));
            ++j;
        }
    }
    if (layers > kept) layers = kept;
    if (layers <= 0) { /* no gradient at all, or no layer wanted: the Python path's points */
        result = Py_NewRef(Py_None);
        goto done;
    }
    summary = norm_summary(module, norms);
    if (summary == NULL) goto done;
    head_fields = PyDict_New();
    common = PyDict_New();
    if (head_fields == NULL || common == NULL ||
        PyDict_SetItem(head_fields, s_total_norm, PyTuple_GET_ITEM(summary, 0)) < 0 ||
        PyDict_SetItem(head_fields, s_max_norm, PyTuple_GET_ITEM(summary, 1)) < 0 ||
        PyDict_SetItem(head_fields, s_min_norm, PyTuple_GET_ITEM(summary, 2)) < 0 ||
        PyDict_SetItem(head_fields, s_step, step) < 0 || PyDict_SetItem(common, s_step, step) < 0)
        goto done;
    values = PyList_GetSlice(norms, 0, layers);
    tag_values = PyList_GetSlice(names, 0, layers);
    head = PyTuple_Pack(2, s_gradient, head_fields);
    if (values == NULL || tag_values == NULL || head == NULL) goto done;
    PyObject *call[7] = {s_gradient_layer, s_norm, values, s_layer, tag_values, common, head};
    result = PyObject_Vectorcall(put_series, call, 7, NULL);
done:
    Py_DECREF(all_norms);
    Py_XDECREF(norms);
    Py_XDECREF(names);
    Py_XDECREF(summary);
    Py_XDECREF(head_fields);
    Py_XDECREF(common);
    Py_XDECREF(values);
    Py_XDECREF(tag_values);
    Py_XDECREF(head);
    return result;
}

static PyObject *configure(PyObject *module, PyObject *args) {
    PyObject *types[4];
    if (!PyArg_ParseTuple(args, "OOOO:configure", &types[0], &types[1], &types[2], &types[3]))
        return NULL;
    Py_XSETREF(tensor_type, Py_NewRef(types[0]));
    Py_XSETREF(float32, Py_NewRef(types[1]));
    Py_XSETREF(float64, Py_NewRef(types[2]));
    Py_XSETREF(strided, Py_NewRef(types[3]));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "configure(torch.Tensor, torch.float32, torch.float64, torch.strided)"},
    {"cpu_norms", cpu_norms, METH_O,
     "cpu_norms(parameters) -> list[float | None] | None: the L2 norm of each parameter's "
     "gradient (None: it has none), or None when one is not a contiguous float32/float64 CPU "
     "tensor"},
    {"queue_norms", (PyCFunction)(void (*)(void))queue_norms, METH_FASTCALL,
     "queue_norms(parameters, names, layers, step, put_series) -> bool | None: the norms' "
     "gradient and gradient_layer points handed to put_series (its answer), or None where "
     "the Python path must record them"},
    {"norm_summary", norm_summary, METH_O,
     "norm_summary(values) -> (total, max, min): the norm over all of a list of per-parameter "
     "norms, the largest and the smallest; all NaN when one is NaN"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_gradnorms", "L2 norms of CPU gradients read from their memory.",
    -1, methods,
};

PyMODINIT_FUNC PyInit__gradnorms(void) {
    if ((s_grad = PyUnicode_InternFromString("grad")) == NULL ||
        (s_dtype = PyUnicode_InternFromString("dtype")) == NULL ||
        (s_layout = PyUnicode_InternFromString("layout")) == NULL ||
        (s_is_cpu = PyUnicode_InternFromString("is_cpu")) == NULL ||
        (s_is_contiguous = PyUnicode_InternFromString("is_contiguous")) == NULL ||
        (s_data_ptr = PyUnicode_InternFromString("data_ptr")) == NULL ||
        (s_numel = PyUnicode_InternFromString("numel")) == NULL ||
        (s_gradient = PyUnicode_InternFromString("gradient")) == NULL ||
        (s_gradient_layer = PyUnicode_InternFromString("gradient_layer")) == NULL ||
        (s_norm = PyUnicode_InternFromString("norm")) == NULL ||
        (s_layer = PyUnicode_InternFromString("layer")) == NULL ||
        (s_total_norm = PyUnicode_InternFromString("total_norm")) == NULL ||
        (s_max_norm = PyUnicode_InternFromString("max_norm")) == NULL ||
        (s_min_norm = PyUnicode_InternFromString("min_norm")) == NULL ||
        (s_step = PyUnicode_InternFromString("step")) == NULL)
        return NULL;
    return PyModule_Create(&module_def);
}
