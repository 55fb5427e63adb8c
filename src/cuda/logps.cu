// Fused masked log-prob reduction on CUDA (SPEC §4), compiled at run time by NVRTC.
//
// One thread block per logits row (a position with a label). Forward: one pass over the row with
// an online max/sum per thread (rescaled when the max grows), then a fixed-order tree reduction
// in shared memory: deterministic, no float atomics. Backward: one read of the row and one write
// of its gradient. float32 accumulation for every dtype; 64-bit offsets; any batch and position
// stride (the causal shift is a view). No CUDA headers are needed: bf16/f16 are converted by hand.

typedef unsigned short u16;
typedef long long i64;

#define BLOCK 256
#define NEG_INF (__int_as_float(0xff800000))

__device__ __forceinline__ float load(const float* p, i64 i) { return p[i]; }
__device__ __forceinline__ float load(const u16* p, i64 i, int is_bf16) {
    u16 bits = p[i];
    if (is_bf16) return __uint_as_float(((unsigned)bits) << 16);
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(bits));
    return f;
}
__device__ __forceinline__ u16 store16(float v, int is_bf16) {
    if (is_bf16) {
        unsigned u = __float_as_uint(v);
        if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40);  // quiet NaN
        u += 0x7fffu + ((u >> 16) & 1u);                                       // round to nearest even
        return (u16)(u >> 16);
    }
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}

// Position r of the [batch, used] outputs reads logits row (b, t) at b*sb + t*st.
struct Rows {
    i64 used, vocab, batch_stride, position_stride;
    i64 labels_stride, shift;
    __device__ __forceinline__ i64 offset(i64 r) const { return (r / used) * batch_stride + (r % used) * position_stride; }
    __device__ __forceinline__ i64 label(const i64* labels, i64 r) const { return labels[(r / used) * labels_stride + (r % used) + shift]; }
};

// Merges (max, sum of exp(x - max), sum of (x - max)·exp(x - max)) pairs in a fixed order.
__device__ __forceinline__ void merge(float& m, float& s, float& w, float m2, float s2, float w2) {
    if (m2 == NEG_INF) return;
    if (m == NEG_INF) { m = m2; s = s2; w = w2; return; }
    float nm = fmaxf(m, m2);
    float a = __expf(m - nm), b = __expf(m2 - nm);
    // (x - nm) = (x - m) + (m - nm): shift the weighted sums along with the scale.
    w = a * (w + (m - nm) * s) + b * (w2 + (m2 - nm) * s2);
    s = a * s + b * s2;
    m = nm;
}

template <typename T, int KIND>
__device__ void forward_row(const T* logits, const i64* labels, Rows rows, i64 ignore_index, int with_stats,
                            float* logps, float* lse_out, float* entropy, float* correct) {
    __shared__ float sm[BLOCK], ss[BLOCK], sw[BLOCK];
    __shared__ int first_max[BLOCK];
    i64 r = blockIdx.x;
    i64 y = rows.label(labels, r);
    if (y == ignore_index) {
        if (threadIdx.x == 0) {
            logps[r] = 0.f; lse_out[r] = 0.f;
            if (with_stats) { entropy[r] = 0.f; correct[r] = 0.f; }
        }
        return;
    }
    const i64 base = rows.offset(r);
    float m = NEG_INF, s = 0.f, w = 0.f;
    int arg = 0x7fffffff;
    for (i64 j = threadIdx.x; j < rows.vocab; j += BLOCK) {
        float x = KIND == 0 ? load((const float*)logits, base + j) : load((const u16*)logits, base + j, KIND == 1);
        if (x > m) {
            if (m != NEG_INF) { float a = __expf(m - x); w = a * (w + (m - x) * s); s = a * s; }
            m = x;
            arg = (int)j;
        }
        float d = x - m, e = __expf(d);
        s += e;
        if (e > 0.f) w += d * e;
        if (x != x) s = x;  // NaN propagates, as in log_softmax
    }
    sm[threadIdx.x] = m; ss[threadIdx.x] = s; sw[threadIdx.x] = w; first_max[threadIdx.x] = arg;
    __syncthreads();
    for (int half = BLOCK / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) {
            int o = threadIdx.x + half;
            float m1 = sm[threadIdx.x];
            if (sm[o] > m1 || (sm[o] == m1 && first_max[o] < first_max[threadIdx.x])) first_max[threadIdx.x] = first_max[o];
            merge(sm[threadIdx.x], ss[threadIdx.x], sw[threadIdx.x], sm[o], ss[o], sw[o]);
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        float mx = sm[0], sum = ss[0], log_s = logf(sum);
        float target = KIND == 0 ? load((const float*)logits, base + y) : load((const u16*)logits, base + y, KIND == 1);
        logps[r] = (target - mx) - log_s;
        lse_out[r] = mx + log_s;
        if (with_stats) {
            entropy[r] = log_s - sw[0] / sum;
            correct[r] = (first_max[0] == (int)y) ? 1.f : 0.f;
        }
    }
}

template <typename T, int KIND>
__device__ void backward_row(const T* logits, const i64* labels, Rows rows, i64 ignore_index,
                             const float* grad_logps, const float* lse, T* grad, i64 positions) {
    // Rows of the full [batch, positions, vocab] gradient: the last position (when shifting)
    // and ignored positions get zeros.
    i64 row = blockIdx.x, b = row / positions, t = row % positions;
    T* out = grad + row * rows.vocab;
    i64 y = t < rows.used ? labels[b * rows.labels_stride + t + rows.shift] : ignore_index;
    if (y == ignore_index) {
        for (i64 j = threadIdx.x; j < rows.vocab; j += BLOCK) out[j] = (T)0;
        return;
    }
    i64 r = b * rows.used + t;
    const i64 base = b * rows.batch_stride + t * rows.position_stride;
    float g = grad_logps[r], l = lse[r];
    for (i64 j = threadIdx.x; j < rows.vocab; j += BLOCK) {
        float x = KIND == 0 ? load((const float*)logits, base + j) : load((const u16*)logits, base + j, KIND == 1);
        float v = g * ((j == y ? 1.f : 0.f) - __expf(x - l));
        if (KIND == 0) ((float*)out)[j] = v; else ((u16*)out)[j] = store16(v, KIND == 1);
    }
}

#define INSTANTIATE(NAME, T, KIND)                                                                      \
    extern "C" __global__ void __launch_bounds__(BLOCK) logps_forward_##NAME(                           \
        const T* logits, const i64* labels, Rows rows, i64 ignore_index, int with_stats, float* logps,  \
        float* lse, float* entropy, float* correct) {                                                   \
        forward_row<T, KIND>(logits, labels, rows, ignore_index, with_stats, logps, lse, entropy, correct); \
    }                                                                                                   \
    extern "C" __global__ void __launch_bounds__(BLOCK) logps_backward_##NAME(                          \
        const T* logits, const i64* labels, Rows rows, i64 ignore_index, const float* grad_logps,      \
        const float* lse, T* grad, i64 positions) {                                                     \
        backward_row<T, KIND>(logits, labels, rows, ignore_index, grad_logps, lse, grad, positions);    \
    }

INSTANTIATE(f32, float, 0)
INSTANTIATE(bf16, u16, 1)
INSTANTIATE(f16, u16, 2)
