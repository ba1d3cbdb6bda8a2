// kernels/common.cuh -- the device code shared by softmax.cu and xent.cu.
//
// Self-contained on purpose: no #include at all (NVRTC has no host headers, and CuPy's
// NVRTC may or may not find <cuda_fp16.h>), so float16 is carried as its raw 16 bits
// (`fs::half_t`, the layout of numpy.float16 and __half) and converted with the PTX cvt
// instructions that cuda_fp16.hpp itself uses.  Only CUDA builtins are used: expf, exp,
// log, log1p, __shfl_xor_sync, __syncthreads, atomicMin, bit casts.
//
// What is here (each kernel file's header says which op uses what):
//   * Launch constants: kBlock = 256 threads, the path thresholds kRegCMax = 128 and
//     kWarpCMax = 1024, kMinBlocks (the register budget).  kernels/README.md has the
//     host's launch rule.
//   * Traits<T>: storage type T (float, double, half_t) -> compute type `cmp` (float,
//     double, float) in which exp(x - max) and the outputs are formed, and sum type `acc`
//     (double, double, float) in which the row sums are accumulated.  float32 row sums
//     are accumulated in double, like the CPU backends' float64 row sums (the issue said
//     float; this is the one deliberate difference): a float running sum of 32000 equal
//     terms (256 threads x 125) is off by up to ~2e-6, more than the repo's numerics
//     tests allow (rtol 1e-6 on a confident row's loss log1p(d) ~ d).  On A100/H100 the
//     FP64 adds cost nothing next to the memory traffic; on consumer GPUs (FP64 at 1/64
//     rate) they may.  All per-row scalars (log s, the loss, 1/s, p_y - 1) are double.
//   * RowStats: one row's softmax statistics (m, k, d) and, for cross-entropy, the
//     linear terms (lin, wsum) -- see "Row statistics" below.
//   * add_term / push / merge: the two-pass and the online (Milakov & Gimelshein 2018,
//     arXiv:1805.02867) ways of building RowStats, with the -inf and +inf guards.
//   * group reductions (shuffles within a power-of-two group of lanes), the block
//     reduction (shuffles, then the warps' partials merged in warp order), and Team:
//     the warp or the block that shares one row in kernel2.
//   * for_each_in_row / load_n / store_n / fill_row: kernel2's row traversal with 128-bit
//     loads and stores.
//
// Row statistics
// --------------
// For a row x_0..x_{C-1} with max m, the sum s = sum_c exp(x_c - m) is kept as the pair
// (k, d): k = how many terms are exactly 1 (the max itself gives exp(0) = 1), d = the sum
// of the others.  Then log s = log(k) + log1p(d/k).  A confident row has s = 1 + d with d
// tiny (1e-11): forming 1 + d first would keep ~5 digits of d even in double, and the
// loss of such a row is log1p(d) ~ d.  The true-class gradient p_y - 1 = -(s - e_y)/s is
// formed as -((k - 1) + d)/s when e_y is one of the k ones, so it keeps its relative
// precision too (see xent.cu).
//
// Cross-entropy also needs a linear term lin = sum_c c_c (m - x_c) over the coefficients
// c_c != 0 (the smoothing weights w_c, or the probability-target weights wq_c), and
// wsum = sum_c c_c.  With the max known in advance (two-pass) lin is a plain sum of
// non-negative numbers.  Online, it is kept relative to the running max and moved to a
// larger max M by lin += (M - m) * wsum -- still a sum of non-negative numbers, so there
// is no cancellation at logits of 1e4 (the naive W*m - sum w_c x_c would cancel).
//
// Non-finite values (as the NumPy reference and the CPU backends):
//   * x == m (the same value, finite or infinite) counts as a 1 -- except for m = -inf:
//     an all -inf prefix contributes 0 (exp(-inf - -inf) would be NaN), so an all -inf
//     row ends with k = 0, d = 0 and logsumexp = m + log(0) = -inf.
//   * A NaN never becomes the max (comparisons are false) and lands in d (exp(NaN) =
//     NaN), so d is NaN exactly when the row holds a NaN: logsumexp gives NaN.
//   * A +inf becomes the max; the finite terms become exp(-inf) = 0 and logsumexp gives
//     +inf (or NaN with a NaN present), as scipy and PyTorch do.
//   * softmax, log_softmax and cross-entropy `poison` a row whose max is +-inf (d = NaN):
//     that row's outputs are all NaN, its loss NaN (0/0, inf - inf), and no other row is
//     touched.
//   * rescaling by r = exp(m_old - m_new) never computes -inf - -inf or inf - inf: it
//     runs only when m_new > m_old.
//
// Determinism: no atomics in any sum (atomicMin only reports a bad target).  Each thread
// adds its elements in a fixed order, groups and warps combine by a fixed shuffle
// butterfly (each step adds a + b on both lanes, and IEEE addition commutes, so every
// lane ends with identical bits), and a block combines its warps' partials in warp order.
// A row's results are therefore a function of its values, C, the 16-byte alignment of
// its address, and (for C > 1024 only) blockDim -- not of gridDim, nor of where the
// output goes (in place or not): repeated launches are bitwise identical.
//
// In place (g == z, out == x): a row is always read whole before any of it is written --
// by the same group of lanes from registers (kernel1), or behind the team's barrier
// (kernel2, whose second pass has each thread write only elements it reads itself).

