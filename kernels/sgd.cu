// kernels/sgd.cu -- the softmax-regression SGD steps of one call in one launch, for small
// class counts (C <= kSgdMaxC): fastsoftmax.reference.steps_with's arithmetic, step after
// step, inside a single block.
//
// Entry points (extern "C"), X = uint8_t, float, double (the rows), W = float, double (the
// parameters), named sgd_steps_<x dtype>_<w dtype>, e.g. sgd_steps_uint8_float32:
//
//   sgd_steps_<x>_<w>(const X* x, const long long* y, const double* sw /*NULL: none*/,
//                     double a, const long long* rows, long long n_rows, long long batch,
//                     long long steps, const double* lr, double mu, double wd,
//                     const double* coef /*NULL: no averaging*/,
//                     W* w, W* b, W* vw, W* vb, W* wa /*NULL*/, W* ba /*NULL*/,
//                     double* losses, long long* err, long long C, long long d,
//                     int w_in_smem, int stage_rows)
//
//   x (n, d) and y (n,): the data; sw (n,): per-row weights.  a: the x scale (the model
//   sees a x).  rows: this call's row order, n_rows of them; local step s takes rows
//   [s * batch, min((s + 1) * batch, n_rows)).  lr, coef: per local step.  w (C, d),
//   b (C,), vw, vb (momentum buffers), wa, ba (running means) are updated in place.
//   losses[s]: step s's objective (mean row loss + wd/2 ||w||^2, before its update).
//   err: int64 the host sets to INT64_MAX; a row whose class is outside [0, C) writes its
//   position in `rows` with atomicMin (and the step's loss is NaN).
//
// Launch: grid (1, 1, 1), block (kSgdThreads, 1, 1), dynamic shared memory: the batch's
// logits, batch * C * sizeof(W) rounded up to 8, plus 16 * batch (its row losses and row
// numbers), plus C * d * sizeof(W) when w_in_smem (then w lives in shared memory for the
// call, read in at the start and written back at the end: the steps read every weight
// once per row).  The host keeps it under 48 KB and sets w_in_smem where w fits.
// stage_rows: each step first copies its rows into shared memory (after the weights,
// at the next 16-byte boundary; batch * d * sizeof(X) more bytes), 16 bytes per load
// with every load of a thread issued before its stores, and the phases read them from
// there: one DRAM round trip per step instead of one per unrolled batch of a row.  It
// needs rows of a whole number of 16-byte vectors and a 16-byte-aligned x, and more than
// 48 KB of shared memory for MNIST (the host raises the kernel's limit).  Same bits as
// without.
//
// Why one block: the steps are sequential (each reads the weights the last one wrote),
// and at MNIST's size a step is small (64 x 784 x 10: 2 x 0.5 M multiply-adds), so the
// cost of the CuPy step -- ~15 launches and their Python per step, ~0.5 ms -- was all
// overhead.  One block keeps every step's intermediate (the logits, the row losses) in
// shared memory and synchronises with __syncthreads; a grid-wide barrier per phase
// would cost more than the phase.  Napkin math per step on one SM: the logits and the
// weight gradient are 2 x 64 x 784 x 10 = 1 M FMAs = ~2k cycles of 512 threads plus
// L1/L2 latency: a few microseconds, so ~3-5 ms per MNIST epoch (938 steps).
//
// Per step (barriers between phases):
//   1. the batch's row numbers into shared memory, and a prefetch of the next step's
//      rows into L1 (a gathered row is otherwise a chain of cold loads: without it an
//      MNIST epoch took 143 ms on an H200);
//   2. logits z = (a x_B) w^T + b: a warp per row, lanes over d, kSgdChunk classes at a
//      time, each dot product reduced by a fixed shuffle tree;
//   3. per row (one thread): m = max z, s = sum exp(z - m) (in double), loss =
//      log s - (z_y - m), z <- scale (exp(z - m) / s - [c == y]) with p_y - 1 formed as
//      -(s - e_y) / s; times sw[row] where given;
//   4. thread 0: the step's loss (the row losses summed in order), wd/2 ||w||^2 by a
//      block reduction in a fixed order;
//   5. dW = z^T (a x_B): a thread per feature k, kSgdChunk classes at a time, rows in
//      order; then weight decay, momentum, the update and the running mean, each weight
//      by the one thread that owns it; db likewise.
// Every sum has a fixed order: the result depends only on the inputs (and blockDim).

