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
 * loop, which the compiler vectorizes. The loop releases the GIL, so loader threads run in parallel.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

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
            _mm512_stream_ps(dst + i + 16 * k, _mm512_fmadd_ps(x, s[k], h[k]));
        }
    _mm_sfence(); /* streaming stores are weakly ordered: make them visible before returning */
    affine_plain(src, dst, i, n, sc, sh);
}

__attribute__((target("avx2,fma"))) static void affine_stream256(const uint8_t *src, float *dst, Py_ssize_t n,
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
            _mm256_stream_ps(dst + i + 8 * k, _mm256_fmadd_ps(x, s[k], h[k]));
        }
    _mm_sfence();
    affine_plain(src, dst, i, n, sc, sh);
}

/* 2: AVX-512, 1: AVX2 with FMA, 0: neither (decided once, at import). */
static int streaming_level(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
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

/* normalize_into(src, dst, coefficients) -> None
 *
 * src: contiguous uint8 values, channel-interleaved; dst: a writable contiguous buffer of as many
 * float32 values; coefficients: float32 scale[C] then shift[C], C in 1..4 (so 2C values). */
static PyObject *normalize_into(PyObject *self, PyObject *args) {
    Py_buffer src, dst, coefficients;
    if (!PyArg_ParseTuple(args, "y*w*y*", &src, &dst, &coefficients)) return NULL;
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