#ifndef FASTSOFTMAX_COMMON_CUH
#define FASTSOFTMAX_COMMON_CUH

namespace fs {

// ---------------------------------------------------------------------------------------
// Launch constants (kernels/README.md states the rule the host follows)
// ---------------------------------------------------------------------------------------
inline constexpr int kWarp = 32;
// Threads per block the host launches.  Any multiple of 32 up to kBlock works; kBlock is
// what __launch_bounds__ and the static shared memory are sized for.
// FS_BLOCK, FS_MIN_BLOCKS, FS_VEC_BATCH and FS_PREFETCH can be set with -D for
// tools/gpu_kernels.py's sweep of compile-time variants; the package never sets them.
#ifndef FS_BLOCK
#define FS_BLOCK 256
#endif
#ifndef FS_MIN_BLOCKS
#define FS_MIN_BLOCKS 3
#endif
#ifndef FS_VEC_BATCH
#define FS_VEC_BATCH 2
#endif
#ifndef FS_PREFETCH
#define FS_PREFETCH 1
#endif
// Which traversals are software-pipelined (for_each_in_row<true>): FS_PREFETCH 1 (the
// default), the statistics passes, which read from DRAM (H200, float32, the forward
// kernel alone: 4096 x 32000 0.372 -> 0.331 ms, 1024 x 128256 0.312 -> 0.256 ms); 2, the
// output passes too (their reread of the row mostly hits L2; in xent_fused it costs
// spills and no time); 0, none.
inline constexpr bool kPipelineStats = FS_PREFETCH >= 1;
inline constexpr bool kPipelineOut = FS_PREFETCH >= 2;
inline constexpr int kBlock = FS_BLOCK;
inline constexpr int kMaxWarps = kBlock / kWarp;
// Blocks per SM that __launch_bounds__ asks ptxas to fit: at most 65536 / (256 * 3) = 85,
// i.e. 80 registers per thread, so 24 warps per SM stay resident on A100/H100 for the
// bandwidth-bound large-C path.  (Uncapped, ptxas spent up to 128 on the exp ILP of the
// register path; capped, the worst entry, xent_fused_float64, spills 32 bytes in its
// per-row code.)
inline constexpr int kMinBlocks = FS_MIN_BLOCKS;
// Paths by C (each entry point picks its own; kernels/README.md has the host's grid):
//   C <= kRegCMax    kernel1: a group of G lanes per row, the row held in registers.
//   C <= kWarpCMax  kernel2 with a warp per row (the row streamed twice, L1-resident).
//   C >  kWarpCMax  kernel2 with a block per row.
// One entry point holds every path, so its register count -- hence the large-C path's
// occupancy -- is the largest of them: the register path stops at 128 classes of 4 per
// lane.  (1024-class rows in registers took 80-208 registers, 256 of 8 per lane 116.)
inline constexpr long long kRegCMax = 128;
inline constexpr long long kWarpCMax = 1024;
// kernel1 gives each lane at most kLaneElems elements: G = pow2ceil(ceil(C / 4)) lanes
// per row (MNIST's C = 10: G = 4, 8 rows per warp; 64 < C <= 128: G = 32).
inline constexpr int kLaneElems = 4;
// 16-byte vectors each thread loads before using them (bytes in flight per thread).
inline constexpr int kVecBatch = FS_VEC_BATCH;

typedef unsigned short half_t;  // IEEE binary16 bits

// G, the lanes per row of kernel1 (a power of two dividing 32); the host's grid rule
// (README) uses the same formula: rows per block = blockDim.x / G.
__device__ __forceinline__ int small_group(long long C) {
  int g = 1;
  while (g < kWarp && (long long)g * kLaneElems < C) g <<= 1;
  return g;
}

// ---------------------------------------------------------------------------------------
// Scalars
// ---------------------------------------------------------------------------------------
#ifndef FS_HAVE_HALF_CONVERSIONS  // a host-side test harness may supply its own
__device__ __forceinline__ float half_to_float(half_t h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}
__device__ __forceinline__ half_t float_to_half(float f) {  // round to nearest even
  half_t h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
#endif

template <class F> struct Num;
template <> struct Num<float> {
  static __device__ __forceinline__ float inf() { return __int_as_float(0x7f800000); }
  static __device__ __forceinline__ float nan() { return __int_as_float(0x7fffffff); }
};
template <> struct Num<double> {
  static __device__ __forceinline__ double inf() {
    return __longlong_as_double(0x7ff0000000000000LL);
  }
  static __device__ __forceinline__ double nan() {
    return __longlong_as_double(0x7fffffffffffffffLL);
  }
};

__device__ __forceinline__ float fs_exp(float x) { return expf(x); }
__device__ __forceinline__ double fs_exp(double x) { return exp(x); }

// Compile-time element count, passed to the traversal callbacks.
template <int N> struct Int {
  static constexpr int value = N;
};

// 16 bytes, for the 128-bit loads and stores (ld.global.v4.u32 / st.global.v4.u32).
struct alignas(16) Vec16 {
  unsigned int u[4];
};

// 16-byte global load/store as one PTX instruction.  Needed where a branch chooses
// between the vector access and per-element ones (load_n / store_n): both branches
// touch the same bytes, and the optimizer merged them into the per-element form,
// dropping every 128-bit store.  (Plain Vec16 copies elsewhere vectorise by themselves.)
__device__ __forceinline__ Vec16 ld_vec16(const void* p) {
  Vec16 v;
#ifdef __CUDA_ARCH__
  asm volatile("ld.global.v4.b32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.u[0]), "=r"(v.u[1]), "=r"(v.u[2]), "=r"(v.u[3])
               : "l"(p)
               : "memory");
#else
  v = *reinterpret_cast<const Vec16*>(p);
#endif
  return v;
}
__device__ __forceinline__ void st_vec16(void* p, const Vec16& v) {
#ifdef __CUDA_ARCH__
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};"
               :
               : "l"(p), "r"(v.u[0]), "r"(v.u[1]), "r"(v.u[2]), "r"(v.u[3])
               : "memory");
#else
  *reinterpret_cast<Vec16*>(p) = v;
#endif
}

