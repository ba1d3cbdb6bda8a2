// kernels/xent.cu -- fused cross-entropy (loss and gradient in one kernel) over the rows
// of row-major, C-contiguous (N, C) logits, for float32, float64 and float16 (computed in
// float32), with PyTorch's weight, label_smoothing and ignore_index.
//
// Entry points (extern "C", looked up by f"{op}_{dtype.name}"); T = float, double,
// fs::half_t (the bits of a float16); W = float for float32 and float16, double for
// float64 (the API's weight array in the compute dtype):
//
//   xent_fused_<dt>(const T* z, const long long* y, const W* w, double wsum,
//                   long long ignore_index, double eps, double scale,
//                   const double* scale_dev, double* loss, T* g, long long* err,
//                   long long N, long long C)
//   xent_fwd_<dt>  (const T* z, const long long* y, const W* w, double wsum,
//                   long long ignore_index, double eps, double scale,
//                   const double* scale_dev, double* loss, long long* err, long long N,
//                   long long C)
//   xent_prologue(const long long* y, long long ignore_index, int mean,
//                 double* scalars, long long* err, long long N)        one block
//   xent_epilogue_<dt>(const double* loss, long long N, const double* scalars,
//                      int mean, T* value)                             one block
//   xent_prob_<dt> (const T* z, const T* q, const W* w, double eps, double scale,
//                   double* loss, T* g, long long N, long long C)
//
//   z: logits (N, C).  y: int64 class indices (N,).  q: probability targets (N, C), z's
//   dtype.  w: class weights (C,) or NULL (all 1).  wsum: sum(w) (C when w is NULL), as
//   the API resolves it.  eps: label smoothing.  scale: the reduction's factor (1/denom
//   for "mean", 1 otherwise); the gradient is written already multiplied by it.
//   scale_dev: NULL, or where on the device to read scale instead (the lean path:
//   xent_prologue computes it there, so the host never waits for the denominator).
//   loss: float64 (N,) per-row losses (0 for ignored rows; the host adds them up).
//   g: (N, C) gradient = scale * d(loss.sum())/dz, zero rows for ignored rows; g may be z
//   itself (in-place: every row is read in full before any of it is written).  In
//   xent_prob, g may be NULL: forward only.
//   err: int64 scalar the host sets to N before the launch; a row whose target is
//   neither ignore_index nor in [0, C) does atomicMin(err, row), gets loss NaN and a NaN
//   gradient row, so after the launch err < N names the first bad row.
//
// Launch: blockDim = 256 (any multiple of 32 up to 256 works), grid as in
// kernels/README.md; every kernel loops over rows grid-stride, so any grid >= 1 gives the
// same bits.
//
// Versions (karpathy/llm.c dev/cuda style)
// ----------------------------------------
// xent_kernel1  C <= 128: a group of G = pow2ceil(ceil(C/4)) lanes per row (MNIST's
//               C = 10: G = 4, 8 rows per warp; G = 32 for C > 64), the row in
//               registers: max by shuffles, then exp, (k, d) and the smoothing sum by
//               shuffles, then the gradient from registers.  Reads z once, writes g once.
// xent_kernel2  C > 128: a team per row, a warp for C <= 1024 (8 rows per block), the
//               block above.  Pass 1 reads the row with 128-bit loads, two in flight per
//               thread (a scalar head aligns the row to 16 bytes first, so C = 50257
//               vectorises) and folds it into online statistics (Milakov & Gimelshein
//               2018, arXiv:1805.02867) with the -inf guard (see common.cuh), then
//               shuffles and, for a block, the warps' partials merged in warp order
//               (deterministic).  Pass 2 rereads the row and writes g with 128-bit stores.
// xent_kernel3  (FS_XENT_ONCHIP, built by tools/gpu_kernels.py onchip only) C > 1024 with
//               the row staged in shared memory: one DRAM read of the logits, not two.
// xent_kernel4  (FS_XENT_CLUSTER, sm_90, likewise) rows too long for one SM: a cluster
//               of 4 blocks per row, each with a slice in shared memory, the statistics
//               exchanged over distributed shared memory.
// xent_prob_kernel1 / xent_prob_kernel2: the same two shapes for probability targets.
// Tried and dropped (see softmax.cu): 1024- and 256-element rows in registers (80-208
// registers for every path of an entry), and compile-time variants of the lane count,
// the team and the smoothing (~60 s of compilation for this file, now ~9 s); those are
// launch-uniform branches now.
//
// Which entry uses what: xent_fused, xent_fwd and xent_prob all take kernel1 for
// C <= 128, kernel2 with a warp per row for 128 < C <= 1024 and kernel2 with a block per
// row above; xent_fwd is the GRAD = false instance (no pass 2), xent_prob with g = NULL
// too.  The smoothing sum is accumulated only when eps != 0.  The true-class gradient is
// written by the thread that read z_y, after its generic store of that element.
//
// Napkin math (bytes per row, S = sizeof(T)):
//   kernel1 fused: C*S in + C*S out (the minimum) + 8 (y) + 8 (loss).
//   kernel2 fused: 2 reads + 1 write = 3*C*S from the SMs' view, close to 2*C*S in DRAM
//   (the reread hits L1 for a warp's row, mostly L2 for a block's: a 32000-class
//   float32 row is 128 KB) + 16.  xent_fwd: C*S + 16 on both paths.
//   N = 4096, C = 32000, float32 (Llama-ish vocab slice): 524 MB of logits, fused moves
//   1.05-1.57 GB = 0.31-0.47 ms at ~3.35 TB/s (H100 SXM); forward only 0.16 ms.
//   prob targets add C*S (q) per pass that reads it (2 reads with a gradient).
//   Measured on an H200 (device copy 4.22 TB/s read + write; tools/gpu_kernels.py
//   sweep): 4096 x 32000 float32 fused 0.556 ms (45% of copy), forward only 0.338 ms;
//   1024 x 128256 0.527 ms (47%), 0.256 ms.  Pass 1 is the slow one: it streams from
//   DRAM at 1.5-2 TB/s (latency-bound: 32 bytes in flight per thread, a row's loads one
//   batch after another), while pass 2 rereads and writes at over 4 TB/s.  The
//   software-pipelined pass 1 (FS_PREFETCH, common.cuh) took it from 0.617 / 0.596 ms.
//
// Math (class-index targets; as fastsoftmax/_numba/kernels.py and reference.py)
// ---------------------------------------------------------------------------
// With weight w (all 1 when NULL), smoothing eps, C classes, m = max_c z_c,
// t_c = z_c - m, s = sum_c exp(t_c) (kept as (k, d), so log s = log(k) + log1p(d/k)) and
// log p_c = t_c - log s, the smoothed weighted target is
//   Q_c = w_c ((1-eps) [c == y] + eps/C), so
//   loss  = -sum_c Q_c log p_c
//         = (1-eps) w_y (log s - t_y) + (eps/C) sum_c w_c (log s - t_c)
//         = a log s - (1-eps) w_y t_y + (eps/C) sum_c w_c (m - z_c),
//   a     = (1-eps) w_y + (eps/C) W,   W = sum_c w_c (the host's `wsum`),
//   dloss/dz_c = a p_c - (1-eps) w_y [c == y] - (eps/C) w_c.
// Computed as:  loss = coef_y (log s - t_y) + (eps/C)(W log s + smooth), coef_y =
// (1-eps) w_y, smooth = sum_{w_c != 0} w_c (m - z_c) -- a sum of non-negative numbers
// (no cancellation at logits of 1e4), in the sum type (double for float32 and float64:
// m - z_c of +-3e38 is finite in double; float for float16); each part is skipped when
// its coefficient is exactly 0 (0 * log 0 = 0).
// t_y = z_y - m is formed in double (finite at +-3e38).  Row scalars are all double.
// Gradient: g_c = scale (e_c * a/s - (eps/C) w_c), e_c = exp(t_c), with a/s rounded to
// the compute type once; at the target
//   g_y = scale (coef_y (p_y - 1) + (eps/C)(W p_y - w_y)),  p_y - 1 = -(s - e_y)/s,
// where s - e_y = (k - 1) + d when e_y is one of the k exact ones: the float32 product
// e_y * (1/s) - 1 would be 0 for a confident row (1 - p_y ~ 1e-11).  float16 forms all
// of it in float32/double and rounds once on the store.
// Rows: y == ignore_index -> loss 0, g row 0 (whatever the logits, NaN included);
// y outside [0, C) -> err, loss NaN, g row NaN; all -inf row -> loss and g NaN (0/0);
// a NaN or +inf logit -> loss and g NaN for that row only.
//
// Probability targets: wq_c = w_c ((1-eps) q_c + eps/C) (formed in the compute type as
// the CPU backends do), a = sum_c wq_c, lin = sum_{wq_c != 0} wq_c (m - z_c):
//   loss = a log s + lin,   g_c = scale (e_c a/s - wq_c).
// A zero coefficient contributes 0 even where log p_c = -inf.

