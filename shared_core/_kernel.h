/* What the compiled kernels (_knn.c, _tfidf.c) share: arrays taken through the buffer protocol,
 * their item types checked (no NumPy C API, so any NumPy version's arrays), and the module's ABI.
 */
#ifndef OMNIROUTE_KERNEL_H
#define OMNIROUTE_KERNEL_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Bumped with any change of a kernel's arguments or results (shared_core/native.py checks it):
   a module left built by an older checkout is then not used. */
#define OMNIROUTE_KERNEL_ABI 1

typedef struct { Py_buffer view; int held; } Buf;

static void release(Buf *b) { if (b->held) { PyBuffer_Release(&b->view); b->held = 0; } }

/* The buffer of `obj`, C-contiguous, of items `code` (struct characters) of `itemsize` bytes;
   TypeError naming `what` otherwise. */
static int get_buffer(PyObject *obj, Buf *b, const char *code, Py_ssize_t itemsize, int writable, const char *what) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &b->view, flags) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous%s buffer", what, writable ? " writable" : "");
        return -1;
    }
    b->held = 1;
    const char *f = b->view.format ? b->view.format : "B";
    if (*f == '@' || *f == '=' || (PY_LITTLE_ENDIAN && *f == '<')) f++;
    if (b->view.itemsize != itemsize || f[0] == '\0' || strchr(code, f[0]) == NULL || f[1] != '\0') {
        PyErr_Format(PyExc_TypeError, "%s has the wrong item type", what);
        release(b);
        return -1;
    }
    return 0;
}

/* The module of `def`, with its ABI as the constant ABI. */
static PyObject *kernel_module(PyModuleDef *def) {
    PyObject *m = PyModule_Create(def);
    if (m != NULL && PyModule_AddIntConstant(m, "ABI", OMNIROUTE_KERNEL_ABI) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

#endif