// ---------------------------------------------------------------------------------------
// Storage type -> compute type, sum type, loads and stores
// ---------------------------------------------------------------------------------------
template <class T> struct Traits;

template <> struct Traits<float> {
  typedef float cmp;
  typedef double acc;
  static constexpr int vec = 4;  // elements per 16 bytes
  static __device__ __forceinline__ cmp load(const float* p) { return *p; }
  static __device__ __forceinline__ void store(float* p, cmp v) { *p = v; }
  static __device__ __forceinline__ void unpack(const Vec16& v, cmp* out) {
#pragma unroll
    for (int i = 0; i < 4; ++i) out[i] = __uint_as_float(v.u[i]);
  }
  static __device__ __forceinline__ Vec16 pack(const cmp* in) {
    Vec16 v;
#pragma unroll
    for (int i = 0; i < 4; ++i) v.u[i] = __float_as_uint(in[i]);
    return v;
  }
};

template <> struct Traits<double> {
  typedef double cmp;
  typedef double acc;
  static constexpr int vec = 2;
  static __device__ __forceinline__ cmp load(const double* p) { return *p; }
  static __device__ __forceinline__ void store(double* p, cmp v) { *p = v; }
  static __device__ __forceinline__ void unpack(const Vec16& v, cmp* out) {
#pragma unroll
    for (int i = 0; i < 2; ++i) out[i] = __hiloint2double((int)v.u[2 * i + 1], (int)v.u[2 * i]);
  }
  static __device__ __forceinline__ Vec16 pack(const cmp* in) {
    Vec16 v;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      v.u[2 * i] = (unsigned int)__double2loint(in[i]);
      v.u[2 * i + 1] = (unsigned int)__double2hiint(in[i]);
    }
    return v;
  }
};

