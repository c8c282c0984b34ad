//! What this machine offers: which launcher to use, which MPI is installed, how many cores,
//! the Slurm allocation. Parsers are pure and take their inputs as arguments; the thin
//! `*_from_env` wrappers read the process environment.

use crate::plan::{LauncherKind, MpiFlavour};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The `--launcher` choice on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LauncherChoice {
    /// `srun` inside a Slurm allocation, else `mpirun`.
    Auto,
    /// `mpirun` (Open MPI or MPICH; `--mpirun` names another).
    Mpirun,
    /// Slurm's `srun`.
    Srun,
}

/// The error for a machine without `mpirun`.
pub const NO_MPIRUN: &str = "no mpirun on PATH: install Open MPI (Debian/Ubuntu: apt-get install \
     openmpi-bin libopenmpi-dev) or MPICH (apt-get install mpich libmpich-dev), or load your \
     cluster's MPI module; an MPI launcher by another name is given with --mpirun PATH or \
     GANG_MPIRUN";

/// The variable that names the `mpirun` to use when `--mpirun` is not given.
pub const MPIRUN_VAR: &str = "GANG_MPIRUN";

/// Resolves the `mpirun` to use: `--mpirun` (`option`), else `$GANG_MPIRUN` (`env_value`),
/// each a path or a name looked up in `path_var`; else `mpirun` on `path_var`, if any.
///
/// # Errors
/// An `--mpirun` or `GANG_MPIRUN` that names no executable file.
pub fn resolve_mpirun(
    option: Option<&OsStr>,
    env_value: Option<OsString>,
    path_var: Option<&OsStr>,
) -> Result<Option<PathBuf>> {
    let (given, from) = match (option, env_value.filter(|v| !v.is_empty())) {
        (Some(o), _) => (o.to_os_string(), "--mpirun"),
        (None, Some(v)) => (v, MPIRUN_VAR),
        (None, None) => return Ok(find_on_path("mpirun", path_var)),
    };
    let shown = given.to_string_lossy().into_owned();
    if given.as_encoded_bytes().contains(&b'/') {
        let p = PathBuf::from(&given);
        if !is_executable_file(&p) {
            bail!("{from} {shown}: no such executable file; give the path or the name of an mpirun or mpiexec");
        }
        return Ok(Some(p));
    }
    match find_on_path(&shown, path_var) {
        Some(p) => Ok(Some(p)),
        None => bail!(
            "{from} {shown}: not found on PATH; give its path, or the name of an mpirun or mpiexec on PATH \
             (Debian/Ubuntu name MPICH's mpiexec.mpich and Open MPI's mpirun.openmpi)"
        ),
    }
}

/// Whether `path` is a regular file with an execute bit set.
pub fn is_executable_file(path: &Path) -> bool {
    match path.metadata() {
        Ok(m) => m.is_file() && m.permissions().mode() & 0o111 != 0,
        Err(_) => false,
    }
}

/// Looks `name` up in the directories of `path_var` (a `PATH` value), as a shell would.
pub fn find_on_path(name: &str, path_var: Option<&OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path_var?)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|p| is_executable_file(p))
}

/// Looks `name` up in this process's `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    find_on_path(name, std::env::var_os("PATH").as_deref())
}

/// Picks the launcher from the choice, whether we are inside a Slurm allocation, and where
/// `srun` and `mpirun` are (if anywhere). Returns the launcher and its path.
///
/// # Errors
/// The chosen (or, for `auto`, any) launcher is not installed.
pub fn choose_launcher(
    choice: LauncherChoice,
    in_slurm_job: bool,
    srun: Option<PathBuf>,
    mpirun: Option<PathBuf>,
) -> Result<(LauncherKind, PathBuf)> {
    match choice {
        LauncherChoice::Auto => match (in_slurm_job, srun, mpirun) {
            (true, Some(srun), _) => Ok((LauncherKind::Srun, srun)),
            (_, _, Some(mpirun)) => Ok((LauncherKind::Mpirun, mpirun)),
            _ => bail!("{NO_MPIRUN}"),
        },
        LauncherChoice::Mpirun => match mpirun {
            Some(m) => Ok((LauncherKind::Mpirun, m)),
            None => bail!("{NO_MPIRUN}"),
        },
        LauncherChoice::Srun => match srun {
            Some(s) => Ok((LauncherKind::Srun, s)),
            None => bail!(
                "--launcher srun was asked for but there is no srun on PATH: run on a node with \
                 Slurm installed (inside salloc/sbatch), or use --launcher mpirun"
            ),
        },
    }
}

