// Fused masked log-prob reduction on CUDA (docs/design.md, "The fused op"), compiled at run time by NVRTC.
//
// One thread block per logits row (a position with a label). Every logit z is read as t(z), the
// model's logit transform (identity, a scale a·z, or a softcap c·tanh(a·z); see Transform below
// and docs/design.md), and the backward returns the gradient with respect to z. Forward: one read of the row with an
// online max/sum per thread (rescaled only when a 16-byte vector raises the max), then a
// fixed-order tree reduction in shared memory: deterministic, no float atomics. Backward: one
// read of the row and one write of its gradient, from the logsumexp the forward saved.
//
// float32 accumulation for every dtype; 64-bit offsets; any batch and position stride (the causal
// shift is a view); the vocabulary axis must be contiguous. Rows are read in 16-byte vectors,
// UNROLL of them in flight per thread, after a scalar head that reaches 16-byte alignment (rows
// of an odd vocabulary size start anywhere). No CUDA headers are needed: bf16/f16 conversions,
// vector loads, streaming stores and the fast exp2 are written in PTX.

typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

#ifndef BLOCK
#define BLOCK 256  // threads per block (the launcher uses the same number)
#endif
#define UNROLL 4
#define NEG_INF (__int_as_float(0xff800000))
#define LOG2E 1.4426950408889634f

struct Vec16 { u32 w[4]; };

// The primitives written in PTX. tests/test_cuda_emulated.py compiles this file as plain C++
// (SIMPER_RS_HOST_EMULATION, threads for a block) to check the kernel's logic without a GPU, with
// the C++ equivalents below.
#ifndef SIMPER_RS_HOST_EMULATION
__device__ __forceinline__ Vec16 load16(const void* p) {
    Vec16 v;
    // .cs: streamed once, evict first (a row is never re-read by this kernel).
    asm volatile("ld.global.cs.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.w[0]), "=r"(v.w[1]), "=r"(v.w[2]), "=r"(v.w[3]) : "l"(p));
    return v;
}
__device__ __forceinline__ void store16(void* p, const Vec16& v) {
    asm volatile("st.global.cs.v4.u32 [%0], {%1, %2, %3, %4};"
                 :: "l"(p), "r"(v.w[0]), "r"(v.w[1]), "r"(v.w[2]), "r"(v.w[3]) : "memory");
}
// 2^x by the special-function unit (ex2.approx: 2 ulp, subnormals flushed); exp(d) = 2^(d·log2 e).
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ float half_to_float(u16 bits) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(bits));
    return f;
}
// Two floats rounded to nearest even and packed, `lo` in the low half (sm_80+; NaN stays NaN).
__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
    u32 d;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
}
__device__ __forceinline__ u32 pack_f16x2(float lo, float hi) {
    u32 d;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
}
#else
inline Vec16 load16(const void* p) { Vec16 v; memcpy(&v, p, 16); return v; }
inline void store16(void* p, const Vec16& v) { memcpy(p, &v, 16); }
inline float fast_exp2(float x) { return exp2f(x); }
inline float half_to_float(u16 bits) { _Float16 h; memcpy(&h, &bits, 2); return (float)h; }
inline u16 bf16_bits(float v) {
    u32 u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40);
    return (u16)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline u16 f16_bits(float v) { _Float16 h = (_Float16)v; u16 b; memcpy(&b, &h, 2); return b; }
inline u32 pack_bf16x2(float lo, float hi) { return (u32)bf16_bits(lo) | ((u32)bf16_bits(hi) << 16); }
inline u32 pack_f16x2(float lo, float hi) { return (u32)f16_bits(lo) | ((u32)f16_bits(hi) << 16); }
#endif