template <> struct Traits<half_t> {
  typedef float cmp;  // all float16 math is float32
  typedef float acc;
  static constexpr int vec = 8;
  static __device__ __forceinline__ cmp load(const half_t* p) { return half_to_float(*p); }
  static __device__ __forceinline__ void store(half_t* p, cmp v) { *p = float_to_half(v); }
  static __device__ __forceinline__ void unpack(const Vec16& v, cmp* out) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      out[2 * i] = half_to_float((half_t)(v.u[i] & 0xffffu));
      out[2 * i + 1] = half_to_float((half_t)(v.u[i] >> 16));
    }
  }
  static __device__ __forceinline__ Vec16 pack(const cmp* in) {
    Vec16 v;
#pragma unroll
    for (int i = 0; i < 4; ++i)
      v.u[i] = (unsigned int)float_to_half(in[2 * i]) |
               ((unsigned int)float_to_half(in[2 * i + 1]) << 16);
    return v;
  }
};

// ---------------------------------------------------------------------------------------
// Launch checks and row/group indexing
// ---------------------------------------------------------------------------------------
// The kernels need a 1-D block of whole warps, at most kBlock threads (the static shared
// memory is sized for kMaxWarps).  Anything else is a host bug: stop loudly.
__device__ __forceinline__ void check_launch() {
  if (blockDim.x % kWarp != 0 || blockDim.x > kBlock || blockDim.y != 1 || blockDim.z != 1)
    __trap();
}

__device__ __forceinline__ int lane_id() { return (int)(threadIdx.x & (kWarp - 1)); }

// The lanes of this thread's group of G (a power of two <= 32) within its warp.
__device__ __forceinline__ unsigned group_mask(int G) {
  if (G == kWarp) return 0xffffffffu;
  return ((1u << G) - 1u) << (lane_id() & ~(G - 1));
}

// ---------------------------------------------------------------------------------------
// Row statistics (see the header)
// ---------------------------------------------------------------------------------------
template <class Cmp, class Acc> struct RowStats {
  Cmp m;     // max so far (never NaN); -inf until a larger value is seen
  Acc k;     // count of terms exp(x - m) == 1
  Acc d;     // sum of the other terms
  Acc lin;   // sum c (m - x) over c != 0    (0 unless the traversal passes coefficients)
  Acc wsum;  // sum c

  __device__ __forceinline__ void init() {
    m = -Num<Cmp>::inf();
    k = Acc(0);
    d = Acc(0);
    lin = Acc(0);
    wsum = Acc(0);
  }
};

// Adds exp(x - m) for a known max m >= x (or x NaN) to (k, d); returns the term.
template <class Cmp, class Acc>
__device__ __forceinline__ Cmp add_term(Acc& k, Acc& d, Cmp x, Cmp m) {
  if (x == m) {  // exp(0) = 1; also +inf == +inf; an all -inf prefix adds nothing
    if (m != -Num<Cmp>::inf()) k += Acc(1);
    return Cmp(1);
  }
  const Cmp e = fs_exp(x - m);  // x < m: in [0, 1]; x NaN: NaN
  if (e == Cmp(1))
    k += Acc(1);
  else
    d += Acc(e);
  return e;
}