/// An installed MPI, as `mpirun --version` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MpiInstall {
    /// Open MPI or MPICH.
    pub flavour: MpiFlavour,
    /// The version number, e.g. `4.1.4`.
    pub version: String,
    /// The line it came from, e.g. `mpirun (Open MPI) 4.1.4`.
    pub version_line: String,
    /// The `mpirun` that was asked.
    pub mpirun: PathBuf,
}

/// Tells the MPI flavour and version from the output of `mpirun --version`.
///
/// Open MPI prints `mpirun (Open MPI) 4.1.4`; MPICH's hydra prints `HYDRA build details:`
/// followed by an indented `Version:  4.0.2` line.
pub fn parse_mpi_version(output: &str) -> Option<(MpiFlavour, String, String)> {
    let lines = || output.lines().map(str::trim).filter(|l| !l.is_empty());
    if let Some(line) = lines().find(|l| l.contains("Open MPI") || l.contains("OpenRTE")) {
        let version = line.rsplit(' ').next().unwrap_or("").to_string();
        return Some((MpiFlavour::OpenMpi, version, line.to_string()));
    }
    if output.contains("HYDRA") || output.contains("MPICH") {
        let line = lines().find(|l| l.starts_with("Version:")).or_else(|| lines().next())?;
        let version = line.strip_prefix("Version:").unwrap_or("").trim().to_string();
        let version_line =
            if line.starts_with("Version:") { format!("MPICH (hydra) {version}") } else { line.to_string() };
        return Some((MpiFlavour::Mpich, version, version_line));
    }
    None
}

/// Runs `mpirun --version` and parses it.
///
/// # Errors
/// mpirun cannot be run, or prints something that is neither Open MPI nor MPICH.
pub fn probe_mpi(mpirun: &Path) -> Result<MpiInstall> {
    let out = Command::new(mpirun)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not run `{} --version`", mpirun.display()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    match parse_mpi_version(&text) {
        Some((flavour, version, version_line)) => {
            // Hydra starts its proxies (`hydra_pmi_proxy`) from the directory of the path it
            // was started as: a symlink to it elsewhere (a directory of launchers put first
            // on PATH) must be resolved.
            let mpirun = match flavour {
                MpiFlavour::Mpich => mpirun.canonicalize().unwrap_or_else(|_| mpirun.to_path_buf()),
                MpiFlavour::OpenMpi => mpirun.to_path_buf(),
            };
            Ok(MpiInstall { flavour, version, version_line, mpirun })
        }
        None => bail!(
            "could not tell which MPI `{} --version` belongs to (it printed: {:?}); gang \
             supports Open MPI and MPICH: name one of their launchers with --mpirun or {MPIRUN_VAR}, or \
             put one first on PATH",
            mpirun.display(),
            text.lines().next().unwrap_or("")
        ),
    }
}

/// The MPI a program is linked against, from the shared libraries its ELF file names
/// (`DT_NEEDED`), with the library's name; `None` when that says nothing certain (a script,
/// a program without MPI, one that loads MPI through another library, a static build).
///
/// `libmpich.so.*` is MPICH; `libmpi.so.40` is Open MPI 3.0 and later. `libmpi.so.12` is
/// not told apart: MPICH-ABI libraries (Intel MPI, MVAPICH2) and Open MPI 1.10 all use it.
pub fn linked_mpi(program: &Path) -> Option<(MpiFlavour, String)> {
    mpi_of_libraries(&needed_libraries(program)?)
}

/// The MPI among shared library names (see [`linked_mpi`]).
pub fn mpi_of_libraries(needed: &[String]) -> Option<(MpiFlavour, String)> {
    needed.iter().find_map(|lib| {
        if lib.starts_with("libmpich.so") {
            Some((MpiFlavour::Mpich, lib.clone()))
        } else if lib == "libmpi.so.40" {
            Some((MpiFlavour::OpenMpi, lib.clone()))
        } else {
            None
        }
    })
}

