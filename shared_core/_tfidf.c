/* One prompt's TF-IDF row projected on the SVD directions: the compiled form of shared_core.embed's
 * one-text path (WordNgramCounter._count_one, then TfidfSvdEmbedder._tfidf for one word n-gram kind
 * without normalisation, then _project's einsum), the same float32 row to the bit.
 *
 * project_one(ids, unigram, keys, key_columns, offsets, lo, hi, idf, log_table, projection, out)
 *   ids         int64 word ids of the text (one-character words dropped), each in [0, R), R = len(unigram)
 *   unigram     int64 (R,): word id -> its unigram column, or -1
 *   keys        int64 (K,): n-gram keys (n >= 2), ascending; key_columns int64 (K,): each key's column, or -1
 *   offsets     int64 (>= hi + 1,): offsets[n] is added to an n-gram's key
 *   lo, hi      the n-gram range, 1 <= lo <= hi
 *   idf         float32 (V,): the IDF weight of each of the V columns
 *   log_table   float32 (T,): log_table[c] = log(c) + 1 for a count c, as NumPy computes it in float32
 *   projection  float32, C-contiguous (V, dim); out: writable float32 (dim,)
 * An n-gram of ids (a1 ... an) has the key ((a1*R + a2)*R + ...)*R + an + offsets[n] (wrapping, as
 * NumPy's int64 does). Each distinct column c found, with count k, weighs w = log_table[k] * idf[c];
 * out[j] = sum over the columns in ascending order of w * projection[c, j], each product and sum
 * rounded to float32 (no fused multiply-add: built with -ffp-contract=off), starting from 0.
 * Returns 0 when out holds the row; when some count k is >= T, returns the largest such k and leaves
 * out untouched (the caller grows the table). Malformed arguments raise ValueError/TypeError;
 * nothing is read or written out of bounds.
 */
#include "_kernel.h"

static inline Py_ssize_t count_of(const Buf *b) { return b->view.len / b->view.itemsize; }

enum { LANES = 8 };

/* at[l] = the first index i in [0, k) with keys[i] >= want[l], or k, for each l < LANES: branch-free
   halving, the searches in lockstep so that their memory loads overlap (a lone search waits on
   each load in turn: most of the time of a prompt's bigram look-ups). */
static void lower_bounds(const int64_t *keys, Py_ssize_t k, const int64_t *want, Py_ssize_t *at) {
    const int64_t *base[LANES];
    for (int l = 0; l < LANES; l++) base[l] = keys;
    Py_ssize_t n = k;
    while (n > 1) {
        Py_ssize_t half = n / 2;
        for (int l = 0; l < LANES; l++) base[l] += (Py_ssize_t)(base[l][half - 1] < want[l]) * half;
        n -= half;
    }
    for (int l = 0; l < LANES; l++) at[l] = (base[l] - keys) + (n == 1 && *base[l] < want[l]);
}

static inline int ctz64(uint64_t x) {
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_ctzll(x);
#else
    int i = 0;
    while (!(x & 1)) { x >>= 1; i++; }
    return i;
#endif
}

enum { N_ARGS = 11 };

static PyObject *project_one(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != N_ARGS) {
        PyErr_SetString(PyExc_TypeError, "project_one(ids, unigram, keys, key_columns, offsets, lo, hi, idf, "
                                         "log_table, projection, out) takes 11 arguments");
        return NULL;
    }
    Buf ib = {0}, ub = {0}, kb = {0}, cb = {0}, fb = {0}, wb = {0}, tb = {0}, pb = {0}, ob = {0};
    uint64_t *seen = NULL;
    Py_ssize_t *counts = NULL;
    PyObject *result = NULL;
    Py_ssize_t lo = PyLong_AsSsize_t(args[5]);
    Py_ssize_t hi = lo == -1 && PyErr_Occurred() ? -1 : PyLong_AsSsize_t(args[6]);
    if (hi == -1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return NULL;
        PyErr_Clear();
        hi = -1;  /* out of range: reported below as a ValueError */
    }
    if (lo < 1 || hi < lo) {
        PyErr_SetString(PyExc_ValueError, "the n-gram range must have 1 <= lo <= hi");
        return NULL;
    }
    if (get_buffer(args[0], &ib, "lq", 8, 0, "ids") < 0 || get_buffer(args[1], &ub, "lq", 8, 0, "unigram") < 0
        || get_buffer(args[2], &kb, "lq", 8, 0, "keys") < 0 || get_buffer(args[3], &cb, "lq", 8, 0, "key_columns") < 0
        || get_buffer(args[4], &fb, "lq", 8, 0, "offsets") < 0 || get_buffer(args[7], &wb, "f", 4, 0, "idf") < 0
        || get_buffer(args[8], &tb, "f", 4, 0, "log_table") < 0
        || get_buffer(args[9], &pb, "f", 4, 0, "projection") < 0 || get_buffer(args[10], &ob, "f", 4, 1, "out") < 0)
        goto done;
    const int64_t *ids = ib.view.buf, *unigram = ub.view.buf, *keys = kb.view.buf, *key_columns = cb.view.buf;
    const int64_t *offsets = fb.view.buf;
    const float *idf = wb.view.buf, *log_table = tb.view.buf, *projection = pb.view.buf;
    float *out = ob.view.buf;
    Py_ssize_t n_ids = count_of(&ib), radix = count_of(&ub), n_keys = count_of(&kb);
    Py_ssize_t width = count_of(&wb), n_logs = count_of(&tb), n_proj = count_of(&pb), dim = count_of(&ob);
    if (count_of(&cb) != n_keys) {
        PyErr_SetString(PyExc_ValueError, "keys and key_columns differ in length");
        goto done;
    }
    if (count_of(&fb) <= hi) {
        PyErr_SetString(PyExc_ValueError, "offsets must hold hi + 1 values");
        goto done;
    }
    if (dim == 0 ? n_proj != 0 : (n_proj % dim != 0 || n_proj / dim != width)) {
        PyErr_SetString(PyExc_ValueError, "projection must hold len(idf) rows of len(out) values");
        goto done;
    }
    for (Py_ssize_t i = 0; i < n_ids; i++) {
        if (ids[i] < 0 || ids[i] >= radix) {
            PyErr_SetString(PyExc_ValueError, "a word id is outside the unigram table");
            goto done;
        }
    }
    Py_ssize_t n_words = width / 64 + 1;
    seen = PyMem_Calloc((size_t)n_words, sizeof(uint64_t));
    counts = PyMem_Malloc((size_t)(width > 0 ? width : 1) * sizeof(Py_ssize_t));
    if (seen == NULL || counts == NULL) { PyErr_NoMemory(); goto done; }

    /* Each column's count, its first occurrence marked in `seen` (which also sorts them). */