// Moves s to a larger max M (M > s.m, so s.m - M is never -inf - -inf or inf - inf).
// lin moves with it only where there are coefficients (wsum != 0; always 0 without lin).
template <class Cmp, class Acc>
__device__ __forceinline__ void rescale(RowStats<Cmp, Acc>& s, Cmp M) {
  const Cmp r = fs_exp(s.m - M);  // 0 when s.m = -inf or M = +inf
  if (r != Cmp(1)) {              // r == 1: the old ones are still ones (as two-pass)
    s.d = (s.k + s.d) * Acc(r);   // NaN stays NaN (NaN * 0 = NaN)
    s.k = Acc(0);
  }
  if (s.wsum != Acc(0)) s.lin += (Acc(M) - Acc(s.m)) * s.wsum;
  s.m = M;
}

// Online update with one element x of coefficient c; c is used only when `lin` (a
// launch-uniform flag: the cross-entropy's smoothing or probability-target terms).
template <class Cmp, class Acc>
__device__ __forceinline__ void push(RowStats<Cmp, Acc>& s, Cmp x, Acc c, bool lin) {
  if (x > s.m) {  // a new running max (never for NaN)
    rescale(s, x);
    s.k += Acc(1);
    if (lin) s.wsum += c;  // its own term c (x - x) is 0
  } else {
    add_term(s.k, s.d, x, s.m);
    if (lin && c != Acc(0)) {
      if (x != s.m) s.lin += c * (Acc(s.m) - Acc(x));
      s.wsum += c;
    }
  }
}

// s <- s (+) o.  Symmetric in s and o (bit for bit), which keeps butterflies deterministic.
template <class Cmp, class Acc>
__device__ __forceinline__ void merge(RowStats<Cmp, Acc>& s, RowStats<Cmp, Acc> o) {
  const Cmp M = o.m > s.m ? o.m : s.m;
  if (s.m != M) rescale(s, M);
  if (o.m != M) rescale(o, M);
  s.k += o.k;
  s.d += o.d;
  s.lin += o.lin;
  s.wsum += o.wsum;
}

// softmax, log_softmax and cross-entropy: a row whose max is +-inf is all NaN.
template <class Cmp, class Acc>
__device__ __forceinline__ void poison_nonfinite(Cmp m, Acc& d) {
  if (!(m > -Num<Cmp>::inf() && m < Num<Cmp>::inf())) d = Num<Acc>::nan();
}

// log(k + d) for the pair (k, d), in double.  k = 0 only for an all -inf row (d = 0:
// log 0 = -inf) or a poisoned one (d = NaN).
__device__ __forceinline__ double log_kd(double k, double d) {
  if (k == 0.0) return log(d);
  if (k == 1.0) return log1p(d);
  return log(k) + log1p(d / k);
}

// ---------------------------------------------------------------------------------------
// Group (power-of-two lanes of one warp) and block reductions.  Butterflies (xor): every
// lane ends with the same bits.
// ---------------------------------------------------------------------------------------
template <class V>
__device__ __forceinline__ V group_max(V v, unsigned mask, int G) {
  for (int o = G >> 1; o > 0; o >>= 1) {
    const V t = __shfl_xor_sync(mask, v, o, G);
    v = t > v ? t : v;
  }
  return v;
}