#ifndef FASTSOFTMAX_COMMON_CUH
#include "common.cuh"
#endif

#ifndef FS_XENT_ONCHIP
#define FS_XENT_ONCHIP 0
#endif
#ifndef FS_XENT_CLUSTER
#define FS_XENT_CLUSTER 0
#endif

namespace fs {

template <class T> struct XentArgs {
  typedef typename Traits<T>::cmp cmp;
  const T* z;
  const long long* y;  // class indices (index targets)
  const T* q;          // probabilities (prob targets)
  const cmp* w;        // NULL: all weights 1
  double wsum;
  long long ignore;
  double eps;
  double scale;
  double* loss;
  T* g;  // NULL: forward only
  long long* err;
  long long N, C;
};

// scale * dloss/dz_y in double (see the header).  e_y = exp(z_y - m) in the compute type.
__device__ __forceinline__ double true_class_grad(double e_y, double k, double d,
                                                  double coef_y, double eps_c, double wsum,
                                                  double w_y, double scale) {
  const double inv_s = 1.0 / (k + d);
  const double rest = (e_y == 1.0) ? ((k - 1.0) + d) : ((k + d) - e_y);
  return scale * (-coef_y * (rest * inv_s) + eps_c * (wsum * (e_y * inv_s) - w_y));
}

// Per-row loss of the index targets (see the header), in double.
__device__ __forceinline__ double index_row_loss(double logs, double ty, double coef_y,
                                                 double eps_c, double wsum, double smooth) {
  const double row = coef_y != 0.0 ? coef_y * (logs - ty) : 0.0;
  return row + (eps_c != 0.0 ? eps_c * (wsum * logs + smooth) : 0.0);
}

// A class-index row once its statistics (m, k, d) are merged (see the header): d is
// poisoned to NaN for a non-finite max; ga and gb are pass 2's factors of e_c =
// exp(z_c - m) and of w_c; the rest is what the target's gradient and the loss need.
template <class Cmp> struct IndexRow {
  double k, d, w_y, coef_y;
  Cmp ga, gb;
  // scale * dloss/dz_y, stored over its own pass-2 store by the thread that read z_y
  __device__ __forceinline__ Cmp target_grad(Cmp e_y, double eps_c, double wsum,
                                             double scale) const {
    return Cmp(true_class_grad((double)e_y, k, d, coef_y, eps_c, wsum, w_y, scale));
  }
  // ty = z_y - m; smooth: the row's smoothing sum (0 without smoothing)
  __device__ __forceinline__ double loss(double ty, double eps_c, double wsum,
                                         double smooth) const {
    return index_row_loss(log_kd(k, d), ty, coef_y, eps_c, wsum, smooth);
  }
};

template <class T, class Cmp, class Acc>
__device__ __forceinline__ IndexRow<Cmp> index_row(const XentArgs<T>& a, long long yi,
                                                   double eps_c, Cmp m, Acc k, Acc& d) {
  poison_nonfinite(m, d);
  IndexRow<Cmp> r;
  r.k = (double)k;
  r.d = (double)d;
  r.w_y = a.w ? (double)a.w[yi] : 1.0;
  r.coef_y = (1.0 - a.eps) * r.w_y;
  r.ga = Cmp(a.scale * (r.coef_y + eps_c * a.wsum) / (r.k + r.d));
  r.gb = Cmp(a.scale * eps_c);
  return r;
}

// ---------------------------------------------------------------------------------------
// xent_kernel1: class-index targets, G lanes per row, kLaneElems per lane in registers
// ---------------------------------------------------------------------------------------
template <class T, bool GRAD>
__device__ void xent_kernel1(const XentArgs<T>& a) {
  typedef typename Traits<T>::cmp cmp;
  typedef typename Traits<T>::acc acc;
  constexpr int E = kLaneElems;
  const long long C = a.C;
  const int G = small_group(C);
  const int gl = lane_id() & (G - 1);
  const unsigned mask = group_mask(G);
  const long long groups_per_block = blockDim.x / G;
  const long long stride = (long long)gridDim.x * groups_per_block;
  const double eps_c = a.eps / (double)C;
  const bool lin = a.eps != 0.0;
  for (long long row = (long long)blockIdx.x * groups_per_block + threadIdx.x / G; row < a.N;
       row += stride) {
    const long long yi = a.y[row];
    T* gr = GRAD ? a.g + row * C : nullptr;
    const bool ignored = yi == a.ignore;
    if (ignored || yi < 0 || yi >= C) {  // group-uniform
      const cmp fill = ignored ? cmp(0) : Num<cmp>::nan();
      if (gl == 0) {
        a.loss[row] = ignored ? 0.0 : Num<double>::nan();
        if (!ignored) atomicMin(a.err, row);
      }
      if (GRAD)
        for (long long j = gl; j < C; j += G) Traits<T>::store(gr + j, fill);
      continue;
    }
    const T* zr = a.z + row * C;
    const int y = (int)yi;  // 0 <= y < C <= kRegCMax: kernel1 indexes a row with ints
    const int c = (int)C;
    cmp v[E];
    const cmp m = load_row_max<T, E>(zr, c, gl, G, mask, v);
    acc k = acc(0), d = acc(0), smooth = acc(0);
    cmp zy = cmp(0);  // z_y, on the lane that holds it
#pragma unroll
    for (int i = 0; i < E; ++i) {
      const int j = gl + G * i;
      if (j < c) {
        if (j == y) zy = v[i];
        if (lin) {
          const acc cw = a.w ? acc(a.w[j]) : acc(1);
          if (cw != acc(0)) smooth += cw * (acc(m) - acc(v[i]));
        }
        const cmp e = add_term(k, d, v[i], m);
        if (GRAD) v[i] = e;
      }
    }
    k = group_sum(k, mask, G);
    d = group_sum(d, mask, G);
    if (lin) smooth = group_sum(smooth, mask, G);
    zy = __shfl_sync(mask, zy, y % G, G);
    const IndexRow<cmp> r = index_row(a, yi, eps_c, m, k, d);
    if (GRAD) {  // first, so that v[] is dead before the log below needs its registers
      cmp ey = cmp(0);
#pragma unroll
      for (int i = 0; i < E; ++i) {
        const int j = gl + G * i;
        if (j < c) {
          if (j == y) ey = v[i];
          Traits<T>::store(gr + j, v[i] * r.ga - r.gb * (a.w ? a.w[j] : cmp(1)));
        }
      }
      if (gl == y % G)  // the lane that holds z_y overwrites its own store
        Traits<T>::store(gr + y, r.target_grad(ey, eps_c, a.wsum, a.scale));
    }
    if (gl == 0) a.loss[row] = r.loss((double)zy - (double)m, eps_c, a.wsum, (double)smooth);
  }
}

// ---------------------------------------------------------------------------------------
// xent_kernel2: class-index targets, a team (warp or block) per row, online statistics
// ---------------------------------------------------------------------------------------
// Per-element work of the kernel2 passes: functors, not lambdas (NVRTC compiles an
// unannotated lambda as host code; annotating it needs nvcc's --extended-lambda).
template <class T> struct XentStats {  // pass 1, class-index targets
  typedef typename Traits<T>::cmp cmp;
  typedef typename Traits<T>::acc acc;
  RowStats<cmp, acc>& s;
  const cmp* w;
  bool lin;  // accumulate the smoothing sum (eps != 0)
  template <int N>
  __device__ __forceinline__ void operator()(long long j, const cmp* v, Int<N>) const {
#pragma unroll
    for (int i = 0; i < N; ++i) push(s, v[i], (lin && w) ? acc(w[j + i]) : acc(1), lin);
  }
};

template <class T> struct XentGrad {  // pass 2, class-index targets
  typedef typename Traits<T>::cmp cmp;
  T* gr;
  const cmp* w;
  cmp m, ga, gb;  // g_c = exp(z_c - m) ga - gb w_c
  long long y;
  bool vec_ok;
  bool& owner;  // set by the thread that meets z_y, with e_y
  cmp& ey;
  template <int N>
  __device__ __forceinline__ void operator()(long long j, const cmp* v, Int<N> n) const {
    cmp o[N];
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const cmp e = fs_exp(v[i] - m);
      o[i] = e * ga - gb * (w ? w[j + i] : cmp(1));
      if (j + i == y) {
        owner = true;
        ey = e;
      }
    }
    store_n(gr, j, o, n, vec_ok);
  }
};

