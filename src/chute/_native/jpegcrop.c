/* chute._jpegcrop: decode only the part of a JPEG that a crop needs, with libjpeg-turbo.
 *
 * A RandomResizedCrop throws most of a photograph away. libjpeg-turbo can avoid work for it:
 *   - DCT scaling (scale_num/8) decodes straight to a smaller image when the crop is large;
 *   - jpeg_crop_scanline limits IDCT, upsampling and colour conversion to the crop's columns;
 *   - jpeg_skip_scanlines skips IDCT for the rows above the crop;
 *   - stopping after the crop's last row skips entropy decoding of everything below it.
 * The caller picks the crop from the header (header()) and resizes the result; both functions
 * release the GIL, so threads decode in parallel.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <jpeglib.h>

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
} error_mgr;

static void on_error(j_common_ptr cinfo) {
    error_mgr *err = (error_mgr *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}

/* Corrupt-data warnings (e.g. a truncated file padded with an EOI marker) are errors here:
 * a half-grey image must not reach training silently. */
static void on_message(j_common_ptr cinfo, int level) {
    if (level < 0) {
        error_mgr *err = (error_mgr *)cinfo->err;
        (*cinfo->err->format_message)(cinfo, err->message);
        longjmp(err->jump, 1);
    }
}

static void init_errors(struct jpeg_decompress_struct *cinfo, error_mgr *err) {
    cinfo->err = jpeg_std_error(&err->pub);
    err->pub.error_exit = on_error;
    err->pub.emit_message = on_message;
    err->message[0] = '\0';
}

static PyObject *DecodeError;

/* header(data) -> (width, height, components, colorspace) where colorspace is libjpeg's
 * J_COLOR_SPACE of the file (1 gray, 3 YCbCr, 2 RGB, 4 CMYK, 5 YCCK). */
static PyObject *header(PyObject *self, PyObject *args) {
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*", &data)) return NULL;
    struct jpeg_decompress_struct cinfo;
    error_mgr err;
    int width = 0, height = 0, components = 0, space = 0, failed = 0;
    Py_BEGIN_ALLOW_THREADS
    init_errors(&cinfo, &err);
    jpeg_create_decompress(&cinfo);
    if (setjmp(err.jump)) {
        failed = 1;
    } else {
        jpeg_mem_src(&cinfo, (const unsigned char *)data.buf, (unsigned long)data.len);
        jpeg_read_header(&cinfo, TRUE);
        width = (int)cinfo.image_width;
        height = (int)cinfo.image_height;
        components = cinfo.num_components;
        space = (int)cinfo.jpeg_color_space;
    }
    jpeg_destroy_decompress(&cinfo);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    if (failed) {
        PyErr_SetString(DecodeError, err.message);
        return NULL;
    }
    return Py_BuildValue("iiii", width, height, components, space);
}

/* decode_into(data, x, y, w, h, scale_num, gray, out) -> (rows, row_width, x_offset)
 *
 * Decodes rows [y, y+h) and columns [x, x+w) (unscaled image coordinates) of the image scaled by
 * scale_num/8 into the writable buffer `out`, as `rows` rows of `row_width` pixels (RGB, or one
 * channel with gray=1). The columns start at an iMCU boundary: the crop's left edge is column
 * `x_offset` of each row. */
static PyObject *decode_into(PyObject *self, PyObject *args) {
    Py_buffer data, out;
    int x, y, w, h, num, gray;
    if (!PyArg_ParseTuple(args, "y*iiiiipw*", &data, &x, &y, &w, &h, &num, &gray, &out)) return NULL;
    if (num < 1 || num > 16 || x < 0 || y < 0 || w < 1 || h < 1) {
        PyBuffer_Release(&data);
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "crop must have x, y >= 0, w, h >= 1 and scale_num in [1, 16]");
        return NULL;
    }
    struct jpeg_decompress_struct cinfo;
    error_mgr err;
    int failed = 0, too_small = 0, bad_crop = 0;
    long rows = 0, row_width = 0, x_offset = 0;
    Py_BEGIN_ALLOW_THREADS
    init_errors(&cinfo, &err);
    jpeg_create_decompress(&cinfo);
    if (setjmp(err.jump)) {
        failed = 1;
    } else {
        jpeg_mem_src(&cinfo, (const unsigned char *)data.buf, (unsigned long)data.len);
        jpeg_read_header(&cinfo, TRUE);
        if ((long)x + w > (long)cinfo.image_width || (long)y + h > (long)cinfo.image_height) {
            bad_crop = 1;
        } else {
            cinfo.out_color_space = gray ? JCS_GRAYSCALE : JCS_RGB;
            cinfo.scale_num = (unsigned int)num;
            cinfo.scale_denom = 8;
            jpeg_start_decompress(&cinfo);
            long sx = (long)x * num / 8, sy = (long)y * num / 8;
            long ex = ((long)(x + w) * num + 7) / 8, ey = ((long)(y + h) * num + 7) / 8;
            if (ex > (long)cinfo.output_width) ex = cinfo.output_width;
            if (ey > (long)cinfo.output_height) ey = cinfo.output_height;
            if (ex <= sx) ex = sx + 1;
            if (ey <= sy) ey = sy + 1;
            JDIMENSION xoff = (JDIMENSION)sx, width = (JDIMENSION)(ex - sx);
            if (xoff > 0 || width < cinfo.output_width) jpeg_crop_scanline(&cinfo, &xoff, &width);
            rows = ey - sy;
            row_width = (long)cinfo.output_width;
            x_offset = sx - (long)xoff;
            long stride = row_width * cinfo.output_components;
            if (rows * stride > (long)out.len) {
                too_small = 1;
            } else {
                if (sy > 0) jpeg_skip_scanlines(&cinfo, (JDIMENSION)sy);
                long done = 0;
                while (done < rows) {
                    JSAMPROW row = (JSAMPROW)out.buf + done * stride;
                    if (jpeg_read_scanlines(&cinfo, &row, 1) != 1) break;
                    done++;
                }
            }
            jpeg_abort_decompress(&cinfo); /* the rows below the crop are never decoded */
        }
    }
    jpeg_destroy_decompress(&cinfo);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    if (failed) {
        PyErr_SetString(DecodeError, err.message);
        return NULL;
    }
    if (bad_crop) {
        PyErr_SetString(PyExc_ValueError, "crop lies outside the image");
        return NULL;
    }
    if (too_small) {
        PyErr_Format(PyExc_ValueError, "output buffer too small: need %ld bytes", rows * row_width * (gray ? 1 : 3));
        return NULL;
    }
    return Py_BuildValue("lll", rows, row_width, x_offset);
}

static PyMethodDef methods[] = {
    {"header", header, METH_VARARGS, "header(data) -> (width, height, components, colorspace)"},
    {"decode_into", decode_into, METH_VARARGS,
     "decode_into(data, x, y, w, h, scale_num, gray, out) -> (rows, row_width, x_offset)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jpegcrop",
                                    "Cropped, DCT-scaled JPEG decoding with libjpeg-turbo.", -1, methods};

PyMODINIT_FUNC PyInit__jpegcrop(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    DecodeError = PyErr_NewException("chute._jpegcrop.DecodeError", PyExc_ValueError, NULL);
    Py_XINCREF(DecodeError);
    if (PyModule_AddObject(m, "DecodeError", DecodeError) < 0) {
        Py_XDECREF(DecodeError);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "LIBJPEG_TURBO_VERSION_NUMBER",
#ifdef LIBJPEG_TURBO_VERSION_NUMBER
                            LIBJPEG_TURBO_VERSION_NUMBER
#else
                            0
#endif
    );
    return m;
}