#ifndef FASTSOFTMAX_COMMON_CUH
#include "common.cuh"
#endif

namespace fs {

constexpr int kSgdThreads = 512;
constexpr int kSgdChunk = 16;  // float classes per pass of the logits and of dW (registers)

template <class W> __device__ __forceinline__ W warp_sum(W v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The block's sum of v, the same for every thread (fixed order: lanes by the shuffle tree,
// then the warps' partials in warp order by thread 0).
__device__ __forceinline__ double block_sum(double v, double* scratch) {
  v = warp_sum(v);
  const int warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  if ((threadIdx.x & (kWarp - 1)) == 0) scratch[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0.0;
    for (int i = 0; i < warps; ++i) t += scratch[i];
    scratch[kWarp] = t;
  }
  __syncthreads();
  return scratch[kWarp];
}

// One parameter's update from its gradient g (weight decay already in it): momentum
// (v <- mu v + g, which then steps), p <- p - rate g, and the running mean.
template <class W>
__device__ __forceinline__ void sgd_update(W* p, W* v, W* avg, long long e, W g,
                                           bool momentum, W mu, W rate, bool average,
                                           W coef) {
  if (momentum) {
    v[e] = v[e] * mu + g;
    g = v[e];
  }
  const W np = p[e] - rate * g;
  p[e] = np;
  if (average) avg[e] += coef * (np - avg[e]);
}

// Prefetches rows [r0, r1) of `rows` into L1 (and L2), a 128-byte line per thread.
template <class X>
__device__ __forceinline__ void prefetch_rows(const X* x, const long long* rows, long long r0,
                                              long long r1, long long d) {
  const long long bytes = d * (long long)sizeof(X);
  const long long lines = (bytes + 127) / 128 + 1;  // a row need not start on a line
  for (long long i = threadIdx.x; i < (r1 - r0) * lines; i += blockDim.x) {
    const char* row = reinterpret_cast<const char*>(x + rows[r0 + i / lines] * d);
    const long long off = (i % lines) * 128;
    const char* p = row + (off < bytes ? off : bytes - 1);
    asm volatile("prefetch.global.L1 [%0];" ::"l"(p));
  }
}

// Copies rows rs[0..nb) of x into xs (nb x d, row-major), 16 bytes per load, kLoads loads
// of a thread issued before its stores.  Rows must be whole 16-byte vectors, x aligned.
template <class X>
__device__ __forceinline__ void stage_batch(const X* x, const long long* rs, long long nb,
                                            long long d, X* xs) {
  constexpr int kLoads = 8;
  const long long per_row = d * (long long)sizeof(X) / 16;
  const long long total = nb * per_row;
  const long long nthr = blockDim.x;
  uint4* dst = reinterpret_cast<uint4*>(xs);
  for (long long base = threadIdx.x; base < total; base += kLoads * nthr) {
    uint4 v[kLoads];
#pragma unroll
    for (int u = 0; u < kLoads; ++u) {
      const long long i = base + u * nthr;
      if (i < total) v[u] = reinterpret_cast<const uint4*>(x + rs[i / per_row] * d)[i % per_row];
    }
#pragma unroll
    for (int u = 0; u < kLoads; ++u) {
      const long long i = base + u * nthr;
      if (i < total) dst[i] = v[u];
    }
  }
}

template <class X, class W, bool kStage>
__device__ void sgd_steps_body(const X* x, const long long* y, const double* sw, double a,
                               const long long* rows, long long n_rows, long long batch,
                               long long steps, const double* lr, double mu, double wd,
                               const double* coef, W* w, W* b, W* vw, W* vb, W* wa, W* ba,
                               double* losses, long long* err, long long C, long long d,
                               int w_in_smem) {
  constexpr int kChunk = sizeof(W) == 4 ? kSgdChunk : kSgdChunk / 2;  // registers
  extern __shared__ __align__(16) unsigned char sgd_smem[];
  __shared__ double scratch[kWarp + 1];
  const long long zbytes = ((batch * C * (long long)sizeof(W)) + 7) / 8 * 8;
  W* zs = reinterpret_cast<W*>(sgd_smem);
  double* row_loss = reinterpret_cast<double*>(sgd_smem + zbytes);
  long long* rs = reinterpret_cast<long long*>(row_loss + batch);
  W* wt = w_in_smem ? reinterpret_cast<W*>(rs + batch) : w;  // the weights the steps use
  unsigned char* after_w = reinterpret_cast<unsigned char*>(rs + batch) +
                           (w_in_smem ? C * d * (long long)sizeof(W) : 0);
  X* xs = reinterpret_cast<X*>(sgd_smem + ((after_w - sgd_smem) + 15) / 16 * 16);
  const int tid = threadIdx.x, nthr = blockDim.x;
  const int lane = tid & (kWarp - 1), warp = tid / kWarp, warps = nthr / kWarp;
  const W av = W(a);
  if (w_in_smem)
    for (long long i = tid; i < C * d; i += nthr) wt[i] = w[i];
  prefetch_rows(x, rows, 0, n_rows < batch ? n_rows : batch, d);
  for (long long s = 0; s < steps; ++s) {
    const long long start = s * batch;
    const long long nb = n_rows - start < batch ? n_rows - start : batch;
    for (long long r = tid; r < nb; r += nthr) rs[r] = rows[start + r];
    if (start + batch < n_rows) {
      const long long next_end = start + 2 * batch < n_rows ? start + 2 * batch : n_rows;
      prefetch_rows(x, rows, start + batch, next_end, d);
    }
    __syncthreads();
    if constexpr (kStage) {
      stage_batch(x, rs, nb, d, xs);
      __syncthreads();
    }

    // 2. logits
    for (long long r = warp; r < nb; r += warps) {
      const X* xr = kStage ? xs + r * d : x + rs[r] * d;
      for (long long c0 = 0; c0 < C; c0 += kChunk) {
        W acc[kChunk];
#pragma unroll
        for (int j = 0; j < kChunk; ++j) acc[j] = W(0);
#pragma unroll 4
        for (long long k = lane; k < d; k += kWarp) {
          const W xv = W(xr[k]) * av;
#pragma unroll
          for (int j = 0; j < kChunk; ++j)
            if (c0 + j < C) acc[j] += xv * wt[(c0 + j) * d + k];
        }
#pragma unroll
        for (int j = 0; j < kChunk; ++j) {
          if (c0 + j < C) {
            const W v = warp_sum(acc[j]);
            if (lane == 0) zs[r * C + c0 + j] = v + b[c0 + j];
          }
        }
      }
    }
    __syncthreads();

    // 3. the cross-entropy of each row, its gradient in place of its logits
    const double scale = 1.0 / (double)nb;
    for (long long r = tid; r < nb; r += nthr) {
      W* zr = zs + r * C;
      const long long yi = y[rs[r]];
      double loss;
      W m = zr[0];
      for (long long c = 1; c < C; ++c) m = zr[c] > m ? zr[c] : m;
      if (yi < 0 || yi >= C || !(m > -Num<W>::inf() && m < Num<W>::inf())) {
        if (yi < 0 || yi >= C) atomicMin(err, start + r);
        loss = Num<double>::nan();
        for (long long c = 0; c < C; ++c) zr[c] = Num<W>::nan();
      } else {
        double sum = 0.0;
        for (long long c = 0; c < C; ++c) sum += (double)fs_exp(zr[c] - m);
        const W ey = fs_exp(zr[yi] - m);
        loss = log(sum) - ((double)zr[yi] - (double)m);
        const W ga = W(scale / sum);
        for (long long c = 0; c < C; ++c) zr[c] = fs_exp(zr[c] - m) * ga;
        zr[yi] = W(-scale * ((sum - (double)ey) / sum));
        if (sw != nullptr) {
          const double rw = sw[rs[r]];
          loss *= rw;
          const W rwt = W(rw);
          for (long long c = 0; c < C; ++c) zr[c] *= rwt;
        }
      }
      row_loss[r] = loss;
    }
    __syncthreads();

    // 4. the step's objective, before the update
    double reg = 0.0;
    if (wd != 0.0) {
      double part = 0.0;
      for (long long i = tid; i < C * d; i += nthr) {
        const double v = (double)wt[i];
        part += v * v;
      }
      reg = 0.5 * wd * block_sum(part, scratch);
    }
    if (tid == 0) {
      double total = 0.0;
      for (long long r = 0; r < nb; ++r) total += row_loss[r];
      losses[s] = total / (double)nb + reg;
    }

    // 5. dW, db and the update
    const W rate = W(lr[s]), wmu = W(mu), wwd = W(wd);
    const double cs = coef != nullptr ? coef[s] : 0.0;
    const bool average = wa != nullptr && cs != 0.0;
    const W wcs = W(cs);
    const long long chunks = (C + kChunk - 1) / kChunk;
    for (long long i = tid; i < d * chunks; i += nthr) {
      const long long k = i % d, c0 = (i / d) * kChunk;
      W gw[kChunk];
#pragma unroll
      for (int j = 0; j < kChunk; ++j) gw[j] = W(0);
#pragma unroll 4
      for (long long r = 0; r < nb; ++r) {
        const W xv = W((kStage ? xs + r * d : x + rs[r] * d)[k]) * av;
        const W* zr = zs + r * C + c0;
#pragma unroll
        for (int j = 0; j < kChunk; ++j)
          if (c0 + j < C) gw[j] += zr[j] * xv;
      }
#pragma unroll
      for (int j = 0; j < kChunk; ++j) {
        if (c0 + j < C) {
          const long long e = (c0 + j) * d + k;
          W g = gw[j];
          if (wd != 0.0) g += wwd * wt[e];
          sgd_update(wt, vw, wa, e, g, mu != 0.0, wmu, rate, average, wcs);
        }
      }
    }
    for (long long c = tid; c < C; c += nthr) {
      W g = W(0);
      for (long long r = 0; r < nb; ++r) g += zs[r * C + c];
      sgd_update(b, vb, ba, c, g, mu != 0.0, wmu, rate, average, wcs);
    }
    __syncthreads();  // the next step reads the new weights and reuses shared memory
  }
  if (w_in_smem)
    for (long long i = tid; i < C * d; i += nthr) w[i] = wt[i];
}

}  // namespace fs

#define FS_SGD_ENTRY(X, W, XN, WN)                                                         \
  extern "C" __global__ void __launch_bounds__(fs::kSgdThreads, 1) sgd_steps_##XN##_##WN(    \
      const X* x, const long long* y, const double* sw, double a, const long long* rows,   \
      long long n_rows, long long batch, long long steps, const double* lr, double mu,     \
      double wd, const double* coef, W* w, W* b, W* vw, W* vb, W* wa, W* ba,               \
      double* losses, long long* err, long long C, long long d, int w_in_smem,             \
      int stage_rows) {                                                                    \
    if (stage_rows)                                                                        \
      fs::sgd_steps_body<X, W, true>(x, y, sw, a, rows, n_rows, batch, steps, lr, mu, wd,  \
                                     coef, w, b, vw, vb, wa, ba, losses, err, C, d,        \
                                     w_in_smem);                                           \
    else                                                                                   \
      fs::sgd_steps_body<X, W, false>(x, y, sw, a, rows, n_rows, batch, steps, lr, mu, wd, \
                                      coef, w, b, vw, vb, wa, ba, losses, err, C, d,       \
                                      w_in_smem);                                          \
  }

FS_SGD_ENTRY(unsigned char, float, uint8, float32)
FS_SGD_ENTRY(float, float, float32, float32)
FS_SGD_ENTRY(double, float, float64, float32)
FS_SGD_ENTRY(unsigned char, double, uint8, float64)
FS_SGD_ENTRY(float, double, float32, float64)
FS_SGD_ENTRY(double, double, float64, float64)

#undef FS_SGD_ENTRY