template <class T, bool GRAD>
__device__ void xent_kernel2(const XentArgs<T>& a) {
  typedef typename Traits<T>::cmp cmp;
  typedef typename Traits<T>::acc acc;
  const long long C = a.C;
  const Team team(C > kWarpCMax);
  const long long t = team.t, nt = team.nt;
  const double eps_c = a.eps / (double)C;
  const bool lin = a.eps != 0.0;
  const bool g_vec = GRAD && congruent16(a.z, a.g);
  const cmp* w = a.w;
  for (long long row = team.first; row < a.N; row += team.stride) {
    const long long yi = a.y[row];
    T* gr = GRAD ? a.g + row * C : nullptr;
    const bool ignored = yi == a.ignore;
    if (ignored || yi < 0 || yi >= C) {  // team-uniform
      if (t == 0) {
        a.loss[row] = ignored ? 0.0 : Num<double>::nan();
        if (!ignored) atomicMin(a.err, row);
      }
      if (GRAD) fill_row(gr, C, t, nt, ignored ? cmp(0) : Num<cmp>::nan());
      continue;
    }
    const T* zr = a.z + row * C;
    cmp zy = cmp(0);
    if (t == 0) zy = Traits<T>::load(zr + yi);  // read before the team's barrier
    RowStats<cmp, acc> s;
    s.init();
    for_each_in_row<kPipelineStats>(zr, C, t, nt, XentStats<T>{s, w, lin});
    s = team.merge(s);  // every read of pass 1 is done after this
    const IndexRow<cmp> r = index_row(a, yi, eps_c, s.m, s.k, s.d);
    if (GRAD) {
      bool owner = false;
      cmp ey = cmp(0);
      for_each_in_row<kPipelineOut>(zr, C, t, nt,
                                    XentGrad<T>{gr, w, s.m, r.ga, r.gb, yi, g_vec, owner, ey});
      if (owner)  // the thread that read z_y in this pass overwrites its own store
        Traits<T>::store(gr + yi, r.target_grad(ey, eps_c, a.wsum, a.scale));
    }
    if (t == 0) a.loss[row] = r.loss((double)zy - (double)s.m, eps_c, a.wsum, (double)s.lin);
  }
}

