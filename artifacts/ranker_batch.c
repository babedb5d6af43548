/*
 * Aisle ranker ABI: the batch entry point compiled into every `ranker.so`.
 *
 * The builder (builder/ranker.py) copies this file next to the C code TL2cgen generates for the
 * LightGBM model (header.h, main.c, tu*.c, quantize.c) and compiles all of it into one shared
 * library. The engine loads that library with ctypes (artifacts/ranker.py); it never needs
 * tl2cgen, treelite or lightgbm at run time.
 *
 * Exported symbols (everything else in the library is hidden):
 *
 *   int32_t aisle_ranker_abi_version(void)
 *       AISLE_RANKER_ABI_VERSION below. Bumped when a signature or a meaning changes, so a loader
 *       can tell "made by a newer builder" from "not an Aisle ranker".
 *   int32_t aisle_num_feature(void)
 *       Number of feature columns the model was trained on (LightGBM max_feature_idx + 1).
 *   int32_t aisle_predict_batch(const float* X, int64_t n_rows, int64_t n_cols, float* out)
 *       X: float32 [n_rows, n_cols], C order; NaN means "missing". out: float32 [n_rows].
 *       Writes the raw margin score (LightGBM raw_score=True) of each row. Single-threaded: the
 *       engine runs one worker per core. Returns AISLE_OK or one of the AISLE_E* codes below, in
 *       which case `out` is left unspecified.
 *
 * Built with -DAISLE_RESULT_T=<float|double>: the element type of `predict`'s result argument in
 * the generated header (the builder reads it from header.h; -Werror catches a mismatch).
 * Never build with -ffast-math: it lets the compiler assume isnan() is always false.
 */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "header.h"

#ifndef AISLE_RESULT_T
#error "compile with -DAISLE_RESULT_T=<float|double> (the type of predict()'s result argument)"
#endif

/* A ranker is one regression-like output per row; a multi-class or multi-target model would need
   a different output layout, so refuse it at build time rather than return a wrong column. */
#if N_TARGET != 1 || MAX_N_CLASS != 1
#error "an Aisle ranker must have exactly one output (N_TARGET == 1 and MAX_N_CLASS == 1)"
#endif

#define AISLE_RANKER_ABI_VERSION 1

#define AISLE_OK 0
#define AISLE_EBADCOLS 1  /* n_cols differs from the model's feature count */
#define AISLE_EBADROWS 2  /* n_rows < 0 */
#define AISLE_ENOMEM 3    /* could not allocate the per-row feature buffer */
#define AISLE_ENULL 4     /* NULL X or out with n_rows > 0 */

#define AISLE_EXPORT __attribute__((visibility("default")))

AISLE_EXPORT int32_t aisle_ranker_abi_version(void) { return AISLE_RANKER_ABI_VERSION; }

AISLE_EXPORT int32_t aisle_num_feature(void) { return get_num_feature(); }

AISLE_EXPORT int32_t aisle_predict_batch(const float* X, int64_t n_rows, int64_t n_cols,
                                         float* out) {
  const int32_t n_feature = get_num_feature();
  if (n_cols != (int64_t)n_feature) return AISLE_EBADCOLS;
  if (n_rows < 0) return AISLE_EBADROWS;
  if (n_rows == 0) return AISLE_OK;
  if (X == NULL || out == NULL) return AISLE_ENULL;

  /* One buffer reused for every row: the generated predict() overwrites fvalue with qvalue in
     place when the model is quantized, so the row must be rebuilt each time anyway. */
  union Entry* row = (union Entry*)malloc(sizeof(union Entry) * (size_t)(n_feature > 0 ? n_feature : 1));
  if (row == NULL) return AISLE_ENOMEM;

  for (int64_t i = 0; i < n_rows; ++i) {
    const float* x = X + i * n_cols;
    for (int32_t j = 0; j < n_feature; ++j) {
      if (isnan(x[j])) {
        /* LightGBM's NaN handling (default direction for missing_type=NaN, "treat as 0" for
           missing_type=None) is encoded in each split's default_left by Treelite's LightGBM
           frontend; the generated code follows default_left when missing == -1. */
        row[j].missing = -1;
      } else {
        /* The union has no tag: a present value must never read back as missing == -1. With a
           double fvalue, float32 -> double is exact and leaves the low 29 mantissa bits zero;
           with a float fvalue, the all-ones pattern is a NaN, which took the branch above. */
        row[j].fvalue = x[j];
      }
    }
    /* predict() accumulates into result without clearing it; tl2cgen's own runtime zeroes it. */
    AISLE_RESULT_T result[N_TARGET * MAX_N_CLASS] = {0};
    predict(row, /*pred_margin=*/1, result);
    out[i] = (float)result[0];
  }
  free(row);
  return AISLE_OK;
}
