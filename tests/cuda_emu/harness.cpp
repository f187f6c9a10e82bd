// Runs one kernel of src/model/kernels.cu, compiled for the CPU with shim.h, the way a CUDA
// launch would: `emu KERNEL GRID BLOCK seq|coop ARG...`. GRID is X or XxY. ARG is u32:N,
// u64:N, f32:X, null (a null pointer) or buf:PATH (the file's bytes as a device buffer; written
// back to PATH.out after the run). A kernel that takes a TensorList takes, in its place, the
// count K and then K groups of (u32 n, g, v, p). `seq` runs the threads one after another (kernels without __syncthreads);
// `coop` runs a block's threads at once with a barrier for __syncthreads.
#include "shim.h"
#include "tensor_list.h"

#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <string>
#include <thread>
#include <vector>

thread_local EmuDim threadIdx, blockIdx, blockDim, gridDim;
static std::barrier<>* block_barrier = nullptr;

void __syncthreads() {
    if (!block_barrier) {
        std::fprintf(stderr, "__syncthreads in a seq launch: use coop\n");
        std::exit(3);
    }
    block_barrier->arrive_and_wait();
}

extern "C" {
void lstm_seq_cell_fwd(unsigned, unsigned, float*, const float*, float*, float*, float*);
void lstm_seq_cell_bwd(unsigned, unsigned, const float*, const float*, const float*, const float*,
                       float*, float*);
void dropout_mask(unsigned, unsigned long long, float, float, const float*, float*);
void softmax_xent_fwd(unsigned, const float*, const unsigned*, float*, float*);
void softmax_xent_bwd(unsigned, unsigned, const unsigned*, const float*, float*);
void grad_sq_partials(TensorList, float*);
void rmsprop_step(TensorList, const float*, unsigned, float, float, float, float, float);
}

struct Arg {
    uint64_t u = 0;
    float f = 0;
    void* p = nullptr;
    unsigned u32() const { return (unsigned)u; }
    float* fp() const { return (float*)p; }
    unsigned* up() const { return (unsigned*)p; }
};

using Call = std::function<void(const std::vector<Arg>&)>;

// The TensorList at a[0] (count, then count groups of n, g, v, p); `rest` is set to the index
// of the argument after it.
static TensorList tensor_list(const std::vector<Arg>& a, size_t& rest) {
    TensorList t{};
    const unsigned count = a[0].u32();
    for (unsigned k = 0; k < count && k < TENSOR_LIST; k++) {
        t.n[k] = a[1 + 4 * k].u32();
        t.g[k] = a[2 + 4 * k].fp();
        t.v[k] = a[3 + 4 * k].fp();
        t.p[k] = a[4 + 4 * k].fp();
    }
    rest = 1 + 4 * count;
    return t;
}

static const std::map<std::string, Call> kernels = {
    {"lstm_seq_cell_fwd", [](auto& a) { lstm_seq_cell_fwd(a[0].u32(), a[1].u32(), a[2].fp(), a[3].fp(), a[4].fp(), a[5].fp(), a[6].fp()); }},
    {"lstm_seq_cell_bwd", [](auto& a) { lstm_seq_cell_bwd(a[0].u32(), a[1].u32(), a[2].fp(), a[3].fp(), a[4].fp(), a[5].fp(), a[6].fp(), a[7].fp()); }},
    {"dropout_mask", [](auto& a) { dropout_mask(a[0].u32(), a[1].u, a[2].f, a[3].f, a[4].fp(), a[5].fp()); }},
    {"softmax_xent_fwd", [](auto& a) { softmax_xent_fwd(a[0].u32(), a[1].fp(), a[2].up(), a[3].fp(), a[4].fp()); }},
    {"softmax_xent_bwd", [](auto& a) { softmax_xent_bwd(a[0].u32(), a[1].u32(), a[2].up(), a[3].fp(), a[4].fp()); }},
    {"grad_sq_partials", [](auto& a) {
        size_t r;
        const TensorList t = tensor_list(a, r);
        grad_sq_partials(t, a[r].fp());
    }},
    {"rmsprop_step", [](auto& a) {
        size_t r;
        const TensorList t = tensor_list(a, r);
        rmsprop_step(t, a[r].fp(), a[r + 1].u32(), a[r + 2].f, a[r + 3].f, a[r + 4].f, a[r + 5].f, a[r + 6].f);
    }},
};

int main(int argc, char** argv) {
    if (argc < 5) {
        std::fprintf(stderr, "usage: emu KERNEL GRID BLOCK seq|coop ARG...\n");
        return 2;
    }
    auto found = kernels.find(argv[1]);
    if (found == kernels.end()) {
        std::fprintf(stderr, "unknown kernel %s\n", argv[1]);
        return 2;
    }
    char* grid_end = nullptr;
    const unsigned grid_x = std::strtoul(argv[2], &grid_end, 10);
    const unsigned grid_y = *grid_end == 'x' ? std::strtoul(grid_end + 1, nullptr, 10) : 1;
    const unsigned block = std::strtoul(argv[3], nullptr, 10);
    const bool coop = std::string(argv[4]) == "coop";
    std::vector<Arg> args;
    std::vector<std::pair<std::vector<char>*, std::string>> buffers;
    for (int i = 5; i < argc; i++) {
        std::string s = argv[i];
        Arg a;
        if (s.rfind("u32:", 0) == 0 || s.rfind("u64:", 0) == 0) {
            a.u = std::strtoull(s.c_str() + 4, nullptr, 10);
        } else if (s.rfind("f32:", 0) == 0) {
            a.f = std::strtof(s.c_str() + 4, nullptr);
        } else if (s.rfind("buf:", 0) == 0) {
            std::ifstream in(s.substr(4), std::ios::binary);
            if (!in) {
                std::fprintf(stderr, "cannot read %s\n", s.c_str() + 4);
                return 2;
            }
            auto* data = new std::vector<char>(std::istreambuf_iterator<char>(in), {});
            a.p = data->data();
            buffers.emplace_back(data, s.substr(4) + ".out");
        } else if (s != "null") {
            std::fprintf(stderr, "bad argument %s\n", s.c_str());
            return 2;
        }
        args.push_back(a);
    }
    const Call& call = found->second;
    const EmuDim grid = {grid_x, grid_y, 1};
    for (unsigned b = 0; b < grid_x * grid_y; b++) {
        const EmuDim at = {b % grid_x, b / grid_x, 0};
        if (!coop) {
            for (unsigned t = 0; t < block; t++) {
                threadIdx = {t, 0, 0};
                blockIdx = at;
                blockDim = {block, 1, 1};
                gridDim = grid;
                call(args);
            }
            continue;
        }
        std::barrier<> barrier(block);
        block_barrier = &barrier;
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < block; t++) {
            threads.emplace_back([&, t] {
                threadIdx = {t, 0, 0};
                blockIdx = at;
                blockDim = {block, 1, 1};
                gridDim = grid;
                call(args);
            });
        }
        for (auto& th : threads) th.join();
        block_barrier = nullptr;
    }
    for (auto& [data, path] : buffers) {
        std::ofstream out(path, std::ios::binary);
        out.write(data->data(), data->size());
    }
    return 0;
}