#if FS_XENT_ONCHIP
// ---------------------------------------------------------------------------------------
// xent_kernel3 (-DFS_XENT_ONCHIP=1 -DFS_BLOCK=512 -DFS_MIN_BLOCKS=1, entry
// xent_fused_onchip_<dt>; built by tools/gpu_kernels.py onchip, not by the package): C > kWarpCMax, a block per
// row with the row staged in shared memory, so the logits cross DRAM once (kernel2 reads
// them twice; its pass 1 is latency-bound, see the header).  Per row: a bulk copy, 16
// bytes per load and kCopyLoads loads of a thread in flight before its stores (512
// threads x 8 x 16 bytes: a 64 KB row in one round trip); the statistics from shared
// memory; pass 2 from shared memory.  Shared memory: (C + vec) * sizeof(T) bytes of
// dynamic shared memory (a 32000-class float32 row: 125 KB, so one block per SM; the
// host raises the kernel's limit and launches about one block per SM).  The row's image
// keeps the global row's 16-byte split: element j at srow[j + pad], the vector part
// aligned.  Other bits than kernel2 (each thread sees other elements in pass 1).
// ---------------------------------------------------------------------------------------
constexpr int kCopyLoads = 8;

// f over row elements read from its shared-memory image (the global row's split sp).
template <class T, class F>
__device__ __forceinline__ void for_each_in_image(const T* srow, long long pad,
                                                  const RowSplit& sp, long long C,
                                                  long long t, long long nt, F&& f) {
  typedef typename Traits<T>::cmp cmp;
  constexpr int V = Traits<T>::vec;
  const Vec16* sv = reinterpret_cast<const Vec16*>(srow + sp.head + pad);
  for (long long v = t; v < sp.nvec; v += nt) {
    cmp x[V];
    Traits<T>::unpack(sv[v], x);
    f(sp.head + v * V, x, Int<V>());
  }
  const long long nscalar = sp.head + (C - sp.tail);
  for (long long i = t; i < nscalar; i += nt) {
    const long long j = i < sp.head ? i : sp.tail + (i - sp.head);
    const cmp x = Traits<T>::load(srow + j + pad);
    f(j, &x, Int<1>());
  }
}

template <class T>
__device__ void xent_kernel3(const XentArgs<T>& a) {
  typedef typename Traits<T>::cmp cmp;
  typedef typename Traits<T>::acc acc;
  constexpr int V = Traits<T>::vec;
  extern __shared__ __align__(16) unsigned char onchip_row[];
  T* srow = reinterpret_cast<T*>(onchip_row);
  const long long C = a.C;
  const long long t = threadIdx.x, nt = blockDim.x;
  const double eps_c = a.eps / (double)C;
  const bool lin = a.eps != 0.0;
  const bool g_vec = congruent16(a.z, a.g);
  const cmp* w = a.w;
  for (long long row = blockIdx.x; row < a.N; row += gridDim.x) {
    const long long yi = a.y[row];
    T* gr = a.g + row * C;
    const bool ignored = yi == a.ignore;
    if (ignored || yi < 0 || yi >= C) {  // block-uniform
      if (t == 0) {
        a.loss[row] = ignored ? 0.0 : Num<double>::nan();
        if (!ignored) atomicMin(a.err, row);
      }
      fill_row(gr, C, t, nt, ignored ? cmp(0) : Num<cmp>::nan());
      continue;
    }
    const T* zr = a.z + row * C;
    const RowSplit sp = split_row(zr, C);
    const long long pad = (V - sp.head % V) % V;  // srow + sp.head + pad is 16-byte aligned
    copy_vectors<kCopyLoads>(reinterpret_cast<const Vec16*>(zr + sp.head),
                             reinterpret_cast<Vec16*>(srow + sp.head + pad), 0, sp.nvec, t,
                             nt);
    const long long nscalar = sp.head + (C - sp.tail);
    for (long long i = t; i < nscalar; i += nt) {
      const long long j = i < sp.head ? i : sp.tail + (i - sp.head);
      srow[j + pad] = zr[j];
    }
    __syncthreads();
    RowStats<cmp, acc> s;
    s.init();
    for_each_in_image(srow, pad, sp, C, t, nt, XentStats<T>{s, w, lin});
    s = block_merge(s);
    const IndexRow<cmp> r = index_row(a, yi, eps_c, s.m, s.k, s.d);
    bool owner = false;
    cmp ey = cmp(0);
    for_each_in_image(srow, pad, sp, C, t, nt,
                      XentGrad<T>{gr, w, s.m, r.ga, r.gb, yi, g_vec, owner, ey});
    if (owner) Traits<T>::store(gr + yi, r.target_grad(ey, eps_c, a.wsum, a.scale));
    if (t == 0) {
      const double zy = (double)Traits<T>::load(srow + yi + pad);
      a.loss[row] = r.loss(zy - (double)s.m, eps_c, a.wsum, (double)s.lin);
    }
    __syncthreads();  // every read of the image is done before the next row's copy
  }
}
#endif  // FS_XENT_ONCHIP

