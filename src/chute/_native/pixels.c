/* chute._pixels: uint8 pixels to normalized float32 in one vectorized pass.
 *
 * A CPU trainer's batch hook turns each uint8 batch into (x / 255 - mean) / std per channel. OpenCV's
 * LUT does it through a 256-entry table, one lookup per value; here it is one multiply-add per value,
 * `x * scale[c] + shift[c]`, over channel-interleaved (channels-last) pixels. The channel of value i
 * is i % C, and for C in 1..4 that pattern repeats every 48 values, so the loop runs over blocks of
 * 48 values against 48-long scale and shift rows.
 *
 * A batch of 64 images at 224 px is 38 MB of floats, written into one of a few rotating buffers
 * that no cache holds: with ordinary stores each cache line is first read from memory, then
 * written back. On x86-64 CPUs with AVX-512 or AVX2 (checked at run time) large outputs are
 * written with streaming stores instead, which skip that read: 0.028 against 0.067 ms per 224 px
 * image on one core of the 2-core development machine (docs/benchmarks.md). The model reads the
 * batch a few batches later, from memory either way. Small outputs, and other CPUs, take the plain
 * loop, which the compiler vectorizes. Every path rounds the product, then the sum (no fused
 * multiply-add; the build turns contraction off), so an image gets the same bits whatever its batch's
 * size and the CPU. The loop releases the GIL, so loader threads run in parallel.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 48                      /* a multiple of every channel count taken (1, 2, 3, 4) */
#define STREAM_FROM (2 * 1024 * 1024) /* bytes of output from which streaming stores pay */

static void affine_plain(const uint8_t *src, float *dst, Py_ssize_t start, Py_ssize_t end, const float *sc,
                         const float *sh) {
    Py_ssize_t i = start;
    for (; i < end && i % BLOCK != 0; i++) dst[i] = (float)src[i] * sc[i % BLOCK] + sh[i % BLOCK];
    for (; i + BLOCK <= end; i += BLOCK)
        for (int j = 0; j < BLOCK; j++) dst[i + j] = (float)src[i + j] * sc[j] + sh[j];
    for (; i < end; i++) dst[i] = (float)src[i] * sc[i % BLOCK] + sh[i % BLOCK];
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_STREAMING 1

/* Values [0, head) with plain stores, until dst + head is aligned to `align` bytes; returns head. */
static Py_ssize_t align_head(const uint8_t *src, float *dst, Py_ssize_t n, const float *sc, const float *sh,
                             uintptr_t align) {
    Py_ssize_t head = 0;
    while (head < n && ((uintptr_t)(dst + head) & (align - 1)) != 0) head++;
    affine_plain(src, dst, 0, head, sc, sh);
    return head;
}

/* The scale and shift rows as seen from value i (phase i % BLOCK). */
static void rotate(const float *sc, const float *sh, Py_ssize_t i, float *rs, float *rh) {
    for (int j = 0; j < BLOCK; j++) {
        rs[j] = sc[(i + j) % BLOCK];
        rh[j] = sh[(i + j) % BLOCK];
    }
}

__attribute__((target("avx512f"))) static void affine_stream512(const uint8_t *src, float *dst, Py_ssize_t n,
                                                               const float *sc, const float *sh) {
    Py_ssize_t i = align_head(src, dst, n, sc, sh, 64);
    float rs[BLOCK], rh[BLOCK];
    rotate(sc, sh, i, rs, rh);
    __m512 s[3], h[3];
    for (int k = 0; k < 3; k++) {
        s[k] = _mm512_loadu_ps(rs + 16 * k);
        h[k] = _mm512_loadu_ps(rh + 16 * k);
    }
    for (; i + BLOCK <= n; i += BLOCK)
        for (int k = 0; k < 3; k++) {
            __m128i bytes = _mm_loadu_si128((const __m128i *)(src + i + 16 * k));
            __m512 x = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes));
            _mm512_stream_ps(dst + i + 16 * k, _mm512_add_ps(_mm512_mul_ps(x, s[k]), h[k]));
        }
    _mm_sfence(); /* streaming stores are weakly ordered: make them visible before returning */
    affine_plain(src, dst, i, n, sc, sh);
}

__attribute__((target("avx2"))) static void affine_stream256(const uint8_t *src, float *dst, Py_ssize_t n,
                                                                const float *sc, const float *sh) {
    Py_ssize_t i = align_head(src, dst, n, sc, sh, 32);
    float rs[BLOCK], rh[BLOCK];
    rotate(sc, sh, i, rs, rh);
    __m256 s[6], h[6];
    for (int k = 0; k < 6; k++) {
        s[k] = _mm256_loadu_ps(rs + 8 * k);
        h[k] = _mm256_loadu_ps(rh + 8 * k);
    }
    for (; i + BLOCK <= n; i += BLOCK)
        for (int k = 0; k < 6; k++) {
            __m128i bytes = _mm_loadl_epi64((const __m128i *)(src + i + 8 * k));
            __m256 x = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
            _mm256_stream_ps(dst + i + 8 * k, _mm256_add_ps(_mm256_mul_ps(x, s[k]), h[k]));
        }
    _mm_sfence();
    affine_plain(src, dst, i, n, sc, sh);
}

