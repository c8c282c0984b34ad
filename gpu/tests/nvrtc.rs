//! Every kernel compiled by NVRTC to Hopper machine code (sm_90 cubins) and to PTX
//! (compute_90), on any machine: NVRTC needs no GPU and no driver.
//!
//! Checks: each source and the one-module unit compile; the cubin is a CUDA ELF holding
//! every `gang_*` kernel the sources define; no kernel spills a register; ptxas (from the
//! `nvidia-cuda-nvcc` wheel, `$GANG_PTXAS` or on `PATH`) agrees on the PTX.
//!
//! NVRTC comes from NVIDIA's wheel (`./dev test` installs it into `.gang/nvidia` and sets
//! `LD_LIBRARY_PATH`). Without it the tests say `SKIPPED` and pass, unless
//! `GANG_REQUIRE_NVRTC=1` (CI), where they fail with how to install it.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use gang_gpu::nvrtc::{self, Arch, Compiled, KernelInfo, SOURCES, UNIT};

/// Hopper, the architecture of the GPU validation machine (H100/H200).
const HOPPER: u32 = 90;

/// ELF machine number of CUDA cubins (EM_CUDA).
const EM_CUDA: u16 = 190;

/// Whether NVRTC is there; panics (CI) or prints SKIPPED (elsewhere) when it is not.
fn nvrtc_or_skip(test: &str) -> bool {
    match nvrtc::nvrtc_available() {
        Ok(()) => true,
        Err(e) if std::env::var("GANG_REQUIRE_NVRTC").is_ok_and(|v| v == "1") => {
            panic!("GANG_REQUIRE_NVRTC=1 but {e}")
        }
        Err(e) => {
            skipped(&format!("{test}: {e} (GANG_REQUIRE_NVRTC=1 makes this a failure)"));
            false
        }
    }
}

/// Says SKIPPED on the terminal: written to stderr itself, which the test harness does not
/// capture (it captures `eprintln!`), so the line shows in a plain `cargo test`.
fn skipped(why: &str) {
    let _ = std::io::stderr().write_all(format!("SKIPPED: {why}\n").as_bytes());
}

/// Asserts NVRTC's log holds nothing but ptxas's report: no warning from the front end
/// (or from ptxas).
fn assert_no_warnings(compiled: &Compiled) {
    let other: Vec<&str> = compiled
        .log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !(l.starts_with("ptxas info") || l.starts_with("ptxas         .")))
        .collect();
    assert!(other.is_empty(), "{} ({}): NVRTC warned:\n{}", compiled.source, compiled.arch, other.join("\n"));
}

/// The `gang_*` kernels every source defines, all together.
fn every_kernel() -> BTreeSet<&'static str> {
    SOURCES.iter().flat_map(|s| s.kernel_names()).collect()
}