// The element types: KIND 0 = float32, 1 = bfloat16, 2 = float16. PER_VEC elements per 16 bytes.
template <int KIND> struct Elem;
template <> struct Elem<0> {
    typedef float T;
    enum { PER_VEC = 4 };
    static __device__ __forceinline__ float get(const T* p, i64 i) { return p[i]; }
    static __device__ __forceinline__ void put(T* p, i64 i, float v) { p[i] = v; }
    static __device__ __forceinline__ void unpack(const Vec16& v, float* x) {
        for (int k = 0; k < 4; ++k) x[k] = __uint_as_float(v.w[k]);
    }
    static __device__ __forceinline__ Vec16 pack(const float* x) {
        Vec16 v;
        for (int k = 0; k < 4; ++k) v.w[k] = __float_as_uint(x[k]);
        return v;
    }
};
template <> struct Elem<1> {
    typedef u16 T;
    enum { PER_VEC = 8 };
    static __device__ __forceinline__ float get(const T* p, i64 i) { return __uint_as_float(((u32)p[i]) << 16); }
    static __device__ __forceinline__ u32 pair(float lo, float hi) { return pack_bf16x2(lo, hi); }
    static __device__ __forceinline__ void put(T* p, i64 i, float v) { p[i] = (u16)(pair(v, 0.f) & 0xffffu); }
    static __device__ __forceinline__ void unpack(const Vec16& v, float* x) {
        for (int k = 0; k < 4; ++k) {
            x[2 * k] = __uint_as_float(v.w[k] << 16);
            x[2 * k + 1] = __uint_as_float(v.w[k] & 0xffff0000u);
        }
    }
    static __device__ __forceinline__ Vec16 pack(const float* x) {
        Vec16 v;
        for (int k = 0; k < 4; ++k) v.w[k] = pair(x[2 * k], x[2 * k + 1]);
        return v;
    }
};
template <> struct Elem<2> {
    typedef u16 T;
    enum { PER_VEC = 8 };
    static __device__ __forceinline__ float get(const T* p, i64 i) { return half_to_float(p[i]); }
    static __device__ __forceinline__ u32 pair(float lo, float hi) { return pack_f16x2(lo, hi); }
    static __device__ __forceinline__ void put(T* p, i64 i, float v) { p[i] = (u16)(pair(v, 0.f) & 0xffffu); }
    static __device__ __forceinline__ void unpack(const Vec16& v, float* x) {
        for (int k = 0; k < 4; ++k) {
            x[2 * k] = half_to_float((u16)(v.w[k] & 0xffffu));
            x[2 * k + 1] = half_to_float((u16)(v.w[k] >> 16));
        }
    }
    static __device__ __forceinline__ Vec16 pack(const float* x) {
        Vec16 v;
        for (int k = 0; k < 4; ++k) v.w[k] = pair(x[2 * k], x[2 * k + 1]);
        return v;
    }
};

// Elements before the first 16-byte boundary of a row starting at `p` (at most `n`).
template <typename T>
__device__ __forceinline__ i64 head_elements(const T* p, i64 n) {
    i64 head = (i64)(((16u - ((u32)(u64)p & 15u)) & 15u) / sizeof(T));
    return head < n ? head : n;
}

// tanh from the fast exp2, branch-free: an odd polynomial below |x| = 0.25 (where 1 − 2/(e^{2|x|} + 1)
// would cancel), that expression above (±1 for large |x|, NaN stays NaN). Same as the CPU kernel's.
__device__ __forceinline__ float tanh_fast(float x) {
    const float a = fabsf(x);
    const float e = fast_exp2(2.f * a * LOG2E);
    const float far = 1.f - 2.f / (e + 1.f);
    const float a2 = a * a;
    float p = fmaf(62.f / 2835.f, a2, -17.f / 315.f);
    p = fmaf(p, a2, 2.f / 15.f);
    p = fmaf(p, a2, -1.f / 3.f);
    const float near = fmaf(p * a2, a, a);
    return copysignf(a < 0.25f ? near : far, x);
}

// The logit transform t, laid out as `Transform` in launch.rs. kind 0: t(z) = z; 1: a·z;
// 2: c·tanh(a·z) (a = scale / cap). Each kind is a kernel of its own (TF, a template
// parameter), so the plain kernel is exactly what it is without transforms.
struct Transform {
    int kind;
    float a, c, inv_c;
};

template <int TF>
__device__ __forceinline__ float apply(const Transform& tf, float z) {
    if (TF == 0) return z;
    if (TF == 1) return tf.a * z;
    return tf.c * tanh_fast(tf.a * z);
}

// t'(z) from y = t(z).
template <int TF>
__device__ __forceinline__ float derivative(const Transform& tf, float y) {
    if (TF == 0) return 1.f;
    if (TF == 1) return tf.a;
    const float q = y * tf.inv_c;
    return tf.a * tf.c * (1.f - q * q);
}

