// kernels/softmax.cu -- softmax, log_softmax and logsumexp over the rows of a row-major,
// C-contiguous (N, C) array, for float32, float64 and float16 (computed in float32).
//
// Entry points (extern "C", looked up by f"{op}_{dtype.name}"):
//   softmax_<dt>    (const T* x, T* out, long long N, long long C)   out: (N, C), may be x
//   log_softmax_<dt>(const T* x, T* out, long long N, long long C)   out: (N, C), may be x
//   logsumexp_<dt>  (const T* x, T* out, long long N, long long C)   out: (N,)
// with <dt> in {float32, float64, float16} and T = float, double, fs::half_t (the raw
// bits of a float16).  Launch: blockDim = 256 (any multiple of 32 up to 256 works);
// grid as in kernels/README.md -- every kernel loops over rows grid-stride, so any
// grid >= 1 gives the same (bit-identical) result and only the speed depends on it.
// Each entry point picks its path from C:
//
// Versions (the karpathy/llm.c dev/cuda habit: what each one tries)
// -----------------------------------------------------------------
// kernel1  C <= 128 (kRegCMax): a group of G = pow2ceil(ceil(C / 4)) lanes per row (MNIST's
//          C = 10: G = 4, 8 rows per warp, 64 per 256-thread block; G = 32 for
//          C > 64).  Each lane holds its <= 4 elements (j = lane + G*i) in registers,
//          so the row is read once and written once: max by shuffles, then exp(x - max)
//          and the (k, d) sums by shuffles, then the outputs from registers.  Two-pass in
//          registers: no online rescaling.
// kernel2  C > 128: a team per row -- a warp for C <= 1024 (kWarpCMax; 8 rows per
//          block), the block above.  Pass 1 reads the row with 128-bit loads, two in
//          flight per thread (after a scalar head that aligns the row to 16 bytes, so odd
//          C such as 50257 vectorises too), and folds it into online statistics
//          (Milakov & Gimelshein 2018, arXiv:1805.02867): each thread keeps (m, k, d)
//          and rescales by exp(m_old - m_new) only when its max grows -- never for equal
//          or -inf maxima, which would give exp(-inf - -inf) = NaN; then shuffles (and,
//          for a block, the warps' partials merged in warp order).  Pass 2 (softmax,
//          log_softmax) rereads the row and writes with 128-bit stores; logsumexp has
//          no pass 2.
// Tried and dropped: rows of up to 1024 (8 per lane: 256) held in registers took 80-208
// (116) registers per thread, and one entry point holds every path, so its register
// count -- and the large-C path's occupancy -- is the largest of them; the warp team's
// reread of a <= 8 KB row hits L1 instead.  Compile-time variants of the lane count and
// the team multiplied the code NVRTC compiles at the first call (the xent module took
// ~60 s); they are launch-uniform run-time choices now (3 s and 9 s for the two files).
//
// Which entry uses what: all three ops take kernel1 for C <= 128, kernel2 with a warp
// per row for 128 < C <= 1024, kernel2 with a block per row above.
//
// Napkin math (bytes moved per row, S = sizeof(T)):
//   kernel1 softmax/log_softmax:  read C*S + write C*S (the minimum);  logsumexp: C*S.
//   kernel2 softmax/log_softmax:  2 reads + 1 write = 3*C*S from the SMs' view; the
//          second read hits L1 (warp team) or mostly L2 (a 32000-class float row is
//          128 KB, reread right away), so DRAM sees close to 2*C*S.  logsumexp: C*S.
//   E.g. N = 4096, C = 32000, float32: 524 MB in; softmax moves 1.05-1.57 GB, i.e.
//   0.31-0.47 ms at H100 SXM's ~3.35 TB/s.  C = 10, N = 60000 (MNIST): 4.8 MB, about 2 us
//   of DRAM time: launch-bound (~3-5 us).
//
// Math (per row, m = max, t_c = x_c - m, s = sum_c exp(t_c) kept as (k, d), see
// common.cuh):
//   softmax_c     = exp(t_c) * (1/s)          (1/s formed in double, rounded once)
//   log_softmax_c = t_c - log s               ((x - m) - log s, not x - (m + log s): t_c is
//                                              exact near the max, so |x| ~ 1e4 in float32
//                                              keeps full relative precision)
//   logsumexp     = m + log s,  log s = log(k) + log1p(d/k)  (in double, rounded once)
// Non-finite rows: all -inf gives NaN softmax/log_softmax and logsumexp -inf; a NaN gives
// NaN for its row (logsumexp NaN); +inf gives NaN softmax/log_softmax and logsumexp +inf
// (NaN if the row also holds a NaN).  Other rows are never touched.

#ifndef FASTSOFTMAX_COMMON_CUH
#include "common.cuh"
#endif

