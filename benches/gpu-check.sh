#!/usr/bin/env bash
# The GPU check of docs/gpu.md, in two halves:
#
#   benches/gpu-check.sh pack   # here, no GPU needed: builds the CUDA binaries with
#                               # ../shared/cuda/toolkit.sh and packs them, the reference
#                               # script and a corpus into gpu-kit/ (ignored by git, < 64 MiB)
#   benches/gpu-check.sh run    # on the GPU machine, from the repository root, with gpu-kit/:
#                               # the CUDA tests, then aviary bench --device cuda (f32, and
#                               # with [train] tf32 = true) and torch_charlstm.py --device
#                               # cuda, ROUNDS rounds (default 3)
#
# `run` writes everything it prints to $OUT/gpu-check.log (or gpu-kit/out/) and the bench
# lines to bench.jsonl there.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=gpu-kit

pack() {
    local target=${CARGO_TARGET_DIR:-/tmp/cuda-target}
    # shellcheck disable=SC1090
    source <(../shared/cuda/toolkit.sh)
    CARGO_TARGET_DIR=$target cargo build --release --features cuda
    CARGO_TARGET_DIR=$target cargo test --release --features cuda --test gpu --no-run
    local test_bin
    test_bin=$(ls -t "$target"/release/deps/gpu-* | grep -v '\.d$' | head -1)
    rm -rf "$KIT" && mkdir -p "$KIT/stage"
    cp "$target/release/aviary" "$KIT/stage/aviary"
    cp "$test_bin" "$KIT/stage/gpu-tests"
    strip "$KIT/stage/aviary" "$KIT/stage/gpu-tests"
    tar czf "$KIT/bins.tar.gz" -C "$KIT/stage" aviary gpu-tests
    rm -rf "$KIT/stage"
    cp ../shared/bench/torch_charlstm.py "$KIT/"
    # The corpus of README "Performance": the first 4M characters of tweeteval's texts.
    cat ../shared/data/base-tweeteval/datasets/*/*_text.txt | head -c 4000000 | gzip > "$KIT/corpus.txt.gz"
    du -sh "$KIT"
}

run() {
    local out=$1
    mkdir -p "$KIT/bin"
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
    tar xzf "$KIT/bins.tar.gz" -C "$KIT/bin"
    gunzip -c "$KIT/corpus.txt.gz" > "$KIT/corpus.txt"
    # The CUDA 13 libraries the binary links (cublas, curand, cudart): wherever the machine has
    # them, e.g. inside its PyTorch. Never the build's link-time stub of libcuda (/tmp/cuda13).
    local dirs
    dirs=$( (find / \( -path /proc -o -path /sys -o -path /tmp/cuda13 \) -prune -o \
        \( -name 'libcublas.so.13*' -o -name 'libcurand.so.10*' -o -name 'libcudart.so.13*' \) \
        -print 2>/dev/null || true) | xargs -r -n1 dirname | sort -u | paste -sd: || true)
    if [ -n "$dirs" ]; then
        export LD_LIBRARY_PATH="$dirs:${LD_LIBRARY_PATH:-}"
    fi
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    ldd "$KIT/bin/aviary" | grep -E 'cuda|cublas|curand|not found' || true

    echo "== CUDA tests"
    "$KIT/bin/gpu-tests" --nocapture --test-threads 1 || echo "GPU TESTS FAILED"

    local py=${TORCH_PYTHON:-python3}
    "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' || true
    local rounds=${ROUNDS:-3}
    for round in $(seq 1 "$rounds"); do
        echo "== round $round"
        # The fused op in f32, and with TF32 tensor cores (as cuDNN's default math on this GPU).
        for variant in fused fused-tf32; do
            local tf32=false
            [ "$variant" = fused-tf32 ] && tf32=true
            printf '[train]\ntf32 = %s\n' "$tf32" > "$out/$variant.toml"
            "$KIT/bin/aviary" --config "$out/$variant.toml" bench --corpus "$KIT/corpus.txt" \
                --device cuda --steps 100 --gen-chars 280 \
                | sed "s/^{/{\"round\":$round,\"variant\":\"$variant\",/" | tee -a "$out/bench.jsonl" \
                || echo "aviary bench ($variant) failed"
        done
        "$py" "$KIT/torch_charlstm.py" --corpus "$KIT/corpus.txt" --device cuda --steps 100 \
            | sed "s/^{/{\"round\":$round,/" | tee -a "$out/bench.jsonl" \
            || echo "torch_charlstm.py failed"
    done
    date -u
}

case "${1:-}" in
    pack) pack ;;
    run)
        out=${OUT:-$KIT/out}
        mkdir -p "$out"
        run "$out" 2>&1 | tee "$out/gpu-check.log"
        ;;
    *) echo "usage: $0 pack|run" >&2; exit 2 ;;
esac
