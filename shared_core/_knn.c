/* Nearest-neighbour label sums for one query: the compiled form of shared_core.quality.memory's
 * per-group selection (_Search.near, _top, _Group.sums): the same rows, their labels summed alike.
 *
 * label_sums(s, Y0, K, m, top, groups, out): s holds a query's float32 similarities to the
 * memory's first n rows (NaN counts as the least similar); Y0 its float64 labels and K (bool)
 * which are known, both row-major with m columns; top the largest k of any group; groups a tuple
 * of (rows, models, first, k): rows a buffer of ascending int64 row indices the group is labelled
 * on (None: every row), models a buffer of int64 columns (None: every column), first one of them,
 * 1 <= k <= top. For each group, out[j] for each of its models j becomes the sum of Y0[i, j] over
 * the k rows i of `rows` with the largest similarity (equal similarities: lower rows first),
 * added one after another in ascending row order, as the NumPy code's cumulative sum adds them.
 * Malformed arguments raise ValueError/TypeError; nothing is read or written out of bounds.
 */
#include <math.h>

#include "_kernel.h"

/* NaN counts as the least similar value, as -inf does (the NumPy code maps it so). */
static inline float key_of(float v) { return v != v ? -INFINITY : v; }

/* The k-th largest (1-based) of a[0..r), r >= k >= 1, reordering a: Hoare quickselect. */
static float kth_largest(float *a, Py_ssize_t r, Py_ssize_t k) {
    Py_ssize_t lo = 0, hi = r - 1, want = k - 1; /* index in descending order */
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        /* median of three, as the pivot */
        float x = a[lo], y = a[mid], z = a[hi], pivot;
        if (x < y) { if (y < z) pivot = y; else if (x < z) pivot = z; else pivot = x; }
        else { if (x < z) pivot = x; else if (y < z) pivot = z; else pivot = y; }
        Py_ssize_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] > pivot) i++;
            while (a[j] < pivot) j--;
            if (i <= j) { float t = a[i]; a[i] = a[j]; a[j] = t; i++; j--; }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else return a[want];
    }
    return a[want];
}

/* Every STRIDE-th similarity is a sample whose order statistics bound the k-th largest from below. */
#define STRIDE 8


/* Rows of `rows` (None: 0..r-1) at least as similar as a bound below their k-th largest
   similarity, ascending, into picked/values (about 1.5 k of them); all r when fewer pass. */
static Py_ssize_t candidates(const float *s, const int64_t *rows, Py_ssize_t r, Py_ssize_t k,
                             float *scratch, Py_ssize_t *picked, float *values) {
    Py_ssize_t c = 0;
    if (k < r) {
        Py_ssize_t ns = (r + STRIDE - 1) / STRIDE, rank = (3 * k + 2 * STRIDE - 1) / (2 * STRIDE) + 8;
        float bound = -INFINITY;
        if (rank <= ns) {
            for (Py_ssize_t i = 0; i < ns; i++) scratch[i] = key_of(s[rows ? rows[i * STRIDE] : i * STRIDE]);
            bound = kth_largest(scratch, ns, rank);
        }
        for (Py_ssize_t i = 0; i < r; i++) {
            Py_ssize_t row = rows ? rows[i] : i;
            float x = key_of(s[row]);
            if (x >= bound) { picked[c] = row; values[c] = x; c++; }
        }
    }
    if (c < k) {
        c = r;
        for (Py_ssize_t i = 0; i < r; i++) { picked[i] = rows ? rows[i] : i; values[i] = key_of(s[picked[i]]); }
    }
    return c;
}