#if FS_XENT_CLUSTER
// ---------------------------------------------------------------------------------------
// xent_kernel4 (sm_90: -DFS_XENT_CLUSTER=1 -DFS_BLOCK=512 -DFS_MIN_BLOCKS=1, entry
// xent_fused_cluster_<dt>; built by tools/gpu_kernels.py onchip, not by the package): rows too
// long for one SM's shared memory (1024 x 128256 float32: 501 KB) split over a cluster of
// kClusterCtas blocks, each holding its slice of the row in shared memory.  Per row: each
// block copies its slice (16-byte loads, kCopyLoads in flight per thread), folds it into
// row statistics, publishes them in its shared memory; after a cluster barrier every
// block reads all kClusterCtas statistics over distributed shared memory and merges them
// in rank order (the same bits in every block), then writes the gradient of its slice;
// a second barrier keeps the published statistics until every block has read them.
// The slices are the row's 16-byte vectors split by rank; rank 0 takes the scalar head,
// the last rank the scalar tail.  Launch: grid a multiple of kClusterCtas (the cluster
// shape is compiled in), dynamic shared memory ceil(nvec / kClusterCtas) * 16 bytes.
// ---------------------------------------------------------------------------------------
#ifndef FS_CLUSTER_CTAS
#define FS_CLUSTER_CTAS 4
#endif
inline constexpr int kClusterCtas = FS_CLUSTER_CTAS;

__device__ __forceinline__ unsigned cluster_rank() {
  unsigned r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}

__device__ __forceinline__ void cluster_barrier() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;"
               ::: "memory");
}

// The double at `local` (this block's shared memory) in block `rank` of the cluster.
__device__ __forceinline__ double peer_f64(const double* local, unsigned rank) {
  unsigned long long generic_to_shared;
  asm("cvta.to.shared.u64 %0, %1;" : "=l"(generic_to_shared) : "l"(local));
  const unsigned addr = (unsigned)generic_to_shared;
  unsigned peer;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(peer) : "r"(addr), "r"(rank));
  double v;
  asm volatile("ld.shared::cluster.f64 %0, [%1];" : "=d"(v) : "r"(peer) : "memory");
  return v;
}

// This block's part of a row: vectors [v0, v1) of the split, and whether it takes the
// scalar head (rank 0) and tail (the last rank).
struct Slice {
  long long v0, v1;
  bool head, tail;
};

__device__ __forceinline__ Slice slice_of(const RowSplit& sp, unsigned rank) {
  Slice sl;
  sl.v0 = sp.nvec * (long long)rank / kClusterCtas;
  sl.v1 = sp.nvec * (long long)(rank + 1) / kClusterCtas;
  sl.head = rank == 0;
  sl.tail = rank == kClusterCtas - 1;
  return sl;
}

// f over the slice: its vectors from the shared-memory image (vector v at sv[v - v0]),
// its scalars from global memory.
template <class T, class F>
__device__ __forceinline__ void for_each_in_slice(const T* zr, const Vec16* sv,
                                                  const RowSplit& sp, const Slice& sl,
                                                  long long C, long long t, long long nt,
                                                  F&& f) {
  typedef typename Traits<T>::cmp cmp;
  constexpr int V = Traits<T>::vec;
  for (long long v = sl.v0 + t; v < sl.v1; v += nt) {
    cmp x[V];
    Traits<T>::unpack(sv[v - sl.v0], x);
    f(sp.head + v * V, x, Int<V>());
  }
  const long long nh = sl.head ? sp.head : 0, ntail = sl.tail ? C - sp.tail : 0;
  for (long long i = t; i < nh + ntail; i += nt) {
    const long long j = i < nh ? i : sp.tail + (i - nh);
    const cmp x = Traits<T>::load(zr + j);
    f(j, &x, Int<1>());
  }
}

// Fills this block's slice of row gr (ignored rows: 0; a bad target: NaN), with the
// slices of gr's own split (it reads nothing).
template <class T>
__device__ __forceinline__ void fill_slice(T* gr, long long C, unsigned rank, long long t,
                                           long long nt, typename Traits<T>::cmp v) {
  typedef typename Traits<T>::cmp cmp;
  constexpr int V = Traits<T>::vec;
  const RowSplit sp = split_row(gr, C);
  const Slice sl = slice_of(sp, rank);
  cmp vv[V];
#pragma unroll
  for (int i = 0; i < V; ++i) vv[i] = v;
  const Vec16 pv = Traits<T>::pack(vv);
  Vec16* vrow = reinterpret_cast<Vec16*>(gr + sp.head);
  for (long long i = sl.v0 + t; i < sl.v1; i += nt) vrow[i] = pv;
  const long long nh = sl.head ? sp.head : 0, ntail = sl.tail ? C - sp.tail : 0;
  for (long long i = t; i < nh + ntail; i += nt)
    Traits<T>::store(gr + (i < nh ? i : sp.tail + (i - nh)), v);
}