/// The section names of an ELF64 little-endian file, checking the header on the way.
fn elf_sections(image: &[u8]) -> Vec<String> {
    assert!(image.len() > 64 && &image[..4] == b"\x7fELF", "not an ELF image");
    assert_eq!(image[4], 2, "not a 64-bit ELF");
    assert_eq!(image[5], 1, "not little-endian");
    let u16_at = |o: usize| u16::from_le_bytes(image[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(image[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(image[o..o + 8].try_into().unwrap()) as usize;
    assert_eq!(u16_at(18), EM_CUDA, "ELF machine is not EM_CUDA");
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(40), u16_at(58) as usize, u16_at(60) as usize, u16_at(62) as usize);
    assert!(shoff + shnum * shentsize <= image.len(), "section headers out of the image");
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(header(shstrndx) + 24);
    (0..shnum)
        .map(|i| {
            let start = strtab + u32_at(header(i)) as usize;
            let end = start + image[start..].iter().position(|&b| b == 0).expect("unterminated section name");
            String::from_utf8_lossy(&image[start..end]).into_owned()
        })
        .collect()
}

/// The SM version a cubin is for, from its ELF flags: bits 8-15 in the ELF ABI of CUDA
/// 12.8 and later (EI_ABIVERSION 8, as LLVM's `EF_CUDA_SM_MASK`), bits 0-7 before.
fn cubin_sm(image: &[u8]) -> u32 {
    let flags = u32::from_le_bytes(image[48..52].try_into().unwrap());
    if image[8] >= 8 {
        (flags >> 8) & 0xff
    } else {
        flags & 0xff
    }
}

/// The kernels of a cubin: the `gang_*` functions that have a `.text.<name>` section.
fn cubin_kernels(image: &[u8]) -> BTreeSet<String> {
    elf_sections(image)
        .iter()
        .filter_map(|s| s.strip_prefix(".text."))
        .filter(|n| n.starts_with("gang_"))
        .map(String::from)
        .collect()
}

/// Asserts ptxas's report covers `expected` kernels without a spill, and prints it.
fn assert_no_spills(what: &str, report: &[KernelInfo], expected: &BTreeSet<&str>) {
    let reported: BTreeSet<&str> = report.iter().map(|k| k.name.as_str()).collect();
    let unreported: Vec<_> = expected.difference(&reported).collect();
    assert!(unreported.is_empty(), "{what}: ptxas reported nothing on {unreported:?}");
    for k in report {
        eprintln!(
            "{what}: {:<28} {:>3} registers, {:>4} bytes stack, {} bytes spill stores, {} bytes spill loads",
            k.name, k.registers, k.stack_frame, k.spill_stores, k.spill_loads
        );
    }
    let spilling: Vec<_> = report.iter().filter(|k| k.spills()).collect();
    assert!(spilling.is_empty(), "{what}: registers spilled to local memory: {spilling:#?}");
}

/// Asserts the cubin of `compiled` is sm_90 machine code with `expected` kernels in it.
fn assert_hopper_cubin(compiled: &Compiled, expected: &BTreeSet<&str>) {
    assert!(compiled.is_cubin() && compiled.arch == Arch::Sm(HOPPER));
    let found = cubin_kernels(&compiled.image);
    let missing: Vec<_> = expected.iter().filter(|k| !found.contains(**k)).collect();
    assert!(missing.is_empty(), "{}: kernels not in the cubin: {missing:?} (it has {found:?})", compiled.source);
    assert_eq!(cubin_sm(&compiled.image), HOPPER, "{}: cubin is not for sm_90", compiled.source);
}

#[test]
fn every_source_compiles_to_sm_90_machine_code_without_spills() {
    if !nvrtc_or_skip("every_source_compiles_to_sm_90_machine_code_without_spills") {
        return;
    }
    let (major, minor) = nvrtc::version().unwrap();
    eprintln!("NVRTC {major}.{minor}");
    let compiled = nvrtc::compile_all(Arch::Sm(HOPPER)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(compiled.len(), SOURCES.len());
    for (source, c) in SOURCES.iter().zip(&compiled) {
        let kernels: BTreeSet<&str> = source.kernel_names().into_iter().collect();
        assert!(!kernels.is_empty(), "{}: no `GANG_KERNEL gang_...` found", source.name);
        assert_hopper_cubin(c, &kernels);
        assert_no_warnings(c);
        assert_no_spills(source.name, &c.kernels, &kernels);
    }
}

#[test]
fn one_module_holds_every_kernel() {
    if !nvrtc_or_skip("one_module_holds_every_kernel") {
        return;
    }
    let all = every_kernel();
    let unit = nvrtc::module_image(9, 0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(unit.source, UNIT.name);
    assert_hopper_cubin(&unit, &all);
    assert_no_warnings(&unit);
    assert_no_spills(UNIT.name, &unit.kernels, &all);
    // Cached: the second call hands out the same image.
    assert!(std::sync::Arc::ptr_eq(&unit, &nvrtc::module_image(9, 0).unwrap()));
}

#[test]
fn every_source_compiles_to_compute_90_ptx() {
    if !nvrtc_or_skip("every_source_compiles_to_compute_90_ptx") {
        return;
    }
    for source in SOURCES.iter().chain([&UNIT]) {
        let c = nvrtc::compile(source, Arch::Compute(HOPPER)).unwrap_or_else(|e| panic!("{e}"));
        assert_no_warnings(&c);
        let ptx = c.ptx().expect("PTX text");
        assert!(ptx.contains(".target sm_90"), "{}: PTX not for sm_90", source.name);
        let wanted: Vec<&str> =
            if source.name == UNIT.name { every_kernel().into_iter().collect() } else { source.kernel_names() };
        for k in wanted {
            assert!(ptx.contains(&format!(".entry {k}(")), "{}: no .entry {k} in the PTX", source.name);
        }
    }
}

/// ptxas of the `nvidia-cuda-nvcc` wheel: `$GANG_PTXAS` (then it must exist) or `PATH`.
fn ptxas() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("GANG_PTXAS").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "GANG_PTXAS={} does not exist", path.display());
        return Some(path);
    }
    Command::new("ptxas").arg("--version").output().ok().filter(|o| o.status.success()).map(|_| PathBuf::from("ptxas"))
}

/// A second opinion: ptxas itself assembles the unit's PTX for sm_90, without spills.
#[test]
fn ptxas_assembles_the_ptx_without_spills() {
    if !nvrtc_or_skip("ptxas_assembles_the_ptx_without_spills") {
        return;
    }
    let Some(ptxas) = ptxas() else {
        skipped(
            "ptxas_assembles_the_ptx_without_spills: no ptxas (set GANG_PTXAS, or pip install \
             nvidia-cuda-nvcc==13.0.88: nvidia/cu13/bin/ptxas)",
        );
        return;
    };
    let unit = nvrtc::compile(&UNIT, Arch::Compute(HOPPER)).unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!("gang-ptxas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ptx, cubin) = (dir.join("gang_kernels.ptx"), dir.join("gang_kernels.cubin"));
    std::fs::write(&ptx, unit.ptx().unwrap()).unwrap();
    let out = Command::new(&ptxas)
        .args(["-arch=sm_90", "-v", "-o"])
        .arg(&cubin)
        .arg(&ptx)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", ptxas.display()));
    let report = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{} failed:\n{report}", ptxas.display());
    let all = every_kernel();
    assert_no_spills("ptxas", &nvrtc::parse_ptxas_log(&report), &all);
    let image = std::fs::read(&cubin).unwrap();
    assert_eq!(cubin_sm(&image), HOPPER, "ptxas's cubin is not for sm_90");
    assert_eq!(cubin_kernels(&image), all.iter().map(|k| k.to_string()).collect());
    let _ = std::fs::remove_dir_all(&dir);
}
