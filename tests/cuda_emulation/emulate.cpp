// Runs the CUDA kernel source (src/cuda/logps.cu) on the CPU, so that its logic (row indexing,
// alignment head, vector body and tail, online max/sum, the block reduction, statistics, NaN and
// -inf handling, in-place backward) is tested without a GPU: each thread block is BLOCK real
// threads that meet at real barriers, one block at a time, so `__shared__` arrays can be statics.
// The PTX primitives are replaced by their C++ equivalents (see the #ifdef in logps.cu); the fast
// exp2 becomes exp2f, so this checks logic, not the hardware's rounding.
//
// Built by tests/test_cuda_emulated.py:  g++ -std=c++20 -O1 -shared -fPIC -pthread -DBLOCK=32
// -fvisibility=hidden: builds for several block sizes are loaded into one process, and each must
// call its own kernels, not the first-loaded library's.
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

#define SIMPER_RS_HOST_EMULATION 1
#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(threads)
#define __shared__ static

struct Index { unsigned x; };
thread_local Index threadIdx, blockIdx;

static std::barrier<>* block_barrier = nullptr;
static std::atomic<int> block_or{0};

inline void __syncthreads() { block_barrier->arrive_and_wait(); }
inline int __syncthreads_or(int predicate) {
    if (predicate) block_or.store(1);
    block_barrier->arrive_and_wait();
    int any = block_or.load();
    block_barrier->arrive_and_wait();  // everyone has read it before it is reset
    if (threadIdx.x == 0) block_or.store(0);
    return any;
}
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }

#include "../../src/cuda/logps.cu"

template <typename Body>
static void launch(i64 grid, Body body) {
    for (i64 b = 0; b < grid; ++b) {
        std::barrier<> barrier(BLOCK);
        block_barrier = &barrier;
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < BLOCK; ++t)
            threads.emplace_back([&, t] { threadIdx.x = t; blockIdx.x = (unsigned)b; body(); });
        for (auto& thread : threads) thread.join();
    }
}

#define EXPORT extern "C" __attribute__((visibility("default")))

EXPORT int emulated_block_threads() { return BLOCK; }

// The kernel for a dtype `kind` and the transform's kind, as launch.rs picks it.
#define PICK(DIRECTION, NAME, ...)                                                          \
    do {                                                                                   \
        if (tf.kind == 0) logps_##DIRECTION##_##NAME(__VA_ARGS__);                         \
        else if (tf.kind == 1) logps_##DIRECTION##_##NAME##_scaled(__VA_ARGS__);           \
        else logps_##DIRECTION##_##NAME##_softcapped(__VA_ARGS__);                         \
    } while (0)

EXPORT void emulated_forward(int kind, const void* logits, const i64* labels, Rows rows, Transform tf, i64 ignore_index,
                               int with_stats, float* logps, float* lse, float* entropy, float* correct, i64 grid) {
    launch(grid, [&] {
        if (kind == 0) PICK(forward, f32, (const float*)logits, labels, rows, tf, ignore_index, with_stats, logps, lse, entropy, correct);
        if (kind == 1) PICK(forward, bf16, (const u16*)logits, labels, rows, tf, ignore_index, with_stats, logps, lse, entropy, correct);
        if (kind == 2) PICK(forward, f16, (const u16*)logits, labels, rows, tf, ignore_index, with_stats, logps, lse, entropy, correct);
    });
}

EXPORT void emulated_backward(int kind, const void* logits, const i64* labels, Rows rows, Transform tf, i64 ignore_index,
                                  const float* grad_logps, const float* lse, void* grad, i64 positions, i64 grid) {
    launch(grid, [&] {
        if (kind == 0) PICK(backward, f32, (const float*)logits, labels, rows, tf, ignore_index, grad_logps, lse, (float*)grad, positions);
        if (kind == 1) PICK(backward, bf16, (const u16*)logits, labels, rows, tf, ignore_index, grad_logps, lse, (u16*)grad, positions);
        if (kind == 2) PICK(backward, f16, (const u16*)logits, labels, rows, tf, ignore_index, grad_logps, lse, (u16*)grad, positions);
    });
}