template <class T>
__device__ void xent_kernel4(const XentArgs<T>& a) {
  typedef typename Traits<T>::cmp cmp;
  typedef typename Traits<T>::acc acc;
  extern __shared__ __align__(16) unsigned char cluster_slice[];
  __shared__ double published[5];  // this block's m, k, d, lin, wsum for the row
  Vec16* sv = reinterpret_cast<Vec16*>(cluster_slice);
  const unsigned rank = cluster_rank();
  const long long cluster = blockIdx.x / kClusterCtas, clusters = gridDim.x / kClusterCtas;
  const long long C = a.C;
  const long long t = threadIdx.x, nt = blockDim.x;
  const double eps_c = a.eps / (double)C;
  const bool lin = a.eps != 0.0;
  const bool g_vec = congruent16(a.z, a.g);
  const cmp* w = a.w;
  for (long long row = cluster; row < a.N; row += clusters) {
    const long long yi = a.y[row];
    T* gr = a.g + row * C;
    const T* zr = a.z + row * C;
    const RowSplit sp = split_row(zr, C);
    const Slice sl = slice_of(sp, rank);
    const bool ignored = yi == a.ignore;
    if (ignored || yi < 0 || yi >= C) {  // cluster-uniform
      if (rank == 0 && t == 0) {
        a.loss[row] = ignored ? 0.0 : Num<double>::nan();
        if (!ignored) atomicMin(a.err, row);
      }
      fill_slice(gr, C, rank, t, nt, ignored ? cmp(0) : Num<cmp>::nan());
      continue;
    }
    copy_vectors<kCopyLoads>(reinterpret_cast<const Vec16*>(zr + sp.head), sv, sl.v0, sl.v1,
                             t, nt);
    __syncthreads();
    RowStats<cmp, acc> s;
    s.init();
    for_each_in_slice(zr, sv, sp, sl, C, t, nt, XentStats<T>{s, w, lin});
    s = block_merge(s);
    if (t == 0) {
      published[0] = (double)s.m;
      published[1] = (double)s.k;
      published[2] = (double)s.d;
      published[3] = (double)s.lin;
      published[4] = (double)s.wsum;
    }
    cluster_barrier();
    RowStats<cmp, acc> all;
    all.init();
    for (unsigned r = 0; r < (unsigned)kClusterCtas; ++r) {  // rank order: deterministic
      RowStats<cmp, acc> p;
      p.m = cmp(peer_f64(published + 0, r));
      p.k = acc(peer_f64(published + 1, r));
      p.d = acc(peer_f64(published + 2, r));
      p.lin = acc(peer_f64(published + 3, r));
      p.wsum = acc(peer_f64(published + 4, r));
      merge(all, p);
    }
    const IndexRow<cmp> r = index_row(a, yi, eps_c, all.m, all.k, all.d);
    bool owner = false;
    cmp ey = cmp(0);
    for_each_in_slice(zr, sv, sp, sl, C, t, nt,
                      XentGrad<T>{gr, w, all.m, r.ga, r.gb, yi, g_vec, owner, ey});
    if (owner) Traits<T>::store(gr + yi, r.target_grad(ey, eps_c, a.wsum, a.scale));
    if (rank == 0 && t == 0)
      a.loss[row] = r.loss((double)Traits<T>::load(zr + yi) - (double)all.m, eps_c, a.wsum,
                           (double)all.lin);
    cluster_barrier();  // every block has read `published` and its slice image
  }
}
#endif  // FS_XENT_CLUSTER

// ---------------------------------------------------------------------------------------
// Probability targets
// ---------------------------------------------------------------------------------------
// wq_c = w_c ((1-eps) q_c + eps/C) in the compute type (keep = 1-eps, epsc = eps/C rounded
// to it once, as the CPU backends do).
template <class Cmp>
__device__ __forceinline__ Cmp prob_coef(const Cmp* w, long long j, Cmp q, Cmp keep,
                                         Cmp epsc) {
  const Cmp c = keep * q + epsc;
  return w ? w[j] * c : c;
}

template <class T, bool GRAD>
__device__ void xent_prob_kernel1(const XentArgs<T>& a) {
  typedef typename Traits<T>::cmp cmp;
  typedef typename Traits<T>::acc acc;
  constexpr int E = kLaneElems;
  const long long C = a.C;
  const int G = small_group(C);
  const int gl = lane_id() & (G - 1);
  const unsigned mask = group_mask(G);
  const long long groups_per_block = blockDim.x / G;
  const long long stride = (long long)gridDim.x * groups_per_block;
  const cmp keep = cmp(1.0 - a.eps), epsc = cmp(a.eps / (double)C);
  for (long long row = (long long)blockIdx.x * groups_per_block + threadIdx.x / G; row < a.N;
       row += stride) {
    const T* zr = a.z + row * C;
    const T* qr = a.q + row * C;
    const int c = (int)C;  // <= kRegCMax
    cmp v[E], wq[E];
    cmp m = -Num<cmp>::inf();
#pragma unroll
    for (int i = 0; i < E; ++i) {
      const int j = gl + G * i;
      if (j < c) {
        v[i] = Traits<T>::load(zr + j);
        wq[i] = prob_coef(a.w, j, Traits<T>::load(qr + j), keep, epsc);
        m = v[i] > m ? v[i] : m;
      }
    }
    m = group_max(m, mask, G);
    acc k = acc(0), d = acc(0), asum = acc(0), lin = acc(0);
#pragma unroll
    for (int i = 0; i < E; ++i) {
      if (gl + G * i < c) {
        const acc cq = acc(wq[i]);
        if (cq != acc(0)) {
          asum += cq;
          lin += cq * (acc(m) - acc(v[i]));
        }
        const cmp e = add_term(k, d, v[i], m);
        if (GRAD) v[i] = e;
      }
    }
    k = group_sum(k, mask, G);
    d = group_sum(d, mask, G);
    asum = group_sum(asum, mask, G);
    lin = group_sum(lin, mask, G);
    poison_nonfinite(m, d);
    const double kk = (double)k, dd = (double)d;
    if (GRAD) {  // before the log (registers)
      T* gr = a.g + row * C;
      const cmp ga = cmp(a.scale * (double)asum / (kk + dd));
      const cmp gs = cmp(a.scale);
#pragma unroll
      for (int i = 0; i < E; ++i) {
        const int j = gl + G * i;
        if (j < c) Traits<T>::store(gr + j, v[i] * ga - gs * wq[i]);
      }
    }
    if (gl == 0) a.loss[row] = (double)asum * log_kd(kk, dd) + (double)lin;
  }
}