/* 2: AVX-512, 1: AVX2, 0: neither (decided once, at import). */
static int streaming_level(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return 2;
    if (__builtin_cpu_supports("avx2")) return 1;
    return 0;
}
#else
#define HAVE_STREAMING 0
static int streaming_level(void) { return 0; }
#endif

static int streaming = 0;

static void affine(const uint8_t *src, float *dst, Py_ssize_t n, const float *scale, const float *shift,
                   int channels) {
    float sc[BLOCK], sh[BLOCK];
    for (int j = 0; j < BLOCK; j++) {
        sc[j] = scale[j % channels];
        sh[j] = shift[j % channels];
    }
#if HAVE_STREAMING
    if (streaming > 0 && n * (Py_ssize_t)sizeof(float) >= STREAM_FROM) {
        if (streaming == 2)
            affine_stream512(src, dst, n, sc, sh);
        else
            affine_stream256(src, dst, n, sc, sh);
        return;
    }
#endif
    affine_plain(src, dst, 0, n, sc, sh);
}

/* A C-contiguous buffer of `obj` whose items are `kind` ('B': uint8, 'f': float32), or -1 with an error set. */
static int take_buffer(PyObject *obj, Py_buffer *view, int writable, char kind, const char *name) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    const char *format = view->format != NULL ? view->format : "B";
    size_t length = strlen(format);
    int native = length == 1 || (length == 2 && strchr("@=<", format[0]) != NULL);
    Py_ssize_t size = kind == 'f' ? (Py_ssize_t)sizeof(float) : 1;
    if (!native || format[length - 1] != kind || view->itemsize != size) {
        PyErr_Format(PyExc_ValueError, "%s must hold %s values (got format '%s')", name,
                     kind == 'f' ? "float32" : "uint8", format);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* normalize_into(src, dst, coefficients) -> None
 *
 * src: contiguous uint8 values, channel-interleaved; dst: a writable contiguous buffer of as many
 * float32 values; coefficients: float32 scale[C] then shift[C], C in 1..4 (so 2C values). */
static PyObject *normalize_into(PyObject *self, PyObject *args) {
    PyObject *src_obj, *dst_obj, *coefficients_obj;
    Py_buffer src, dst, coefficients;
    if (!PyArg_ParseTuple(args, "OOO", &src_obj, &dst_obj, &coefficients_obj)) return NULL;
    if (take_buffer(src_obj, &src, 0, 'B', "src") < 0) return NULL;
    if (take_buffer(dst_obj, &dst, 1, 'f', "dst") < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    if (take_buffer(coefficients_obj, &coefficients, 0, 'f', "coefficients") < 0) {
        PyBuffer_Release(&src);
        PyBuffer_Release(&dst);
        return NULL;
    }
    const char *problem = NULL;
    Py_ssize_t count = (Py_ssize_t)(coefficients.len / sizeof(float));
    int channels = (int)(count / 2);
    if (coefficients.len % (Py_ssize_t)(2 * sizeof(float)) != 0 || channels < 1 || channels > 4)
        problem = "coefficients must be float32 scale[C] then shift[C], with C from 1 to 4";
    else if (src.len % channels != 0)
        problem = "src holds a number of values that is not a multiple of the channels";
    else if (dst.len != src.len * (Py_ssize_t)sizeof(float))
        problem = "dst must hold one float32 per value of src";
    else if ((uintptr_t)dst.buf % sizeof(float) != 0 || (uintptr_t)coefficients.buf % sizeof(float) != 0)
        problem = "dst and coefficients must be aligned for float32";
    if (problem == NULL) {
        const float *c = (const float *)coefficients.buf;
        Py_BEGIN_ALLOW_THREADS
        affine((const uint8_t *)src.buf, (float *)dst.buf, src.len, c, c + channels, channels);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&coefficients);
    if (problem != NULL) {
        PyErr_SetString(PyExc_ValueError, problem);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* set_streaming(level) -> the level in effect: 0 turns streaming stores off (to measure them, and
 * to test the plain loop on a CPU that has them); a level above what the CPU has is lowered to it. */
static PyObject *set_streaming(PyObject *self, PyObject *args) {
    int level;
    if (!PyArg_ParseTuple(args, "i", &level)) return NULL;
    int most = streaming_level();
    streaming = level < 0 ? 0 : (level > most ? most : level);
    return PyLong_FromLong(streaming);
}

static PyMethodDef methods[] = {
    {"normalize_into", normalize_into, METH_VARARGS,
     "normalize_into(src, dst, coefficients): dst[i] = src[i] * scale[i % C] + shift[i % C]"},
    {"set_streaming", set_streaming, METH_VARARGS,
     "set_streaming(level) -> level in effect (0 plain stores, 1 AVX2, 2 AVX-512 streaming stores)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_pixels",
                                    "uint8 pixels to normalized float32, vectorized.", -1, methods};

PyMODINIT_FUNC PyInit__pixels(void) {
    streaming = streaming_level();
    return PyModule_Create(&module);
}