#define TALLY(col)                                                                          \
    do {                                                                                    \
        int64_t c_ = (col);                                                                 \
        if (c_ != -1) {                                                                     \
            if (c_ < 0 || c_ >= width) {                                                    \
                PyErr_SetString(PyExc_ValueError, "a column is outside the IDF weights");   \
                goto done;                                                                  \
            }                                                                               \
            uint64_t bit_ = (uint64_t)1 << (c_ & 63);                                       \
            if (seen[c_ >> 6] & bit_) counts[c_]++;                                         \
            else { seen[c_ >> 6] |= bit_; counts[c_] = 1; }                                 \
        }                                                                                   \
    } while (0)
    if (lo == 1)
        for (Py_ssize_t i = 0; i < n_ids; i++) TALLY(unigram[ids[i]]);
    for (Py_ssize_t n = lo > 2 ? lo : 2; n <= hi && n <= n_ids; n++) {
        uint64_t offset = (uint64_t)offsets[n], r = (uint64_t)radix;
        for (Py_ssize_t p0 = 0; p0 + n <= n_ids; p0 += LANES) {
            int64_t want[LANES];
            Py_ssize_t at[LANES];
            int m = 0;
            for (Py_ssize_t p = p0; m < LANES && p + n <= n_ids; p++, m++) {
                uint64_t key = (uint64_t)ids[p];
                for (Py_ssize_t q = 1; q < n; q++) key = key * r + (uint64_t)ids[p + q];
                want[m] = (int64_t)(key + offset);
            }
            for (int l = m; l < LANES; l++) want[l] = want[0];  /* a full set: the loops unroll */
            lower_bounds(keys, n_keys, want, at);
            for (int l = 0; l < m; l++)
                if (at[l] < n_keys && keys[at[l]] == want[l]) TALLY(key_columns[at[l]]);
        }
    }
#undef TALLY

    Py_ssize_t most = 0;
    for (Py_ssize_t w = 0; w < n_words; w++)
        for (uint64_t bits = seen[w]; bits; bits &= bits - 1) {
            Py_ssize_t c = w * 64 + ctz64(bits);
            if (counts[c] > most) most = counts[c];
        }
    if (most > 0 && most >= n_logs) {
        result = PyLong_FromSsize_t(most);
        goto done;
    }
    memset(out, 0, (size_t)dim * sizeof(float));
    for (Py_ssize_t w = 0; w < n_words; w++)
        for (uint64_t bits = seen[w]; bits; bits &= bits - 1) {
            Py_ssize_t c = w * 64 + ctz64(bits);
            float weight = log_table[counts[c]] * idf[c];
            const float *row = projection + c * dim;
            for (Py_ssize_t j = 0; j < dim; j++) out[j] += weight * row[j];
        }
    result = PyLong_FromLong(0);
done:
    PyMem_Free(seen);
    PyMem_Free(counts);
    release(&ib); release(&ub); release(&kb); release(&cb); release(&fb);
    release(&wb); release(&tb); release(&pb); release(&ob);
    return result;
}

static PyMethodDef methods[] = {
    {"project_one", (PyCFunction)(void (*)(void))project_one, METH_FASTCALL,
     "project_one(ids, unigram, keys, key_columns, offsets, lo, hi, idf, log_table, projection, out) -> int:\n"
     "one text's TF-IDF row times the projection, written to out; 0, or the largest count when log_table "
     "is too short (out untouched)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tfidf", "One prompt's projected TF-IDF row (C).", -1, methods};

PyMODINIT_FUNC PyInit__tfidf(void) { return kernel_module(&module); }