template <class T> struct ProbStats {  // pass 1, probability targets
  typedef typename Traits<T>::cmp cmp;
  typedef typename Traits<T>::acc acc;
  RowStats<cmp, acc>& s;
  const T* qr;
  const cmp* w;
  cmp keep, epsc;
  bool q_vec;
  template <int N>
  __device__ __forceinline__ void operator()(long long j, const cmp* v, Int<N> n) const {
    cmp q[N];
    load_n(qr, j, q, n, q_vec);
#pragma unroll
    for (int i = 0; i < N; ++i) push(s, v[i], acc(prob_coef(w, j + i, q[i], keep, epsc)), true);
  }
};

template <class T> struct ProbGrad {  // pass 2, probability targets
  typedef typename Traits<T>::cmp cmp;
  T* gr;
  const T* qr;
  const cmp* w;
  cmp m, ga, gs, keep, epsc;  // g_c = exp(z_c - m) ga - gs wq_c
  bool q_vec, g_vec;
  template <int N>
  __device__ __forceinline__ void operator()(long long j, const cmp* v, Int<N> n) const {
    cmp q[N], o[N];
    load_n(qr, j, q, n, q_vec);
#pragma unroll
    for (int i = 0; i < N; ++i)
      o[i] = fs_exp(v[i] - m) * ga - gs * prob_coef(w, j + i, q[i], keep, epsc);
    store_n(gr, j, o, n, g_vec);
  }
};

template <class T, bool GRAD>
__device__ void xent_prob_kernel2(const XentArgs<T>& a) {
  typedef typename Traits<T>::cmp cmp;
  typedef typename Traits<T>::acc acc;
  const long long C = a.C;
  const Team team(C > kWarpCMax);
  const long long t = team.t, nt = team.nt;
  const cmp keep = cmp(1.0 - a.eps), epsc = cmp(a.eps / (double)C);
  const bool q_vec = congruent16(a.z, a.q);
  const bool g_vec = GRAD && congruent16(a.z, a.g);
  const cmp* w = a.w;
  for (long long row = team.first; row < a.N; row += team.stride) {
    const T* zr = a.z + row * C;
    const T* qr = a.q + row * C;
    RowStats<cmp, acc> s;
    s.init();
    for_each_in_row<kPipelineStats>(zr, C, t, nt, ProbStats<T>{s, qr, w, keep, epsc, q_vec});
    s = team.merge(s);
    poison_nonfinite(s.m, s.d);
    const double kk = (double)s.k, dd = (double)s.d;
    if (GRAD) {
      const cmp ga = cmp(a.scale * (double)s.wsum / (kk + dd));
      for_each_in_row<kPipelineOut>(zr, C, t, nt,
                      ProbGrad<T>{a.g + row * C, qr, w, s.m, ga, cmp(a.scale), keep, epsc,
                                  q_vec, g_vec});
    }
    if (t == 0) a.loss[row] = (double)s.wsum * log_kd(kk, dd) + (double)s.lin;
  }
}

// ---------------------------------------------------------------------------------------
// Dispatch: one entry per op and dtype, the path chosen by C
// ---------------------------------------------------------------------------------------
template <class T, bool GRAD>
__device__ __forceinline__ void xent_index_entry(const XentArgs<T>& a) {
  check_launch();
  if (a.C <= kRegCMax)
    xent_kernel1<T, GRAD>(a);
  else
    xent_kernel2<T, GRAD>(a);
}

template <class T>
__device__ __forceinline__ void xent_prob_entry(const XentArgs<T>& a) {
  check_launch();
  if (a.g) {
    if (a.C <= kRegCMax)
      xent_prob_kernel1<T, true>(a);
    else
      xent_prob_kernel2<T, true>(a);
  } else {
    if (a.C <= kRegCMax)
      xent_prob_kernel1<T, false>(a);
    else
      xent_prob_kernel2<T, false>(a);
  }
}

template <class T>
__device__ __forceinline__ XentArgs<T> index_args(const T* z, const long long* y,
                                                  const typename Traits<T>::cmp* w,
                                                  double wsum, long long ignore, double eps,
                                                  double scale, double* loss, T* g,
                                                  long long* err, long long N, long long C) {
  XentArgs<T> a;
  a.z = z;
  a.y = y;
  a.q = nullptr;
  a.w = w;
  a.wsum = wsum;
  a.ignore = ignore;
  a.eps = eps;
  a.scale = scale;
  a.loss = loss;
  a.g = g;
  a.err = err;
  a.N = N;
  a.C = C;
  return a;
}