// Output position r (of the [batch, used] outputs) reads logits row (r / used, r % used).
struct Rows {
    i64 used, vocab, batch_stride, position_stride;
    i64 labels_stride, shift;
    __device__ __forceinline__ i64 offset(i64 r) const { return (r / used) * batch_stride + (r % used) * position_stride; }
    __device__ __forceinline__ i64 label(const i64* labels, i64 r) const { return labels[(r / used) * labels_stride + (r % used) + shift]; }
};

// One thread's running state over part of a row: max, Σ exp(x - max), Σ (x - max)·exp(x - max)
// (for the entropy), the index of the first maximum, and whether a NaN was seen.
struct Online {
    float m, s, w;
    i64 arg;
    int nan;
    __device__ __forceinline__ Online() : m(NEG_INF), s(0.f), w(0.f), arg(0x7fffffffffffffffLL), nan(0) {}

    // Fold in `n` values whose largest is `vmax` at index `vidx` (NaN-free max).
    template <int N, bool STATS>
    __device__ __forceinline__ void add(const float* x, float vmax, i64 vidx) {
        if (vmax > m) {
            if (m != NEG_INF) {
                float a = fast_exp2((m - vmax) * LOG2E);
                if (STATS) w = a * (w + (m - vmax) * s);
                s *= a;
            }
            m = vmax;
            arg = vidx;
        }
        if (m == NEG_INF) {  // everything so far is -inf or NaN: only a NaN matters
            for (int k = 0; k < N; ++k) nan |= (x[k] != x[k]);
            return;
        }
        // A NaN from here on makes s NaN, which the end of the row checks (no per-element test).
        for (int k = 0; k < N; ++k) {
            float d = x[k] - m;  // subtract first: exact when close, unlike x·log2e − m·log2e
            float e = fast_exp2(d * LOG2E);
            s += e;
            if (STATS) w += e > 0.f ? d * e : 0.f;
        }
    }
};

// Merges (max, sum, weighted sum, first argmax) of `b` into `a`, in a fixed order.
__device__ __forceinline__ void merge(float& m, float& s, float& w, i64& arg, float m2, float s2, float w2, i64 arg2) {
    if (m2 == NEG_INF) return;
    if (m == NEG_INF) { m = m2; s = s2; w = w2; arg = arg2; return; }
    if (m2 > m || (m2 == m && arg2 < arg)) arg = arg2;
    float nm = fmaxf(m, m2);
    float a = fast_exp2((m - nm) * LOG2E), b = fast_exp2((m2 - nm) * LOG2E);
    // (x - nm) = (x - m) + (m - nm): shift the weighted sums along with the scale.
    w = a * (w + (m - nm) * s) + b * (w2 + (m2 - nm) * s2);
    s = a * s + b * s2;
    m = nm;
}