/// The `DT_NEEDED` entries of a 64-bit little-endian ELF file (x86-64, aarch64): only its
/// headers, dynamic section and string table are read, never the whole (often large)
/// binary. `None` for anything else or anything malformed.
pub fn needed_libraries(path: &Path) -> Option<Vec<String>> {
    const PT_LOAD: u32 = 1;
    const PT_DYNAMIC: u32 = 2;
    const DT_NEEDED: u64 = 1;
    const DT_STRTAB: u64 = 5;
    const DT_STRSZ: u64 = 10;
    // Far beyond any real dynamic section or string table: a corrupt header reads no more.
    const LIMIT: u64 = 16 << 20;
    let mut f = File::open(path).ok()?;
    let mut read_at = |offset: u64, len: u64| -> Option<Vec<u8>> {
        if len > LIMIT {
            return None;
        }
        let mut buf = vec![0u8; usize::try_from(len).ok()?];
        f.seek(SeekFrom::Start(offset)).ok()?;
        f.read_exact(&mut buf).ok()?;
        Some(buf)
    };
    let u16_at = |b: &[u8], i: usize| Some(u16::from_le_bytes(b.get(i..i + 2)?.try_into().ok()?));
    let u32_at = |b: &[u8], i: usize| Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?));
    let u64_at = |b: &[u8], i: usize| Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?));
    let header = read_at(0, 64)?;
    // Magic, ELFCLASS64, ELFDATA2LSB.
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return None;
    }
    let (phoff, phentsize, phnum) = (u64_at(&header, 0x20)?, u16_at(&header, 0x36)?, u16_at(&header, 0x38)?);
    if phentsize < 56 {
        return None;
    }
    let phdrs = read_at(phoff, u64::from(phentsize) * u64::from(phnum))?;
    // (type, file offset, virtual address, size in the file) of every program header.
    let segments: Vec<(u32, u64, u64, u64)> = phdrs
        .chunks_exact(usize::from(phentsize))
        .map(|h| Some((u32_at(h, 0)?, u64_at(h, 8)?, u64_at(h, 16)?, u64_at(h, 32)?)))
        .collect::<Option<_>>()?;
    let &(_, dyn_off, _, dyn_size) = segments.iter().find(|s| s.0 == PT_DYNAMIC)?;
    let dynamic = read_at(dyn_off, dyn_size)?;
    let (mut needed, mut strtab, mut strsz) = (Vec::new(), None, None);
    for entry in dynamic.chunks_exact(16) {
        match (u64_at(entry, 0)?, u64_at(entry, 8)?) {
            (0, _) => break, // DT_NULL
            (DT_NEEDED, name) => needed.push(name),
            (DT_STRTAB, addr) => strtab = Some(addr),
            (DT_STRSZ, size) => strsz = Some(size),
            _ => {}
        }
    }
    // The string table is given by address: find it in the file through its segment.
    let addr = strtab?;
    let &(_, off, vaddr, _) =
        segments.iter().find(|&&(t, _, vaddr, filesz)| t == PT_LOAD && addr >= vaddr && addr - vaddr < filesz)?;
    let strings = read_at(off + (addr - vaddr), strsz?)?;
    needed
        .into_iter()
        .map(|at| {
            let rest = strings.get(usize::try_from(at).ok()?..)?;
            let end = rest.iter().position(|&b| b == 0)?;
            Some(String::from_utf8_lossy(&rest[..end]).into_owned())
        })
        .collect()
}

/// Launcher names that Debian and Ubuntu give each MPI beside the `mpirun` alternative,
/// for the hint when a program's MPI is not `mpirun`'s.
fn launcher_names(flavour: MpiFlavour) -> &'static [&'static str] {
    match flavour {
        MpiFlavour::Mpich => &["mpiexec.mpich", "mpiexec.hydra", "mpirun.mpich"],
        MpiFlavour::OpenMpi => &["mpirun.openmpi", "orterun"],
    }
}

