//! Compiles the CUDA kernels (`kernels/*.cu`) as host C++: the CPU twin of every kernel,
//! which the host executor (`src/host.rs`) runs thread index by thread index. The same
//! files are compiled for the GPU by NVRTC at run time (`src/nvrtc.rs`).

fn main() {
    let sources = ["gather.cu", "dense.cu", "head.cu", "reduce.cu", "optim.cu"];
    let mut build = cc::Build::new();
    build.cpp(true).std("c++17").define("GANG_HOST_BUILD", None).opt_level(2).warnings(true);
    // `.cu` is not a C++ extension to the compiler driver: say what the files are.
    build.flag("-x").flag("c++");
    // Round as the GPU build does (NVRTC with --fmad=false): no contraction the sources
    // did not write as fmaf (GCC contracts by default on aarch64).
    build.flag_if_supported("-ffp-contract=off");
    for s in sources {
        build.file(format!("kernels/{s}"));
        println!("cargo:rerun-if-changed=kernels/{s}");
    }
    build.file("kernels/host_runner.cpp");
    println!("cargo:rerun-if-changed=kernels/host_runner.cpp");
    println!("cargo:rerun-if-changed=kernels/common.cuh");
    build.compile("gang_gpu_host_kernels");
}