template <int KIND, bool STATS, int TF>
__device__ void forward_row(const typename Elem<KIND>::T* logits, const i64* labels, Rows rows, Transform tf, i64 ignore_index,
                            float* logps, float* lse_out, float* entropy, float* correct) {
    typedef Elem<KIND> E;
    typedef typename E::T T;
    __shared__ float sm[BLOCK], ss[BLOCK], sw[BLOCK];
    __shared__ i64 sarg[BLOCK];
    const i64 r = blockIdx.x;
    const i64 y = rows.label(labels, r);
    const i64 V = rows.vocab;
    if (y == ignore_index || y < 0 || y >= V) {
        // Ignored: zeros. Out of range (refused before launch in eager mode; unchecked inside a
        // CUDA graph capture): NaN rather than a read outside the row.
        if (threadIdx.x == 0) {
            float v = y == ignore_index ? 0.f : __int_as_float(0x7fc00000);
            logps[r] = v; lse_out[r] = v;
            if (STATS) { entropy[r] = v; correct[r] = 0.f; }
        }
        return;
    }
    const T* row = logits + rows.offset(r);
    Online st;
    const i64 head = head_elements(row, V);
    for (i64 j = threadIdx.x; j < head; j += BLOCK) {
        float x = apply<TF>(tf, E::get(row, j));
        st.template add<1, STATS>(&x, x, j);
    }
    const T* body = row + head;
    const i64 nvec = (V - head) / E::PER_VEC;
    // UNROLL independent 16-byte loads per thread before any of them is used.
    i64 v0 = threadIdx.x;
    for (; v0 + (UNROLL - 1) * BLOCK < nvec; v0 += UNROLL * BLOCK) {
        Vec16 raw[UNROLL];
        for (int u = 0; u < UNROLL; ++u) raw[u] = load16(body + (v0 + u * BLOCK) * E::PER_VEC);
        for (int u = 0; u < UNROLL; ++u) {
            float x[E::PER_VEC];
            E::unpack(raw[u], x);
            for (int k = 0; k < E::PER_VEC; ++k) x[k] = apply<TF>(tf, x[k]);
            float vmax = x[0]; int karg = 0;
            for (int k = 1; k < E::PER_VEC; ++k) if (x[k] > vmax) { vmax = x[k]; karg = k; }
            st.template add<E::PER_VEC, STATS>(x, vmax, head + (v0 + u * BLOCK) * E::PER_VEC + karg);
        }
    }
    for (; v0 < nvec; v0 += BLOCK) {
        float x[E::PER_VEC];
        E::unpack(load16(body + v0 * E::PER_VEC), x);
        for (int k = 0; k < E::PER_VEC; ++k) x[k] = apply<TF>(tf, x[k]);
        float vmax = x[0]; int karg = 0;
        for (int k = 1; k < E::PER_VEC; ++k) if (x[k] > vmax) { vmax = x[k]; karg = k; }
        st.template add<E::PER_VEC, STATS>(x, vmax, head + v0 * E::PER_VEC + karg);
    }
    for (i64 j = head + nvec * E::PER_VEC + threadIdx.x; j < V; j += BLOCK) {
        float x = apply<TF>(tf, E::get(row, j));
        st.template add<1, STATS>(&x, x, j);
    }
    sm[threadIdx.x] = st.m; ss[threadIdx.x] = st.s; sw[threadIdx.x] = st.w; sarg[threadIdx.x] = st.arg;
    const int row_nan = __syncthreads_or(st.nan || st.s != st.s);
    for (unsigned half = BLOCK / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) {
            unsigned o = threadIdx.x + half;
            merge(sm[threadIdx.x], ss[threadIdx.x], sw[threadIdx.x], sarg[threadIdx.x], sm[o], ss[o], sw[o], sarg[o]);
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        const float nan = __int_as_float(0x7fc00000);
        float mx = sm[0], sum = ss[0], log_s = logf(sum);
        float target = apply<TF>(tf, E::get(row, y));
        float lse = mx + log_s;
        if (row_nan) lse = nan;
        logps[r] = row_nan ? nan : (target - mx) - log_s;
        lse_out[r] = lse;
        if (STATS) {
            entropy[r] = row_nan ? nan : log_s - sw[0] / sum;
            correct[r] = (!row_nan && sarg[0] == y) ? 1.f : 0.f;
        }
    }
}

// One element of a row's gradient: g·(onehot − exp(t(z) − lse))·t'(z).
template <int TF>
__device__ __forceinline__ float element_grad(const Transform& tf, float z, bool is_label, float g, float l) {
    const float y = apply<TF>(tf, z);
    return g * ((is_label ? 1.f : 0.f) - fast_exp2((y - l) * LOG2E)) * derivative<TF>(tf, y);
}