/// The name of an MPI, for messages.
pub fn flavour_name(flavour: MpiFlavour) -> &'static str {
    match flavour {
        MpiFlavour::Mpich => "MPICH",
        MpiFlavour::OpenMpi => "Open MPI",
    }
}

/// Refuses to start `program`, linked against `linked` (see [`linked_mpi`]), with the
/// `mpirun` of another MPI: its ranks would each be a world of one. `path_var` is searched
/// for the launcher of the program's MPI, to name it in the error.
///
/// # Errors
/// The two MPIs differ.
pub fn check_program_mpi(
    program: &Path,
    linked: Option<&(MpiFlavour, String)>,
    mpirun: &MpiInstall,
    path_var: Option<&OsStr>,
) -> Result<()> {
    let Some((flavour, lib)) = linked else { return Ok(()) };
    if *flavour == mpirun.flavour {
        return Ok(());
    }
    let want = flavour_name(*flavour);
    let fix = match launcher_names(*flavour).iter().find(|n| find_on_path(n, path_var).is_some()) {
        Some(name) => format!("start it with {want}'s launcher: --mpirun {name} (or {MPIRUN_VAR}={name})"),
        None => format!("start it with {want}'s launcher: --mpirun PATH (or {MPIRUN_VAR}=PATH)"),
    };
    bail!(
        "{} is linked against {want} ({lib}) but {} is {} {}: under another MPI's launcher every \
         rank would run alone, as a world of one; {fix}, or rebuild the program against {}",
        program.display(),
        mpirun.mpirun.display(),
        flavour_name(mpirun.flavour),
        mpirun.version,
        flavour_name(mpirun.flavour)
    )
}

/// Number of cores to plan for: `SLURM_CPUS_ON_NODE` inside an allocation, else what this
/// process may use.
pub fn cores(slurm_cpus_on_node: Option<&str>) -> usize {
    slurm_cpus_on_node
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// Total CPUs of `SLURM_JOB_CPUS_PER_NODE`, a list like `2(x3),1` (three nodes with 2 CPUs,
/// one with 1).
pub fn parse_cpus_per_node(value: &str) -> Option<usize> {
    let mut total = 0usize;
    for item in value.split(',') {
        let item = item.trim();
        let (cpus, times) = match item.split_once("(x") {
            Some((c, rest)) => (c, rest.strip_suffix(')')?),
            None => (item, "1"),
        };
        total += cpus.trim().parse::<usize>().ok()? * times.trim().parse::<usize>().ok()?;
    }
    Some(total)
}

/// The Slurm allocation this process runs in, from the `SLURM_*` variables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlurmAllocation {
    /// `SLURM_JOB_ID`.
    pub job_id: String,
    /// `SLURM_NTASKS`.
    pub ntasks: Option<usize>,
    /// `SLURM_JOB_NUM_NODES`.
    pub num_nodes: Option<usize>,
    /// `SLURM_JOB_NODELIST`.
    pub nodelist: Option<String>,
    /// `SLURM_CPUS_ON_NODE`.
    pub cpus_on_node: Option<usize>,
    /// `SLURM_JOB_CPUS_PER_NODE`, raw.
    pub cpus_per_node: Option<String>,
}