static PyObject *label_sums(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "label_sums(s, Y0, K, m, top, groups, out) takes 7 arguments");
        return NULL;
    }
    Buf sb = {0}, yb = {0}, kb = {0}, ob = {0};
    Py_ssize_t *rows_memory = NULL;
    PyObject *result = NULL;
    Py_ssize_t m = PyLong_AsSsize_t(args[3]), top = PyLong_AsSsize_t(args[4]);
    if (m < 0 || top < 1) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "m must be >= 0 and top >= 1");
        return NULL;
    }
    PyObject *groups = args[5];
    if (!PyTuple_Check(groups)) {
        PyErr_SetString(PyExc_TypeError, "groups must be a tuple");
        return NULL;
    }
    if (get_buffer(args[0], &sb, "f", 4, 0, "s (float32)") < 0 || get_buffer(args[1], &yb, "d", 8, 0, "Y0 (float64)") < 0
        || get_buffer(args[2], &kb, "?B", 1, 0, "K (bool)") < 0 || get_buffer(args[6], &ob, "d", 8, 1, "out (float64)") < 0) goto done;
    Py_ssize_t n = sb.view.len / (Py_ssize_t)sizeof(float);
    const float *s = (const float *)sb.view.buf;
    const double *Y0 = (const double *)yb.view.buf;
    const unsigned char *K = (const unsigned char *)kb.view.buf;
    double *out = (double *)ob.view.buf;
    if (m > 0 && (yb.view.len / (Py_ssize_t)sizeof(double) / m < n || kb.view.len / m < n)) {
        PyErr_SetString(PyExc_ValueError, "Y0 or K holds fewer rows than s has similarities");
        goto done;
    }
    if (ob.view.len / (Py_ssize_t)sizeof(double) < m) {
        PyErr_SetString(PyExc_ValueError, "out holds fewer than m values");
        goto done;
    }
    /* Five arrays of n: the shared candidates' and a group's rows, a selection's scratch, and the
       candidates' similarities (the rows first: each array stays aligned for its type). */
    size_t room = (size_t)(n > 0 ? n : 1);
    rows_memory = (Py_ssize_t *)PyMem_Malloc(room * (2 * sizeof(Py_ssize_t) + 3 * sizeof(float)));
    if (rows_memory == NULL) { PyErr_NoMemory(); goto done; }
    Py_ssize_t *near_rows = rows_memory, *picked = near_rows + room;
    float *scratch = (float *)(picked + room), *near_values = scratch + room, *values = near_values + room;
    /* The rows near the query for the largest k, shared by every group: a group labelled on most
       rows finds its k nearest among them. */
    Py_ssize_t near = candidates(s, NULL, n, top, scratch, near_rows, near_values);

    for (Py_ssize_t g = 0; g < PyTuple_GET_SIZE(groups); g++) {
        PyObject *group = PyTuple_GET_ITEM(groups, g);
        if (!PyTuple_Check(group) || PyTuple_GET_SIZE(group) != 4) {
            PyErr_SetString(PyExc_TypeError, "each group must be a (rows, models, first, k) tuple");
            goto done;
        }
        Buf rb = {0}, mb = {0};
        const int64_t *rows = NULL, *models = NULL;
        Py_ssize_t r = n, nm = m;
        Py_ssize_t first = PyLong_AsSsize_t(PyTuple_GET_ITEM(group, 2));
        Py_ssize_t k = PyLong_AsSsize_t(PyTuple_GET_ITEM(group, 3));
        if (k < 1 || k > top || first < 0 || first >= m) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "a group's k must be in [1, top] and its first model a column");
            goto done;
        }
        if (PyTuple_GET_ITEM(group, 0) != Py_None) {
            if (get_buffer(PyTuple_GET_ITEM(group, 0), &rb, "lq", 8, 0, "rows (int64)") < 0) goto done;
            rows = (const int64_t *)rb.view.buf;
            r = rb.view.len / (Py_ssize_t)sizeof(int64_t);
        }
        if (PyTuple_GET_ITEM(group, 1) != Py_None) {
            if (get_buffer(PyTuple_GET_ITEM(group, 1), &mb, "lq", 8, 0, "models (int64)") < 0) { release(&rb); goto done; }
            models = (const int64_t *)mb.view.buf;
            nm = mb.view.len / (Py_ssize_t)sizeof(int64_t);
        }
        int bad = 0;
        for (Py_ssize_t i = 0; i < r && rows; i++) bad |= rows[i] < 0 || rows[i] >= n || (i && rows[i] <= rows[i - 1]);
        for (Py_ssize_t j = 0; j < nm && models; j++) bad |= models[j] < 0 || models[j] >= m;
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "a group's rows must ascend within the memory and its models be columns");
            release(&rb); release(&mb);
            goto done;
        }
        /* The group's candidates: the shared near rows labelled for it, or, when fewer than k of
           those are (a small profile, sparse feedback), the near ones among its own rows. */
        Py_ssize_t c = 0;
        const Py_ssize_t *cand_rows = near_rows;
        const float *cand_values = near_values;
        if (rows == NULL) {
            c = near;
        } else {
            for (Py_ssize_t i = 0; i < near; i++)
                if (K[near_rows[i] * m + first]) { picked[c] = near_rows[i]; values[c] = near_values[i]; c++; }
            if (c < k) c = candidates(s, rows, r, k, scratch, picked, values);
            cand_rows = picked;
            cand_values = values;
        }
        /* The k-th largest among them; every candidate above it is taken, and of those equal to
           it, the lowest rows that fill k. */
        float v = -INFINITY;
        Py_ssize_t equal_room = c;
        if (k < c) {
            memcpy(scratch, cand_values, (size_t)c * sizeof(float));
            v = kth_largest(scratch, c, k);
            Py_ssize_t above = 0;
            for (Py_ssize_t i = 0; i < c; i++) above += cand_values[i] > v;
            equal_room = k - above;
        }
        /* -0.0 + x is x for every x (signed zeros included): the sums are those of the rows added
           one after another from the first, as the NumPy code's cumulative sum makes them. */
        for (Py_ssize_t j = 0; j < nm; j++) out[models ? models[j] : j] = -0.0;
        for (Py_ssize_t i = 0; i < c; i++) {
            float x = cand_values[i];
            if (x < v) continue;
            if (x == v) {
                if (equal_room == 0) continue;
                equal_room--;
            }
            const double *y = Y0 + cand_rows[i] * m;
            if (models) for (Py_ssize_t j = 0; j < nm; j++) out[models[j]] += y[models[j]];
            else for (Py_ssize_t j = 0; j < nm; j++) out[j] += y[j];
        }
        release(&rb);
        release(&mb);
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyMem_Free(rows_memory);
    release(&sb);
    release(&yb);
    release(&kb);
    release(&ob);
    return result;
}

static PyMethodDef methods[] = {
    {"label_sums", (PyCFunction)(void (*)(void))label_sums, METH_FASTCALL,
     "label_sums(s, Y0, K, m, top, groups, out): per group, its models' label sums over its k most similar rows."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_knn", "Nearest-neighbour label sums (C).", -1, methods};

PyMODINIT_FUNC PyInit__knn(void) { return kernel_module(&module); }