// The gradient of one logits row: g·(onehot(y) − exp(t(z) − lse))·t'(z), into a contiguous [.., V] buffer
// (which may be the logits row itself: every element is read before it is written, by the same
// thread). Ignored rows (and the last position when shifting) get zeros.
template <int KIND, int TF>
__device__ void backward_row(const typename Elem<KIND>::T* logits, const i64* labels, Rows rows, Transform tf, i64 ignore_index,
                             const float* grad_logps, const float* lse, typename Elem<KIND>::T* grad, i64 positions) {
    typedef Elem<KIND> E;
    typedef typename E::T T;
    const i64 row_index = blockIdx.x, b = row_index / positions, t = row_index % positions;
    const i64 V = rows.vocab;
    T* out = grad + row_index * V;
    const i64 y = t < rows.used ? labels[b * rows.labels_stride + t + rows.shift] : ignore_index;
    const bool zero = y == ignore_index;
    const i64 r = b * rows.used + t;
    const float g = zero ? 0.f : grad_logps[r];
    const float l = zero ? 0.f : lse[r];
    const T* in = logits + b * rows.batch_stride + t * rows.position_stride;
    // p = exp(t(z) − lse); an out-of-range y (NaN lse from the forward) gives NaN, not a wild write.
    #define GRAD(x, j) (zero ? 0.f : element_grad<TF>(tf, x, (j) == y, g, l))
    const bool same_alignment = (((u64)in ^ (u64)out) & 15u) == 0;
    const i64 head = same_alignment ? head_elements(out, V) : V;
    for (i64 j = threadIdx.x; j < head; j += BLOCK) {
        float x = zero ? 0.f : E::get(in, j);
        E::put(out, j, GRAD(x, j));
    }
    if (head == V) return;
    const i64 nvec = (V - head) / E::PER_VEC;
    const T* vin = in + head;
    T* vout = out + head;
    i64 v0 = threadIdx.x;
    for (; v0 + (UNROLL - 1) * BLOCK < nvec; v0 += UNROLL * BLOCK) {
        Vec16 raw[UNROLL];
        if (!zero)
            for (int u = 0; u < UNROLL; ++u) raw[u] = load16(vin + (v0 + u * BLOCK) * E::PER_VEC);
        for (int u = 0; u < UNROLL; ++u) {
            float x[E::PER_VEC];
            const i64 j0 = head + (v0 + u * BLOCK) * E::PER_VEC;
            if (!zero) E::unpack(raw[u], x);
            for (int k = 0; k < E::PER_VEC; ++k) x[k] = zero ? 0.f : GRAD(x[k], j0 + k);
            store16(vout + (v0 + u * BLOCK) * E::PER_VEC, E::pack(x));
        }
    }
    for (; v0 < nvec; v0 += BLOCK) {
        float x[E::PER_VEC];
        const i64 j0 = head + v0 * E::PER_VEC;
        if (!zero) E::unpack(load16(vin + v0 * E::PER_VEC), x);
        for (int k = 0; k < E::PER_VEC; ++k) x[k] = zero ? 0.f : GRAD(x[k], j0 + k);
        store16(vout + v0 * E::PER_VEC, E::pack(x));
    }
    for (i64 j = head + nvec * E::PER_VEC + threadIdx.x; j < V; j += BLOCK) {
        float x = zero ? 0.f : E::get(in, j);
        E::put(out, j, GRAD(x, j));
    }
    #undef GRAD
}

#define INSTANTIATE_TF(NAME, KIND, TF, SUFFIX)                                                                   \
    extern "C" __global__ void __launch_bounds__(BLOCK) logps_forward_##NAME##SUFFIX(                            \
        const Elem<KIND>::T* logits, const i64* labels, Rows rows, Transform tf, i64 ignore_index, int with_stats, \
        float* logps, float* lse, float* entropy, float* correct) {                                              \
        if (with_stats) forward_row<KIND, true, TF>(logits, labels, rows, tf, ignore_index, logps, lse, entropy, correct); \
        else forward_row<KIND, false, TF>(logits, labels, rows, tf, ignore_index, logps, lse, entropy, correct);  \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(BLOCK) logps_backward_##NAME##SUFFIX(                           \
        const Elem<KIND>::T* logits, const i64* labels, Rows rows, Transform tf, i64 ignore_index,              \
        const float* grad_logps, const float* lse, Elem<KIND>::T* grad, i64 positions) {                         \
        backward_row<KIND, TF>(logits, labels, rows, tf, ignore_index, grad_logps, lse, grad, positions);       \
    }

// Per dtype: the plain kernels, and those of a scale and of a softcap (KERNEL_NAMES in mod.rs).
#define INSTANTIATE(NAME, KIND)              \
    INSTANTIATE_TF(NAME, KIND, 0, )          \
    INSTANTIATE_TF(NAME, KIND, 1, _scaled)   \
    INSTANTIATE_TF(NAME, KIND, 2, _softcapped)

INSTANTIATE(f32, 0)
INSTANTIATE(bf16, 1)
INSTANTIATE(f16, 2)
