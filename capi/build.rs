//! Writes `gang_mpi.h`, installed beside `gang.h`: which MPI this build of libgang is for.
//! `MPI_Comm` is a pointer in Open MPI and an `int` in MPICH, so a libgang serves the MPI
//! it was built against only; the header stops a compile against another MPI's `mpi.h`
//! with an error that says so, instead of a crash at run time.

use std::io::Write;

fn main() {
    println!("cargo:rerun-if-env-changed=MPICC");
    println!("cargo:rerun-if-env-changed=MPI_PKG_CONFIG");
    let lib = match build_probe_mpi::probe() {
        Ok(lib) => lib,
        Err(errs) => {
            for e in errs {
                println!("cargo:warning=MPI probe: {e}");
            }
            panic!("no MPI library found: install Open MPI (apt-get install libopenmpi-dev openmpi-bin) or MPICH");
        }
    };
    let mpich = lib.libs.iter().any(|l| l.contains("mpich"))
        || lib.mpicc.as_deref().is_some_and(|c| c.contains("mpich"))
        || lib.lib_paths.iter().any(|p| p.to_string_lossy().contains("mpich"));
    let (name, id, guard) =
        if mpich { ("MPICH", "MPICH", "MPICH_VERSION") } else { ("Open MPI", "OPEN_MPI", "OPEN_MPI") };
    println!("cargo:rustc-env=GANG_CAPI_MPI={name}");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut f = std::fs::File::create(out.join("gang_mpi.h")).expect("OUT_DIR is writable");
    write!(
        f,
        r#"/* The MPI this build of libgang is for (written when libgang was built). */
#ifndef GANG_MPI_H
#define GANG_MPI_H
#include <mpi.h>
/* "Open MPI" or "MPICH". */
#define GANG_MPI_LIBRARY "{name}"
#define GANG_MPI_{id} 1
#if !defined({guard})
#error "this libgang was built for {name}, but the mpi.h included is another MPI's: build with the libgang of your MPI (pkg-config --variable=mpi gang says which MPI a libgang is for)"
#endif
#endif /* GANG_MPI_H */
"#
    )
    .expect("OUT_DIR is writable");
}
