//! Builds the one-line C shim that exports MPI constants which are macros in `mpi.h` and
//! differ between Open MPI and MPICH (`MPI_IN_PLACE`), with the same MPI the `mpi-sys`
//! crate found. Only with the `mpi` feature.

fn main() {
    // The Mpi backend is a cargo feature (on by default); without it nothing here is
    // needed and no MPI has to be installed.
    if std::env::var_os("CARGO_FEATURE_MPI").is_none() {
        return;
    }
    println!("cargo:rerun-if-changed=src/comm/mpi_shim.c");
    println!("cargo:rerun-if-env-changed=MPICC");
    println!("cargo:rerun-if-env-changed=MPI_PKG_CONFIG");
    let lib = match build_probe_mpi::probe() {
        Ok(lib) => lib,
        Err(errs) => {
            for e in errs {
                println!("cargo:warning=MPI probe: {e}");
            }
            panic!(
                "no MPI library found: install Open MPI (Debian/Ubuntu: apt-get install \
                 libopenmpi-dev openmpi-bin) or MPICH (apt-get install libmpich-dev mpich)"
            );
        }
    };
    let mut build = cc::Build::new();
    build.file("src/comm/mpi_shim.c");
    if let Some(mpicc) = lib.mpicc {
        build.compiler(mpicc);
    } else {
        for inc in &lib.include_paths {
            build.include(inc);
        }
    }
    build.compile("gang_mpi_shim");
}