template <class V>
__device__ __forceinline__ V group_sum(V v, unsigned mask, int G) {
  for (int o = G >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(mask, v, o, G);
  return v;
}

template <class Cmp, class Acc>
__device__ __forceinline__ void group_merge(RowStats<Cmp, Acc>& s, unsigned mask, int G) {
  for (int o = G >> 1; o > 0; o >>= 1) {
    RowStats<Cmp, Acc> t;
    t.m = __shfl_xor_sync(mask, s.m, o, G);
    t.k = __shfl_xor_sync(mask, s.k, o, G);
    t.d = __shfl_xor_sync(mask, s.d, o, G);
    t.lin = __shfl_xor_sync(mask, s.lin, o, G);
    t.wsum = __shfl_xor_sync(mask, s.wsum, o, G);
    merge(s, t);
  }
}

// Every thread of the block gets the block's merged statistics.  Contains two
// __syncthreads: all threads must call it (the rows are block-uniform).
template <class Cmp, class Acc>
__device__ __forceinline__ RowStats<Cmp, Acc> block_merge(RowStats<Cmp, Acc> s) {
  __shared__ Cmp sh_m[kMaxWarps];
  __shared__ Acc sh_k[kMaxWarps], sh_d[kMaxWarps], sh_lin[kMaxWarps], sh_w[kMaxWarps];
  group_merge(s, 0xffffffffu, kWarp);
  const int warp = (int)(threadIdx.x / kWarp);
  if (lane_id() == 0) {
    sh_m[warp] = s.m;
    sh_k[warp] = s.k;
    sh_d[warp] = s.d;
    sh_lin[warp] = s.lin;
    sh_w[warp] = s.wsum;
  }
  __syncthreads();
  RowStats<Cmp, Acc> r;
  r.init();
  const int nw = (int)(blockDim.x / kWarp);
  for (int w = 0; w < nw; ++w) {  // fixed order: deterministic
    RowStats<Cmp, Acc> t;
    t.m = sh_m[w];
    t.k = sh_k[w];
    t.d = sh_d[w];
    t.lin = sh_lin[w];
    t.wsum = sh_w[w];
    merge(r, t);
  }
  __syncthreads();  // the slots are free for the next row
  return r;
}

// ---------------------------------------------------------------------------------------
// kernel2's team: the threads that share one row -- a warp (C <= kWarpCMax, 8 rows per
// 256-thread block) or the whole block (larger C); launch-uniform, chosen at run time
// (templates for both would double the code NVRTC compiles at the first call).  Rows
// are team-uniform, so the shuffles use full masks and every thread of the block
// reaches the barriers.
// ---------------------------------------------------------------------------------------
struct Team {
  bool block;        // the whole block shares a row (else a warp does)
  long long t, nt;   // this thread's rank in the team, the team's size
  long long first;   // this team's first row
  long long stride;  // rows between two of this team's rows (grid-stride)

  __device__ __forceinline__ explicit Team(bool whole_block) : block(whole_block) {
    const long long warps = blockDim.x / kWarp;
    t = block ? (long long)threadIdx.x : (long long)lane_id();
    nt = block ? (long long)blockDim.x : (long long)kWarp;
    first = block ? (long long)blockIdx.x : (long long)blockIdx.x * warps + threadIdx.x / kWarp;
    stride = block ? (long long)gridDim.x : (long long)gridDim.x * warps;
  }
  // Every thread of the team gets the team's statistics.  Also orders every read of the
  // row before any write that follows (in-place safety): __syncthreads / __syncwarp.
  template <class Cmp, class Acc>
  __device__ __forceinline__ RowStats<Cmp, Acc> merge(RowStats<Cmp, Acc> s) const {
    if (block) return block_merge(s);
    group_merge(s, 0xffffffffu, kWarp);
    __syncwarp();
    return s;
  }
};

// ---------------------------------------------------------------------------------------
// kernel2's row traversal: [0, head) scalar, then 16-byte vectors, then a scalar tail.
// head aligns the row to 16 bytes, so a row of any C (50257 included) is read with
// 128-bit loads; the split depends only on the row's address and C.
// ---------------------------------------------------------------------------------------
struct RowSplit {
  long long head;  // scalar elements before the first aligned vector
  long long nvec;  // vectors
  long long tail;  // first element of the scalar tail
};

template <class T>
__device__ __forceinline__ RowSplit split_row(const T* row, long long C) {
  constexpr int V = Traits<T>::vec;
  const unsigned long long a = (unsigned long long)row;
  RowSplit sp;
  if (a % sizeof(T) != 0) {  // not element-aligned (never for a real array): all scalar
    sp.head = C;
  } else {
    sp.head = (long long)(((16u - (unsigned)(a % 16u)) % 16u) / sizeof(T));
    if (sp.head > C) sp.head = C;
  }
  sp.nvec = (C - sp.head) / V;
  sp.tail = sp.head + sp.nvec * V;
  return sp;
}

// raw[u] = src[v + u * nt] for the u with v + u * nt < end: N loads, all issued before
// any is used (more bytes in flight).
template <int N>
__device__ __forceinline__ void load_vectors(const Vec16* src, long long v, long long end,
                                             long long nt, Vec16 (&raw)[N]) {
#pragma unroll
  for (int u = 0; u < N; ++u)
    if (v + u * nt < end) raw[u] = src[v + u * nt];
}

// f over the row vectors v + u * nt (u < N, below sp.nvec) that load_vectors put in raw.
template <class T, int N, class F>
__device__ __forceinline__ void use_vectors(const Vec16 (&raw)[N], long long v,
                                            const RowSplit& sp, long long nt, F& f) {
  typedef typename Traits<T>::cmp cmp;
  constexpr int V = Traits<T>::vec;
#pragma unroll
  for (int u = 0; u < N; ++u) {
    if (v + u * nt < sp.nvec) {
      cmp x[V];
      Traits<T>::unpack(raw[u], x);
      f(sp.head + (v + u * nt) * V, x, Int<V>());
    }
  }
}

// The vectors of a row, kVecBatch at a time per thread, all loads issued before use.
template <class T, class F>
__device__ __forceinline__ void row_vectors(const Vec16* vrow, const RowSplit& sp,
                                            long long t, long long nt, F& f) {
  for (long long v = t; v < sp.nvec; v += kVecBatch * nt) {
    Vec16 raw[kVecBatch];
    load_vectors(vrow, v, sp.nvec, nt, raw);
    use_vectors<T>(raw, v, sp, nt, f);
  }
}

// row_vectors, software-pipelined: the next batch's loads are issued before this batch
// is used, so a thread keeps 2 * kVecBatch vectors in flight while it computes.  Same
// elements in the same order: the same bits.  In place (g == z) stays safe: a thread
// prefetches only vectors it owns and has not written yet.
template <class T, class F>
__device__ __forceinline__ void row_vectors_pipelined(const Vec16* vrow, const RowSplit& sp,
                                                      long long t, long long nt, F& f) {
  Vec16 raw[kVecBatch];
  load_vectors(vrow, t, sp.nvec, nt, raw);
  for (long long v = t; v < sp.nvec; v += kVecBatch * nt) {
    Vec16 next[kVecBatch];
    load_vectors(vrow, v + kVecBatch * nt, sp.nvec, nt, next);
    use_vectors<T>(raw, v, sp, nt, f);
#pragma unroll
    for (int u = 0; u < kVecBatch; ++u) raw[u] = next[u];
  }
}

// dst[v - v0] = src[v] for v in [v0, v1), team member t of nt: N loads of a thread
// issued before its stores (a row moved into shared memory in few round trips).
template <int N>
__device__ __forceinline__ void copy_vectors(const Vec16* src, Vec16* dst, long long v0,
                                             long long v1, long long t, long long nt) {
  for (long long v = v0 + t; v < v1; v += N * nt) {
    Vec16 raw[N];
    load_vectors(src, v, v1, nt, raw);
#pragma unroll
    for (int u = 0; u < N; ++u)
      if (v + u * nt < v1) dst[v + u * nt - v0] = raw[u];
  }
}

// f(j, const cmp* x, Int<n>): elements j..j+n-1 of the row, n = 1 or Traits<T>::vec, for
// the team member t of nt.  The vectors go kVecBatch at a time (all loads issued before
// any is used: more bytes in flight; kPipelined: also the next batch's before this one
// is used), each load instruction contiguous across the team;
// then the scalar head and tail in one loop.  Each of these is one call site of f, which
// is inlined: kVecBatch * vec + 1 copies of the per-element code per traversal.
// The mapping is the same in every pass over a row, so a thread only ever writes
// elements it has read itself (in-place safety), and the order in which a thread sees
// its elements is fixed (determinism).
template <bool kPipelined = false, class T, class F>
__device__ __forceinline__ void for_each_in_row(const T* row, long long C, long long t,
                                                long long nt, F&& f) {
  typedef typename Traits<T>::cmp cmp;
  const RowSplit sp = split_row(row, C);
  const Vec16* vrow = reinterpret_cast<const Vec16*>(row + sp.head);
  if constexpr (kPipelined)
    row_vectors_pipelined<T>(vrow, sp, t, nt, f);
  else
    row_vectors<T>(vrow, sp, t, nt, f);
  const long long nscalar = sp.head + (C - sp.tail);
  for (long long i = t; i < nscalar; i += nt) {
    const long long j = i < sp.head ? i : sp.tail + (i - sp.head);
    const cmp x = Traits<T>::load(row + j);
    f(j, &x, Int<1>());
  }
}

// Loads n elements at j of another row (q) or stores n at j (g, out): one 16-byte access
// when n is a whole vector and that row is 16-byte congruent with the traversed one
// (`vec_ok`, decided once per launch by the pointers' difference), else scalars.
template <class T, int N>
__device__ __forceinline__ void load_n(const T* row, long long j,
                                       typename Traits<T>::cmp* x, Int<N>, bool vec_ok) {
  if (N == Traits<T>::vec && vec_ok) {
    Traits<T>::unpack(ld_vec16(row + j), x);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) x[i] = Traits<T>::load(row + j + i);
  }
}

