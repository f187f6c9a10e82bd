//! With the `cuda` feature, compiles aviary's CUDA kernels (`src/model/kernels.cu`) to PTX
//! with nvcc; the default build needs nothing.

fn main() {
    println!("cargo:rerun-if-changed=src/model/kernels.cu");
    println!("cargo:rerun-if-changed=src/model/tensor_list.h");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let ptx = out.join("kernels.ptx");
    // PTX for compute 7.5 (the oldest CUDA 13 supports) is compiled by the driver for
    // whatever GPU runs it.
    let status = std::process::Command::new("nvcc")
        .args([
            "--ptx",
            "-O3",
            "-arch=compute_75",
            "src/model/kernels.cu",
            "-o",
        ])
        .arg(&ptx)
        .status()
        .unwrap_or_else(|e| {
            panic!("the cuda feature needs nvcc on PATH ({e}); see README, GPU (CUDA)")
        });
    assert!(status.success(), "nvcc failed on src/model/kernels.cu");
}