impl SlurmAllocation {
    /// Reads the allocation through `get` (a variable lookup); `None` outside a Slurm job.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Option<SlurmAllocation> {
        let num = |k: &str| get(k).and_then(|v| v.trim().parse().ok());
        Some(SlurmAllocation {
            job_id: get("SLURM_JOB_ID").filter(|v| !v.is_empty())?,
            ntasks: num("SLURM_NTASKS"),
            num_nodes: num("SLURM_JOB_NUM_NODES"),
            nodelist: get("SLURM_JOB_NODELIST"),
            cpus_on_node: num("SLURM_CPUS_ON_NODE"),
            cpus_per_node: get("SLURM_JOB_CPUS_PER_NODE"),
        })
    }

    /// Reads the allocation from this process's environment.
    pub fn from_env() -> Option<SlurmAllocation> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// CPUs of the whole allocation: `SLURM_JOB_CPUS_PER_NODE` summed, else CPUs on this
    /// node times the node count.
    pub fn cpus(&self) -> Option<usize> {
        self.cpus_per_node
            .as_deref()
            .and_then(parse_cpus_per_node)
            .or_else(|| Some(self.cpus_on_node? * self.num_nodes.unwrap_or(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const OPEN_MPI: &str = "mpirun (Open MPI) 4.1.4\n\nReport bugs to http://www.open-mpi.org/community/help/\n";
    const HYDRA: &str = "HYDRA build details:\n    Version:                                 4.0.2\n    \
         Release Date:                            Thu Apr  2 17:04:20 CDT 2020\n    CC: gcc\n";

    #[test]
    fn reads_open_mpi_version() {
        let (f, v, line) = parse_mpi_version(OPEN_MPI).unwrap();
        assert_eq!(f, MpiFlavour::OpenMpi);
        assert_eq!(v, "4.1.4");
        assert_eq!(line, "mpirun (Open MPI) 4.1.4");
    }

    #[test]
    fn reads_mpich_hydra_version() {
        let (f, v, line) = parse_mpi_version(HYDRA).unwrap();
        assert_eq!(f, MpiFlavour::Mpich);
        assert_eq!(v, "4.0.2");
        assert_eq!(line, "MPICH (hydra) 4.0.2");
    }

    #[test]
    fn unknown_mpirun_is_not_guessed() {
        assert_eq!(parse_mpi_version("Intel(R) MPI Library for Linux* OS, Version 2021.6"), None);
        assert_eq!(parse_mpi_version(""), None);
    }

    #[test]
    fn auto_prefers_srun_inside_an_allocation_only() {
        let srun = Some(PathBuf::from("/s/srun"));
        let mpirun = Some(PathBuf::from("/m/mpirun"));
        let pick = |in_job, s: &Option<PathBuf>, m: &Option<PathBuf>| {
            choose_launcher(LauncherChoice::Auto, in_job, s.clone(), m.clone()).map(|(k, _)| k).ok()
        };
        assert_eq!(pick(true, &srun, &mpirun), Some(LauncherKind::Srun));
        assert_eq!(pick(false, &srun, &mpirun), Some(LauncherKind::Mpirun));
        assert_eq!(pick(true, &None, &mpirun), Some(LauncherKind::Mpirun));
        let err = choose_launcher(LauncherChoice::Auto, false, srun, None).unwrap_err().to_string();
        assert!(err.starts_with("no mpirun on PATH: install Open MPI"), "{err}");
        let err = choose_launcher(LauncherChoice::Srun, true, None, mpirun).unwrap_err().to_string();
        assert!(err.contains("no srun on PATH"), "{err}");
    }

    #[test]
    fn path_lookup_skips_non_executables() {
        let dir = std::env::temp_dir().join(format!("gang-detect-path-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plain = dir.join("tool");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        let path = std::env::join_paths([dir.as_path(), Path::new("/bin")]).unwrap();
        assert_eq!(find_on_path("tool", Some(&path)), None);
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_on_path("tool", Some(&path)), Some(plain));
        assert_eq!(find_on_path("tool", None), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mpirun_comes_from_the_option_then_the_variable_then_path() {
        let dir = std::env::temp_dir().join(format!("gang-detect-mpirun-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["mpirun", "mpiexec.mpich"] {
            std::fs::write(dir.join(name), "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let path = Some(dir.as_os_str());
        let resolve = |o: Option<&str>, e: Option<&str>| resolve_mpirun(o.map(OsStr::new), e.map(OsString::from), path);
        assert_eq!(resolve(None, None).unwrap(), Some(dir.join("mpirun")));
        assert_eq!(resolve(None, Some("")).unwrap(), Some(dir.join("mpirun")));
        assert_eq!(resolve(None, Some("mpiexec.mpich")).unwrap(), Some(dir.join("mpiexec.mpich")));
        let full = dir.join("mpiexec.mpich");
        assert_eq!(resolve(Some(full.to_str().unwrap()), Some("nope")).unwrap(), Some(full));
        let err = resolve(None, Some("mpiexec.nope")).unwrap_err().to_string();
        assert!(err.starts_with("GANG_MPIRUN mpiexec.nope: not found on PATH"), "{err}");
        let err = resolve(Some("/no/such/mpirun"), None).unwrap_err().to_string();
        assert!(err.starts_with("--mpirun /no/such/mpirun: no such executable file"), "{err}");
        assert_eq!(resolve_mpirun(None, None, None).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_libraries_a_program_needs_come_from_its_elf_headers() {
        // This test program is a dynamically linked ELF file.
        let me = std::env::current_exe().unwrap();
        let needed = needed_libraries(&me).expect("an ELF file with a dynamic section");
        assert!(needed.iter().any(|l| l.starts_with("libc.so")), "{needed:?}");
        assert_eq!(linked_mpi(&me), None, "the launcher links no MPI");
        let dir = std::env::temp_dir().join(format!("gang-detect-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("script");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert_eq!(needed_libraries(&script), None);
        let mut cut = std::fs::read(&me).unwrap();
        cut.truncate(100);
        std::fs::write(dir.join("cut"), &cut).unwrap();
        assert_eq!(needed_libraries(&dir.join("cut")), None);
        assert_eq!(needed_libraries(&dir.join("missing")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_certain_library_names_tell_the_mpi() {
        let libs = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let m = mpi_of_libraries(&libs(&["libhdf5_serial.so.103", "libmpich.so.12", "libc.so.6"]));
        assert_eq!(m, Some((MpiFlavour::Mpich, "libmpich.so.12".into())));
        let o = mpi_of_libraries(&libs(&["libmpi.so.40", "libc.so.6"]));
        assert_eq!(o, Some((MpiFlavour::OpenMpi, "libmpi.so.40".into())));
        // Intel MPI, MVAPICH2 and Open MPI 1.10 share this one.
        assert_eq!(mpi_of_libraries(&libs(&["libmpi.so.12"])), None);
        assert_eq!(mpi_of_libraries(&[]), None);
    }

    #[test]
    fn a_program_of_another_mpi_than_mpirun_s_is_refused_naming_both() {
        let open_mpi = MpiInstall {
            flavour: MpiFlavour::OpenMpi,
            version: "4.1.4".into(),
            version_line: "mpirun (Open MPI) 4.1.4".into(),
            mpirun: "/usr/bin/mpirun".into(),
        };
        let mpich = (MpiFlavour::Mpich, "libmpich.so.12".to_string());
        let prog = Path::new("/p/gang-rank");
        let err = check_program_mpi(prog, Some(&mpich), &open_mpi, None).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "/p/gang-rank is linked against MPICH (libmpich.so.12) but /usr/bin/mpirun is Open MPI 4.1.4"
            ),
            "{err}"
        );
        assert!(err.contains("world of one") && err.contains("--mpirun PATH (or GANG_MPIRUN=PATH)"), "{err}");
        let ompi = (MpiFlavour::OpenMpi, "libmpi.so.40".to_string());
        check_program_mpi(prog, Some(&ompi), &open_mpi, None).unwrap();
        check_program_mpi(prog, None, &open_mpi, None).unwrap();
    }

    #[test]
    fn cores_prefer_the_allocation() {
        assert_eq!(cores(Some("3")), 3);
        assert!(cores(None) >= 1);
        assert_eq!(cores(Some("bogus")), cores(None));
    }

    #[test]
    fn slurm_cpu_lists() {
        assert_eq!(parse_cpus_per_node("2(x3),1"), Some(7));
        assert_eq!(parse_cpus_per_node("4"), Some(4));
        assert_eq!(parse_cpus_per_node("x"), None);
    }

    #[test]
    fn slurm_allocation_from_variables() {
        let vars: HashMap<&str, &str> =
            [("SLURM_JOB_ID", "42"), ("SLURM_NTASKS", "4"), ("SLURM_JOB_NUM_NODES", "2"), ("SLURM_CPUS_ON_NODE", "2")]
                .into();
        let get = |k: &str| vars.get(k).map(|v| v.to_string());
        let a = SlurmAllocation::from_lookup(get).unwrap();
        assert_eq!((a.job_id.as_str(), a.ntasks, a.num_nodes), ("42", Some(4), Some(2)));
        assert_eq!(a.cpus(), Some(4));
        assert_eq!(SlurmAllocation::from_lookup(|_| None), None);
    }
}