// ---------------------------------------------------------------------------------------
// The lean path's host work, on the device (fastsoftmax/_cupy/api.py, class indices
// without weights): xent_prologue before the fused kernel, xent_epilogue after it, so a
// call is three launches and one synchronisation (the bad-target flag).  One block each.
// ---------------------------------------------------------------------------------------
// scalars[0] = the rows whose target is not ignore_index (an integer count: exact),
// scalars[1] = the gradient's scale, 1 / scalars[0] for "mean" (0 when no row counts)
// and 1 otherwise, as fastsoftmax._validate.reduction_scale; *err = N (no bad row yet).
__device__ __forceinline__ void xent_prologue(const long long* y, long long ignore_index,
                                              int mean, double* scalars, long long* err,
                                              long long N) {
  __shared__ long long part[kBlock];
  long long count = 0;
  for (long long i = threadIdx.x; i < N; i += blockDim.x) count += y[i] != ignore_index;
  part[threadIdx.x] = count;
  __syncthreads();
  if (threadIdx.x == 0) {
    long long total = 0;
    for (int i = 0; i < (int)blockDim.x; ++i) total += part[i];
    scalars[0] = (double)total;
    scalars[1] = mean ? (total != 0 ? 1.0 / (double)total : 0.0) : 1.0;
    *err = N;
  }
}

// *value = the rows' losses summed in a fixed order (each thread its strided rows, then
// thread 0 the partial sums in thread order), / scalars[0] for "mean" (0 when that is 0),
// in the logits' dtype.
template <class T>
__device__ __forceinline__ void xent_epilogue(const double* loss, long long N,
                                              const double* scalars, int mean, T* value) {
  __shared__ double part[kBlock];
  double sum = 0.0;
  for (long long i = threadIdx.x; i < N; i += blockDim.x) sum += loss[i];
  part[threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int i = 0; i < (int)blockDim.x; ++i) total += part[i];
    const double v = mean ? (scalars[0] != 0.0 ? total / scalars[0] : 0.0) : total;
    Traits<T>::store(value, typename Traits<T>::cmp(v));
  }
}

}  // namespace fs

extern "C" __global__ void __launch_bounds__(fs::kBlock) xent_prologue(
    const long long* y, long long ignore_index, int mean, double* scalars, long long* err,
    long long N) {
  fs::xent_prologue(y, ignore_index, mean, scalars, err, N);
}

// The entries of the kernels that keep a row on chip (tools/gpu_kernels.py onchip):
// xent_fused's arguments, kBlock threads, C > kWarpCMax.
#define FS_XENT_ROW_ON_CHIP_ENTRY(ATTRS, NAME, KERNEL, T, W, DT)                          \
  extern "C" __global__ void ATTRS __launch_bounds__(fs::kBlock, 1) NAME##_##DT(             \
      const T* z, const long long* y, const W* w, double wsum, long long ignore_index,     \
      double eps, double scale, const double* scale_dev, double* loss, T* g,               \
      long long* err, long long N, long long C) {                                          \
    if (blockDim.x != fs::kBlock || C <= fs::kWarpCMax) __trap();                          \
    fs::KERNEL<T>(fs::index_args<T>(z, y, w, wsum, ignore_index, eps,                      \
                                    scale_dev ? *scale_dev : scale, loss, g, err, N, C));  \
  }
#if FS_XENT_ONCHIP
FS_XENT_ROW_ON_CHIP_ENTRY(, xent_fused_onchip, xent_kernel3, float, float, float32)
FS_XENT_ROW_ON_CHIP_ENTRY(, xent_fused_onchip, xent_kernel3, fs::half_t, float, float16)
#endif
#if FS_XENT_CLUSTER
FS_XENT_ROW_ON_CHIP_ENTRY(__cluster_dims__(fs::kClusterCtas, 1, 1), xent_fused_cluster,
                          xent_kernel4, float, float, float32)
FS_XENT_ROW_ON_CHIP_ENTRY(__cluster_dims__(fs::kClusterCtas, 1, 1), xent_fused_cluster,
                          xent_kernel4, fs::half_t, float, float16)
#endif
#undef FS_XENT_ROW_ON_CHIP_ENTRY

#define FS_XENT_ENTRIES(T, W, DT)                                                          \
  extern "C" __global__ void __launch_bounds__(fs::kBlock, fs::kMinBlocks) xent_fused_##DT(                \
      const T* z, const long long* y, const W* w, double wsum, long long ignore_index,     \
      double eps, double scale, const double* scale_dev, double* loss, T* g,               \
      long long* err, long long N, long long C) {                                          \
    fs::xent_index_entry<T, true>(fs::index_args<T>(z, y, w, wsum, ignore_index, eps,     \
                                                    scale_dev ? *scale_dev : scale, loss,  \
                                                    g, err, N, C));                        \
  }                                                                                        \
  extern "C" __global__ void __launch_bounds__(fs::kBlock, fs::kMinBlocks) xent_fwd_##DT(                  \
      const T* z, const long long* y, const W* w, double wsum, long long ignore_index,     \
      double eps, double scale, const double* scale_dev, double* loss, long long* err,     \
      long long N, long long C) {                                                          \
    fs::xent_index_entry<T, false>(fs::index_args<T>(z, y, w, wsum, ignore_index, eps,    \
                                                     scale_dev ? *scale_dev : scale, loss, \
                                                     nullptr, err, N, C));                 \
  }                                                                                        \
  extern "C" __global__ void __launch_bounds__(fs::kBlock) xent_epilogue_##DT(              \
      const double* loss, long long N, const double* scalars, int mean, T* value) {        \
    fs::xent_epilogue<T>(loss, N, scalars, mean, value);                                   \
  }                                                                                        \
  extern "C" __global__ void __launch_bounds__(fs::kBlock, fs::kMinBlocks)                                 \
      xent_prob_##DT(const T* z, const T* q, const W* w, double eps, double scale,         \
                     double* loss, T* g, long long N, long long C) {                       \
    fs::XentArgs<T> a = fs::index_args<T>(z, nullptr, w, 0.0, 0, eps, scale, loss, g,      \
                                          nullptr, N, C);                                  \
    a.q = q;                                                                               \
    fs::xent_prob_entry<T>(a);                                                             \
  }

FS_XENT_ENTRIES(float, float, float32)
FS_XENT_ENTRIES(double, double, float64)
FS_XENT_ENTRIES(fs::half_t, float, float16)

#undef FS_XENT_ENTRIES