namespace fs {

enum RowOp { kSoftmax = 0, kLogSoftmax = 1, kLogSumExp = 2 };

// ---------------------------------------------------------------------------------------
// kernel1: G lanes per row, kLaneElems elements per lane in registers (C <= G * 4)
// ---------------------------------------------------------------------------------------
template <class T, int OP>
__device__ void softmax_kernel1(const T* x, T* out, long long N, long long C) {
  typedef typename Traits<T>::cmp cmp;
  typedef typename Traits<T>::acc acc;
  constexpr int E = kLaneElems;
  const int G = small_group(C);
  const int gl = lane_id() & (G - 1);  // lane within the group
  const unsigned mask = group_mask(G);
  const long long groups_per_block = blockDim.x / G;
  const long long stride = (long long)gridDim.x * groups_per_block;
  for (long long row = (long long)blockIdx.x * groups_per_block + threadIdx.x / G; row < N;
       row += stride) {
    const T* xr = x + row * C;
    const int c = (int)C;  // <= kRegCMax: kernel1 indexes a row with ints
    cmp v[E];
    const cmp m = load_row_max<T, E>(xr, c, gl, G, mask, v);
    acc k = acc(0), d = acc(0);
#pragma unroll
    for (int i = 0; i < E; ++i) {
      if (gl + G * i < c) {
        const cmp e = add_term(k, d, v[i], m);
        if (OP == kSoftmax) v[i] = e;
      }
    }
    k = group_sum(k, mask, G);
    d = group_sum(d, mask, G);
    if (OP == kLogSumExp) {
      if (gl == 0) Traits<T>::store(out + row, cmp((double)m + log_kd((double)k, (double)d)));
      continue;
    }
    poison_nonfinite(m, d);
    T* orow = out + row * C;
    if (OP == kSoftmax) {
      const cmp inv = cmp(1.0 / ((double)k + (double)d));
#pragma unroll
      for (int i = 0; i < E; ++i) {
        const int j = gl + G * i;
        if (j < c) Traits<T>::store(orow + j, v[i] * inv);
      }
    } else {
      const cmp ls = cmp(log_kd((double)k, (double)d));
#pragma unroll
      for (int i = 0; i < E; ++i) {
        const int j = gl + G * i;
        if (j < c) Traits<T>::store(orow + j, (v[i] - m) - ls);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// kernel2: a team (warp or block) per row, online statistics, 128-bit loads and stores.
// The per-element work is a functor (not a lambda: NVRTC compiles an unannotated lambda
// as host code, and annotating it needs nvcc's --extended-lambda).
// ---------------------------------------------------------------------------------------
template <class T> struct SoftmaxStats {  // pass 1
  typedef typename Traits<T>::cmp cmp;
  typedef typename Traits<T>::acc acc;
  RowStats<cmp, acc>& s;
  template <int N>
  __device__ __forceinline__ void operator()(long long, const cmp* v, Int<N>) const {
#pragma unroll
    for (int i = 0; i < N; ++i) push(s, v[i], acc(0), false);
  }
};

template <class T, int OP> struct SoftmaxOut {  // pass 2
  typedef typename Traits<T>::cmp cmp;
  T* orow;
  cmp m;
  cmp a;  // 1/s (softmax) or log s (log_softmax)
  bool vec_ok;
  template <int N>
  __device__ __forceinline__ void operator()(long long j, const cmp* v, Int<N> n) const {
    cmp o[N];
#pragma unroll
    for (int i = 0; i < N; ++i) o[i] = OP == kSoftmax ? fs_exp(v[i] - m) * a : (v[i] - m) - a;
    store_n(orow, j, o, n, vec_ok);
  }
};

template <class T, int OP>
__device__ void softmax_kernel2(const T* x, T* out, long long N, long long C) {
  typedef typename Traits<T>::cmp cmp;
  typedef typename Traits<T>::acc acc;
  const Team team(C > kWarpCMax);
  const long long t = team.t, nt = team.nt;
  const bool out_vec = congruent16(x, out);
  for (long long row = team.first; row < N; row += team.stride) {
    const T* xr = x + row * C;
    RowStats<cmp, acc> s;
    s.init();
    for_each_in_row<kPipelineStats>(xr, C, t, nt, SoftmaxStats<T>{s});
    s = team.merge(s);  // all reads of the row are done after this
    if (OP == kLogSumExp) {
      if (t == 0)
        Traits<T>::store(out + row, cmp((double)s.m + log_kd((double)s.k, (double)s.d)));
      continue;
    }
    poison_nonfinite(s.m, s.d);
    const cmp a = OP == kSoftmax ? cmp(1.0 / ((double)s.k + (double)s.d))
                                 : cmp(log_kd((double)s.k, (double)s.d));
    for_each_in_row<kPipelineOut>(xr, C, t, nt, SoftmaxOut<T, OP>{out + row * C, s.m, a, out_vec});
  }
}

// ---------------------------------------------------------------------------------------
// One entry per op and dtype: the path is chosen by C
// ---------------------------------------------------------------------------------------
template <class T, int OP>
__device__ __forceinline__ void softmax_entry(const T* x, T* out, long long N, long long C) {
  check_launch();
  if (C <= kRegCMax)
    softmax_kernel1<T, OP>(x, out, N, C);
  else
    softmax_kernel2<T, OP>(x, out, N, C);
}

}  // namespace fs

#define FS_SOFTMAX_ENTRIES(T, DT)                                                        \
  extern "C" __global__ void __launch_bounds__(fs::kBlock, fs::kMinBlocks)                               \
      softmax_##DT(const T* x, T* out, long long N, long long C) {                       \
    fs::softmax_entry<T, fs::kSoftmax>(x, out, N, C);                                    \
  }                                                                                      \
  extern "C" __global__ void __launch_bounds__(fs::kBlock, fs::kMinBlocks)                               \
      log_softmax_##DT(const T* x, T* out, long long N, long long C) {                   \
    fs::softmax_entry<T, fs::kLogSoftmax>(x, out, N, C);                                 \
  }                                                                                      \
  extern "C" __global__ void __launch_bounds__(fs::kBlock, fs::kMinBlocks)                               \
      logsumexp_##DT(const T* x, T* out, long long N, long long C) {                     \
    fs::softmax_entry<T, fs::kLogSumExp>(x, out, N, C);                                  \
  }

FS_SOFTMAX_ENTRIES(float, float32)
FS_SOFTMAX_ENTRIES(double, float64)
FS_SOFTMAX_ENTRIES(fs::half_t, float16)

#undef FS_SOFTMAX_ENTRIES