template <class T, int N>
__device__ __forceinline__ void store_n(T* row, long long j, const typename Traits<T>::cmp* x,
                                        Int<N>, bool vec_ok) {
  if (N == Traits<T>::vec && vec_ok) {
    st_vec16(row + j, Traits<T>::pack(x));
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) Traits<T>::store(row + j + i, x[i]);
  }
}

// True when a and b are congruent modulo 16 bytes (then their rows split alike).
__device__ __forceinline__ bool congruent16(const void* a, const void* b) {
  return (((unsigned long long)a - (unsigned long long)b) & 15u) == 0;
}

// Fills a row with one value (ignored rows: 0; rows with a bad target: NaN), team member
// t of nt, with the row's own 16-byte split (it reads nothing).
template <class T>
__device__ __forceinline__ void fill_row(T* row, long long C, long long t, long long nt,
                                         typename Traits<T>::cmp v) {
  typedef typename Traits<T>::cmp cmp;
  constexpr int V = Traits<T>::vec;
  const RowSplit sp = split_row(row, C);
  cmp vv[V];
#pragma unroll
  for (int i = 0; i < V; ++i) vv[i] = v;
  const Vec16 pv = Traits<T>::pack(vv);
  for (long long j = t; j < sp.head; j += nt) Traits<T>::store(row + j, v);
  Vec16* vrow = reinterpret_cast<Vec16*>(row + sp.head);
  for (long long i = t; i < sp.nvec; i += nt) vrow[i] = pv;
  for (long long j = sp.tail + t; j < C; j += nt) Traits<T>::store(row + j, v);
}

// kernel1's row load: elements j = gl + G*i (i < E, j < c) of the row into v[i] in the
// compute type; returns the row's max over the group (-inf for lanes past the row).
template <class T, int E>
__device__ __forceinline__ typename Traits<T>::cmp load_row_max(
    const T* xr, int c, int gl, int G, unsigned mask, typename Traits<T>::cmp (&v)[E]) {
  typedef typename Traits<T>::cmp cmp;
  cmp m = -Num<cmp>::inf();
#pragma unroll
  for (int i = 0; i < E; ++i) {
    const int j = gl + G * i;
    if (j < c) {
      v[i] = Traits<T>::load(xr + j);
      m = v[i] > m ? v[i] : m;
    }
  }
  return group_max(m, mask, G);
}

}  // namespace fs

#endif  // FASTSOFTMAX_COMMON_CUH
